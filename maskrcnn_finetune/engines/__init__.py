"""Training engines. Each takes a :class:`~maskrcnn_finetune.config.TrainConfig` and writes a
model folder (:mod:`maskrcnn_finetune.model_dir`); they differ only behind that seam.

:data:`TRAINERS` holds one trainer per name of :data:`maskrcnn_finetune.engine_names.ENGINES`.
Each imports its engine's module when it trains: detectron2 is optional, and choosing one engine
should not import the other.
"""

from __future__ import annotations

from pathlib import Path

from maskrcnn_finetune.config import TrainConfig
from maskrcnn_finetune.engine_names import ENGINES
from maskrcnn_finetune.modeling.detectron2 import require_detectron2
from maskrcnn_finetune.registries import Registry

TRAINERS: Registry = Registry("engine", names=ENGINES)
"""Engine name -> ``trainer(cfg, stop_after=None) -> Path`` (the model folder)."""


@TRAINERS.register("torchvision")
def _train_torchvision(cfg: TrainConfig, **kwargs) -> Path:
    from maskrcnn_finetune.engines.torchvision_engine import train as train_torchvision

    return train_torchvision(cfg, **kwargs)


@TRAINERS.register("detectron2")
def _train_detectron2(cfg: TrainConfig, **kwargs) -> Path:
    require_detectron2()  # a message with the install command, before anything else is imported
    from maskrcnn_finetune.engines.detectron2_engine import train as train_detectron2

    return train_detectron2(cfg, **kwargs)


def train(cfg: TrainConfig, **kwargs) -> Path:
    """Trains with the engine ``cfg.engine`` names and returns the model folder.

    Raises:
        ConfigError: an unknown engine (the message lists the known ones), and what the engine raises.
    """
    return TRAINERS.lookup(cfg.engine, hint=" (--engine)")(cfg, **kwargs)
