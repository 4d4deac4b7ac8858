"""How big and how costly a model is: parameters and multiply-adds (torch's own FLOP counter)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from maskrcnn_finetune.modeling.maskrcnn import ModelSpec, build_model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fixed_boxes(n: int, height: int, width: int) -> torch.Tensor:
    """``n`` fixed boxes spread over a ``height x width`` image (xyxy)."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
    wh = (0.05 + torch.rand(n, 2, generator=g) * 0.15) * torch.tensor([width, height])
    return torch.cat([xy, xy + wh], dim=1)


@torch.inference_mode()
def count_gmacs(model: torch.nn.Module, height: int = 800, width: int = 1066) -> float:
    """Giga multiply-adds of one inference on a ``height x width`` image (after the model's resize).

    Counts the backbone and FPN, the RPN head on every level, the box head on the RPN's full
    test-time proposal count and the mask head on ``detections_per_image`` boxes: the worst
    case, and a count that does not depend on the weights (an untrained network's RPN may keep
    no proposals at all). RoIAlign, box decoding and NMS are not matrix work and are not counted.
    """
    if hasattr(model, "count_gmacs"):  # a detectron2 model behind the Predictor's interface counts itself
        return model.count_gmacs(height, width)
    model.eval()
    images, _ = model.transform([torch.rand(3, height, width)])
    sizes = images.image_sizes
    heads = model.roi_heads
    proposals = fixed_boxes(model.rpn._post_nms_top_n["testing"], *sizes[0])
    detections = fixed_boxes(heads.detections_per_img, *sizes[0])
    counter = FlopCounterMode(display=False)
    with counter:
        features = model.backbone(images.tensors)
        model.rpn.head(list(features.values()))
        heads.box_predictor(heads.box_head(heads.box_roi_pool(features, [proposals], sizes)))
        if heads.has_mask():
            heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, [detections], sizes)))
    return counter.get_total_flops() / 2 / 1e9


def describe_backbone(name: str, num_classes: int = 1, short_side: int = 800, **spec_options) -> dict:
    """Parameters (millions) and GMACs at ``short_side`` px for a backbone with its default heads."""
    spec = ModelSpec(name, [f"class{i}" for i in range(num_classes)], min_size=short_side,
                     max_size=int(short_side * 1333 / 800), **spec_options)
    model = build_model(spec, pretrained="none")
    width = int(round(short_side * 4 / 3))
    return {"backbone": name, "params_M": count_parameters(model) / 1e6,
            "gmacs": count_gmacs(model, short_side, width), "input": f"{short_side}x{width}"}
