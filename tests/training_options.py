"""Training options shared by the tests: a model small and fast enough for unit tests."""

from maskrcnn_finetune.config import PRESETS

# the tiny preset (the notebooks' smoke mode), two iterations long, on the CPU, without its backbone
# and detection count
TINY_MODEL = ({k: v for k, v in PRESETS["tiny"].items() if k not in ("backbone", "detections_per_image")}
              | {"max_iter": 2, "device": "cpu"})


def train_tiny(train_json, out_dir, backbone: str = "mobilenetv2_fpnlite", **overrides):
    """Trains a TINY_MODEL (``overrides`` replace its options) into ``out_dir``; returns the folder."""
    from maskrcnn_finetune.config import resolve_config
    from maskrcnn_finetune.engines import train

    train(resolve_config(None, train_json=str(train_json), output_dir=str(out_dir), backbone=backbone,
                         **{**TINY_MODEL, **overrides}))
    return out_dir
