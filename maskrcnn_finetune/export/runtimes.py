"""Exported models behind the eager model's interface: ``.pt2`` (torch.export), ONNX Runtime, and the
TorchScript files of earlier versions; their loading.

A ``.pt2`` or ONNX file holds the model's parts with weights (:data:`~maskrcnn_finetune.modeling.parts.PARTS`);
loading it assembles a torchvision ``MaskRCNN`` around them, whose resize, anchors, NMS, RoIAlign and
mask pasting run in torchvision's Python as in the eager model (:func:`~maskrcnn_finetune.modeling.parts.assemble`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskrcnn_finetune.errors import ExportError, first_line
from maskrcnn_finetune.export.formats import (ONNX_INFO_KEY, ONNX_MASKS_KEY, ONNX_MASKS_UNPASTED, ONNX_OPSET,
                                              ONNX_OUTPUTS, ONNX_PARTS_FORMAT, ONNX_PARTS_KEY, TORCHSCRIPT_DEPRECATED,
                                              format_of)
from maskrcnn_finetune.model_dir import MODEL_JSON
from maskrcnn_finetune.model_spec import DEFAULT_SCORE_THRESHOLD
from maskrcnn_finetune.modeling import ModelSpec
from maskrcnn_finetune.modeling.parts import PARTS, assemble, flatten, unflatten
from maskrcnn_finetune.modeling.programs import read_pt2, read_pt2_info
from maskrcnn_finetune.predictor import InferenceOptions, Predictor

logger = logging.getLogger(__name__)


def load_pt2(path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Loads a ``.pt2`` file as a torchvision ``MaskRCNN`` whose parts are its ``torch.export`` programs.

    Raises:
        ExportError: the file is missing, damaged, or not one of this kit's.
    """
    model, _ = read_pt2(path)
    return model.to(device)


@contextlib.contextmanager
def _torchscript_allowed():
    """Where the kit still calls ``torch.jit`` (files of earlier versions, ``--format torchscript``): torch's
    deprecation warnings are replaced by the kit's own note (:data:`TORCHSCRIPT_DEPRECATED`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        yield


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
    """Loads a TorchScript file (written by earlier versions, or by ``--format torchscript``) as a module usable
    like the eager model; logs that the format is deprecated and how to re-export.

    Raises:
        ExportError: the file is missing or not a TorchScript file.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"'{path}' does not exist; export a model folder first with scripts/export.py")
    try:
        with _torchscript_allowed():
            scripted = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as exc:
        raise ExportError(f"'{path}' is not a TorchScript file ({first_line(exc)}); export the model folder again") from exc
    logger.warning("%s: %s", path, TORCHSCRIPT_DEPRECATED)
    return ScriptedMaskRCNN(scripted).eval()


class OnnxPart(torch.nn.Module):
    """One part's graph in an ONNX Runtime session, called as the model's own part is (torch tensors in and out).

    Args:
        session: the session of the part's graph.
        outputs: how its outputs nest (:func:`~maskrcnn_finetune.modeling.parts.structure_of`).
        out_channels: for the backbone, its FPN's channels.
        inputs: the names of the part's tensors in the order it is called with them (default: the session's).
    """

    def __init__(self, session, outputs, out_channels: int | None = None, inputs: list[str] | None = None) -> None:
        super().__init__()
        self.session = session
        self.input_names = list(inputs) if inputs is not None else [i.name for i in session.get_inputs()]
        # what the session takes: a runtime may drop an input its graph does not use (OpenVINO does; e.g. a feature
        # level that no head reads), so tensors are fed by name
        self.session_inputs = {i.name for i in session.get_inputs()}
        self.outputs = outputs
        if out_channels is not None:
            self.out_channels = out_channels

    def forward(self, *args):
        tensors = flatten(args)
        if len(tensors) != len(self.input_names):
            raise ValueError(f"the ONNX part takes {len(self.input_names)} tensors, got {len(tensors)}")
        feeds = {name: t.detach().float().contiguous().cpu().numpy() for name, t in zip(self.input_names, tensors)
                 if name in self.session_inputs}
        return unflatten([torch.from_numpy(np.ascontiguousarray(v)) for v in self.session.run(None, feeds)],
                         self.outputs)


