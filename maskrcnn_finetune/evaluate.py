"""COCO evaluation (pycocotools COCOeval) of a Predictor on a COCO json: AP, AP50, AP75, per class."""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm.auto import tqdm

from maskrcnn_finetune.data.coco import CocoData, load_coco
from maskrcnn_finetune.structures import Instances

logger = logging.getLogger(__name__)


def encode_rle(mask: np.ndarray) -> dict:
    """A boolean ``(H, W)`` mask as COCO RLE ``{"size": [H, W], "counts": str}`` (pycocotools' encoding)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def instances_to_coco(instances: Instances, image_id: int, category_ids: list[int],
                      rles: list[dict] | None = None) -> list[dict]:
    """COCO result entries (box xywh and mask RLE) for one image.

    Args:
        category_ids: the dataset's category id for each class index of the model.
        rles: the masks already encoded with :func:`encode_rle` (the server encodes each mask
            once for its response and its files); None encodes them here.
    """
    results = []
    for k in range(len(instances)):
        x0, y0, x1, y1 = (float(v) for v in instances.boxes[k])
        results.append({
            "image_id": int(image_id),
            "category_id": int(category_ids[instances.class_ids[k]]),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(instances.scores[k]),
            "segmentation": rles[k] if rles is not None else encode_rle(instances.masks[k]),
        })
    return results


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


SIZE_RANGES = {"APs": (0, 32**2), "APm": (32**2, 96**2), "APl": (96**2, float("inf"))}
"""COCO's object sizes by area in pixels (its ``areaRng`` small, medium, large)."""


def _has_objects(gt: COCO, area: tuple[float, float]) -> bool:
    return any(area[0] <= a["area"] < area[1] and not a.get("iscrowd", 0) for a in gt.dataset["annotations"])


def coco_metrics(gt: COCO, results: list[dict]) -> dict:
    """bbox and segm AP / AP50 / AP75, AP by object size (APs, APm, APl: below 32x32 pixels, up to 96x96,
    above; None where ``gt`` has no object of that size) and per-class AP (COCO's 0-1 scale) for results on ``gt``."""
    names = {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())}
    metrics = {}
    for iou_type in ("bbox", "segm"):
        if not results:
            sizes = {key: (0.0 if _has_objects(gt, area) else None) for key, area in SIZE_RANGES.items()}
            metrics[iou_type] = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, **sizes,
                                 "per_class_AP": {n: 0.0 for n in names.values()}}
            continue
        dt = _quiet(gt.loadRes, [dict(r) for r in results])
        ev = COCOeval(gt, dt, iou_type)
        _quiet(ev.evaluate)
        _quiet(ev.accumulate)
        _quiet(ev.summarize)
        precision = ev.eval["precision"]  # [iou, recall, class, area, max dets]
        per_class = {}
        for k, cat_id in enumerate(ev.params.catIds):
            p = precision[:, :, k, 0, -1]
            per_class[names[cat_id]] = float(p[p > -1].mean()) if (p > -1).any() else 0.0
        metrics[iou_type] = {
            "AP": max(0.0, float(ev.stats[0])),
            "AP50": max(0.0, float(ev.stats[1])),
            "AP75": max(0.0, float(ev.stats[2])),
            # COCOeval says -1 for a size range without objects: None here (no such objects to find)
            **{key: (float(ev.stats[k]) if ev.stats[k] > -1 else None) for k, key in zip((3, 4, 5), SIZE_RANGES)},
            "per_class_AP": per_class,
        }
    return metrics


def predict_dataset(predictor, data: CocoData, progress: bool = True) -> list[Instances]:
    """Every detection of ``predictor`` (threshold 0: AP needs the low-scoring ones too) on each image of ``data``."""
    return [predictor(data.image_path(image), threshold=0.0)
            for image in tqdm(data.images, desc="Evaluating", unit="image", disable=not progress, leave=False)]


def score_runs(runs: list[Instances], data: CocoData, class_names: list[str] | None = None) -> dict:
    """COCOeval's metrics (see :func:`coco_metrics`) of ``runs``, one :class:`Instances` per image of ``data`` in
    its order, and ``images``: how many."""
    category_ids = [c["id"] for c in data.categories]
    if class_names is not None and len(category_ids) != len(class_names):
        logger.warning("the model has %d classes but %s has %d categories; classes are matched by position",
                       len(class_names), data.json_path.name, len(category_ids))
    results = []
    for image, instances in zip(data.images, runs):
        results += instances_to_coco(instances, image["id"], category_ids)
    gt = _quiet(COCO, str(data.json_path))
    metrics = coco_metrics(gt, results)
    metrics["images"] = len(data.images)
    return metrics


def evaluate_predictor(predictor, coco, progress: bool = True) -> dict:
    """Runs ``predictor`` on every image of a COCO dataset and scores it with COCOeval.

    Args:
        predictor: a :class:`~maskrcnn_finetune.predictor.Predictor` (its classes must be the
            dataset's categories, in category order).
        coco: a :class:`CocoData` or the path of a COCO json.

    Returns:
        ``{"bbox": {...}, "segm": {...}, "images": N}`` with AP, AP50, AP75 and per-class AP.
    """
    data = coco if isinstance(coco, CocoData) else load_coco(coco)
    return score_runs(predict_dataset(predictor, data, progress), data, predictor.class_names)
