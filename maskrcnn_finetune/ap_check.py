"""Does a faster runtime keep the AP users read? The check that keeps or refuses int8.

An int8 backbone moves every feature a little, so some masks move by a few pixels and an instance
near the threshold may come or go: the instance-level parity gate (:mod:`maskrcnn_finetune.parity`),
which asks every instance to stay where it was, refuses it. What users read is the AP on their val
set, so int8 is judged by that: it is kept when its val mask AP and box AP are each no more than
:data:`MAX_AP_DROP` (one point) below the plain fp32 model's, both measured as ``scripts/evaluate.py``
measures them (pycocotools on every detection, on the model's own val json). The instance-level
differences on the same images are reported beside, as information.

    report = compare_ap(eager, candidate, "outputs/demo/coco/val.json", threshold=0.5)
    print(report.describe())  # "int8: mask AP ... vs fp32 ..., box AP ... vs fp32 ... on N val images (each within 0.01); ..."
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from maskrcnn_finetune.data.coco import CocoData, load_coco
from maskrcnn_finetune.errors import ConfigError, DatasetError
from maskrcnn_finetune.evaluate import predict_dataset, score_runs
from maskrcnn_finetune.parity import ParityReport, compare_runs

__all__ = ["APReport", "MAX_AP_DROP", "ap_of", "compare_ap", "model_val_json"]

logger = logging.getLogger(__name__)

MAX_AP_DROP = 0.01
"""How far below the fp32 model's a faster runtime's val mask AP and box AP may each be (COCO's 0-1 scale)."""


def model_val_json(info: dict, val_json=None) -> Path | None:
    """The val json the AP check uses: ``val_json`` when given (it must exist), else the one the model was
    trained with (``model.json``'s ``training.val_json``) when it is on this machine with its images, else None.

    Raises:
        ConfigError: ``val_json`` was given but is not a file.
    """
    if val_json is not None:
        if not Path(val_json).is_file():
            raise ConfigError(f"--val-json '{val_json}' is not a file; pass the COCO json of your val images")
        return Path(val_json)
    own = (info.get("training") or {}).get("val_json")
    if not own or not Path(own).is_file():
        return None
    try:
        data = load_coco(own, check_images=False)
    except (DatasetError, OSError, ValueError) as exc:
        logger.info("the model's val json %s cannot be read (%s)", own, exc)
        return None
    if not data.images or not all(data.image_path(image).is_file() for image in data.images):
        logger.info("the images of the model's val json %s are not all here", own)
        return None
    return Path(own)


def ap_of(runs, data: CocoData) -> dict:
    """``{"mask": segm AP, "box": bbox AP}`` of ``runs`` (one :class:`Instances` per image of ``data``)."""
    metrics = score_runs(runs, data)
    return {"mask": metrics["segm"]["AP"], "box": metrics["bbox"]["AP"]}


@dataclass
class APReport:
    """The val APs of the plain fp32 model (``reference``) and of a faster runtime (``candidate``), each
    ``{"mask": AP, "box": AP}``, on ``images`` images of ``val_json``; ``parity``: the instance-level
    differences on the same images (information)."""

    reference: dict
    candidate: dict
    images: int
    val_json: str
    parity: ParityReport | None = None
    max_drop: float = MAX_AP_DROP
    name: str = "int8"

    def drops(self) -> dict:
        return {kind: self.reference[kind] - self.candidate[kind] for kind in ("mask", "box")}

    @property
    def ok(self) -> bool:
        """Each AP at most :attr:`max_drop` below the reference's (a higher AP passes)."""
        return all(round(drop, 6) <= self.max_drop for drop in self.drops().values())

    def figures(self) -> str:
        return (f"mask AP {self.candidate['mask']:.3f} vs fp32 {self.reference['mask']:.3f}, "
                f"box AP {self.candidate['box']:.3f} vs fp32 {self.reference['box']:.3f}")

    def describe(self) -> str:
        """One line: both APs of both runs, the verdict, and the instance-level differences."""
        verdict = (f"each within {self.max_drop:g}" if self.ok else f"more than {self.max_drop:g} lower")
        line = f"{self.name}: {self.figures()} on {self.images} val images ({verdict})"
        if self.parity is not None:
            line += f"; instance by instance: {self.parity.describe()}"
        return line

    def to_dict(self) -> dict:
        return {"ok": self.ok, "val_json": self.val_json, "images": self.images, "max_drop": self.max_drop,
                "fp32": {k: round(v, 4) for k, v in self.reference.items()},
                self.name: {k: round(v, 4) for k, v in self.candidate.items()},
                "parity": self.parity.to_dict() if self.parity is not None else None}


def compare_ap(reference, candidate, val_json, threshold: float, reference_runs: list | None = None,
               max_drop: float = MAX_AP_DROP, name: str = "int8", progress: bool = False) -> APReport:
    """The val APs of the ``candidate`` :class:`~maskrcnn_finetune.predictor.Predictor` against the fp32
    ``reference`` one (see the module's text).

    Args:
        reference: the plain fp32 model (``fast=False``).
        candidate: the faster runtime.
        val_json: the COCO json of the val images.
        threshold: the score threshold of the instance-level comparison.
        reference_runs: the reference's detections on ``val_json`` already made (threshold 0), if any.
        max_drop: how far below the reference each AP may be.
        name: how the report names the candidate.
    """
    data = load_coco(val_json)
    reference_runs = reference_runs or predict_dataset(reference, data, progress)
    candidate_runs = predict_dataset(candidate, data, progress)
    names = [image["file_name"] for image in data.images]
    return APReport(ap_of(reference_runs, data), ap_of(candidate_runs, data), len(data.images), str(val_json),
                    compare_runs(reference_runs, candidate_runs, threshold, names=names), max_drop, name)
