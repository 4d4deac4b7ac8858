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
    if cfg.engine == "detectron2":
        from maskrcnn_finetune.modeling.detectron2 import require_detectron2

        require_detectron2()  # a message with the install command, before anything else is imported
        from maskrcnn_finetune.engines.detectron2_engine import train as train_detectron2

        return train_detectron2(cfg, **kwargs)
    raise ConfigError(f"unknown engine '{cfg.engine}'; use --engine torchvision or --engine detectron2")
