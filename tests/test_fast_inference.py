"""The Predictor's fast CPU path: what it changes, what it must not change, and its off switch."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn_finetune.model_dir import load_model_dir
from maskrcnn_finetune.parity import compare_runs
from maskrcnn_finetune.predictor import BF16_MIN_INPUT, Predictor, native_bf16


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model("resnet18_fpn", detections_per_image=30)


@pytest.fixture(scope="module")
def images(tiny_coco):
    data = json.loads(tiny_coco["val"].read_text())
    return [np.array(Image.open(tiny_coco["val"].parent / entry["file_name"]).convert("RGB")) for entry in data["images"][:3]]


def test_off_switch_is_the_plain_model(model_dir, images):
    predictor = Predictor.from_dir(model_dir, fast=False)
    assert predictor.mode == {"fast": False, "precision": "fp32", "channels_last": False, "runtime": "torch"}
    model, _, _ = load_model_dir(model_dir)
    with torch.inference_mode():
        raw = model([torch.from_numpy(images[0]).permute(2, 0, 1).float() / 255])[0]
    got = predictor(images[0], threshold=0.0)
    # the off switch is this very computation on the same input: bit for bit, row for row
    assert len(got) == len(raw["scores"]) > 0
    assert np.array_equal(got.scores, raw["scores"].numpy())
    assert np.array_equal(got.masks, (raw["masks"][:, 0] > 0.5).numpy())


def test_cpu_default_is_the_fast_path(model_dir):
    predictor = Predictor.from_dir(model_dir)
    assert predictor.fast and predictor.mode["channels_last"]
    assert predictor.describe_mode().startswith("fast path")
    # bf16 where this CPU has the units for it (this machine's AVX512-BF16 does), for models of 512 px and more
    assert predictor.spec.min_size < BF16_MIN_INPUT and not predictor.bf16
    model, spec, _ = load_model_dir(model_dir)
    large = Predictor(model, dataclasses.replace(spec, min_size=BF16_MIN_INPUT))
    assert large.bf16 == native_bf16() and large.mode["precision"] == ("bf16" if native_bf16() else "fp32")


def test_the_mode_gives_the_real_reason_for_fp32(model_dir):
    small = Predictor.from_dir(model_dir).describe_mode()
    if native_bf16():  # this machine: the 512 px rule, not the CPU, keeps a 64 px model in fp32
        assert small == (f"fast path: fp32 (64 px input: bf16 only from {BF16_MIN_INPUT} px, "
                         "below it saves little and moves small masks), channels-last")
    else:
        assert small == "fast path: fp32 (no bf16 units on this CPU), channels-last"
    assert Predictor.from_dir(model_dir, bf16=False).describe_mode() == "fast path: fp32 (bf16 turned off), channels-last"


def test_threshold_before_the_mask_head_changes_nothing_above_it(model_dir, images):
    fast_fp32 = Predictor.from_dir(model_dir, fast=True, bf16=False)
    rois = []
    fast_fp32.model.roi_heads.mask_head.register_forward_hook(lambda module, inputs, output: rois.append(len(inputs[0])))
    everything = fast_fp32(images[1], threshold=0.0)
    assert len(everything) >= 4 and rois[-1] == len(everything)
    cut = float(np.sort(everything.scores)[len(everything) // 2])  # an instance's own score: ">=" keeps it
    above = fast_fp32(images[1], threshold=cut)
    # the mask head ran only on the instances returned, and they are exactly the ones above the cut (one path,
    # the cut applied after NMS: the same rows in the same order)
    assert rois[-1] == len(above) == int((everything.scores >= cut).sum()) < len(everything)
    assert np.array_equal(above.scores, everything.scores[everything.scores >= cut])
    assert np.array_equal(above.boxes, everything.boxes[everything.scores >= cut])
    report = compare_runs([everything.above(cut)], [above], cut, min_mask_iou=0.99, score_tolerance=0.0)
    assert report.ok and report.matched == len(above), report.describe()


def test_channels_last_alone_gives_the_plain_answer(model_dir, images):
    plain = Predictor.from_dir(model_dir, fast=False)
    fast_fp32 = Predictor.from_dir(model_dir, fast=True, bf16=False)
    everything = plain(images[1], threshold=0.0)
    scores = np.sort(everything.scores)
    # a threshold between the two scores furthest apart: fp32 rounding in another memory layout
    # moves scores by about 1e-6, far less than the gap
    gaps = np.diff(scores)
    k = int(np.argmax(gaps))
    assert gaps[k] > 1e-4
    cut = float(scores[k] + gaps[k] / 2)
    reference = [plain(image, threshold=cut) for image in images]
    candidate = [fast_fp32(image, threshold=cut) for image in images]
    report = compare_runs(reference, candidate, cut, min_mask_iou=0.99, score_tolerance=1e-4)
    assert report.ok, report.describe()
    assert report.matched == sum(len(r) for r in reference) > 0


def test_bf16_runs_the_heavy_parts_in_bf16_and_the_box_predictor_in_fp32(model_dir, images):
    """BF16_PARTS under autocast, each handing on fp32; the box predictor (offsets, scores) in fp32."""
    predictor = Predictor.from_dir(model_dir, bf16=True)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (inputs[0].dtype, torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return hook

    model = predictor.model
    model.backbone.body.conv1.register_forward_hook(record("first conv"))
    model.roi_heads.box_predictor.register_forward_hook(record("box predictor"))
    model.roi_heads.mask_predictor.register_forward_hook(record("mask predictor"))
    instances = predictor(images[0], threshold=0.0)
    assert seen["first conv"][1] == torch.bfloat16  # autocast on inside the backbone
    assert seen["box predictor"] == (torch.float32, None)
    assert seen["mask predictor"] == (torch.float32, torch.bfloat16)  # the mask head's output handed on in fp32
    assert instances.scores.dtype == np.float32 and instances.boxes.dtype == np.float32
    assert state_keys_unchanged(predictor, model_dir)


def state_keys_unchanged(predictor, model_dir) -> bool:
    """The fast path wraps forwards, not modules: the state dict still fits the saved weights."""
    saved = torch.load(model_dir / "model_final.pth", map_location="cpu", weights_only=True)
    return set(predictor.model.state_dict()) == set(saved)


def test_bf16_predictions_stay_close_to_fp32(model_dir, images):
    plain = Predictor.from_dir(model_dir, fast=False)
    fast = Predictor.from_dir(model_dir, bf16=True)
    for image in images:
        ref = plain(image, threshold=0.0)
        got = fast(image, threshold=0.0)
        assert len(got) > 0 and len(ref) > 0
        # the top instance of each run (an untrained-for-long model) is in the other: same class, near-same
        # score and box. Found by value, not at row 0: bf16 may reorder scores closer than its rounding
        for top, other in ((ref, got), (got, ref)):
            near = ((other.class_ids == top.class_ids[0]) & (np.abs(other.scores - top.scores[0]) < 0.05)
                    & (np.abs(other.boxes - top.boxes[0]).max(axis=1) < 0.05 * max(image.shape[:2])))
            assert near.any(), (top.labels[0], float(top.scores[0]), top.boxes[0].tolist())


def test_boolean_pasting_gives_torchvisions_pixels():
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from maskrcnn_finetune.predictor import paste_masks_bool

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(40, 1, 28, 28, generator=g)
    xy = torch.rand(40, 2, generator=g) * torch.tensor([100.0, 80.0])
    boxes = torch.cat([xy, xy + 1 + torch.rand(40, 2, generator=g) * 60], dim=1)
    # clipped to the image as the model's boxes are; padded for pasting, many then reach past the border
    boxes = torch.minimum(boxes, torch.tensor([100.0, 80.0, 100.0, 80.0]))
    boxes[0] = torch.tensor([0.0, 0.0, 0.4, 0.3])  # thinner than a pixel
    expected = paste_masks_in_image(masks, boxes, (80, 100))[:, 0] > 0.5
    got = paste_masks_bool(masks, boxes, 80, 100)
    assert got.dtype == torch.bool and got.shape == (40, 80, 100)
    assert torch.equal(got, expected) and expected.any()
    assert paste_masks_bool(masks[:0], boxes[:0], 80, 100).shape == (0, 80, 100)
