"""Training options shared by the tests: a model small and fast enough for unit tests."""

from maskrcnn_finetune.colab import SMOKE_TRAINING

# the notebooks' smoke-mode training, two iterations long, without its backbone and detection count
TINY_MODEL = {k: v for k, v in SMOKE_TRAINING.items() if k not in ("backbone", "detections_per_image")} | {"max_iter": 2}


def train_tiny(train_json, out_dir, backbone: str = "mobilenetv2_fpnlite", **overrides):
    """Trains a TINY_MODEL (``overrides`` replace its options) into ``out_dir``; returns the folder."""
    from maskrcnn_finetune.config import resolve_config
    from maskrcnn_finetune.engines import train

    train(resolve_config(None, train_json=str(train_json), output_dir=str(out_dir), backbone=backbone,
                         **{**TINY_MODEL, **overrides}))
    return out_dir
