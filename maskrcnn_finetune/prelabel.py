"""Predictions as labelme annotations: masks traced into polygons a person can correct in labelme.

A predicted mask becomes the polygons labelme would have if a person had drawn it:

- traced with contourpy (matplotlib's contour engine) along the pixels' edges, in COCO's polygon
  coordinates, so that the converted COCO json gives the training the mask's own pixels;
- a mask in several pieces becomes several polygons sharing one ``group_id`` (how labelme and
  :mod:`maskrcnn_finetune.data.labelme` join shapes into one object);
- a hole is kept by cutting the polygon open along a zero-width bridge from its outline to the
  hole, so the one polygon draws the ring (labelme has no polygons with holes);
- simplified with shapely to the coarsest outline whose rasterisation (as pycocotools draws the
  converted polygons for training) keeps a mask IoU of at least ``min_iou`` with the predicted
  mask, so there are few points to drag.

The instance's number (as in ``masks/<image>/<k>.png`` and ``summary.csv``) and its score go into
the shape's ``description`` (labelme shows it in the shape's dialog), and ``flags["review"]`` marks
the instances under a review score.
"""

from __future__ import annotations

import numpy as np
from contourpy import contour_generator
from pycocotools import mask as mask_utils
from shapely import Polygon, make_valid
from shapely.geometry.base import BaseGeometry

from maskrcnn_finetune.data.labelme import labelme_record, labelme_shape
from maskrcnn_finetune.structures import Instances

DEFAULT_MIN_IOU = 0.95
"""The simplified outline of a mask keeps at least this IoU with the mask itself."""


def trace_mask(mask: np.ndarray) -> list[Polygon]:
    """The outlines of a boolean mask as shapely polygons (holes included), along the pixels' edges.

    Coordinates follow COCO's polygon convention (pixel ``(x, y)`` covers ``[x, x+1] x [y, y+1]``),
    so pycocotools, which the training data loader and COCOeval use, draws back the mask's own
    pixels; labelme's own drawing (PIL, outline included) covers up to half a pixel more around it.
    Traced with contourpy at level 0.5 around the padded mask (diagonal steps cut corners).
    """
    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float64), 1)
    points, offsets = contour_generator(z=padded, fill_type="OuterOffset").filled(0.5, np.inf)
    polygons = []
    for xy, cuts in zip(points, offsets):
        # padded index -> pixel index (-1), then + 0.5 to the pixel-edge coordinates COCO uses
        rings = [xy[a:b] - 0.5 for a, b in zip(cuts[:-1], cuts[1:])]
        rings = [ring for ring in rings if len(ring) >= 4]  # closed: 3 distinct points and the first again
        if not rings:
            continue
        polygon = Polygon(rings[0], rings[1:])
        if not polygon.is_valid:
            polygon = make_valid(polygon)
        polygons += [part for part in _parts(polygon) if part.area > 0]
    return polygons


def _parts(geometry: BaseGeometry) -> list[Polygon]:
    """The non-empty polygons of a geometry that may have become a collection when simplified."""
    if geometry.is_empty:
        return []
    if isinstance(geometry, Polygon):
        return [geometry]
    return [part for g in getattr(geometry, "geoms", []) for part in _parts(g)]


def _bridged_ring(polygon: Polygon) -> np.ndarray:
    """One closed point list drawing ``polygon`` with its holes: each hole is joined to the outline
    by a zero-width cut between their nearest vertices."""
    ring = np.asarray(polygon.exterior.coords)[:-1]
    for hole in polygon.interiors:
        inner = np.asarray(hole.coords)[:-1]
        distances = ((ring[:, None, :] - inner[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
        inner = np.roll(inner, -j, axis=0)
        ring = np.concatenate([ring[: i + 1], inner, inner[:1], ring[i:]])
    return ring


def _rings(polygons: list[Polygon], tolerance: float) -> list[np.ndarray]:
    rings = []
    for polygon in polygons:
        simple = polygon.simplify(tolerance, preserve_topology=True) if tolerance > 0 else polygon
        if not simple.is_valid:
            simple = make_valid(simple)
        rings += [_bridged_ring(part) for part in _parts(simple) if part.area > 0]
    return rings


def draw(rings: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """The mask pycocotools draws for these polygons (one object, pieces and bridged holes together)."""
    flat = [ring.reshape(-1).tolist() for ring in rings if len(ring) >= 3]
    if not flat:
        return np.zeros((height, width), dtype=bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(flat, height, width))).astype(bool)


def _iou(rings: list[np.ndarray], mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """IoU of the drawn rings with ``mask``, both within ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    drawn = draw([ring - (x0, y0) for ring in rings], y1 - y0, x1 - x0)
    window = mask[y0:y1, x0:x1]
    union = np.count_nonzero(drawn | window)
    return np.count_nonzero(drawn & window) / union if union else 1.0


def mask_to_polygons(mask: np.ndarray, min_iou: float = DEFAULT_MIN_IOU) -> list[np.ndarray]:
    """The fewest-point polygons (``(N, 2)`` arrays of x, y) whose union, drawn as the training data
    is drawn (pycocotools), keeps at least ``min_iou`` IoU with ``mask``; one polygon per separate piece.

    The simplification tolerance is the largest of a halving sequence (4 px down to 1/16 px) that
    keeps ``min_iou``; the traced outline itself is the fallback.
    """
    polygons = trace_mask(mask)
    if not polygons:
        return []
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    # the outline may run a pixel outside the mask: the window has a margin
    box = (max(int(xs.min()) - 2, 0), max(int(ys.min()) - 2, 0),
           min(int(xs.max()) + 3, width), min(int(ys.max()) + 3, height))
    for tolerance in (4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625):
        rings = _rings(polygons, tolerance)
        if rings and _iou(rings, mask, box) >= min_iou:
            return rings
    return _rings(polygons, 0.0)


def instances_to_labelme(instances: Instances, image_path: str, *, min_iou: float = DEFAULT_MIN_IOU,
                         review_below: float | None = None) -> dict:
    """The labelme json of one image's predictions.

    Args:
        instances: the predictions (already filtered by the score threshold).
        image_path: the image's path relative to where the json is written (labelme's ``imagePath``).
        min_iou: how closely each instance's polygons keep its mask (see :func:`mask_to_polygons`).
        review_below: instances scoring under it get ``flags["review"] = True``.

    Returns:
        A labelme 5 document: one shape per piece of each instance, the pieces of one instance
        sharing a ``group_id``, the score in each shape's ``description``.
    """
    height, width = instances.image_size
    shapes = []
    next_group = 1
    for k in range(len(instances)):
        rings = mask_to_polygons(instances.masks[k], min_iou)
        if not rings:
            continue
        group_id = None
        if len(rings) > 1:
            group_id, next_group = next_group, next_group + 1
        score = float(instances.scores[k])
        label = instances.class_names[int(instances.class_ids[k])]
        for ring in rings:
            shape = labelme_shape(label, np.round(ring, 2).tolist(), group_id=group_id)
            shape["description"] = f"instance {k}, score {score:.3f}"
            if review_below is not None:
                shape["flags"] = {"review": score < review_below}
            shapes.append(shape)
    return labelme_record(image_path, int(width), int(height), shapes)
