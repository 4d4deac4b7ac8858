"""Exported models behind the eager model's interface: TorchScript and ONNX Runtime adapters, and their loading."""

from __future__ import annotations

import importlib
import json
import logging
import warnings
from pathlib import Path

import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskrcnn_finetune.errors import ExportError, first_line
from maskrcnn_finetune.export.formats import ONNX_MASKS_KEY, ONNX_MASKS_UNPASTED, ONNX_OPSET, ONNX_OUTPUTS
from maskrcnn_finetune.model_dir import MODEL_JSON
from maskrcnn_finetune.model_spec import DEFAULT_SCORE_THRESHOLD
from maskrcnn_finetune.modeling import ModelSpec
from maskrcnn_finetune.predictor import InferenceOptions, Predictor

logger = logging.getLogger(__name__)


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

    ``Predictor(load_torchscript(path), spec)`` predicts as the eager model does.

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

    The exported graph takes one ``(3, H, W)`` image, so a list of images runs one by one. Its
    ``masks`` are the mask head's (N, 1, 28, 28) probabilities: they are pasted here at image size
    with torchvision's ``paste_masks_in_image``, as the eager model does (files exported before
    with the masks pasted in the graph are used as they are).

    Args:
        path: the ``.onnx`` file.
    """

    def __init__(self, path) -> None:
        super().__init__()
        onnxruntime = _require_onnx()
        self.path = str(path)
        self.session = onnxruntime.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.pastes_masks = metadata.get(ONNX_MASKS_KEY) == ONNX_MASKS_UNPASTED

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        results = []
        for image in images:
            outputs = self.session.run(list(ONNX_OUTPUTS), {self.input_name: image.detach().float().cpu().numpy()})
            result = {name: torch.from_numpy(value) for name, value in zip(ONNX_OUTPUTS, outputs)}
            if self.pastes_masks:
                result["masks"] = paste_masks_in_image(result["masks"], result["boxes"], tuple(image.shape[-2:]))
            results.append(result)
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
    threshold = info.get("score_threshold", DEFAULT_SCORE_THRESHOLD) if score_threshold is None else score_threshold
    module = load_torchscript(path, device) if Path(path).suffix != ".onnx" else load_onnx(path)
    return Predictor(module, spec, device, threshold, info, InferenceOptions(fast=False))
