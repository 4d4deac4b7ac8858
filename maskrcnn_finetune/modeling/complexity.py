"""How big and how costly a model is: parameters and multiply-adds (torch's own FLOP counter)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from maskrcnn_finetune.modeling.maskrcnn import ModelSpec, build_model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def count_gmacs(model: torch.nn.Module, height: int = 800, width: int = 1066) -> float:
    """Giga multiply-adds of one inference on a ``height x width`` image (after the model's resize).

    The model is run with its score threshold at 0 so that it keeps ``detections_per_image``
    instances, which makes the mask head's share the worst case and the count repeatable.
    RoIAlign and NMS are not matrix work and are not counted.
    """
    model.eval()
    heads = model.roi_heads
    saved = heads.score_thresh
    heads.score_thresh = 0.0
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            model([torch.rand(3, height, width)])
    finally:
        heads.score_thresh = saved
    return counter.get_total_flops() / 2 / 1e9


def describe_backbone(name: str, num_classes: int = 1, short_side: int = 800, **spec_options) -> dict:
    """Parameters (millions) and GMACs at ``short_side`` px for a backbone with its default heads."""
    spec = ModelSpec(name, [f"class{i}" for i in range(num_classes)], min_size=short_side,
                     max_size=int(short_side * 1333 / 800), **spec_options)
    model = build_model(spec, pretrained="none")
    width = int(round(short_side * 4 / 3))
    return {"backbone": name, "params_M": count_parameters(model) / 1e6,
            "gmacs": count_gmacs(model, short_side, width), "input": f"{short_side}x{width}"}
