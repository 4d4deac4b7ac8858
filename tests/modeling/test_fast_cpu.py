"""make_fast: a module holding torchvision's parts, the same weights, the threshold an argument of each call."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from maskrcnn_finetune.data.coco import load_coco
from maskrcnn_finetune.data.images import load_rgb
from maskrcnn_finetune.model_dir import load_model_dir
from maskrcnn_finetune.modeling.fast_cpu import FastMaskRCNN, make_fast, supports_fast

from detections import assert_same_detections


@pytest.fixture(scope="module")
def plain_and_images(tiny_model_dir, tiny_coco):
    model, _, _ = load_model_dir(tiny_model_dir)
    coco = load_coco(tiny_coco["train"])
    images = [torch.from_numpy(load_rgb(coco.image_path(i))).permute(2, 0, 1).float().div(255) for i in coco.images[:4]]
    return model.eval(), images


def test_the_fast_model_keeps_every_weight_and_key(plain_and_images):
    plain, _ = plain_and_images
    fast = make_fast(copy.deepcopy(plain))
    assert isinstance(fast, FastMaskRCNN) and supports_fast(plain) and not supports_fast(fast)
    theirs, ours = plain.state_dict(), fast.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@torch.inference_mode()
def test_each_call_gets_its_own_threshold(plain_and_images):
    plain, images = plain_and_images
    fast = make_fast(copy.deepcopy(plain))
    everything = fast(images, score_floor=0.0)
    scores = torch.cat([o["scores"] for o in everything])
    assert len(scores) > 0
    cut = float(scores.median())
    high = fast(images, score_floor=cut)
    again = fast(images)  # no floor: nothing of the call before stays behind
    for full, part, repeat in zip(everything, high, again):  # one path, the floor after NMS: rows in one order
        keep = full["scores"] >= cut
        assert torch.equal(part["scores"], full["scores"][keep])
        assert torch.equal(part["masks"], full["masks"][keep])
        assert torch.equal(repeat["scores"], full["scores"])
    # the same answer as torchvision's own model (channels-last rounds fp32 a little differently, so
    # tied scores may change places: compared as sets)
    reference = plain(images)
    for k, (ref, ours) in enumerate(zip(reference, everything)):
        assert_same_detections(ours, ref, score_atol=1e-4, mask_iou=0.99, what=f"image {k}")


def test_a_model_of_other_parts_is_refused(plain_and_images):
    plain, _ = plain_and_images
    other = copy.deepcopy(plain)
    other.roi_heads = torch.nn.Identity()
    assert not supports_fast(other)
    with pytest.raises(TypeError, match="needs a torchvision Mask R-CNN"):
        make_fast(other)


@torch.inference_mode()
def test_the_model_it_is_built_from_stays_torchvisions(plain_and_images):
    """Composition, not patching: the model keeps its classes and parts, and answers as before."""
    plain, images = plain_and_images
    model = copy.deepcopy(plain)
    parts = {name: (type(part), part) for name, part in model.named_children()}
    poolers = (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool)
    fast = make_fast(model, bf16=False)
    assert type(model) is type(plain) and {name: (type(part), part) for name, part in model.named_children()} == parts
    assert (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool) == poolers  # the fast path's are its own
    assert fast.backbone is model.backbone and fast.roi_heads is model.roi_heads and fast.transform is model.transform
    want, got = plain(images[:2]), model(images[:2])
    for ref, ours in zip(want, got):
        assert ours["masks"].dtype == torch.float32  # torchvision's own pasting, not the fast path's booleans
        # the same detections (as a set: channels-last rounds fp32 a little differently, ties may reorder)
        assert len(ours["scores"]) == len(ref["scores"]) > 0
        np.testing.assert_allclose(np.sort(ours["scores"].numpy()), np.sort(ref["scores"].numpy()), atol=1e-4)
    fast.train()
    with pytest.raises(RuntimeError, match="inference only"):
        fast(images[:1])
