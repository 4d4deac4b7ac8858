"""Writing an export: scripting with the eager-rounding resize, ONNX, the check on a temporary file, the record."""

from __future__ import annotations

import copy
import logging
import shutil
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor
import torchvision
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from maskrcnn_finetune import __version__
from maskrcnn_finetune.errors import ConfigError, ExportError, ExportParityError, first_line
from maskrcnn_finetune.export.checking import check_images, _check, _require_torchvision_engine, _threshold
from maskrcnn_finetune.export.formats import (EXPORT_DIR, EXPORT_FORMAT, FORMATS, ONNX_MASKS_KEY,
                                              ONNX_MASKS_UNPASTED, ONNX_OPSET, ONNX_OUTPUTS)
from maskrcnn_finetune.export.runtimes import _onnx_versions, _require_onnx
from maskrcnn_finetune.files import atomic_path, write_json_atomic
from maskrcnn_finetune.model_dir import MODEL_JSON
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
    """torchvision's detection transform, whose resize computes its scale in float64 when scripted or traced too.

    Inference only (no targets); the same scale, output size and bilinear resize as eager
    torchvision's ``_resize_image_and_masks``. Scripted and traced (ONNX), torchvision computes the
    scale and the output size in float32, so some images come out a row or column smaller than in
    eager (a 307x361 image at 192 px: 191 rows) and their masks and scores move.

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
        if torchvision._is_tracing():
            return self._traced_resize(image), target
        height, width = image.shape[-2], image.shape[-1]
        scale = min(float(self.min_size[-1]) / float(min(height, width)), float(self.max_size) / float(max(height, width)))
        image = torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="bilinear",
                                                recompute_scale_factor=True, align_corners=False)[0]
        return image, target

    @torch.jit.unused
    def _traced_resize(self, image):  # no annotations: TorchScript reads those of unused methods too
        """The eager output size, computed from the traced (dynamic) image size in float64."""
        shape = torch._shape_as_tensor(image)[-2:].to(torch.float64)  # height, width: dynamic in the graph
        # one-element float64 tensors: the exporter makes Python floats and 0-d tensors float32 scalars
        sides = torch.cat([shape.min(0, keepdim=True)[0], shape.max(0, keepdim=True)[0]])
        limits = torch.tensor([float(self.min_size[-1]), float(self.max_size)], dtype=torch.float64)
        scale = (limits / sides).min(0, keepdim=True)[0]
        size = torch.floor(shape * scale).to(torch.int64)
        return torch.nn.functional.interpolate(image[None], size=(size[0], size[1]), mode="bilinear",
                                               align_corners=False)[0]


class UnpastedMasksTransform(EagerResizeTransform):
    """The eager-rounding transform whose output keeps the mask head's probabilities (N, 1, 28, 28) unpasted.

    Used for the ONNX graph: the runtime adapter pastes them at image size with torchvision's eager
    ``paste_masks_in_image`` (:class:`~maskrcnn_finetune.export.runtimes.OnnxMaskRCNN`), which is
    exact where the traced paste rounds box corners differently, and faster.
    """

    def postprocess(self, result: list[dict[str, Tensor]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        for pred, size, original in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], size, original)
        return result


def script_model(model: torch.nn.Module, eager_resize: bool = True) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of a torchvision Mask R-CNN in eval mode (a copy; ``model`` is untouched).

    Args:
        eager_resize: resize images as eager torchvision does (:class:`EagerResizeTransform`);
            ``False`` scripts torchvision's transform as it is, which rounds some sizes differently.
    """
    model = copy.deepcopy(model).eval()
    if eager_resize and type(model.transform) is GeneralizedRCNNTransform:
        model.transform = EagerResizeTransform.like(model.transform)  # a submodule of the copy, replaced
    return torch.jit.script(model)


def export_torchscript(model_dir, output=None, images=None, threshold: float | None = None,
                       overwrite: bool = False, eager_resize: bool = True) -> dict:
    """Exports a torchvision model folder to TorchScript and keeps it only if it predicts like eager.

    Args:
        model_dir: a model folder written by training (torchvision engine).
        output: the file to write, or a folder for ``model.torchscript.pt`` in it
            (default ``<model_dir>/exported/model.torchscript.pt``).
        images: check images: paths, folders, RGB arrays; ``None`` for the model's own val images
            (the first 12 of the val json it was trained with, when that is here), else a few
            synthetic images at the model's size (deterministic).
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
    arrays, names = check_images(images, eager.spec, eager.info)  # bad ones fail before the slow part
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
        model = copy.deepcopy(model)
        if type(model.transform) is GeneralizedRCNNTransform:
            model.transform = UnpastedMasksTransform.like(model.transform)  # a submodule of the copy, replaced
        instances = {0: "instances"}
        # the tracer warns about every Python-level branch of torchvision's detection code; whether
        # the trace generalises to other images is what the parity check right after this decides
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, ([image],), str(tmp), opset_version=ONNX_OPSET, dynamo=False,
                              input_names=["image"], output_names=list(ONNX_OUTPUTS),
                              dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": instances,
                                            "labels": instances, "scores": instances, "masks": instances})
        _mark_unpasted_masks(tmp)
    except Exception as exc:  # scripting and tracing raise many kinds of errors for unsupported Python code
        raise ExportError(f"the {eager.spec.backbone} model of '{model_dir}' cannot be exported to {FORMATS[fmt][2]} "
                          f"({first_line(exc)}); export supports the torchvision backbones (resnet*, mobilenetv2*)") from exc


def _mark_unpasted_masks(path: Path) -> None:
    """Notes in the ONNX file's metadata that its masks are the mask head's, for the runtime to paste."""
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {ONNX_MASKS_KEY: ONNX_MASKS_UNPASTED})
    onnx.save(model, str(path))
