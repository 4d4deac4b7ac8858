"""The one result type that the server, the visualiser and the evaluator all consume."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Instances:
    """Detected objects in one image.

    Attributes:
        image_size: ``(height, width)`` of the image the masks cover.
        boxes: ``(N, 4)`` float32, ``x0, y0, x1, y1`` in pixels.
        scores: ``(N,)`` float32 in [0, 1], highest first.
        class_ids: ``(N,)`` int64, indices into ``class_names``.
        masks: ``(N, H, W)`` bool, at image size.
        class_names: every class the model knows.
    """

    image_size: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    masks: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def labels(self) -> list[str]:
        """Class name of each instance."""
        return [self.class_names[i] for i in self.class_ids]

    def select(self, keep) -> "Instances":
        """The instances at ``keep`` (a boolean mask or indices)."""
        return Instances(self.image_size, self.boxes[keep], self.scores[keep], self.class_ids[keep],
                         self.masks[keep], self.class_names)

    def above(self, threshold: float) -> "Instances":
        """The instances scoring at least ``threshold``."""
        return self.select(self.scores >= threshold)

    def union_mask(self) -> np.ndarray:
        """Pixels covered by any instance: overlapping masks count once."""
        if len(self) == 0:
            return np.zeros(self.image_size, dtype=bool)
        return self.masks.any(axis=0)

    def masked_fraction(self) -> float:
        """Share of the image's pixels covered by the union of the masks."""
        return float(self.union_mask().mean())