def onnx_parts(path, session_for=None) -> tuple[torch.nn.Module, dict] | None:
    """The model of a kit ONNX file of parts and its ``model.json``; ``None`` for a file of earlier versions
    (one graph of the whole model).

    Each part's graph is taken out of the file (``onnx.utils.Extractor``) into a session of its own.

    Args:
        session_for: makes a part's session from its graph's bytes: anything with ONNX Runtime's
            ``get_inputs()`` and ``run(None, feeds)``; default an ONNX Runtime session on the CPU.
    """
    import onnx

    onnxruntime = _require_onnx()
    if session_for is None:
        def session_for(data: bytes):
            return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    model = onnx.load(str(path))
    metadata = {p.key: p.value for p in model.metadata_props}
    if ONNX_PARTS_KEY not in metadata:
        return None
    kit = json.loads(metadata[ONNX_PARTS_KEY])
    if kit.get("format") != ONNX_PARTS_FORMAT:
        raise ExportError(f"'{path}' holds parts of format {kit.get('format')!r}, this kit reads {ONNX_PARTS_FORMAT}; "
                          "export the model folder again")
    extractor = onnx.utils.Extractor(model)
    settings, parts = kit["settings"], {}
    for name in PARTS:
        graph = kit["parts"][name]
        session = session_for(extractor.extract_model(graph["inputs"], graph["outputs"]).SerializeToString())
        parts[name] = OnnxPart(session, graph["structure"], settings["out_channels"] if name == "backbone" else None,
                               inputs=graph["inputs"])
    return assemble(parts, settings), json.loads(metadata[ONNX_INFO_KEY])


class OnnxMaskRCNN(torch.nn.Module):
    """An ONNX file of earlier versions (one traced graph of the whole model) in ONNX Runtime, behind the eager
    interface.

    The graph takes one ``(3, H, W)`` image, so a list of images runs one by one. Where its ``masks`` are
    the mask head's (N, 1, 28, 28) probabilities, they are pasted here at image size with torchvision's
    ``paste_masks_in_image``, as the eager model does.

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
        importlib.import_module("onnxscript")  # ... and translates the programs with it
        onnxruntime = importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise ExportError("ONNX export needs onnx, onnxscript and onnxruntime; install them with "
                          "`pip install onnx onnxscript onnxruntime`, or export to .pt2 (the default)") from exc
    return onnxruntime


def _onnx_versions() -> dict:
    import onnx
    import onnxruntime
    import onnxscript

    return {"onnx": onnx.__version__, "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__,
            "opset": ONNX_OPSET}


def load_onnx(path) -> torch.nn.Module:
    """Loads an exported ONNX file as a module usable like the eager model (CPU, ONNX Runtime): the kit's file
    of parts, or a file of earlier versions (one graph).

    Raises:
        ExportError: the file is missing or not an ONNX model, or onnxruntime is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"'{path}' does not exist; export a model folder first with scripts/export.py --format onnx")
    _require_onnx()
    try:
        parts = onnx_parts(path)
        return (parts[0] if parts else OnnxMaskRCNN(path)).eval()
    except ExportError:
        raise
    except Exception as exc:  # onnx and onnxruntime raise their own exception types for unreadable models
        raise ExportError(f"'{path}' is not an ONNX model that ONNX Runtime can run ({first_line(exc)}); export again") from exc


def load_exported(path, fmt: str | None = None) -> torch.nn.Module:
    """An exported file as a module: :func:`load_pt2`, :func:`load_onnx` or :func:`load_torchscript` by ``fmt``
    (default: told by the file's suffix)."""
    fmt = fmt or format_of(path)
    return {"pt2": load_pt2, "onnx": load_onnx, "torchscript": load_torchscript}[fmt](path)


def read_export_info(path) -> tuple[ModelSpec, dict]:
    """The :class:`ModelSpec` and ``model.json`` of an exported file: the copy next to it, else (``.pt2`` and the
    kit's ONNX) the one inside it.

    Raises:
        ExportError: there is no ``model.json`` next to the file nor in it, or it is damaged.
    """
    model_json = Path(path).parent / MODEL_JSON
    try:
        if model_json.is_file():
            info = json.loads(model_json.read_text())
        elif format_of(path) == "pt2":
            info = read_pt2_info(path)
        elif format_of(path) == "onnx" and Path(path).is_file():
            import onnx

            metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            if ONNX_INFO_KEY not in metadata:
                raise ExportError(f"'{model_json}' is missing; this ONNX file needs the {MODEL_JSON} of its model "
                                  "folder next to it (copy it there, or export again)")
            info = json.loads(metadata[ONNX_INFO_KEY])
        else:
            raise ExportError(f"'{model_json}' is missing; an exported file needs the {MODEL_JSON} of its model "
                              f"folder next to it (copy it there, or export again)")
        return ModelSpec.from_dict(info["model"]), info
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ExportError(f"the {MODEL_JSON} of '{path}' is damaged ({type(exc).__name__}: {exc}); copy it again "
                          "from the model folder") from exc


def load_exported_predictor(path, device="cpu", score_threshold: float | None = None) -> Predictor:
    """A :class:`Predictor` around an exported file (spec from its ``model.json``), running it as it is
    (``fast=False``, as the parity gate does)."""
    spec, info = read_export_info(path)
    threshold = info.get("score_threshold", DEFAULT_SCORE_THRESHOLD) if score_threshold is None else score_threshold
    return Predictor(load_exported(path), spec, device, threshold, info, InferenceOptions(fast=False))
