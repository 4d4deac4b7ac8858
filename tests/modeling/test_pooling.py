"""The training RoIAlign: torchvision's values forward and its gradients backward, to float rounding."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from maskrcnn_finetune.modeling import ModelSpec, build_model
from maskrcnn_finetune.modeling.pooling import ParallelRoIAlign, roi_align_parallel, use_parallel_roi_align


def _rois(n, batch, extent, seed):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * extent * 1.2 - extent * 0.1  # some start outside the map
    wh = torch.rand(n, 2, generator=gen) * extent * 0.7
    wh[:4] = 0.3  # boxes smaller than one feature pixel
    index = torch.randint(0, batch, (n, 1), generator=gen).float()
    return torch.cat([index, xy, xy + wh], 1)


@pytest.mark.parametrize("batch,channels,height,width,n,size,scale", [
    (2, 8, 13, 17, 60, 7, 0.25),
    (3, 16, 9, 11, 40, 14, 0.125),
    (1, 4, 5, 5, 10, 7, 1.0),
])
def test_values_and_gradients_are_torchvisions(batch, channels, height, width, n, size, scale):
    features = torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(1))
    rois = _rois(n, batch, height / scale, seed=2)
    grad_out = torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(3))
    grads = []
    for fn in (lambda f: roi_align(f, rois, (size, size), scale, 2, aligned=False),
               lambda f: roi_align_parallel(f, rois, (size, size), scale, 2)):
        leaf = features.clone().requires_grad_()
        out = fn(leaf)
        (out * grad_out).sum().backward()
        grads.append((out.detach(), leaf.grad))
    (ref_out, ref_grad), (out, grad) = grads
    assert ref_out.abs().sum() > 0 and ref_grad.abs().sum() > 0
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_multiscale_pooler_matches_torchvisions_in_training_and_is_it_in_eval():
    gen = torch.Generator().manual_seed(0)
    maps = OrderedDict((str(k), torch.randn(2, 8, 64 // 2**k, 48 // 2**k, generator=gen)) for k in range(4))
    boxes = [_rois(30, 1, 190, seed=s)[:, 1:].clamp(0, 190) + torch.tensor([0, 0, 1, 1]) for s in (4, 5)]
    shapes = [(256, 192), (256, 192)]
    reference = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    parallel = ParallelRoIAlign.like(reference).train()
    results = []
    for pooler in (reference, parallel):
        leaves = OrderedDict((k, v.clone().requires_grad_()) for k, v in maps.items())
        out = pooler(leaves, boxes, shapes)
        out.square().sum().backward()
        results.append((out.detach(), [leaves[k].grad for k in leaves]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    assert sum(int((g.abs() > 0).sum()) for g in results[0][1][:2]) > 0  # the boxes reach more than one level
    for ref, got in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(parallel.eval()(maps, boxes, shapes), reference(maps, boxes, shapes))


def test_training_under_bf16_autocast_runs_the_pooler_in_fp32():
    model = use_parallel_roi_align(build_model(ModelSpec("mobilenetv2_fpnlite", ["a"], min_size=64, max_size=96,
                                                         box_head_dim=32, mask_head_layers=[16])))
    model = model.to(memory_format=torch.channels_last).train()
    image = torch.rand(3, 80, 96, generator=torch.Generator().manual_seed(0))
    target = {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 80, 96, dtype=torch.uint8)}
    target["masks"][0, 12:60, 10:50] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([image], [target])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert sum(float(p.grad.abs().sum()) for p in model.backbone.parameters() if p.grad is not None) > 0


def test_swapping_the_poolers_keeps_the_weights():
    model = build_model(ModelSpec("mobilenetv2_fpnlite", ["a"], box_head_dim=32, mask_head_layers=[16]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    use_parallel_roi_align(model)
    assert isinstance(model.roi_heads.box_roi_pool, ParallelRoIAlign)
    assert isinstance(model.roi_heads.mask_roi_pool, ParallelRoIAlign)
    assert model.roi_heads.mask_roi_pool.output_size == (14, 14)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
