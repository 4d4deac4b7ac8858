"""Do two runs of a model predict the same thing? The check behind every faster inference path.

A faster path (bf16 on the CPU, OpenVINO, an exported .pt2 or ONNX model, ...) is only allowed when its
predictions match the plain fp32 model's on the same images:

- the same instances above the threshold: every instance of one run is matched, by class and
  mask overlap, to an instance of the other;
- each matched pair's masks overlap with IoU >= ``min_mask_iou`` (0.95);
- each matched pair's scores differ by at most ``score_tolerance`` (0.05).

An instance whose score lies within ``score_tolerance`` of the threshold may be present in one
run and absent from the other: a score allowed to move by 0.05 may cross the threshold.

    report = compare_instances(reference, candidate, threshold=0.5)
    if not report.ok:
        print(report.describe())

The gate itself runs two Predictors on the same images (:func:`check_images`, :func:`compare_with_eager`):
the export keeps a file only when it passes, and :func:`maskrcnn_finetune.loading.load_predictor` keeps
an OpenVINO runtime only when it passes.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from maskrcnn_finetune.data.coco import load_coco
from maskrcnn_finetune.data.images import IMAGE_SUFFIXES, load_rgb
from maskrcnn_finetune.data.synthetic import make_synthetic
from maskrcnn_finetune.errors import DatasetError, ExportError
from maskrcnn_finetune.model_spec import ModelSpec
from maskrcnn_finetune.structures import Instances

logger = logging.getLogger(__name__)

MIN_MASK_IOU = 0.95
SCORE_TOLERANCE = 0.05
CHECK_IMAGES = 3
"""How many synthetic images the parity check uses when no images are given and the model's val set is not here."""
CHECK_VAL_IMAGES = 12
"""How many of the model's own val images the parity check uses by default (the first ones of its val json)."""


def mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every mask of ``a`` ``(N, H, W)`` with every mask of ``b`` ``(M, H, W)``: ``(N, M)``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    # two empty masks are the same mask
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


@dataclass
class ParityReport:
    """What :func:`compare_instances` found for one image (or, summed, for several).

    Attributes:
        matched: pairs of instances found in both runs.
        missing: reference instances clearly above the threshold that the candidate lacks.
        extra: candidate instances clearly above the threshold that the reference lacks.
        min_mask_iou: the lowest mask IoU over the matched pairs (1.0 when there are none).
        max_score_diff: the largest score difference over the matched pairs.
        problems: one sentence per failed condition.
        iou_total: the sum of the matched pairs' mask IoUs (see :attr:`mean_mask_iou`).
        low_iou: matched pairs whose masks overlap less than required.
    """

    matched: int = 0
    missing: int = 0
    extra: int = 0
    min_mask_iou: float = 1.0
    max_score_diff: float = 0.0
    problems: list[str] = field(default_factory=list)
    min_mask_iou_required: float = MIN_MASK_IOU
    score_tolerance: float = SCORE_TOLERANCE
    iou_total: float = 0.0
    low_iou: int = 0

    @property
    def mean_mask_iou(self) -> float:
        return self.iou_total / self.matched if self.matched else 1.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def merge(self, other: "ParityReport") -> "ParityReport":
        """The report of both sets of images together."""
        return ParityReport(
            self.matched + other.matched, self.missing + other.missing, self.extra + other.extra,
            min(self.min_mask_iou, other.min_mask_iou), max(self.max_score_diff, other.max_score_diff),
            self.problems + other.problems, self.min_mask_iou_required, self.score_tolerance,
            self.iou_total + other.iou_total, self.low_iou + other.low_iou,
        )

    def to_dict(self) -> dict:
        return {"ok": self.ok, "matched": self.matched, "missing": self.missing, "extra": self.extra,
                "min_mask_iou": round(self.min_mask_iou, 4), "mean_mask_iou": round(self.mean_mask_iou, 4),
                "low_iou": self.low_iou, "max_score_diff": round(self.max_score_diff, 4),
                "problems": list(self.problems)}

    def describe(self) -> str:
        """One line: the verdict and the numbers behind it."""
        verdict = "predictions match" if self.ok else "predictions DIFFER"
        line = (f"{verdict}: {self.matched} instances matched, {self.missing} missing, {self.extra} extra, "
                f"lowest mask IoU {self.min_mask_iou:.3f} (need >= {self.min_mask_iou_required}; mean {self.mean_mask_iou:.3f}), "
                f"largest score difference {self.max_score_diff:.3f} (allowed {self.score_tolerance})")
        return line if self.ok else line + "; " + "; ".join(self.problems[:5])


