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

The package by job: :mod:`.formats` (file names and defaults), :mod:`.runtimes` (the exported models
behind the eager interface), :mod:`.checking` (check images and the parity gate), :mod:`.writing`
(scripting, ONNX, the record).
"""

from maskrcnn_finetune.errors import ExportError, ExportParityError
from maskrcnn_finetune.export.checking import check_export, check_images, compare_with_eager
from maskrcnn_finetune.export.formats import (CHECK_IMAGES, EXPORT_DIR, EXPORT_FORMAT, EXPORT_JSON, FORMATS, LATENCY_RUNS,
                                              ONNX_FILE, ONNX_JSON, ONNX_OPSET, ONNX_OUTPUTS, TORCHSCRIPT_FILE)
from maskrcnn_finetune.export.runtimes import (OnnxMaskRCNN, ScriptedMaskRCNN, load_exported, load_exported_predictor,
                                               load_onnx, load_torchscript, read_export_info)
from maskrcnn_finetune.export.writing import EagerResizeTransform, export_onnx, export_torchscript, script_model

__all__ = [
    "CHECK_IMAGES", "EXPORT_DIR", "EXPORT_FORMAT", "EXPORT_JSON", "FORMATS", "LATENCY_RUNS", "ONNX_FILE", "ONNX_JSON",
    "ONNX_OPSET", "ONNX_OUTPUTS", "TORCHSCRIPT_FILE", "EagerResizeTransform", "ExportError", "ExportParityError",
    "OnnxMaskRCNN", "ScriptedMaskRCNN", "check_export", "check_images", "compare_with_eager", "export_onnx",
    "export_torchscript", "load_exported", "load_exported_predictor", "load_onnx", "load_torchscript",
    "read_export_info", "script_model",
]
