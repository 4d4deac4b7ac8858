"""Training engines. Each takes a :class:`~maskrcnn_finetune.config.TrainConfig` and writes a
model folder (:mod:`maskrcnn_finetune.model_dir`); they differ only behind that seam."""

from __future__ import annotations

from pathlib import Path

from maskrcnn_finetune.config import TrainConfig
from maskrcnn_finetune.errors import ConfigError


def train(cfg: TrainConfig, **kwargs) -> Path:
    """Trains with the engine ``cfg.engine`` names and returns the model folder."""
    if cfg.engine == "torchvision":
        from maskrcnn_finetune.engines.torchvision_engine import train as train_torchvision

        return train_torchvision(cfg, **kwargs)
    raise ConfigError(f"engine '{cfg.engine}' is not available in this build; use --engine torchvision")
