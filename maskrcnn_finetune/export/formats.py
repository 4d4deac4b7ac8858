"""What an export is made of: file names, the record format, the check's defaults."""

from maskrcnn_finetune.model_format import PT2_FILE
from maskrcnn_finetune.parity import CHECK_IMAGES, CHECK_VAL_IMAGES  # the parity gate's, shared with the runtime choice

EXPORT_DIR = "exported"
PT2_JSON = "export_pt2.json"
TORCHSCRIPT_FILE = "model.torchscript.pt"
EXPORT_JSON = "export.json"
"""The record of a TorchScript export (the first format, hence the plain name)."""
EXPORT_FORMAT = "maskrcnn-finetune/export"
ONNX_FILE = "model.onnx"
ONNX_JSON = "export_onnx.json"
ONNX_OPSET = 18
ONNX_PARTS_KEY, ONNX_INFO_KEY = "maskrcnn_finetune.parts", "maskrcnn_finetune.model_json"
"""ONNX metadata of the kit's ONNX files: where each part's graph is (its inputs, outputs and their nesting) with
the Python part's settings, and the model folder's ``model.json``."""
ONNX_PARTS_FORMAT = "maskrcnn-finetune/onnx-parts"
ONNX_OUTPUTS = ("boxes", "labels", "scores", "masks")
ONNX_MASKS_KEY, ONNX_MASKS_UNPASTED = "maskrcnn_finetune.masks", "mask_head"
"""Files written by earlier versions (one traced graph of the whole model): its outputs, and the metadata that
says its masks are the mask head's (N, 1, 28, 28) probabilities, pasted by the runtime."""
FORMATS = {"pt2": (PT2_FILE, PT2_JSON, "torch.export (.pt2)"), "onnx": (ONNX_FILE, ONNX_JSON, "ONNX"),
           "torchscript": (TORCHSCRIPT_FILE, EXPORT_JSON, "TorchScript")}
"""Per format: the file, the json written next to it, and its name in messages."""
DEFAULT_FORMAT = "pt2"
TORCHSCRIPT_DEPRECATED = ("TorchScript is deprecated by torch (torch.jit: switch to torch.export); re-export the model "
                          "folder with `python scripts/export.py --model-dir MODEL_DIR`, which writes model.pt2 "
                          "(torch.export), or --format onnx")

LATENCY_RUNS = 5  # timed calls of each model for the record (the parity check covers every image)


def format_of(path) -> str:
    """The format of an exported file, told by its suffix (``.pt2``, ``.onnx``, else TorchScript)."""
    suffix = str(path).rsplit(".", 1)[-1].lower()
    return {"pt2": "pt2", "onnx": "onnx"}.get(suffix, "torchscript")


__all__ = ["CHECK_IMAGES", "CHECK_VAL_IMAGES", "DEFAULT_FORMAT", "EXPORT_DIR", "EXPORT_FORMAT", "EXPORT_JSON",
           "FORMATS", "LATENCY_RUNS", "ONNX_FILE", "ONNX_INFO_KEY", "ONNX_JSON", "ONNX_MASKS_KEY", "ONNX_MASKS_UNPASTED",
           "ONNX_OPSET", "ONNX_OUTPUTS", "ONNX_PARTS_FORMAT", "ONNX_PARTS_KEY", "PT2_FILE", "PT2_JSON",
           "TORCHSCRIPT_DEPRECATED", "TORCHSCRIPT_FILE", "format_of"]