def compare_instances(reference: Instances, candidate: Instances, threshold: float,
                      min_mask_iou: float = MIN_MASK_IOU, score_tolerance: float = SCORE_TOLERANCE,
                      name: str = "image") -> ParityReport:
    """Compares a candidate run's instances with the reference (fp32 eager) run's on one image.

    Instances of the same class are paired greedily, the most overlapping masks first (ties: the higher
    reference score), each instance at most once.

    Args:
        reference: the fp32 eager model's instances (any threshold at or below ``threshold``).
        candidate: the faster path's instances on the same image.
        threshold: the score threshold the comparison is about.
        min_mask_iou: the lowest mask IoU a matched pair may have.
        score_tolerance: the largest score difference a matched pair may have.
        name: how problems name the image.

    Returns:
        A :class:`ParityReport`.
    """
    if tuple(reference.image_size) != tuple(candidate.image_size):
        return ParityReport(problems=[f"{name}: the runs saw different image sizes, "
                                      f"{tuple(reference.image_size)} and {tuple(candidate.image_size)}"],
                            min_mask_iou_required=min_mask_iou, score_tolerance=score_tolerance)
    # anything that could cross the threshold by a tolerated score change takes part in matching
    low = threshold - score_tolerance
    ref = reference.above(low)
    cand = candidate.above(low)
    ious = mask_iou_matrix(ref.masks, cand.masks)
    ref_class = np.asarray(ref.class_ids)
    cand_class = np.asarray(cand.class_ids)
    # the closest pairs first (ties: the higher reference score): paired in score order, a reference instance
    # the candidate lost took its neighbour's twin at a low IoU, and the neighbour was then reported lost
    ii, jj = np.nonzero((ref_class[:, None] == cand_class[None, :]) & (ious > 0)) if len(ref) and len(cand) else ([], [])
    order = np.lexsort((-ref.scores[ii], -ious[ii, jj])) if len(ii) else []
    taken = np.zeros(len(cand), dtype=bool)
    paired = np.zeros(len(ref), dtype=bool)
    pairs = []
    for k in order:
        i, j = ii[k], jj[k]
        if not paired[i] and not taken[j]:
            paired[i] = taken[j] = True
            pairs.append((i, j))
    report = ParityReport(min_mask_iou_required=min_mask_iou, score_tolerance=score_tolerance)
    paired_ref = {i for i, _ in pairs}
    clear = threshold + score_tolerance
    for i in range(len(ref)):
        if i not in paired_ref and ref.scores[i] >= clear:
            report.missing += 1
            report.problems.append(f"{name}: the reference's {ref.labels[i]} at score {ref.scores[i]:.3f} "
                                   f"(box {np.round(ref.boxes[i]).astype(int).tolist()}) is missing")
    for j in np.where(~taken)[0]:
        if cand.scores[j] >= clear:
            report.extra += 1
            report.problems.append(f"{name}: an extra {cand.labels[j]} at score {cand.scores[j]:.3f} "
                                   f"(box {np.round(cand.boxes[j]).astype(int).tolist()})")
    for i, j in pairs:
        # a pair both of whose scores lie below the threshold is not part of either answer
        if ref.scores[i] < threshold and cand.scores[j] < threshold:
            continue
        report.matched += 1
        iou = float(ious[i, j])
        diff = abs(float(ref.scores[i]) - float(cand.scores[j]))
        report.min_mask_iou = min(report.min_mask_iou, iou)
        report.iou_total += iou
        report.max_score_diff = max(report.max_score_diff, diff)
        if iou < min_mask_iou:
            report.low_iou += 1
            report.problems.append(f"{name}: the masks of the {ref.labels[i]} at score {ref.scores[i]:.3f} "
                                   f"overlap with IoU {iou:.3f} < {min_mask_iou}")
        if diff > score_tolerance:
            report.problems.append(f"{name}: the {ref.labels[i]}'s score moved from {ref.scores[i]:.3f} "
                                   f"to {cand.scores[j]:.3f} (more than {score_tolerance})")
    return report


