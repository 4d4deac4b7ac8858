"""The parity gate: check images, and an exported model run next to the eager one (see :mod:`maskrcnn_finetune.parity`)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from PIL import Image
import numpy as np
from tqdm import tqdm

from maskrcnn_finetune.data.images import IMAGE_SUFFIXES, load_rgb
from maskrcnn_finetune.errors import ConfigError, ExportError, ExportParityError
from maskrcnn_finetune.export.formats import CHECK_IMAGES, CHECK_VAL_IMAGES, FORMATS, LATENCY_RUNS
from maskrcnn_finetune.export.runtimes import load_exported
from maskrcnn_finetune.model_dir import read_model_info
from maskrcnn_finetune.modeling import ModelSpec
from maskrcnn_finetune.parity import compare_runs, ParityReport, SCORE_TOLERANCE
from maskrcnn_finetune.predictor import Predictor
from maskrcnn_finetune.timing import measure_latency

logger = logging.getLogger(__name__)


def _require_torchvision_engine(model_dir: Path) -> dict:
    info = read_model_info(model_dir)
    engine = info.get("engine", "torchvision")
    if engine != "torchvision":
        raise ExportError(
            f"'{model_dir}' holds a {engine} model; export (TorchScript, ONNX) here is for the torchvision engine. "
            "For detectron2 models use detectron2's own export tooling (detectron2.export: TracingAdapter, "
            "scripting_with_instances; tools/deploy/export_model.py), or train with --engine torchvision"
        )
    return info


def model_val_images(info: dict) -> list[Path]:
    """The first :data:`CHECK_VAL_IMAGES` images of the val json the model was trained with, when it can
    still be read from here (``model.json``'s ``training.val_json``); else an empty list."""
    from maskrcnn_finetune.data.coco import load_coco
    from maskrcnn_finetune.errors import DatasetError

    val_json = (info.get("training") or {}).get("val_json")
    if not val_json or not Path(val_json).is_file():
        return []
    try:
        coco = load_coco(val_json, check_images=False)
    except (DatasetError, OSError, ValueError) as exc:
        logger.info("the model's val json %s cannot be read (%s); the parity check uses synthetic images", val_json, exc)
        return []
    paths = [coco.image_path(image) for image in coco.images[:CHECK_VAL_IMAGES]]
    return paths if paths and all(p.is_file() for p in paths) else []


def check_images(images, spec: ModelSpec, info: dict | None = None) -> tuple[list[np.ndarray], list[str]]:
    """The images of the parity check as RGB arrays, with names for the report.

    Args:
        images: image paths, folders (their images, sorted), RGB arrays, PIL images, or ``None`` for
            the model's own val images (up to :data:`CHECK_VAL_IMAGES`, when ``info``'s training
            says which and they are here), else :data:`CHECK_IMAGES` synthetic images at the
            model's size (the same every time).
        spec: the model's spec (its ``min_size`` sets the synthetic images' size).
        info: the model folder's ``model.json``.

    Raises:
        ExportError: a path does not exist, a folder holds no images, or an image cannot be read.
    """
    if images is None and info and (own := model_val_images(info)):
        logger.info("parity check on %d images of the model's val set (%s)", len(own), own[0].parent)
        images = own
    if images is None:
        from maskrcnn_finetune.data.synthetic import make_synthetic

        side = max(64, int(spec.min_size))  # make_synthetic's smallest side
        with tempfile.TemporaryDirectory(prefix="export-check-") as tmp:
            jsons = make_synthetic(tmp, CHECK_IMAGES, seed=0, image_size=(side * 4 // 3, side))
            return [load_rgb(p.with_suffix(".jpg")) for p in jsons], [p.with_suffix(".jpg").name for p in jsons]
    if isinstance(images, (str, Path, np.ndarray)):
        images = [images]
    arrays, names = [], []
    for k, item in enumerate(images):
        if isinstance(item, (np.ndarray, Image.Image)):
            arrays.append(np.array(item.convert("RGB")) if isinstance(item, Image.Image) else item)
            names.append(f"array {k}")
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ExportError(f"'{path}' holds no images ({', '.join(IMAGE_SUFFIXES)}); pass a folder of images "
                                  "or image files with --images")
        elif path.is_file():
            files = [path]
        else:
            raise ExportError(f"check image '{path}' does not exist; pass image files or a folder with --images")
        for file in files:
            try:
                arrays.append(load_rgb(file))
            except (OSError, ValueError, SyntaxError) as exc:
                raise ExportError(f"'{file}' is not a readable image ({exc}); remove it or pass other images") from exc
            names.append(file.name)
    if not arrays:
        raise ExportError("no check images were given; pass image files or a folder with --images")
    return arrays, names


def compare_with_eager(eager: Predictor, candidate: Predictor, images: list[np.ndarray], threshold: float,
                       names: list[str] | None = None) -> ParityReport:
    """The parity report of ``candidate`` against the fp32 ``eager`` predictor on ``images`` at ``threshold``."""
    # both runs go below the threshold by the score tolerance: an instance near the threshold may
    # appear in one run only, and the comparison needs to see it to pair it
    low = max(0.0, threshold - SCORE_TOLERANCE)
    reference = [eager(image, threshold=low) for image in tqdm(images, desc="parity check: eager", unit="img")]
    exported = [candidate(image, threshold=low) for image in tqdm(images, desc="parity check: exported", unit="img")]
    return compare_runs(reference, exported, threshold, names=names)


def check_export(exported, model_dir, images=None, threshold: float | None = None) -> dict:
    """Checks an exported file against the fp32 eager model of ``model_dir``.

    Args:
        exported: the TorchScript file (or ONNX file, told by its ``.onnx`` suffix).
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
    fmt = "onnx" if Path(exported).suffix == ".onnx" else "torchscript"
    return _check(eager, exported, model_dir, arrays, names, _threshold(threshold, eager), fmt)


def _threshold(threshold: float | None, eager: Predictor) -> float:
    if threshold is None:
        return float(eager.score_threshold)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ConfigError(f"--threshold must lie between 0 and 1, got {threshold}; pass e.g. --threshold 0.5")
    return float(threshold)


def _check(eager: Predictor, exported: Path, model_dir: Path, arrays, names, threshold: float,
           fmt: str = "torchscript") -> dict:
    candidate = Predictor(load_exported(exported, fmt), eager.spec, "cpu", threshold, eager.info, fast=False)
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
