"""Exporting a model folder to TorchScript, checked against the eager model before it is kept.

    record = export_torchscript("outputs/demo/model")          # -> outputs/demo/model/exported/
    predictor = load_exported_predictor(record["path"])        # a Predictor like any other

The export scripts the torchvision Mask R-CNN (``torch.jit.script``, eval mode, CPU), saves it,
loads the saved file back and runs it next to the plain fp32 eager model on a few check images
(:mod:`maskrcnn_finetune.parity`: the same instances, mask IoU >= 0.95, scores within 0.05).
Only an export that passes is kept: ``model.torchscript.pt`` with ``export.json`` (the parity
report, versions, latency) and a copy of ``model.json`` next to it. One that fails raises
:class:`ExportParityError` and leaves no file behind.

:func:`export_onnx` does the same for ONNX Runtime (``model.onnx`` + ``export_onnx.json``;
needs ``pip install onnx onnxruntime``).

Export is for the torchvision engine; detectron2 models have their own export tooling
(``detectron2.export``). torch marks ``torch.jit`` (and the TorchScript-based ONNX exporter) as
deprecated in favour of ``torch.export``; both still work for torchvision Mask R-CNN on torch 2.14.

One difference the check caught: torchvision's transform computes the resize scale in float32
when scripted and in float64 in eager Python, so for some image sizes the TorchScript model
resized the image to one pixel less (e.g. 56x93 -> 57x95 instead of 57x96 at min_size 64,
max_size 96), which on the demo model moved small masks below the parity rule. The export
therefore scripts the model with :class:`EagerResizeTransform`, which resizes as eager does.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import shutil
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from tqdm import tqdm

from maskrcnn_finetune import __version__
from maskrcnn_finetune.data.images import load_rgb
from maskrcnn_finetune.data.images import IMAGE_SUFFIXES
from maskrcnn_finetune.errors import ConfigError, ExportError, ExportParityError, first_line
from maskrcnn_finetune.files import atomic_path, write_json_atomic
from maskrcnn_finetune.model_dir import MODEL_JSON, read_model_info
from maskrcnn_finetune.modeling import ModelSpec
from maskrcnn_finetune.parity import SCORE_TOLERANCE, ParityReport, compare_runs
from maskrcnn_finetune.predictor import Predictor
from maskrcnn_finetune.timing import measure_latency

logger = logging.getLogger(__name__)

EXPORT_DIR = "exported"
TORCHSCRIPT_FILE = "model.torchscript.pt"
EXPORT_JSON = "export.json"
EXPORT_FORMAT = "maskrcnn-finetune/export"
ONNX_FILE = "model.onnx"
ONNX_JSON = "export_onnx.json"
ONNX_OPSET = 17
ONNX_OUTPUTS = ("boxes", "labels", "scores", "masks")
FORMATS = {"torchscript": (TORCHSCRIPT_FILE, EXPORT_JSON, "TorchScript"), "onnx": (ONNX_FILE, ONNX_JSON, "ONNX")}
"""Per format: the file, the json written next to it, and its name in messages."""
CHECK_IMAGES = 3
"""How many synthetic images the parity check uses when no images are given."""

LATENCY_RUNS = 5  # timed calls of each model for export.json (the parity check covers every image)


class ScriptedMaskRCNN(torch.nn.Module):
    """A scripted torchvision detection model behind the eager interface.

    Scripted torchvision detection models return ``(losses, detections)`` even in eval mode;
    this adapter returns only ``detections``, the list of dicts (``boxes``, ``labels``,
    ``scores``, ``masks``) that the eager model returns and :class:`Predictor` reads.

    Args:
        scripted: the module from ``torch.jit.script`` or ``torch.jit.load``.
    """

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        # not called `module`: Predictor unwraps a `.module` attribute as it does for DDP
        self.scripted = scripted

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        # torchvision's scripted GeneralizedRCNN warns that it returns (losses, detections); this
        # adapter unpacks the tuple, so the warning says nothing to its user
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="RCNN always returns a", category=UserWarning)
            out = self.scripted(images)
        if isinstance(out, tuple) and len(out) == 2:
            _, detections = out
            return detections
        return out


def load_torchscript(path, device: str | torch.device = "cpu") -> ScriptedMaskRCNN:
    """Loads an exported TorchScript file as a module usable like the eager model.

    ``Predictor(load_torchscript(path), spec, fast=False)`` predicts as the eager model does.

    Raises:
        ExportError: the file is missing or not a TorchScript file.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"'{path}' does not exist; export a model folder first with scripts/export.py")
    try:
        scripted = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as exc:
        raise ExportError(f"'{path}' is not a TorchScript file ({first_line(exc)}); export the model folder again") from exc
    return ScriptedMaskRCNN(scripted).eval()


