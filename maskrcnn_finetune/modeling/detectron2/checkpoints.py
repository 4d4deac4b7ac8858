"""detectron2 weights read back: the detectron2 side of the model folder.

* :func:`load_weights_file` reads a ``.pth`` under torch >= 2.6, whose ``torch.load`` reads only
  tensors by default and so refuses detectron2's own training checkpoints (detectron2 issue 5456).
* :func:`load_detectron2_dir` rebuilds the model of a model folder written by the detectron2
  engine or by :func:`~maskrcnn_finetune.modeling.detectron2.importing.import_checkpoint`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from maskrcnn_finetune.errors import CheckpointError, ConfigError, ModelDirError
from maskrcnn_finetune.model_format import CONFIG_YAML, WEIGHTS, load_checked, read_weights
from maskrcnn_finetune.modeling.detectron2.inference import Detectron2Model
from maskrcnn_finetune.modeling.backbones import BACKBONES
from maskrcnn_finetune.modeling.detectron2.model_config import load_config
from maskrcnn_finetune.modeling.detectron2.timm_backbones import ADD_CONFIG
from maskrcnn_finetune.modeling.maskrcnn import ModelSpec

logger = logging.getLogger(__name__)


def load_weights_file(path, trusted: bool = False) -> dict:
    """The content of a ``.pth`` file (see :func:`maskrcnn_finetune.model_format.read_weights`).

    Raises:
        CheckpointError: the file is missing, damaged, or holds objects and is not trusted.
    """
    return read_weights(path, error=CheckpointError, trusted=trusted,
                        trust_hint="pass --trust-checkpoint (trusted=True); the model folder then gets a copy with "
                                   "the weights only")


def model_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The model's tensors from a detectron2 checkpoint (``{"model": ...}``) or a bare state dict."""
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError("the file holds no model weights (expected a state dict or {'model': state dict})")
    return state


class TrustedCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer for files a training run wrote itself (``--resume``): read in full."""

    def _torch_load(self, f):
        return load_weights_file(f, trusted=True)


def fit_weights(model: torch.nn.Module, state: dict, source: str, class_names: list[str]) -> None:
    """Loads ``state`` into ``model`` strictly, explaining a mismatch.

    Raises:
        CheckpointError: the weights belong to another config (other classes, backbone or heads).
    """
    load_checked(model, state, source=source, class_names=class_names, classes_from="the config and class names give",
                 model_from="the model its config describes", error=CheckpointError,
                 fix="the config and the weights come from different models: pass the config.yaml and the class "
                     "names the weights were trained with")


def spec_from_config(cfg: CfgNode, class_names: list[str]) -> ModelSpec:
    """The :class:`ModelSpec` summary of a detectron2 config (for ``model.json``)."""
    backbone = cfg.MODEL.BACKBONE.NAME
    for name, entry in BACKBONES.items():
        choice = entry.detectron2
        if choice and choice.builder == backbone and cfg.MODEL[choice.family].TIMM_NAME == entry.detectron2_timm_name \
                and cfg.MODEL.FPN.OUT_CHANNELS == entry.fpn_channels:
            backbone = name
    if backbone == "build_resnet_fpn_backbone" and cfg.MODEL.RESNETS.DEPTH in (50, 101):
        backbone = f"resnet{cfg.MODEL.RESNETS.DEPTH}_fpn"
    return ModelSpec(
        backbone=backbone,
        class_names=list(class_names),
        min_size=cfg.INPUT.MIN_SIZE_TEST,
        max_size=cfg.INPUT.MAX_SIZE_TEST,
        anchor_sizes=[int(s[0]) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES],
        rpn_levels=len(cfg.MODEL.RPN.IN_FEATURES),
        fpn_norm=(cfg.MODEL.FPN.NORM or "none").lower(),
        rpn_pre_nms_top_n_train=cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN,
        rpn_post_nms_top_n_train=cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN,
        rpn_pre_nms_top_n_test=cfg.MODEL.RPN.PRE_NMS_TOPK_TEST,
        rpn_post_nms_top_n_test=cfg.MODEL.RPN.POST_NMS_TOPK_TEST,
        box_batch_size_per_image=cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
        detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        box_head_dim=cfg.MODEL.ROI_BOX_HEAD.FC_DIM,
        mask_head_layers=[cfg.MODEL.ROI_MASK_HEAD.CONV_DIM] * cfg.MODEL.ROI_MASK_HEAD.NUM_CONV,
    )


def build_for_inference(cfg: CfgNode, device) -> tuple[torch.nn.Module, CfgNode]:
    """detectron2's model for ``cfg`` on ``device`` (and the config it used), fetching no pretrained weights."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = str(torch.device(device))
    cfg.MODEL.WEIGHTS = ""
    for family in ADD_CONFIG:  # the folder's weights replace ImageNet's: do not fetch them
        cfg.MODEL[family].PRETRAINED = False
    cfg.freeze()
    return build_model(cfg), cfg


def load_detectron2_dir(model_dir, device, info: dict) -> tuple[Detectron2Model, ModelSpec, dict]:
    """Rebuilds the detectron2 model of a model folder (see :func:`maskrcnn_finetune.model_dir.load_model_dir`).

    Returns:
        ``(model, spec, info)``; ``model`` takes and returns what a torchvision Mask R-CNN does.

    Raises:
        ModelDirError: a missing or damaged config or weights file, or weights that do not fit.
    """
    model_dir = Path(model_dir)
    spec = ModelSpec.from_dict(info["model"])
    config_path = model_dir / CONFIG_YAML
    if not config_path.is_file():
        raise ModelDirError(f"'{model_dir}' holds a detectron2 model but has no {CONFIG_YAML}; "
                            "train again, or import the checkpoint again with scripts/import_detectron2.py")
    try:
        cfg = load_config(config_path)
        model, cfg = build_for_inference(cfg, device)
        fit_weights(model, model_state(load_weights_file(model_dir / WEIGHTS)), str(model_dir / WEIGHTS),
                    list(spec.class_names))
    except (CheckpointError, ConfigError) as exc:
        raise ModelDirError(str(exc)) from exc
    wrapped = Detectron2Model(model, cfg).to(device).eval()
    return wrapped, spec, info
