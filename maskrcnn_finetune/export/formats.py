"""What an export is made of: file names, the record format, the check's defaults (a leaf module)."""

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
