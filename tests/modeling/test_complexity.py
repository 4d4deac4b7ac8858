"""Multiply-add counts: the worst case, whatever the weights, and ordered as the networks are."""

from __future__ import annotations

import torch

from maskrcnn_finetune.modeling import ModelSpec, build_model
from maskrcnn_finetune.modeling.complexity import count_gmacs, describe_backbone


def test_count_covers_the_heads_and_does_not_depend_on_the_weights():
    spec = ModelSpec("mobilenetv2_fpnlite", ["a", "b"], min_size=128, max_size=192, box_head_dim=64,
                     mask_head_layers=[32], detections_per_image=10)
    torch.manual_seed(0)
    model = build_model(spec)
    first = count_gmacs(model, 128, 170)
    with torch.no_grad():  # weights that make the RPN keep nothing must not shrink the count
        for p in model.parameters():
            p.mul_(1000.0)
    assert count_gmacs(model, 128, 170) == first
    # each detection costs the mask head: a 3x3 conv 128->32 at 14x14 (the FPN-lite has 128
    # channels), a 2x2 stride-2 deconv 32->32 and the 1x1 logits for 3 classes at 28x28
    fewer = build_model(ModelSpec(**{**spec.to_dict(), "detections_per_image": 1}))
    mask_per_roi = (14 * 14 * 32 * 128 * 9 + 14 * 14 * 32 * 32 * 4 + 28 * 28 * 3 * 32) / 1e9
    assert abs((first - count_gmacs(fewer, 128, 170)) - 9 * mask_per_roi) < 1e-6


def test_deeper_backbones_cost_more():
    small = describe_backbone("resnet18_fpn", 1, short_side=256)
    r50 = describe_backbone("resnet50_fpn", 1, short_side=256)
    r101 = describe_backbone("resnet101_fpn", 1, short_side=256)
    assert small["gmacs"] < r50["gmacs"] < r101["gmacs"]
    assert 40 < r50["params_M"] < 48 and 60 < r101["params_M"] < 66
