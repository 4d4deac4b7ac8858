"""Writing an export: the parts as ``torch.export`` programs (``.pt2``, ONNX), TorchScript when asked, the check
on a temporary file, the record."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch
import torchvision
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from maskrcnn_finetune import __version__
from maskrcnn_finetune.errors import ConfigError, ExportError, ExportParityError, first_line
from maskrcnn_finetune.export.checking import _check, _require_torchvision_engine, _threshold, check_images
from maskrcnn_finetune.export.formats import (EXPORT_DIR, EXPORT_FORMAT, FORMATS, ONNX_INFO_KEY, ONNX_OPSET,
                                              ONNX_PARTS_FORMAT, ONNX_PARTS_KEY, TORCHSCRIPT_DEPRECATED)
from maskrcnn_finetune.export.runtimes import _onnx_versions, _require_onnx, _torchscript_allowed
from maskrcnn_finetune.files import atomic_path, write_json_atomic
from maskrcnn_finetune.model_dir import MODEL_JSON
from maskrcnn_finetune.modeling.parts import PARTS, example_inputs, python_settings, structure_of
from maskrcnn_finetune.modeling.programs import export_parts, symbolic_sizes, write_pt2
from maskrcnn_finetune.predictor import Predictor

logger = logging.getLogger(__name__)


def _resolve_output(model_dir: Path, output, file_name: str) -> Path:
    """The file to write: ``output`` as a file (the format's suffix), or ``output/file_name`` for a folder."""
    if output is None:
        return model_dir / EXPORT_DIR / file_name
    output = Path(output)
    if output.is_dir() or output.suffix != Path(file_name).suffix:
        return output / file_name
    return output


class EagerResizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform, whose resize computes its scale in float64 when scripted too.

    Inference only (no targets); the same scale, output size and bilinear resize as eager
    torchvision's ``_resize_image_and_masks``. Scripted, torchvision computes the scale and the
    output size in float32, so some images come out a row or column smaller than in eager (a
    307x361 image at 192 px: 191 rows) and their masks and scores move. (The ``.pt2`` and ONNX
    exports keep the resize in eager Python, so they resize as eager does by construction.)

    Built from a model's own transform by :meth:`like`, and given to a copy of the model in its place.
    """

    @classmethod
    def like(cls, transform: GeneralizedRCNNTransform) -> "EagerResizeTransform":
        """A new transform of this class with ``transform``'s settings (sizes, normalisation, padding) and mode."""
        new = cls(transform.min_size, transform.max_size, transform.image_mean, transform.image_std,
                  size_divisible=transform.size_divisible, fixed_size=transform.fixed_size,
                  _skip_resize=transform._skip_resize)
        return new.train(transform.training)

    def resize(self, image: Tensor, target: Optional[dict[str, Tensor]] = None) -> tuple[Tensor, Optional[dict[str, Tensor]]]:
        height, width = image.shape[-2], image.shape[-1]
        scale = min(float(self.min_size[-1]) / float(min(height, width)), float(self.max_size) / float(max(height, width)))
        image = torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="bilinear",
                                                recompute_scale_factor=True, align_corners=False)[0]
        return image, target


