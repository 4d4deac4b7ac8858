"""The parity gate for exports: an exported model run next to the eager one (the gate's images and
comparison are :mod:`maskrcnn_finetune.parity`'s)."""

from __future__ import annotations

import logging
from pathlib import Path

from maskrcnn_finetune.errors import ConfigError, ExportError, ExportParityError
from maskrcnn_finetune.export.formats import FORMATS, LATENCY_RUNS, format_of
from maskrcnn_finetune.export.runtimes import load_exported
from maskrcnn_finetune.model_dir import read_model_info
from maskrcnn_finetune.parity import check_images, compare_with_eager, model_val_images
from maskrcnn_finetune.predictor import InferenceOptions, Predictor
from maskrcnn_finetune.timing import measure_latency

__all__ = ["check_export", "check_images", "compare_with_eager", "model_val_images"]

logger = logging.getLogger(__name__)


def _require_torchvision_engine(model_dir: Path) -> dict:
    info = read_model_info(model_dir)
    engine = info.get("engine", "torchvision")
    if engine != "torchvision":
        raise ExportError(
            f"'{model_dir}' holds a {engine} model; export (.pt2, ONNX) here is for the torchvision engine. "
            "For detectron2 models use detectron2's own export tooling (detectron2.export: TracingAdapter, "
            "scripting_with_instances; tools/deploy/export_model.py), or train with --engine torchvision"
        )
    return info


def check_export(exported, model_dir, images=None, threshold: float | None = None) -> dict:
    """Checks an exported file against the fp32 eager model of ``model_dir``.

    Args:
        exported: the exported file: ``.pt2``, ``.onnx`` or TorchScript (told by its suffix).
        model_dir: the model folder it should behave like.
        images: check images (see :func:`check_images`); ``None`` for the model's val images, else synthetic ones.
        threshold: the score threshold the check is about (default: the model's).

    Returns:
        ``{"threshold", "check_images", "parity": report dict, "latency_ms": {"eager", "exported"}}``
        (median/min/max milliseconds per image, see :func:`~maskrcnn_finetune.timing.measure_latency`).

    Raises:
        ExportParityError: the predictions differ; the message says how. The file is left as it is.
        ExportError / ConfigError / ModelDirError: unusable inputs.
    """
    model_dir = Path(model_dir)
    _require_torchvision_engine(model_dir)
    eager = Predictor.from_dir(model_dir, device="cpu", fast=False)
    arrays, names = check_images(images, eager.spec, eager.info)
    return _check(eager, exported, model_dir, arrays, names, _threshold(threshold, eager), format_of(exported))


def _threshold(threshold: float | None, eager: Predictor) -> float:
    if threshold is None:
        return float(eager.score_threshold)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ConfigError(f"--threshold must lie between 0 and 1, got {threshold}; pass e.g. --threshold 0.5")
    return float(threshold)


def _check(eager: Predictor, exported: Path, model_dir: Path, arrays, names, threshold: float,
           fmt: str = "pt2") -> dict:
    candidate = Predictor(load_exported(exported, fmt), eager.spec, "cpu", threshold, eager.info,
                          InferenceOptions(fast=False))
    report = compare_with_eager(eager, candidate, arrays, threshold, names)
    logger.info("parity of %s against %s: %s", exported, model_dir, report.describe())
    if report.ok and report.matched == 0:
        logger.warning("the parity check found no instances at or above the threshold %.2f on its %d images, so it "
                       "compared empty answers; pass --images with objects the model finds, or a lower --threshold",
                       threshold, len(arrays))
    if not report.ok:
        raise ExportParityError(f"the {FORMATS[fmt][2]} model '{exported}' does not predict what the eager model of "
                                f"'{model_dir}' predicts, so it must not be used: {report.describe()}", report)
    latency = {name: measure_latency(p, arrays, warmup=1, runs=min(len(arrays), LATENCY_RUNS)) for name, p in (("eager", eager), ("exported", candidate))}
    return {"threshold": threshold, "check_images": names, "parity": report.to_dict(), "latency_ms": latency}
