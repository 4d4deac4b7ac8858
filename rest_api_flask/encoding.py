"""What the routes answer, encoded: instances as JSON (COCO RLE masks, polygons, per-instance numbers,
COCO results) and drawn images as file bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn_finetune.evaluate import encode_rle, instances_to_coco
from maskrcnn_finetune.structures import Instances


RLE_FORMATS = ("compressed", "uncompressed")
"""``mask_rle`` in answers: COCO's compressed counts (a string, the default) or the run lengths as numbers."""


def decode_rle(rle: dict) -> np.ndarray:
    """The boolean mask of an RLE, compressed (:func:`encode_rle`) or uncompressed (:func:`uncompressed_rle`)."""
    height, width = rle["size"]
    if isinstance(rle["counts"], list):
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": rle["counts"]}, height, width)
        return mask_utils.decode(rle).astype(bool)
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """A mask as COCO's uncompressed RLE: run lengths over the pixels in column-major order, starting
    with the background (``{"size": [h, w], "counts": [0, 5, ...]}``), what a browser reads directly."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    ends = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], ends, [flat.size]])).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def mask_polygons(mask: np.ndarray, min_points: int = 3) -> list[list[float]]:
    """Outlines of a mask as COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` (pixel-edge coordinates).

    Traced with contourpy (matplotlib's contour engine) at level 0.5 around a padded mask, so
    the outline runs half a pixel outside each covered pixel centre and closes at the borders.
    """
    from contourpy import contour_generator

    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float64), 1)
    lines = contour_generator(z=padded).lines(0.5)
    polygons = []
    for line in lines:
        if len(line) < min_points:
            continue
        # padded index -> image pixel centre (-1), then +0.5 to pixel-edge coordinates as COCO uses
        xy = np.clip(line - 0.5, 0, [mask.shape[1], mask.shape[0]])
        polygons.append([round(float(v), 2) for v in xy.reshape(-1)])
    return polygons


def mask_rles(instances: Instances) -> list[dict]:
    """Each instance's mask as COCO RLE (:func:`encode_rle`), encoded once for the response and the files."""
    return [encode_rle(mask) for mask in instances.masks]


def instances_json(instances: Instances, result_id: str, polygons: bool = False,
                   rles: list[dict] | None = None, rle_format: str = "compressed") -> list[dict]:
    """One dict per instance, in the API's contract (class, score, box, area, RLE, links).

    Args:
        rles: the masks from :func:`mask_rles`, when the caller already has them.
        rle_format: ``mask_rle`` as COCO's compressed string or the run lengths (:data:`RLE_FORMATS`).
    """
    total = float(instances.image_size[0] * instances.image_size[1]) or 1.0
    rles = mask_rles(instances) if rles is None else rles
    out = []
    for k in range(len(instances)):
        mask = instances.masks[k]
        area = int(np.count_nonzero(mask))
        item = {
            "index": k,
            "class_id": int(instances.class_ids[k]),
            "class_name": instances.class_names[int(instances.class_ids[k])],
            "score": round(float(instances.scores[k]), 5),
            "box": [round(float(v), 2) for v in instances.boxes[k]],
            "area": area,
            "area_fraction": round(area / total, 6),
            "mask_rle": rles[k] if rle_format == "compressed" else uncompressed_rle(mask),
        }
        if polygons:
            item["polygons"] = mask_polygons(mask)
        item["links"] = {
            "mask": f"/api/v1/results/{result_id}/instances/{k}/mask.png",
            "crop": f"/api/v1/results/{result_id}/instances/{k}/crop.png",
        }
        out.append(item)
    return out


def coco_results(instances: Instances, image_id: int = 1, rles: list[dict] | None = None) -> list[dict]:
    """The instances as a COCO results list (what ``COCO.loadRes`` reads); category ids start at 1."""
    return instances_to_coco(instances, image_id, list(range(1, len(instances.class_names) + 1)), rles=rles)


def encode_image(array: np.ndarray, fmt: str) -> bytes:
    """An image as the bytes of a file in ``fmt`` (a PIL format name: ``"JPEG"``, ``"PNG"``, ...), as the
    older kits' routes answer it."""
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if fmt in ("JPEG", "BMP") and image.mode == "RGBA":
        image = image.convert("RGB")
    # JPEG at quality 95: what OpenCV's imwrite, which the older kits used, writes by default
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()
