"""COCO evaluation against cases whose AP is known."""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO

from maskrcnn_finetune.evaluate import coco_metrics, instances_to_coco
from maskrcnn_finetune.structures import Instances


def _ground_truth_as_predictions(json_path, score=1.0, shift=0):
    """Every ground-truth object as a prediction: its own box and its own mask, shifted by ``shift`` px."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(json_path))
    cat_ids = sorted(gt.getCatIds())
    names = [gt.cats[c]["name"] for c in cat_ids]
    results = []
    for image_id, info in gt.imgs.items():
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[image_id]))
        masks = np.stack([np.roll(gt.annToMask(a).astype(bool), shift, axis=1) for a in anns])
        boxes = np.array([[x + shift, y, x + w + shift, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32)
        inst = Instances((info["height"], info["width"]), boxes, np.full(len(anns), score, np.float32),
                         np.array([cat_ids.index(a["category_id"]) for a in anns]), masks, names)
        results += instances_to_coco(inst, image_id, cat_ids)
    return gt, results


def test_perfect_predictions_score_one(tiny_coco):
    gt, results = _ground_truth_as_predictions(tiny_coco["train"])
    metrics = coco_metrics(gt, results)
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == metrics[iou_type]["AP50"] == metrics[iou_type]["AP75"] == 1.0
        assert set(metrics[iou_type]["per_class_AP"]) == {"circle", "square", "triangle"}


def test_no_predictions_score_zero(tiny_coco):
    gt, _ = _ground_truth_as_predictions(tiny_coco["train"])
    metrics = coco_metrics(gt, [])
    assert metrics["bbox"]["AP50"] == metrics["segm"]["AP"] == 0.0


def test_misplaced_masks_lose_the_strict_metric_first(tiny_coco):
    gt, results = _ground_truth_as_predictions(tiny_coco["train"], shift=4)
    metrics = coco_metrics(gt, results)
    assert metrics["segm"]["AP75"] < metrics["segm"]["AP50"] <= 1.0
    assert metrics["segm"]["AP"] < 0.9


def test_ap_by_object_size_and_the_percent_table(tiny_coco):
    from maskrcnn_finetune.commands.evaluate import metrics_table

    gt, results = _ground_truth_as_predictions(tiny_coco["train"])
    areas = [a["area"] for a in gt.dataset["annotations"]]
    sizes = {"APs": any(a < 32**2 for a in areas), "APm": any(32**2 <= a < 96**2 for a in areas),
             "APl": any(a >= 96**2 for a in areas)}
    assert any(sizes.values()) and not all(sizes.values())  # the tiny images have some sizes, not all
    metrics = coco_metrics(gt, results)
    for key, present in sizes.items():  # perfect predictions: 1 where there are objects, None where none
        assert metrics["segm"][key] == (1.0 if present else None)
        assert coco_metrics(gt, [])["bbox"][key] == (0.0 if present else None)
    shifted = coco_metrics(gt, _ground_truth_as_predictions(tiny_coco["train"], shift=4)[1])
    table = metrics_table(shifted, percent=True).splitlines()
    assert table[0] == "| iou type | AP | AP50 | AP75 | APs | APm | APl |"
    segm = table[3].split(" | ")
    assert segm[0] == "| segm" and float(segm[2]) == round(100 * shifted["segm"]["AP50"], 1)
    assert metrics_table(shifted).splitlines()[3].split(" | ")[2] == f"{shifted['segm']['AP50']:.3f}"
    missing = [key for key, present in sizes.items() if not present]
    assert segm[3 + list(sizes).index(missing[0]) + 1].strip(" |") == "-"
