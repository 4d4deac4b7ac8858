"""The model folder: the one artifact that training writes and everything else reads.

``DIR/model.json`` says how to rebuild the model (engine, backbone, classes, image size,
thresholds), what trained it and how well it did; ``DIR/model_final.pth`` holds the weights.

A folder written by ``scripts/export.py`` (``model.pt2``, the model's parts as ``torch.export``
programs with ``model.json`` inside, and no weights) is read the same way: it loads the programs
instead of rebuilding the model (:mod:`maskrcnn_finetune.modeling.programs`).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import torch

from maskrcnn_finetune import __version__
from maskrcnn_finetune.files import atomic_path, write_json_atomic
from maskrcnn_finetune.engine_names import ENGINES
from maskrcnn_finetune.model_format import (CONFIG_YAML, FORMAT, FORMAT_VERSION, MODEL_JSON, PT2_FILE, WEIGHTS,
                                            ModelDirError, load_checked, read_weights)
from maskrcnn_finetune.model_spec import DEFAULT_SCORE_THRESHOLD
from maskrcnn_finetune.modeling import ModelSpec, build_model
from maskrcnn_finetune.modeling.backbones import freeze_norms
from maskrcnn_finetune.modeling.detectron2 import require_detectron2
from maskrcnn_finetune.modeling.maskrcnn import frozen_norm_eps
from maskrcnn_finetune.registries import Registry

logger = logging.getLogger(__name__)

LOADERS: Registry = Registry("model-folder loader", names=ENGINES)
"""How each engine's model folder comes back: ``loader(model_dir, device, info) -> (model, spec, info)``."""

__all__ = ["CONFIG_YAML", "FORMAT", "FORMAT_VERSION", "MODEL_JSON", "ModelDirError", "PT2_FILE", "WEIGHTS",
           "is_exported_dir", "load_model_dir", "read_model_info", "rebuild_model", "write_model_dir"]


