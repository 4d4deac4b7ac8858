"""COCO json files: loading any user-given one with validation."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from maskrcnn_finetune.data.images import image_size_of
from maskrcnn_finetune.errors import DatasetError

logger = logging.getLogger(__name__)


@dataclass
class CocoData:
    """A validated COCO instance-segmentation dataset, ready for the engines.

    Attributes:
        json_path: the file it was read from.
        images: image entries (``id``, ``file_name``, ``width``, ``height``), sorted by id.
        annotations: ``{image id: [annotation, ...]}``; every image has an entry.
        categories: category entries sorted by id. Engines number classes 1..K in this order
            (0 is the background), whatever ids the file uses.
    """

    json_path: Path
    images: list[dict]
    annotations: dict[int, list[dict]]
    categories: list[dict]

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    @property
    def label_of_category(self) -> dict[int, int]:
        """COCO category id -> contiguous class index (1..K) used by the models."""
        return {c["id"]: i + 1 for i, c in enumerate(self.categories)}

    def fingerprint(self) -> dict:
        """What identifies this data set's content: image and annotation counts and a digest of the image
        entries with their annotations (a checkpoint keeps it, so --resume notices other training data).
        Images count by file name, not folder: the same data set moved or converted elsewhere is the same."""
        content = [(Path(image["file_name"]).name, image.get("width"), image.get("height"),
                    self.annotations.get(image["id"], [])) for image in self.images]
        digest = hashlib.sha1(json.dumps([content, self.categories], sort_keys=True, default=str).encode()).hexdigest()
        return {"images": len(self.images), "annotations": sum(map(len, self.annotations.values())),
                "digest": digest[:16]}

    def image_path(self, image: dict) -> Path:
        """Where an image's file is: ``file_name`` relative to the json's folder, or absolute."""
        return (self.json_path.parent / image["file_name"]).resolve()


def _is_number_list(value, min_len: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) >= min_len
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


def load_coco(json_path, check_images: bool = True) -> CocoData:
    """Reads a COCO json and checks everything a Mask R-CNN engine relies on.

    Annotations that cannot train a mask model (crowd regions, boxes without area) are left
    out with a warning; structural problems (unknown ids, no masks, missing images) are errors.

    Args:
        json_path: the COCO json file; image ``file_name`` entries are relative to its folder.
        check_images: also check that every image file exists and has the stated size.

    Returns:
        The :class:`CocoData`.

    Raises:
        DatasetError: listing every problem with its fix.
    """
    json_path = Path(json_path)
    where = json_path.name
    if not json_path.is_file():
        raise DatasetError(
            f"COCO json '{json_path}' does not exist; convert your labelme folder first with "
            "maskrcnn_finetune.data.convert.convert_labelme(LABELME_DIR, OUT_DIR) (notebook 01_prepare_dataset; "
            "in the repository: python scripts/labelme_to_coco.py LABELME_DIR OUT_DIR) and pass OUT_DIR/train.json"
        )
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}); regenerate the file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{where}: cannot be read ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DatasetError(
            f"{where}: not a COCO dataset (it needs 'images', 'annotations' and 'categories' lists); "
            "for labelme files run maskrcnn_finetune.data.convert.convert_labelme first (notebook 01_prepare_dataset)"
        )

    errors: list[str] = []
    warnings: list[str] = []
    categories = {}
    for cat in data["categories"]:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            errors.append(f"{where}: category {cat!r} needs an integer 'id' and a 'name'")
        elif cat["id"] in categories:
            errors.append(f"{where}: category id {cat['id']} is used twice; give every category its own id")
        else:
            categories[cat["id"]] = cat
    if not categories and not errors:
        errors.append(f"{where}: has no categories; a dataset needs at least one class")

    images = {}
    for img in data["images"]:
        if not isinstance(img, dict) or not isinstance(img.get("id"), int) or not isinstance(img.get("file_name"), str):
            errors.append(f"{where}: image entry {str(img)[:80]} needs an integer 'id' and a 'file_name'")
            continue
        if img["id"] in images:
            errors.append(f"{where}: image id {img['id']} is used twice; give every image its own id")
            continue
        images[img["id"]] = dict(img)

    by_image: dict[int, list[dict]] = {i: [] for i in images}
    crowd = empty = 0
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            errors.append(f"{where}: annotation {str(ann)[:80]} is not an object")
            continue
        aid = ann.get("id", "?")
        if ann.get("image_id") not in images:
            errors.append(f"{where}: annotation {aid} refers to image id {ann.get('image_id')!r}, which is not in 'images'")
            continue
        if ann.get("category_id") not in categories:
            errors.append(f"{where}: annotation {aid} has category id {ann.get('category_id')!r}, which is not in 'categories'")
            continue
        seg = ann.get("segmentation")
        is_rle = isinstance(seg, dict) and "counts" in seg and "size" in seg
        is_poly = isinstance(seg, list) and len(seg) > 0 and all(_is_number_list(p, 6) and len(p) % 2 == 0 for p in seg)
        if not (is_rle or is_poly):
            errors.append(
                f"{where}: annotation {aid} has no usable mask ('segmentation' must be polygons of 3+ points or an RLE); "
                "Mask R-CNN learns from masks, so draw polygons rather than boxes"
            )
            continue
        if ann.get("iscrowd", 0):
            crowd += 1
            continue
        bbox = ann.get("bbox")
        if not _is_number_list(bbox, 4) or bbox[2] <= 0 or bbox[3] <= 0:
            empty += 1
            continue
        by_image[ann["image_id"]].append(ann)
    if crowd:
        warnings.append(f"{where}: {crowd} crowd annotation(s) (iscrowd=1) left out of training")
    if empty:
        warnings.append(f"{where}: {empty} annotation(s) with an empty or missing box left out")

    if check_images:
        for img in images.values():
            path = json_path.parent / img["file_name"]
            if not path.is_file():
                errors.append(f"{where}: image '{img['file_name']}' not found (looked for {path}); "
                              "keep the images where the json's file_name entries point, relative to the json")
                continue
            try:
                size = image_size_of(path)
            except (OSError, ValueError, SyntaxError) as exc:
                errors.append(f"{where}: image '{img['file_name']}' cannot be read ({exc}); replace the file")
                continue
            if img.get("width") is None or img.get("height") is None:
                img["width"], img["height"] = size
            elif (img["width"], img["height"]) != size:
                errors.append(f"{where}: image '{img['file_name']}' is {size[0]}x{size[1]} but the json says "
                              f"{img['width']}x{img['height']}; regenerate the json from the annotations")
    else:
        for img in images.values():
            if not isinstance(img.get("width"), int) or not isinstance(img.get("height"), int):
                errors.append(f"{where}: image '{img['file_name']}' needs integer 'width' and 'height'")
    if errors:
        raise DatasetError(errors)
    for message in warnings:
        logger.warning(message)
    if not any(by_image.values()):
        raise DatasetError(f"{where}: no usable annotations; a training set needs annotated objects")
    return CocoData(
        json_path=json_path,
        images=[images[i] for i in sorted(images)],
        annotations={i: by_image[i] for i in sorted(by_image)},
        categories=[categories[c] for c in sorted(categories)],
    )
