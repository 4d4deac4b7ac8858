"""What an export is made of: file names, the record format, the check's defaults."""

from maskrcnn_finetune.parity import CHECK_IMAGES, CHECK_VAL_IMAGES  # the parity gate's, shared with the runtime choice

EXPORT_DIR = "exported"
TORCHSCRIPT_FILE = "model.torchscript.pt"
EXPORT_JSON = "export.json"
EXPORT_FORMAT = "maskrcnn-finetune/export"
ONNX_FILE = "model.onnx"
ONNX_JSON = "export_onnx.json"
ONNX_OPSET = 17
ONNX_OUTPUTS = ("boxes", "labels", "scores", "masks")
ONNX_MASKS_KEY, ONNX_MASKS_UNPASTED = "maskrcnn_finetune.masks", "mask_head"
"""ONNX metadata: the graph's masks are the mask head's (N, 1, 28, 28) probabilities, pasted by the runtime."""
FORMATS = {"torchscript": (TORCHSCRIPT_FILE, EXPORT_JSON, "TorchScript"), "onnx": (ONNX_FILE, ONNX_JSON, "ONNX")}
"""Per format: the file, the json written next to it, and its name in messages."""

LATENCY_RUNS = 5  # timed calls of each model for export.json (the parity check covers every image)

__all__ = ["CHECK_IMAGES", "CHECK_VAL_IMAGES", "EXPORT_DIR", "EXPORT_FORMAT", "EXPORT_JSON", "FORMATS", "LATENCY_RUNS",
           "ONNX_FILE", "ONNX_JSON", "ONNX_MASKS_KEY", "ONNX_MASKS_UNPASTED", "ONNX_OPSET", "ONNX_OUTPUTS",
           "TORCHSCRIPT_FILE"]
