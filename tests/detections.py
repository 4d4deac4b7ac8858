"""Two runs' detections compared as sets, never row by row: the tests' one way to say "the same answer".

Two computation paths (torch and OpenVINO, eager and the fast path, an export and eager, a server
process and the Predictor in the test, a micro-batch and one image at a time) round floats
differently, and detections whose scores tie, or nearly tie, come out in either order. So
instances are paired as sets: within each class, an optimal assignment
(``scipy.optimize.linear_sum_assignment``) that first makes as many pairs as possible agree within
the tolerances, then keeps the pairs closest in score, box and mask. Exact, not greedy: where a
pairing exists in which every pair agrees, it is found, whatever the order and however many
rows tie. The comparison passes when the counts are equal and every pair agrees.

    assert_same_detections(got, want, score_atol=1e-4, box_atol=0.05, mask_iou=0.99)

``got`` and ``want`` may each be an :class:`~maskrcnn_finetune.structures.Instances`, a server answer
(its JSON body or its ``instances`` list) or torchvision's raw output for one image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from maskrcnn_finetune.structures import Instances


@dataclass
class Detections:
    """One run's detections on one image, whatever form they came in."""

    scores: np.ndarray  # (N,)
    boxes: np.ndarray  # (N, 4)
    class_ids: np.ndarray  # (N,)
    masks: np.ndarray | None  # (N, H, W) bool, or None where the answer carries none
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def describe(self, k: int, side: str) -> str:
        c = int(self.class_ids[k])
        name = self.class_names[c] if self.class_names and 0 <= c < len(self.class_names) else f"class {c}"
        return (f"{side}[{k}] {name} score {float(self.scores[k]):.5f} "
                f"box {np.round(self.boxes[k].astype(float), 2).tolist()}")


def as_detections(run) -> Detections:
    """An :class:`Instances`, a server answer (JSON body or its ``instances`` list, masks from ``mask_rle``)
    or torchvision's raw output dict (``boxes``, ``scores``, ``labels``, ``masks``) as :class:`Detections`."""
    if isinstance(run, Detections):
        return run
    if isinstance(run, Instances):
        return Detections(np.asarray(run.scores), np.asarray(run.boxes).reshape(-1, 4), np.asarray(run.class_ids),
                          np.asarray(run.masks, dtype=bool), list(run.class_names))
    if isinstance(run, dict) and "instances" in run:
        run = run["instances"]
    if isinstance(run, list):
        from rest_api_flask.encoding import decode_rle

        masks = None
        if run and all("mask_rle" in inst for inst in run):
            masks = np.stack([decode_rle(inst["mask_rle"]) for inst in run]).astype(bool)
        names = {inst["class_id"]: inst["class_name"] for inst in run if "class_name" in inst}
        class_names = [names.get(c, f"class {c}") for c in range(max(names, default=-1) + 1)] if names else None
        return Detections(np.array([inst["score"] for inst in run], np.float64),
                          np.array([inst["box"] for inst in run], np.float64).reshape(-1, 4),
                          np.array([inst["class_id"] for inst in run], np.int64), masks, class_names)
    if isinstance(run, dict) and "scores" in run:  # torchvision's raw output: tensors, masks (N, 1, H, W) probabilities
        def array(key):
            value = run[key]
            return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)

        masks = None
        if "masks" in run:
            masks = array("masks")
            masks = (masks[:, 0] > 0.5) if masks.ndim == 4 else masks.astype(bool)
        return Detections(array("scores"), array("boxes").reshape(-1, 4), array("labels"), masks)
    raise TypeError(f"cannot read detections from {type(run).__name__}")


