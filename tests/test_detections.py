"""tests/detections.py, the tests' set comparison of two runs: tied rows in either order agree, a changed
value or a missing instance fails with a message that names it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskrcnn_finetune.structures import Instances
from maskrcnn_finetune.evaluate import encode_rle

from detections import as_detections, assert_same_detections, match_detections

NAMES = ["circle", "square"]


def _instances(rows) -> Instances:
    """``rows`` of (class id, score, box, mask slice) on a 20x30 image."""
    masks = np.zeros((len(rows), 20, 30), bool)
    for k, (_, _, _, (ys, xs)) in enumerate(rows):
        masks[k, ys, xs] = True
    return Instances((20, 30), np.array([r[2] for r in rows], np.float32).reshape(-1, 4),
                     np.array([r[1] for r in rows], np.float32), np.array([r[0] for r in rows], np.int64), masks, NAMES)


ROWS = [
    (0, 0.9, [1, 1, 9, 9], (slice(1, 9), slice(1, 9))),
    (1, 0.4, [10, 2, 18, 8], (slice(2, 8), slice(10, 18))),
    (1, 0.4, [20, 10, 28, 18], (slice(10, 18), slice(20, 28))),  # tied with the row above, same class
    (0, 0.1, [2, 12, 6, 16], (slice(12, 16), slice(2, 6))),
]
EXACT = {"score_atol": 0.0, "box_atol": 0.0, "mask_iou": 1.0}


def test_tied_rows_in_the_other_order_agree():
    want = _instances(ROWS)
    got = want.select(np.array([0, 2, 1, 3]))  # rows 1 and 2 swapped, every value equal
    assert not np.array_equal(got.boxes, want.boxes)  # a row-by-row comparison would fail here
    assert match_detections(got, want, **EXACT) == [(0, 0), (2, 1), (1, 2), (3, 3)]


def test_a_changed_score_box_mask_or_class_fails_naming_the_instance():
    want = _instances(ROWS)
    moved = _instances(ROWS)
    moved.scores[2] += 0.01
    with pytest.raises(AssertionError, match=r"want\[2\] square score 0.40000 box \[20.0, 10.0, 28.0, 18.0\] "
                                             r"and its closest partner got\[2\] square score 0.41000 .* differ: "
                                             r"score by 0.010000 \(allowed 0.001\)"):
        assert_same_detections(moved, want, score_atol=1e-3, box_atol=0.05, mask_iou=1.0)
    assert_same_detections(moved, want, score_atol=0.02, box_atol=0.05, mask_iou=1.0)  # within a looser tolerance
    shifted = _instances(ROWS)
    shifted.boxes[0, 2] += 0.5
    shifted.masks[0, 1:9, 9] = True  # 8 more pixels: IoU 64/72
    with pytest.raises(AssertionError, match=r"want\[0\] circle .* differ: box by 0.5000 px \(allowed 0.05\), "
                                             r"mask IoU 0.8889 \(need 0.95\), 8 pixels differ"):
        assert_same_detections(shifted, want, score_atol=0.0, box_atol=0.05, mask_iou=0.95)
    assert_same_detections(shifted, want, score_atol=0.0, box_atol=0.5, mask_iou=0.88)
    assert_same_detections(shifted, want, score_atol=0.0, box_atol=0.5, mask_iou=0.95, mask_pixels=8)
    other_class = _instances(ROWS)
    other_class.class_ids[3] = 1
    with pytest.raises(AssertionError, match=r"want\[3\] circle score 0.10000 .* is missing from got; "
                                             r"got\[3\] square score 0.10000 .* is extra"):
        assert_same_detections(other_class, want, **EXACT)


def test_a_missing_or_extra_instance_fails_naming_it():
    want = _instances(ROWS)
    with pytest.raises(AssertionError, match=r"got 3 instances, want 4; want\[3\] circle score 0.10000 "
                                             r"box \[2.0, 12.0, 6.0, 16.0\] is missing from got"):
        assert_same_detections(want.select(np.array([0, 1, 2])), want, **EXACT)
    with pytest.raises(AssertionError, match=r"image 7 differ: got 4 instances, want 3; got\[2\] square .* is extra"):
        assert_same_detections(want, want.select(np.array([0, 1, 3])), what="image 7", **EXACT)


def test_the_pairing_is_optimal_not_greedy():
    """got[0] agrees with both tied rows of want, got[1] with want[0] only: a greedy pass that gives got[0]
    its closest partner (want[0]) leaves got[1] without one; the assignment pairs them all."""
    want = _instances([(1, 0.5, [10, 10, 20, 20], (slice(0, 0), slice(0, 0))),
                       (1, 0.5, [10.6, 10, 20, 20], (slice(0, 0), slice(0, 0)))])
    got = _instances([(1, 0.5, [10.1, 10, 20, 20], (slice(0, 0), slice(0, 0))),
                      (1, 0.5, [9.7, 10, 20, 20], (slice(0, 0), slice(0, 0)))])
    assert match_detections(got, want, score_atol=0.0, box_atol=0.5, mask_iou=1.0) == [(1, 0), (0, 1)]


def test_server_answers_and_raw_torchvision_outputs_are_read_as_instances():
    want = _instances(ROWS)
    body = {"instances": [{"score": float(s), "box": b.tolist(), "class_id": int(c), "class_name": NAMES[c],
                           "mask_rle": encode_rle(m)} for s, b, c, m in zip(want.scores, want.boxes, want.class_ids, want.masks)]}
    body["instances"].reverse()
    read = as_detections(body)
    assert read.class_names == NAMES and read.masks.shape == (4, 20, 30)
    assert match_detections(body, want, **EXACT) == [(3, 0), (2, 1), (1, 2), (0, 3)]
    raw = {"boxes": torch.from_numpy(want.boxes), "scores": torch.from_numpy(want.scores),
           "labels": torch.from_numpy(want.class_ids + 1), "masks": torch.from_numpy(want.masks[:, None].astype(np.float32))}
    shuffled = {key: value[torch.tensor([3, 2, 1, 0])] for key, value in raw.items()}
    assert as_detections(raw).masks.dtype == bool  # the (N, 1, H, W) probabilities, at 0.5
    assert match_detections(shuffled, raw, **EXACT) == [(3, 0), (2, 1), (1, 2), (0, 3)]
    with pytest.raises(ValueError, match="carries no masks"):
        match_detections([{k: v for k, v in i.items() if k != "mask_rle"} for i in body["instances"]], want, **EXACT)
