"""Starting a training run from a trained model folder (``--init-from``), for the next labelling round.

Every weight of the folder's model is reused. The layers that hold one row per class (the box
classifier, the box regressor and the mask predictor's last convolution) are matched by class
name: a class the new run keeps gets its trained row, a new class starts from the fresh layer's
initialisation, and a class the new data no longer has is dropped. Everything else (backbone,
FPN, RPN, the box and mask heads' shared layers) must have the same shapes: a different backbone
or head size is an error that names what differs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.model_dir import WEIGHTS, read_model_info, trained_with_frozen_norms
from maskrcnn_finetune.model_spec import ModelSpec
from maskrcnn_finetune.modeling.backbones import freeze_norms
from maskrcnn_finetune.modeling.maskrcnn import frozen_norm_eps

logger = logging.getLogger(__name__)

CLASS_LAYERS = {
    "roi_heads.box_predictor.cls_score.weight": 1,
    "roi_heads.box_predictor.cls_score.bias": 1,
    "roi_heads.box_predictor.bbox_pred.weight": 4,
    "roi_heads.box_predictor.bbox_pred.bias": 4,
    "roi_heads.mask_predictor.mask_fcn_logits.weight": 1,
    "roi_heads.mask_predictor.mask_fcn_logits.bias": 1,
}
"""The parameters with one block of rows per class (background first), and the rows per class."""

SHAPE_FIELDS = ("backbone", "fpn_norm", "anchor_sizes", "box_head_dim", "mask_head_layers")
"""ModelSpec fields that decide the shapes of the shared weights (anchor sizes: how many per level)."""


RUN_SPECIFIC = ("train_json", "val_json", "output_dir", "resume", "init_from", "preset")
"""Options of an earlier run that a next round never takes over."""


def run_options(model_dir) -> dict:
    """The training options of the run that wrote ``model_dir``, without its data and folders: the
    recipe and architecture a next round starts from (explicit options then replace them)."""
    from dataclasses import fields

    from maskrcnn_finetune.config import TrainConfig

    earlier = read_model_info(model_dir).get("training") or {}
    known = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in earlier.items() if k in known and k not in RUN_SPECIFIC}


def _class_rows(old: torch.Tensor, new: torch.Tensor, rows: int, source: list[int | None]) -> torch.Tensor:
    """``new`` with the rows of each class ``c`` taken from ``old``'s class ``source[c]`` (None: kept)."""
    out = new.detach().clone()
    for c, s in enumerate(source):
        if s is not None:
            out[c * rows:(c + 1) * rows] = old[s * rows:(s + 1) * rows]
    return out


def init_from_model_dir(model: torch.nn.Module, spec: ModelSpec, model_dir) -> str:
    """Loads a trained torchvision model folder's weights into ``model`` (built for ``spec``).

    Args:
        model: a freshly built Mask R-CNN for the new run's classes.
        spec: its description.
        model_dir: the trained model folder.

    Returns:
        A sentence saying what was reused, to log.

    Raises:
        ConfigError: the folder is not a torchvision model folder, or its architecture differs.
    """
    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    if info.get("engine", "torchvision") != "torchvision":
        raise ConfigError(f"--init-from '{model_dir}' was trained with the {info.get('engine')} engine; "
                          "start a torchvision run from a torchvision model folder (or train with that engine)")
    old_spec = ModelSpec.from_dict(info["model"])
    differs = [f"{name} {getattr(old_spec, name)!r} there, {getattr(spec, name)!r} here"
               for name in SHAPE_FIELDS if getattr(old_spec, name) != getattr(spec, name)]
    if differs:
        raise ConfigError(f"--init-from '{model_dir}' holds another architecture ({'; '.join(differs)}); "
                          "train with the same options as that model, or start from --pretrained weights instead")
    state = torch.load(model_dir / WEIGHTS, map_location="cpu", weights_only=True)
    old_names, new_names = list(old_spec.class_names), list(spec.class_names)
    # row 0 is the background in both
    source = [0] + [old_names.index(n) + 1 if n in old_names else None for n in new_names]
    if trained_with_frozen_norms(model, state):  # that model was fine-tuned from pretrained weights
        freeze_norms(model, frozen_norm_eps(spec.backbone))
    own = model.state_dict()
    for key, rows in CLASS_LAYERS.items():
        state[key] = _class_rows(state[key], own[key], rows, source)
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if mismatched:
        raise ConfigError(f"--init-from '{model_dir}': {len(mismatched)} weights have other shapes than this run's "
                          f"model (first: {mismatched[0]} {tuple(state[mismatched[0]].shape)} there, "
                          f"{tuple(own[mismatched[0]].shape)} here); train with the same options as that model")
    model.load_state_dict(state, strict=True)
    added = [n for n in new_names if n not in old_names]
    dropped = [n for n in old_names if n not in new_names]
    if not added and not dropped:
        return f"starting from the trained model in {model_dir}: every weight reused ({len(new_names)} classes)"
    parts = [f"starting from the trained model in {model_dir}: backbone, RPN and the heads' shared layers reused"]
    kept = [n for n in new_names if n in old_names]
    if kept:
        parts.append(f"{len(kept)} classes keep their trained weights ({', '.join(kept)})")
    if added:
        parts.append(f"new classes start untrained: {', '.join(added)}")
    if dropped:
        parts.append(f"classes not in this data are dropped: {', '.join(dropped)}")
    return "; ".join(parts)