def match_detections(got, want, *, score_atol: float, box_atol: float | None = None,
                     mask_iou: float | None = None, mask_pixels: int = 0,
                     what: str = "detections") -> list[tuple[int, int]]:
    """Pairs ``got``'s instances with ``want``'s as sets; raises ``AssertionError`` naming every difference.

    Args:
        got, want: the two runs on one image (any form :func:`as_detections` reads).
        score_atol: the largest score difference a pair may have.
        box_atol: the largest difference of any box coordinate, in pixels (None: boxes not compared).
        mask_iou: the lowest mask IoU a pair may have, 1.0 for equal masks (None: masks not compared).
        mask_pixels: a pair whose masks differ in at most this many pixels agrees whatever its IoU (small masks).
        what: how the failure message names the comparison (an image, a request).

    Returns:
        The pairs ``(index in got, index in want)``, one per instance.
    """
    g, w = as_detections(got), as_detections(want)
    if mask_iou is not None and (g.masks is None or w.masks is None):
        raise ValueError("mask_iou given, but one of the runs carries no masks")
    names = g.class_names or w.class_names  # messages name classes even where one side has ids only
    g, w = replace(g, class_names=names), replace(w, class_names=names)
    problems: list[str] = []
    pairs: list[tuple[int, int]] = []
    if len(g) != len(w):
        problems.append(f"got {len(g)} instances, want {len(w)}")
    for c in sorted(set(g.class_ids.tolist()) | set(w.class_ids.tolist())):
        gi, wi = np.flatnonzero(g.class_ids == c), np.flatnonzero(w.class_ids == c)
        agree, distance, why = _pair_table(g, w, gi, wi, score_atol, box_atol, mask_iou, mask_pixels)
        # as few disagreeing pairs as possible first (a disagreement costs more than all distances together),
        # then the closest pairs: exact where a pairing of agreeing pairs exists
        cost = np.where(agree, 0.0, distance.sum() + 1.0) + distance
        rows, cols = linear_sum_assignment(cost) if cost.size else (np.array([], int), np.array([], int))
        for r, k in zip(rows, cols):
            pairs.append((int(gi[r]), int(wi[k])))
            if not agree[r, k]:
                problems.append(f"{w.describe(wi[k], 'want')} and its closest partner {g.describe(gi[r], 'got')} "
                                f"differ: {why[r][k]}")
        for k in sorted(set(range(len(wi))) - set(cols.tolist())):
            problems.append(f"{w.describe(wi[k], 'want')} is missing from got")
        for r in sorted(set(range(len(gi))) - set(rows.tolist())):
            problems.append(f"{g.describe(gi[r], 'got')} is extra (not in want)")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise AssertionError(f"{what} differ: {shown}")
    return sorted(pairs, key=lambda pair: pair[1])


def assert_same_detections(got, want, **limits) -> None:
    """:func:`match_detections`, for its assertion alone."""
    match_detections(got, want, **limits)


def _pair_table(g: Detections, w: Detections, gi, wi, score_atol, box_atol, mask_iou, mask_pixels):
    """For every pair of ``g``'s rows ``gi`` and ``w``'s rows ``wi`` (one class): whether it agrees, a distance
    for choosing among pairs, and the reasons a pair disagrees."""
    ds = np.abs(g.scores[gi].astype(np.float64)[:, None] - w.scores[wi].astype(np.float64)[None, :])
    agree = ds <= score_atol
    distance = ds.copy()
    db = iou = diff = None
    if box_atol is not None:
        db = np.abs(g.boxes[gi].astype(np.float64)[:, None, :] - w.boxes[wi].astype(np.float64)[None, :, :]).max(-1)
        agree &= db <= box_atol
        distance += db
    if mask_iou is not None:
        a = g.masks[gi].reshape(len(gi), -1).astype(np.float32)
        b = w.masks[wi].reshape(len(wi), -1).astype(np.float32)
        inter = (a @ b.T).astype(np.float64)  # exact: pixel counts stay far below float32's 2**24
        sizes = a.sum(1).astype(np.float64)[:, None] + b.sum(1).astype(np.float64)[None, :]
        union, diff = sizes - inter, sizes - 2 * inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)  # two empty masks are the same mask
        agree &= (iou >= mask_iou) | (diff <= mask_pixels)
        distance += 1.0 - iou
    why = [[_reasons(r, k, ds, score_atol, db, box_atol, iou, diff, mask_iou, mask_pixels) for k in range(len(wi))]
           for r in range(len(gi))]
    return agree, distance, why


def _reasons(r, k, ds, score_atol, db, box_atol, iou, diff, mask_iou, mask_pixels) -> str:
    out = []
    if ds[r, k] > score_atol:
        out.append(f"score by {ds[r, k]:.6f} (allowed {score_atol})")
    if db is not None and db[r, k] > box_atol:
        out.append(f"box by {db[r, k]:.4f} px (allowed {box_atol})")
    if iou is not None and iou[r, k] < mask_iou and diff[r, k] > mask_pixels:
        out.append(f"mask IoU {iou[r, k]:.4f} (need {mask_iou}), {int(diff[r, k])} pixels differ")
    return ", ".join(out) or "nothing"