class OnnxMaskRCNN(torch.nn.Module):
    """An ONNX Runtime session of an exported Mask R-CNN behind the eager interface.

    The exported graph takes one ``(3, H, W)`` image, so a list of images runs one by one.

    Args:
        path: the ``.onnx`` file.
    """

    def __init__(self, path) -> None:
        super().__init__()
        onnxruntime = _require_onnx()
        self.path = str(path)
        self.session = onnxruntime.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        results = []
        for image in images:
            outputs = self.session.run(list(ONNX_OUTPUTS), {self.input_name: image.detach().float().cpu().numpy()})
            results.append({name: torch.from_numpy(value) for name, value in zip(ONNX_OUTPUTS, outputs)})
        return results


def _require_onnx():
    """``onnxruntime``, or an :class:`ExportError` that says how to install it."""
    try:
        importlib.import_module("onnx")  # torch's ONNX exporter writes the file with it
        onnxruntime = importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise ExportError("ONNX export needs onnx and onnxruntime; install them with "
                          "`pip install onnx onnxruntime`, or export to TorchScript (the default)") from exc
    return onnxruntime


def _onnx_versions() -> dict:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "opset": ONNX_OPSET}


def load_onnx(path) -> OnnxMaskRCNN:
    """Loads an exported ONNX file as a module usable like the eager model (CPU, ONNX Runtime).

    Raises:
        ExportError: the file is missing or not an ONNX model, or onnxruntime is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"'{path}' does not exist; export a model folder first with scripts/export.py --format onnx")
    _require_onnx()
    try:
        return OnnxMaskRCNN(path).eval()
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise ExportError(f"'{path}' is not an ONNX model that ONNX Runtime can run ({first_line(exc)}); export again") from exc


def load_exported(path, fmt: str | None = None) -> torch.nn.Module:
    """An exported file as a module (:func:`load_onnx` for ``.onnx``, else :func:`load_torchscript`)."""
    fmt = fmt or ("onnx" if Path(path).suffix == ".onnx" else "torchscript")
    return load_onnx(path) if fmt == "onnx" else load_torchscript(path)


def read_export_info(path) -> tuple[ModelSpec, dict]:
    """The :class:`ModelSpec` and ``model.json`` of an exported file (the copy next to it).

    Raises:
        ExportError: there is no ``model.json`` next to the file, or it is damaged.
    """
    model_json = Path(path).parent / MODEL_JSON
    if not model_json.is_file():
        raise ExportError(f"'{model_json}' is missing; an exported file needs the {MODEL_JSON} of its model "
                          f"folder next to it (copy it there, or export again)")
    try:
        info = json.loads(model_json.read_text())
        return ModelSpec.from_dict(info["model"]), info
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ExportError(f"{model_json} is damaged ({type(exc).__name__}: {exc}); copy it again from the "
                          "model folder") from exc


def load_exported_predictor(path, device="cpu", score_threshold: float | None = None) -> Predictor:
    """A :class:`Predictor` around an exported TorchScript file (spec from the ``model.json`` next to it)."""
    spec, info = read_export_info(path)
    threshold = info.get("score_threshold", 0.5) if score_threshold is None else score_threshold
    module = load_torchscript(path, device) if Path(path).suffix != ".onnx" else load_onnx(path)
    return Predictor(module, spec, device, threshold, info, fast=False)


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


def check_images(images, spec: ModelSpec) -> tuple[list[np.ndarray], list[str]]:
    """The images of the parity check as RGB arrays, with names for the report.

    Args:
        images: image paths, folders (their images, sorted), RGB arrays, PIL images, or ``None`` for
            :data:`CHECK_IMAGES` synthetic images at the model's size (the same every time).
        spec: the model's spec (its ``min_size`` sets the synthetic images' size).

    Raises:
        ExportError: a path does not exist, a folder holds no images, or an image cannot be read.
    """
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


def _resolve_output(model_dir: Path, output, file_name: str) -> Path:
    """The file to write: ``output`` as a file (the format's suffix), or ``output/file_name`` for a folder."""
    if output is None:
        return model_dir / EXPORT_DIR / file_name
    output = Path(output)
    if output.is_dir() or output.suffix != Path(file_name).suffix:
        return output / file_name
    return output


def check_export(exported, model_dir, images=None, threshold: float | None = None) -> dict:
    """Checks an exported file against the fp32 eager model of ``model_dir``.

    Args:
        exported: the TorchScript file (or ONNX file, told by its ``.onnx`` suffix).
        model_dir: the model folder it should behave like.
        images: check images (see :func:`check_images`); ``None`` for synthetic ones.
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
    arrays, names = check_images(images, eager.spec)
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


class EagerResizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform, whose resize computes its scale in float64 when scripted too.

    Inference only (no targets); the same scale, output size and bilinear resize as eager
    torchvision's ``_resize_image_and_masks``.
    """

    def resize(self, image: Tensor, target: Optional[dict[str, Tensor]] = None) -> tuple[Tensor, Optional[dict[str, Tensor]]]:
        height, width = image.shape[-2], image.shape[-1]
        scale = min(float(self.min_size[-1]) / float(min(height, width)), float(self.max_size) / float(max(height, width)))
        image = torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="bilinear",
                                                recompute_scale_factor=True, align_corners=False)[0]
        return image, target


