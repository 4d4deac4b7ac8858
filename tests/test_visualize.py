"""Pictures: instance overlays tint exactly the masked pixels; curves and grids are real PNGs."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from maskrcnn_finetune.structures import Instances
from maskrcnn_finetune.visualize import (class_colors, crop_instance, draw_instances, mask_image, plot_backbone_comparison,
                                         plot_training_curves)


def test_overlay_tints_only_the_masked_pixels():
    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    masks = np.zeros((2, 40, 60), dtype=bool)
    masks[0, 5:15, 5:20] = True
    masks[1, 25:35, 30:50] = True
    inst = Instances((40, 60), np.array([[5, 5, 20, 15], [30, 25, 50, 35]], np.float32), np.array([0.9, 0.8], np.float32),
                     np.array([0, 1]), masks, ["a", "b"])
    out = draw_instances(image, inst, alpha=0.5, show_boxes=False, show_labels=False)
    expected_a = 0.5 * 100 + 0.5 * class_colors(2)[0] * 255
    assert np.allclose(out[10, 10], expected_a, atol=1)
    assert not np.allclose(out[30, 40], out[10, 10], atol=5)  # the other class, another colour
    untouched = ~masks.any(axis=0)
    assert (out[untouched] == 100).all()
    boxed = draw_instances(image, inst)
    assert (boxed[5, 12] != out[5, 12]).any()  # the box outline is drawn


def test_training_curves_and_comparison_chart(tmp_path):
    log = tmp_path / "metrics.jsonl"
    lines = [{"iter": i, "loss": 2.0 / i, "loss_mask": 1.0 / i} for i in range(1, 21)]
    lines += [{"iter": 10, "bbox_AP": 0.2, "bbox_AP50": 0.4, "bbox_AP75": 0.1, "segm_AP": 0.3, "segm_AP50": 0.5, "segm_AP75": 0.2}]
    log.write_text("\n".join(json.dumps(l) for l in lines))
    png = plot_training_curves(log, tmp_path / "curves.png")
    with Image.open(png) as img:
        assert img.size[0] > 800 and np.asarray(img.convert("L")).std() > 10
    assert plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "none.png") is None
    rows = [{"backbone": "a", "ms_per_image": 100, "val_box_AP50": 0.5, "val_mask_AP50": 0.6, "device": "cpu"},
            {"backbone": "b", "ms_per_image": 50, "val_box_AP50": 0.4, "val_mask_AP50": 0.3, "device": "cpu"}]
    with Image.open(plot_backbone_comparison(rows, tmp_path / "cmp.png")) as img:
        assert np.asarray(img.convert("L")).std() > 10


def test_mask_picture_crop_and_union():
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    masks = np.zeros((2, 20, 30), dtype=bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 4:10, 5:12] = True  # overlaps the first
    assert set(np.unique(mask_image(masks[0]))) == {0, 255} and mask_image(masks[0]).shape == (20, 30)
    crop = crop_instance(image, masks[0], [3, 2, 9, 6])
    assert crop.shape == (4, 6, 4) and (crop[..., :3] == image[2:6, 3:9]).all() and (crop[..., 3] == 255).all()
    partial = crop_instance(image, masks[1], [3, 2, 12, 10])  # box wider than the mask: outside is transparent
    assert partial.shape == (8, 9, 4) and (partial[..., 3] > 0).sum() == masks[1].sum()
    assert crop_instance(image, np.zeros((20, 30), bool), [5, 5, 5, 5]).shape == (1, 1, 4)
    inst = Instances((20, 30), np.zeros((2, 4), np.float32), np.array([0.9, 0.8], np.float32), np.array([0, 0]), masks, ["a"])
    union = masks[0] | masks[1]
    assert (inst.union_mask() == union).all()
    assert inst.masked_fraction() == union.sum() / 600  # overlapping pixels count once
