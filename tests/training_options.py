"""Training options shared by the tests: a model small and fast enough for unit tests."""

TINY_MODEL = dict(
    image_size=64, max_size=96, train_sizes=[], batch_size=2, max_iter=2, eval_period=100, log_period=1,
    box_batch_size_per_image=32, box_head_dim=64, mask_head_layers=[32], rpn_pre_nms_top_n_train=100,
    rpn_post_nms_top_n_train=50, pretrained="none", device="cpu", warmup_iters=1, lr=0.01,
)


def train_tiny(train_json, out_dir, backbone: str = "mobilenetv2_fpnlite", **overrides):
    """Trains a TINY_MODEL (``overrides`` replace its options) into ``out_dir``; returns the folder."""
    from maskrcnn_finetune.config import resolve_config
    from maskrcnn_finetune.engines import train

    train(resolve_config(None, train_json=str(train_json), output_dir=str(out_dir), backbone=backbone,
                         **{**TINY_MODEL, **overrides}))
    return out_dir