def write_model_dir(out_dir, model: torch.nn.Module, spec: ModelSpec, *, engine: str = "torchvision",
                    score_threshold: float = DEFAULT_SCORE_THRESHOLD, training: dict | None = None,
                    metrics: dict | None = None) -> Path:
    """Writes ``model.json`` and ``model_final.pth`` into ``out_dir``.

    Args:
        out_dir: the model folder (created when missing).
        model: the trained model (a DDP wrapper is unwrapped).
        spec: how to rebuild it.
        engine: which engine trained it.
        score_threshold: the default threshold for predictions shown to people.
        training: the resolved training config.
        metrics: a summary of the evaluation (e.g. bbox/segm AP50).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)
    with atomic_path(out_dir / WEIGHTS) as tmp:
        torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "engine": engine,
        "model": spec.to_dict(),
        "backbone": spec.backbone,
        "class_names": list(spec.class_names),
        "image_size": spec.min_size,
        "score_threshold": score_threshold,
        "training": training or {},
        "metrics": metrics or {},
    }
    write_json_atomic(out_dir / MODEL_JSON, info)
    return out_dir


def is_exported_dir(model_dir) -> bool:
    """Whether ``model_dir`` is a folder written by ``scripts/export.py``: ``model.pt2`` and no weights."""
    model_dir = Path(model_dir)
    return (model_dir / PT2_FILE).is_file() and not (model_dir / WEIGHTS).is_file()


def read_model_info(model_dir) -> dict:
    """``model.json`` of a model folder, checked (of an exported folder: the copy beside ``model.pt2``, else the
    one inside it).

    Raises:
        ModelDirError: the folder, ``model.json`` or the weights are missing, or the json is damaged.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model folder '{model_dir}' does not exist; pass the --output-dir of a training run")
    path = model_dir / MODEL_JSON
    if not path.is_file() and is_exported_dir(model_dir):
        from maskrcnn_finetune.modeling.programs import read_pt2_info  # torch.export: only for an exported folder

        return read_pt2_info(model_dir / PT2_FILE)
    if not path.is_file():
        raise ModelDirError(f"'{model_dir}' has no {MODEL_JSON}, so it is not a model folder of this kit; "
                            "pass the --output-dir of a finished training run")
    try:
        info = json.loads(path.read_text())
        ModelSpec.from_dict(info["model"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelDirError(f"{path} is damaged ({type(exc).__name__}: {exc}); train again or restore the file") from exc
    if info.get("format") != FORMAT:
        raise ModelDirError(f"{path} is not a model description of this kit (format {info.get('format')!r})")
    if not (model_dir / WEIGHTS).is_file() and not is_exported_dir(model_dir):
        raise ModelDirError(f"'{model_dir}' has no {WEIGHTS}; the training run did not finish. "
                            "Resume it with --resume, or train again")
    return info


def load_model_dir(model_dir, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelSpec, dict]:
    """Rebuilds the model of a model folder, in eval mode on ``device``.

    Returns:
        ``(model, spec, info)`` where ``info`` is the content of ``model.json``.

    Raises:
        ModelDirError: missing files, a corrupt checkpoint, or weights that do not fit the
            description (e.g. trained for another number of classes).
    """
    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    if is_exported_dir(model_dir):
        return _load_exported_dir(model_dir, device, info)
    engine = info.get("engine", "torchvision")
    if engine not in LOADERS:
        raise ModelDirError(f"'{model_dir}' holds a model of the unknown engine '{engine}'; "
                            f"this kit reads {' and '.join(LOADERS)} models")
    return LOADERS[engine](model_dir, device, info)


def _load_exported_dir(model_dir: Path, device, info: dict):
    """An exported folder: the model assembled around the programs of its ``model.pt2`` (see
    :func:`~maskrcnn_finetune.modeling.programs.read_pt2`), with the folder's ``model.json``."""
    from maskrcnn_finetune.modeling.programs import read_pt2  # torch.export: only for an exported folder

    model, _ = read_pt2(model_dir / PT2_FILE)
    logger.info("loaded the exported model %s (torch.export programs)", model_dir / PT2_FILE)
    return model.to(device).eval(), ModelSpec.from_dict(info["model"]), info


@LOADERS.register("torchvision")
def _load_torchvision_dir(model_dir: Path, device, info: dict):
    spec = ModelSpec.from_dict(info["model"])
    weights = model_dir / WEIGHTS
    model = rebuild_model(spec, read_weights(weights), weights)
    logger.info("loaded the trained %s weights of %s", spec.backbone, weights)
    model.to(device).eval()
    return model, spec, info


def rebuild_model(spec: ModelSpec, state: dict, source="the weights") -> torch.nn.Module:
    """The model ``spec`` describes, built as for inference (its test size), holding ``state``.

    This is how a model folder comes back to life, and how training evaluates: what training
    scores is what :meth:`Predictor.from_dir` will run.

    Raises:
        ModelDirError: the weights do not fit the description (e.g. another number of classes).
    """
    model = build_model(spec, pretrained="none")
    if trained_with_frozen_norms(model, state):
        freeze_norms(model, frozen_norm_eps(spec.backbone))  # fine-tuned from pretrained weights: the same norms
    load_checked(model, state, source=str(source), class_names=list(spec.class_names),
                 classes_from=f"{MODEL_JSON} lists", model_from=f"the {spec.backbone} model described in {MODEL_JSON}",
                 fix="the two files come from different runs")
    return model


def trained_with_frozen_norms(model: torch.nn.Module, state: dict) -> bool:
    """Whether ``state`` comes from the pretrained form of ``model`` (a scratch build): its norms' running
    statistics are there, their ``num_batches_tracked`` (which only trainable BatchNorm has) are not."""
    counters = [k for k in model.state_dict() if k.endswith(".num_batches_tracked")]
    return bool(counters) and all(k not in state and k.replace("num_batches_tracked", "running_mean") in state
                                  for k in counters)


@LOADERS.register("detectron2")
def _load_detectron2_dir(model_dir: Path, device, info: dict):
    """A detectron2 model folder: its model behind torchvision's inference interface (see
    :class:`maskrcnn_finetune.modeling.detectron2.inference.Detectron2Model`)."""
    require_detectron2()  # detectron2 is optional: imported only for its own folders
    from maskrcnn_finetune.modeling.detectron2.checkpoints import load_detectron2_dir

    return load_detectron2_dir(model_dir, device, info)