def script_model(model: torch.nn.Module, eager_resize: bool = True) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of a torchvision Mask R-CNN in eval mode (a copy; ``model`` is untouched).

    TorchScript is deprecated by torch; the kit writes it only when asked (``--format torchscript``).

    Args:
        eager_resize: resize images as eager torchvision does (:class:`EagerResizeTransform`);
            ``False`` scripts torchvision's transform as it is, which rounds some sizes differently.
    """
    model = copy.deepcopy(model).eval()
    if eager_resize and type(model.transform) is GeneralizedRCNNTransform:
        model.transform = EagerResizeTransform.like(model.transform)  # a submodule of the copy, replaced
    with _torchscript_allowed():
        return torch.jit.script(model)


def export_pt2(model_dir, output=None, images=None, threshold: float | None = None, overwrite: bool = False) -> dict:
    """Exports a torchvision model folder to a ``.pt2`` file (torch.export), kept only if it predicts like eager.

    The parts of the model with weights (backbone and FPN, RPN head, box head and predictor, mask head
    and predictor) become ``torch.export`` programs with dynamic sizes; the data-dependent rest (the
    resize, anchors, proposal selection and NMS, RoIAlign, box decoding, mask pasting) stays
    torchvision's Python, rebuilt at loading from the settings stored in the file
    (:mod:`maskrcnn_finetune.modeling.programs`). The file holds ``model.json`` too: it runs alone, and
    a folder holding it is loaded and served like a model folder.

    Args:
        model_dir: a model folder written by training (torchvision engine).
        output: the file to write, or a folder for ``model.pt2`` in it
            (default ``<model_dir>/exported/model.pt2``).
        images: check images: paths, folders, RGB arrays; ``None`` for the model's own val images
            (the first 12 of the val json it was trained with, when that is here), else a few
            synthetic images at the model's size (deterministic).
        threshold: the score threshold the parity check is about (default: the model's).
        overwrite: replace an existing exported file.

    Returns:
        The record written to ``export_pt2.json`` next to the file, plus ``"path"`` (the file).

    Raises:
        ExportParityError: the reloaded model predicts differently; nothing is kept
            (an existing export replaced with ``overwrite`` stays as it was).
        ExportError / ConfigError / ModelDirError: a detectron2 folder, an existing file without
            ``overwrite``, unreadable images, a broken model folder.
    """
    return _export("pt2", model_dir, output, images, threshold, overwrite)


def export_onnx(model_dir, output=None, images=None, threshold: float | None = None, overwrite: bool = False) -> dict:
    """Exports a torchvision model folder to ONNX (ONNX Runtime), kept only if it predicts like eager.

    As :func:`export_pt2`, with ``model.onnx`` and ``export_onnx.json``: the same programs translated by
    torch's ONNX exporter (``torch.onnx.export`` of each program, opset :data:`ONNX_OPSET`), one graph
    per part in one file, with the Python part's settings and ``model.json`` in its metadata. ONNX
    Runtime runs each part's graph (:func:`~maskrcnn_finetune.export.runtimes.load_onnx`); the rest is
    the kit's Python, as for ``.pt2``. Needs ``pip install onnx onnxscript onnxruntime``.
    """
    return _export("onnx", model_dir, output, images, threshold, overwrite)


def export_torchscript(model_dir, output=None, images=None, threshold: float | None = None,
                       overwrite: bool = False, eager_resize: bool = True) -> dict:
    """As :func:`export_pt2`, to TorchScript (``model.torchscript.pt`` and ``export.json``): deprecated by torch,
    written only when asked, with a warning in the log.

    Args:
        eager_resize: see :func:`script_model`.
    """
    logger.warning("--format torchscript: %s", TORCHSCRIPT_DEPRECATED)
    return _export("torchscript", model_dir, output, images, threshold, overwrite, eager_resize)


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
    arrays, names = check_images(images, eager.spec, eager.info)  # bad ones fail before the slow part
    out_dir = path.parent
    created_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    # the check runs on a temporary file: a failed export never replaces a good one
    try:
        with atomic_path(path) as tmp:
            _save(fmt, eager, tmp, model_dir, eager_resize)
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
        **({"parts": list(PARTS)} if fmt != "torchscript" else {}),
        **result,
    }
    write_json_atomic(out_dir / record_name, record)
    source_json, copy_json = model_dir / MODEL_JSON, out_dir / MODEL_JSON
    if not (copy_json.exists() and copy_json.samefile(source_json)):
        shutil.copyfile(source_json, copy_json)
    logger.info("exported %s to %s", model_dir, path)
    return {**record, "path": str(path)}


def _save(fmt: str, eager: Predictor, tmp: Path, model_dir: Path, eager_resize: bool = True) -> None:
    """Writes the model of ``eager`` to ``tmp`` in ``fmt``."""
    model = eager.model.eval()
    try:
        if fmt == "torchscript":
            script_model(model, eager_resize).save(str(tmp))
            return
        settings = python_settings(model)
        programs = export_parts(model)
        if fmt == "pt2":
            write_pt2(tmp, programs, settings, eager.info)
        else:
            _write_onnx(tmp, programs, settings, eager.info, example_inputs(model))
    except Exception as exc:  # the exporters raise many kinds of errors for code they cannot follow
        raise ExportError(f"the {eager.spec.backbone} model of '{model_dir}' cannot be exported to {FORMATS[fmt][2]} "
                          f"({first_line(exc)}); export supports the torchvision backbones (resnet*, mobilenetv2*)") from exc


def _write_onnx(path: Path, programs: dict, settings: dict, info: dict, inputs: dict) -> None:
    """The programs translated to ONNX, one graph per part (its names prefixed by the part's) merged into one
    file, with :data:`ONNX_PARTS_KEY` saying where each part is and :data:`ONNX_INFO_KEY` holding ``model.json``."""
    import onnx

    merged, parts = None, {}
    for name in PARTS:
        with symbolic_sizes():  # the exporter decomposes the program again: sizes 0 and 1 stay dynamic there too
            graph = torch.onnx.export(programs[name], opset_version=ONNX_OPSET, verbose=False).model_proto
        graph = onnx.compose.add_prefix(graph, prefix=name.replace(".", "_") + "/")
        with torch.no_grad():
            outputs = programs[name].module()(*inputs[name])
        parts[name] = {"inputs": [i.name for i in graph.graph.input], "outputs": [o.name for o in graph.graph.output],
                       "structure": structure_of(outputs)}
        merged = graph if merged is None else onnx.compose.merge_models(merged, graph, io_map=[])
    kit = {"format": ONNX_PARTS_FORMAT, "parts": parts, "settings": settings}
    onnx.helper.set_model_props(merged, {ONNX_PARTS_KEY: json.dumps(kit), ONNX_INFO_KEY: json.dumps(info)})
    onnx.save(merged, str(path))
