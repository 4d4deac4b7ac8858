"""Models: backbones chosen by name from a registry, assembled into Mask R-CNN."""

from maskrcnn_finetune.modeling.backbones import BACKBONES, build_backbone
from maskrcnn_finetune.modeling.maskrcnn import ModelSpec, build_model

__all__ = ["BACKBONES", "ModelSpec", "build_backbone", "build_model"]
