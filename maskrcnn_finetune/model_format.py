"""What a model folder is made of: file names, the format tag, and the checked reading of weights.

A leaf module (it imports nothing of the kit but :mod:`~maskrcnn_finetune.errors`), shared by
:mod:`~maskrcnn_finetune.model_dir` (writing and loading folders) and the detectron2 checkpoints,
so neither imports the other for a constant.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

import torch

from maskrcnn_finetune.errors import KitError, ModelDirError, first_line

logger = logging.getLogger(__name__)

MODEL_JSON = "model.json"
"""How to rebuild the model (engine, backbone, classes, sizes, thresholds), what trained it, how well it did."""
WEIGHTS = "model_final.pth"
"""The model's state dict (tensors only)."""
PT2_FILE = "model.pt2"
"""An exported model (``scripts/export.py``): its parts as ``torch.export`` programs, with ``model.json`` inside.
A folder holding it (and no weights) is served and loaded as a model folder."""
CONFIG_YAML = "detectron2_config.yaml"
"""The detectron2 config of a detectron2 model folder, beside ``model.json`` and the weights."""
FORMAT = "maskrcnn-finetune/model-dir"
FORMAT_VERSION = 1

__all__ = ["CONFIG_YAML", "FORMAT", "FORMAT_VERSION", "MODEL_JSON", "ModelDirError", "PT2_FILE", "WEIGHTS",
           "load_checked", "read_weights"]


def read_weights(path, *, error: type[KitError] = ModelDirError, trusted: bool = False,
                 trust_hint: str | None = None) -> dict:
    """The content of a ``.pth`` file, read safely where possible.

    torch >= 2.6 reads only tensors and plain containers by default. Files this kit writes hold
    nothing else; detectron2's own training checkpoints may hold other Python objects, which
    unpickling would run as code, so those are read only when ``trusted``.

    Args:
        trusted: read a file holding Python objects in full.
        trust_hint: how the user says a file is trusted (e.g. "pass --trust-checkpoint"); without
            it a file holding Python objects is reported as damaged.

    Raises:
        error: the file is missing, damaged, or holds Python objects and is not trusted.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"weights file '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trusted:
            if trust_hint is None:
                raise error(f"{path} is corrupt or not a weights file ({first_line(exc)}); train again or restore it") from exc
            raise error(
                f"{path} holds Python objects besides the weights, which torch >= 2.6 does not load by default "
                f"({first_line(exc)}). If you trust where the file comes from, {trust_hint}") from exc
        logger.warning("%s holds more than weights; loading it fully because it is trusted", path)
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise error(f"{path} is corrupt or not a weights file ({exc}); train again or restore it") from exc
    return torch.load(path, map_location="cpu", weights_only=False)


def load_checked(model: torch.nn.Module, state: dict, *, source: str, class_names: list[str], classes_from: str,
                 model_from: str, fix: str, error: type[KitError] = ModelDirError) -> None:
    """``model.load_state_dict(state, strict=True)``, with a mismatch explained in one message.

    Args:
        source: the weights' name in messages (a path).
        class_names: the classes the description gives.
        classes_from: who gives the classes, in messages ("model.json lists").
        model_from: the model the weights should fit, in messages ("the resnet50_fpn model described in model.json").
        fix: what to do about a mismatch.

    Raises:
        error: the weights were trained for another number of classes, or do not fit the model.
    """
    head = state.get("roi_heads.box_predictor.cls_score.weight")
    if head is not None and head.shape[0] != len(class_names) + 1:
        raise error(f"{source} was trained for {head.shape[0] - 1} classes but {classes_from} "
                    f"{len(class_names)} ({', '.join(class_names)}); {fix}")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong))
                 if keys]
        raise error(f"{source} does not fit {model_from}: weights {'; '.join(parts)}; {fix}")
    model.load_state_dict(state, strict=True)