def script_model(model: torch.nn.Module, eager_resize: bool = True) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of a torchvision Mask R-CNN in eval mode (a copy; ``model`` is untouched).

    Args:
        eager_resize: resize images as eager torchvision does (:class:`EagerResizeTransform`);
            ``False`` scripts torchvision's transform as it is, which rounds some sizes differently.
    """
    model = copy.deepcopy(model).eval()
    if eager_resize and type(model.transform) is GeneralizedRCNNTransform:
        model.transform.__class__ = EagerResizeTransform
    return torch.jit.script(model)


def export_torchscript(model_dir, output=None, images=None, threshold: float | None = None,
                       overwrite: bool = False, eager_resize: bool = True) -> dict:
    """Exports a torchvision model folder to TorchScript and keeps it only if it predicts like eager.

    Args:
        model_dir: a model folder written by training (torchvision engine).
        output: the file to write, or a folder for ``model.torchscript.pt`` in it
            (default ``<model_dir>/exported/model.torchscript.pt``).
        images: check images: paths, folders, RGB arrays; ``None`` for a few synthetic images
            at the model's size (deterministic).
        threshold: the score threshold the parity check is about (default: the model's).
        overwrite: replace an existing exported file.
        eager_resize: see :func:`script_model`.

    Returns:
        The record written to ``export.json`` next to the file, plus ``"path"`` (the file).

    Raises:
        ExportParityError: the reloaded TorchScript model predicts differently; nothing is kept
            (an existing export replaced with ``overwrite`` stays as it was).
        ExportError / ConfigError / ModelDirError: a detectron2 folder, an existing file without
            ``overwrite``, unreadable images, a broken model folder.
    """
    return _export("torchscript", model_dir, output, images, threshold, overwrite, eager_resize)


def export_onnx(model_dir, output=None, images=None, threshold: float | None = None, overwrite: bool = False) -> dict:
    """Exports a torchvision model folder to ONNX (ONNX Runtime), kept only if it predicts like eager.

    As :func:`export_torchscript`, with ``model.onnx`` and ``export_onnx.json``. The model is traced
    with torch's TorchScript-based ONNX exporter (``dynamo=False``, the path torchvision's detection
    models support) on the first check image, with the image height and width dynamic; it runs one
    image at a time. Needs ``pip install onnx onnxruntime``.
    """
    return _export("onnx", model_dir, output, images, threshold, overwrite)


def _export(fmt: str, model_dir, output, images, threshold, overwrite, eager_resize: bool = True) -> dict:
    file_name, record_name, label = FORMATS[fmt]
    model_dir = Path(model_dir)
    _require_torchvision_engine(model_dir)
    if fmt == "onnx":
        _require_onnx()
    path = _resolve_output(model_dir, output, file_name)
    if path.exists() and not overwrite:
        raise ConfigError(f"'{path}' already exists; pass --overwrite to replace it, or choose another --output "
                          "(nothing was overwritten)")
    eager = Predictor.from_dir(model_dir, device="cpu", fast=False)
    threshold = _threshold(threshold, eager)
    arrays, names = check_images(images, eager.spec)  # bad check images fail before the slow part
    out_dir = path.parent
    created_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    # the check runs on a temporary file: a failed export never replaces a good one
    try:
        with atomic_path(path) as tmp:
            _save(fmt, eager, arrays[0], tmp, model_dir, eager_resize)
            try:
                result = _check(eager, tmp, model_dir, arrays, names, threshold, fmt)
            except ExportParityError as exc:
                raise ExportParityError(
                    f"the {label} export of '{model_dir}' does not predict what its eager model predicts, so it "
                    f"must not be used; it was not kept ('{path}' not written): {exc.report.describe()}", exc.report
                ) from exc
    except BaseException:
        if created_dir and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    record = {
        "format": EXPORT_FORMAT,
        "exported_as": fmt,
        "file": path.name,
        "source_model_dir": str(model_dir.resolve()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kit_version": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        **({"onnx": _onnx_versions()} if fmt == "onnx" else {}),
        **result,
    }
    write_json_atomic(out_dir / record_name, record)
    source_json, copy_json = model_dir / MODEL_JSON, out_dir / MODEL_JSON
    if not (copy_json.exists() and copy_json.samefile(source_json)):
        shutil.copyfile(source_json, copy_json)
    logger.info("exported %s to %s", model_dir, path)
    return {**record, "path": str(path)}


def _save(fmt: str, eager: Predictor, example: np.ndarray, tmp: Path, model_dir: Path, eager_resize: bool = True) -> None:
    """Writes the model of ``eager`` to ``tmp`` as TorchScript or ONNX."""
    model = eager.model.eval()
    try:
        if fmt == "torchscript":
            script_model(model, eager_resize).save(str(tmp))
            return
        image = torch.from_numpy(example).permute(2, 0, 1).float().div(255.0)
        instances = {0: "instances"}
        # the tracer warns about every Python-level branch of torchvision's detection code; whether
        # the trace generalises to other images is what the parity check right after this decides
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, ([image],), str(tmp), opset_version=ONNX_OPSET, dynamo=False,
                              input_names=["image"], output_names=list(ONNX_OUTPUTS),
                              dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": instances,
                                            "labels": instances, "scores": instances,
                                            "masks": {0: "instances", 2: "height", 3: "width"}})
    except Exception as exc:  # scripting and tracing raise many kinds of errors for unsupported Python code
        raise ExportError(f"the {eager.spec.backbone} model of '{model_dir}' cannot be exported to {FORMATS[fmt][2]} "
                          f"({first_line(exc)}); export supports the torchvision backbones (resnet*, mobilenetv2*)") from exc