def compare_runs(reference: list[Instances], candidate: list[Instances], threshold: float,
                 names: list[str] | None = None, **limits) -> ParityReport:
    """:func:`compare_instances` over several images, summed into one report."""
    if len(reference) != len(candidate):
        raise ValueError(f"the runs cover {len(reference)} and {len(candidate)} images")
    names = names or [f"image {k}" for k in range(len(reference))]
    report = ParityReport(**({"min_mask_iou_required": limits["min_mask_iou"]} if "min_mask_iou" in limits else {}),
                          **({"score_tolerance": limits["score_tolerance"]} if "score_tolerance" in limits else {}))
    for ref, cand, name in zip(reference, candidate, names):
        report = report.merge(compare_instances(ref, cand, threshold, name=name, **limits))
    return report


def model_val_images(info: dict) -> list[Path]:
    """The first :data:`CHECK_VAL_IMAGES` images of the val json the model was trained with, when it can
    still be read from here (``model.json``'s ``training.val_json``); else an empty list."""
    val_json = (info.get("training") or {}).get("val_json")
    if not val_json or not Path(val_json).is_file():
        return []
    try:
        coco = load_coco(val_json, check_images=False)
    except (DatasetError, OSError, ValueError) as exc:
        logger.info("the model's val json %s cannot be read (%s); the parity check uses synthetic images", val_json, exc)
        return []
    paths = [coco.image_path(image) for image in coco.images[:CHECK_VAL_IMAGES]]
    return paths if paths and all(p.is_file() for p in paths) else []


def check_images(images, spec: ModelSpec | None, info: dict | None = None) -> tuple[list[np.ndarray], list[str]]:
    """The images of the parity check as RGB arrays, with names for the report.

    Args:
        images: image paths, folders (their images, sorted), RGB arrays, PIL images, or ``None`` for
            the model's own val images (up to :data:`CHECK_VAL_IMAGES`, when ``info``'s training
            says which and they are here), else :data:`CHECK_IMAGES` synthetic images at the
            model's size (the same every time).
        spec: the model's spec (its ``min_size`` sets the synthetic images' size).
        info: the model folder's ``model.json``.

    Raises:
        ExportError: a path does not exist, a folder holds no images, or an image cannot be read.
    """
    if images is None and info and (own := model_val_images(info)):
        logger.info("parity check on %d images of the model's val set (%s)", len(own), own[0].parent)
        images = own
    if images is None:
        side = max(64, int(spec.min_size))  # make_synthetic's smallest side
        with tempfile.TemporaryDirectory(prefix="export-check-") as tmp:
            jsons = make_synthetic(tmp, CHECK_IMAGES, seed=0, image_size=(side * 4 // 3, side))
            return [load_rgb(p.with_suffix(".jpg")) for p in jsons], [p.with_suffix(".jpg").name for p in jsons]
    if isinstance(images, (str, Path, np.ndarray)):
        images = [images]
    arrays, names = [], []
    for k, item in enumerate(images):
        if isinstance(item, (np.ndarray, Image.Image)):
            arrays.append(np.array(item.convert("RGB")) if isinstance(item, Image.Image) else item)
            names.append(f"array {k}")
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ExportError(f"'{path}' holds no images ({', '.join(IMAGE_SUFFIXES)}); pass a folder of images "
                                  "or image files with --images")
        elif path.is_file():
            files = [path]
        else:
            raise ExportError(f"check image '{path}' does not exist; pass image files or a folder with --images")
        for file in files:
            try:
                arrays.append(load_rgb(file))
            except (OSError, ValueError, SyntaxError) as exc:
                raise ExportError(f"'{file}' is not a readable image ({exc}); remove it or pass other images") from exc
            names.append(file.name)
    if not arrays:
        raise ExportError("no check images were given; pass image files or a folder with --images")
    return arrays, names


def compare_with_eager(eager, candidate, images: list[np.ndarray], threshold: float,
                       names: list[str] | None = None) -> ParityReport:
    """The parity report of the ``candidate`` :class:`~maskrcnn_finetune.predictor.Predictor` against the fp32
    ``eager`` one on ``images`` at ``threshold``."""
    # both runs go below the threshold by the score tolerance: an instance near the threshold may
    # appear in one run only, and the comparison needs to see it to pair it
    low = max(0.0, threshold - SCORE_TOLERANCE)
    reference = [eager(image, threshold=low) for image in tqdm(images, desc="parity check: eager", unit="img")]
    exported = [candidate(image, threshold=low) for image in tqdm(images, desc="parity check: exported", unit="img")]
    return compare_runs(reference, exported, threshold, names=names)
