"""What an export is made of: file names, the record format, the check's defaults (a leaf module)."""

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
CHECK_IMAGES = 3
"""How many synthetic images the parity check uses when no images are given and the model's val set is not here."""
CHECK_VAL_IMAGES = 12
"""How many of the model's own val images the parity check uses by default (the first ones of its val json)."""

LATENCY_RUNS = 5  # timed calls of each model for export.json (the parity check covers every image)
