"""Exporting a model folder (``.pt2`` by torch.export, or ONNX), checked against the eager model before it is kept.

    record = export_pt2("outputs/demo/model")                 # -> outputs/demo/model/exported/model.pt2
    predictor = load_exported_predictor(record["path"])        # a Predictor like any other
    Predictor.from_dir("outputs/demo/model/exported")          # the exported folder is a model folder too

The parts of the torchvision Mask R-CNN with weights (backbone and FPN, RPN head, box head and
predictor, mask head and predictor) are exported as ``torch.export`` programs with dynamic sizes
(:mod:`maskrcnn_finetune.modeling.programs`); the data-dependent rest (the resize, anchors,
proposal selection and NMS, RoIAlign, box decoding, mask pasting) stays torchvision's eager Python,
rebuilt from settings stored with the programs (:mod:`maskrcnn_finetune.modeling.parts`). So the
export resizes and pastes exactly as eager does. The export loads the file back and runs it next to
the plain fp32 eager model on a few check images (:mod:`maskrcnn_finetune.parity`: the same
instances, mask IoU >= 0.95, scores within 0.05). Only an export that passes is kept: ``model.pt2``
with ``export_pt2.json`` (the parity report, versions, latency) and a copy of ``model.json`` next to
it. One that fails raises :class:`ExportParityError` and leaves no file behind.

:func:`export_onnx` does the same for ONNX Runtime: the same programs through torch's ONNX exporter
(``model.onnx`` + ``export_onnx.json``; needs ``pip install onnx onnxscript onnxruntime``).

:func:`export_torchscript` writes TorchScript, which torch deprecates (``torch.jit``): only when asked,
with a warning. TorchScript files written by earlier versions still load (:func:`load_torchscript`,
which logs how to re-export), and so do their single-graph ONNX files.

Export is for the torchvision engine; detectron2 models have their own export tooling
(``detectron2.export``).

The package by job: :mod:`.formats` (file names and defaults), :mod:`.runtimes` (the exported models
behind the eager interface), :mod:`.checking` (check images and the parity gate), :mod:`.writing`
(the programs, ONNX, TorchScript, the record).
"""

from maskrcnn_finetune.errors import ExportError, ExportParityError
from maskrcnn_finetune.export.checking import check_export, check_images, compare_with_eager
from maskrcnn_finetune.export.formats import (CHECK_IMAGES, DEFAULT_FORMAT, EXPORT_DIR, EXPORT_FORMAT, EXPORT_JSON,
                                              FORMATS, LATENCY_RUNS, ONNX_FILE, ONNX_JSON, ONNX_OPSET, ONNX_OUTPUTS,
                                              PT2_FILE, PT2_JSON, TORCHSCRIPT_DEPRECATED, TORCHSCRIPT_FILE, format_of)
from maskrcnn_finetune.export.runtimes import (OnnxMaskRCNN, OnnxPart, ScriptedMaskRCNN, load_exported,
                                               load_exported_predictor, load_onnx, load_pt2, load_torchscript,
                                               read_export_info)
from maskrcnn_finetune.export.writing import (EagerResizeTransform, export_onnx, export_pt2, export_torchscript,
                                              script_model)

__all__ = [
    "CHECK_IMAGES", "DEFAULT_FORMAT", "EXPORT_DIR", "EXPORT_FORMAT", "EXPORT_JSON", "FORMATS", "LATENCY_RUNS",
    "ONNX_FILE", "ONNX_JSON", "ONNX_OPSET", "ONNX_OUTPUTS", "PT2_FILE", "PT2_JSON", "TORCHSCRIPT_DEPRECATED",
    "TORCHSCRIPT_FILE", "EagerResizeTransform", "ExportError", "ExportParityError", "OnnxMaskRCNN", "OnnxPart",
    "ScriptedMaskRCNN", "check_export", "check_images", "compare_with_eager", "export_onnx", "export_pt2",
    "export_torchscript", "format_of", "load_exported", "load_exported_predictor", "load_onnx", "load_pt2",
    "load_torchscript", "read_export_info", "script_model",
]
