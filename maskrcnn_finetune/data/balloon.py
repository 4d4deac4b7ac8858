"""The balloon dataset of Matterport's Mask_RCNN: download, VIA -> labelme -> COCO json.

The zip holds ``balloon/train`` and ``balloon/val``, each with its images and one VIA
(VGG Image Annotator) ``via_region_data.json``. :func:`via_to_labelme` writes a labelme
file beside each image so that the balloon data takes the same path into COCO json as a
user's own labelme folder.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from PIL import Image

from maskrcnn_finetune.data.download import download_file, extract_zip
from maskrcnn_finetune.data.images import image_size_of
from maskrcnn_finetune.data.labelme import labelme_record, labelme_shape
from maskrcnn_finetune.data.convert import ConversionResult, convert_labelme_splits
from maskrcnn_finetune.errors import DatasetError

logger = logging.getLogger(__name__)

BALLOON_URL = "https://github.com/matterport/Mask_RCNN/releases/download/v2.1/balloon_dataset.zip"
BALLOON_SIZE = 38741381  # bytes, from a public download log of this release asset
# The asset's sha256 could not be looked up offline, so it is not pinned. The size check
# and the zip's CRCs still catch a truncated or damaged download, and download_file logs
# the sha256 of what it fetched so that a user can pin it (sha256= / --sha256).
BALLOON_SHA256 = None
BALLOON_LABEL = "balloon"
BALLOON_SPLITS = ("train", "val")
VIA_FILE = "via_region_data.json"

_ELLIPSE_VERTICES = 32


def _finite(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} is {value!r}, not a number")
    return float(value)


def _number(attrs: dict, key: str) -> float:
    return _finite(attrs[key], f"'{key}'")  # a KeyError is reported by the caller


def _via_region_to_shape(region, label: str) -> tuple[dict | None, str | None]:
    """One VIA region as a labelme shape.

    Returns:
        ``(shape, None)``, ``(None, reason)`` for a region that cannot be used, or
        ``(None, None)`` for one that describes no area (point, polyline) and is skipped.
    """
    if not isinstance(region, dict) or not isinstance(region.get("shape_attributes"), dict):
        return None, "has no 'shape_attributes' object"
    attrs = region["shape_attributes"]
    name = attrs.get("name")
    try:
        if name == "polygon":
            xs, ys = attrs["all_points_x"], attrs["all_points_y"]
            if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
                return None, "polygon needs 'all_points_x' and 'all_points_y' lists of the same length"
            points = [[_finite(x, "an x"), _finite(y, "a y")] for x, y in zip(xs, ys)]
            if len(points) < 3:
                return None, f"polygon has {len(points)} point(s), at least 3 are needed"
            return labelme_shape(label, points, "polygon"), None
        if name == "rect":
            x, y, w, h = (_number(attrs, k) for k in ("x", "y", "width", "height"))
            return labelme_shape(label, [[x, y], [x + w, y + h]], "rectangle"), None
        if name == "circle":
            cx, cy, r = (_number(attrs, k) for k in ("cx", "cy", "r"))
            return labelme_shape(label, [[cx, cy], [cx + r, cy]], "circle"), None
        if name == "ellipse":
            cx, cy, rx, ry = (_number(attrs, k) for k in ("cx", "cy", "rx", "ry"))
            theta = _number(attrs, "theta") if "theta" in attrs else 0.0  # VIA 2 rotates ellipses
            cos_t, sin_t = math.cos(theta), math.sin(theta)
            points = []
            for i in range(_ELLIPSE_VERTICES):
                a = 2 * math.pi * i / _ELLIPSE_VERTICES
                dx, dy = rx * math.cos(a), ry * math.sin(a)
                points.append([cx + dx * cos_t - dy * sin_t, cy + dx * sin_t + dy * cos_t])
            return labelme_shape(label, points, "polygon"), None
    except KeyError as exc:
        return None, f"{name} lacks the attribute {exc}"
    except ValueError as exc:
        return None, f"{name}: {exc}"
    if name in ("point", "polyline", "polygon_open"):
        return None, None
    return None, f"has the unknown shape '{name}'"


def _load_via(via_json_path: Path) -> dict:
    try:
        data = json.loads(via_json_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(f"VIA annotation file '{via_json_path}' does not exist; check the path") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{via_json_path} is not valid JSON ({exc}); export the annotations from VIA again") from exc
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        data = data["_via_img_metadata"]  # a whole VIA 2 project file, not just the regions
    if not isinstance(data, dict):
        raise DatasetError(
            f"{via_json_path} is not a VIA region file (expected an object keyed by 'filename+size'); "
            "export it from VIA with Annotation > Export Annotations (as json)"
        )
    return data


def via_to_labelme(via_json_path, images_dir, *, label: str = BALLOON_LABEL) -> list[Path]:
    """Writes a labelme ``<stem>.json`` beside each image listed in a VIA region file.

    Polygons stay polygons; VIA ``rect`` becomes a labelme rectangle, ``circle`` a labelme
    circle and ``ellipse`` a 32-vertex polygon. Points and polylines describe no area and
    are left out (logged). Image width and height are read from the image, upright
    (EXIF orientation applied) as labelme sees it. Nothing is written unless every entry
    can be converted.

    Args:
        via_json_path: VIA ``via_region_data.json`` (a dict keyed by ``filename+size`` whose
            entries hold ``filename`` and ``regions``, a dict or a list), or a VIA 2 project.
        images_dir: the folder the VIA ``filename`` values are relative to.
        label: the class name given to every shape.

    Returns:
        The labelme json files written, in the VIA file's order.

    Raises:
        DatasetError: listing every missing or unreadable image and every unusable region.
    """
    via_json_path, images_dir = Path(via_json_path), Path(images_dir)
    entries = _load_via(via_json_path)
    problems: list[str] = []
    documents: list[tuple[Path, dict]] = []
    skipped = 0
    for key, entry in entries.items():
        filename = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(filename, str) or not filename:
            problems.append(f"{via_json_path.name}: entry '{key}' has no 'filename'")
            continue
        image_path = images_dir / filename
        if not image_path.is_file():
            problems.append(f"{via_json_path.name}: image '{filename}' is listed but not found in {images_dir}")
            continue
        try:
            width, height = image_size_of(image_path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            problems.append(f"{via_json_path.name}: image '{filename}' cannot be read ({exc})")
            continue
        regions = entry.get("regions") or []
        if isinstance(regions, dict):  # VIA 1.x: {"0": region, "1": region, ...}
            regions = list(regions.values())
        if not isinstance(regions, list):
            problems.append(f"{via_json_path.name}: '{filename}' has 'regions' that is neither a list nor an object")
            continue
        shapes = []
        for index, region in enumerate(regions):
            shape, reason = _via_region_to_shape(region, label)
            if shape is not None:
                shapes.append(shape)
            elif reason is not None:
                problems.append(f"{via_json_path.name}: '{filename}' region {index} {reason}")
            else:
                skipped += 1
        documents.append(
            (
                image_path.with_suffix(".json"),
                labelme_record(image_path.name, width, height, shapes),
            )
        )
    if problems:
        raise DatasetError(
            problems,
            hint=f"Fix {via_json_path} (or put the missing images in {images_dir}) and run again; nothing was written.",
        )
    if skipped:
        logger.warning("%s: left out %d point/polyline region(s), which describe no area", via_json_path, skipped)
    written = []
    for json_path, document in documents:
        json_path.write_text(json.dumps(document, indent=2), encoding="utf-8")
        written.append(json_path)
    logger.info("Wrote %d labelme file(s) beside the images in %s", len(written), images_dir)
    return written


def _find_balloon_root(raw_dir: Path) -> Path:
    """The folder holding ``train/`` and ``val/``, each with its VIA file."""
    candidates = [raw_dir / "balloon", raw_dir, *sorted(raw_dir.glob("*/balloon"))]
    for candidate in candidates:
        if all((candidate / split / VIA_FILE).is_file() for split in BALLOON_SPLITS):
            return candidate
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in raw_dir.iterdir()) if raw_dir.is_dir() else []
    raise DatasetError(
        f"the archive unpacked into {raw_dir} does not have the balloon layout: expected "
        f"balloon/train/{VIA_FILE} and balloon/val/{VIA_FILE}, each beside its images; "
        f"found {', '.join(found) or 'nothing'} at the top",
        hint="Check that the URL points to balloon_dataset.zip of matterport/Mask_RCNN v2.1.",
    )


def prepare_balloon(
    out_dir,
    url: str = BALLOON_URL,
    expected_size: int | None = BALLOON_SIZE,
    sha256: str | None = BALLOON_SHA256,
    test_split: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> ConversionResult:
    """Downloads the balloon dataset and converts it to ``out_dir/train.json`` and ``val.json``.

    With ``test_split``, the older REST API kit's protocol instead: ``train.json`` and ``val.json``
    split the original train images (``val_fraction`` of them, drawn with ``seed``, to val) and
    ``test.json`` is the original val set, so models are chosen on val and reported on test.

    Layout written: ``out_dir/downloads/`` (the zip, reused on a second run),
    ``out_dir/raw/`` (the unpacked archive, with labelme files added beside the images),
    and the COCO json files with their images under ``out_dir/images/{train,val}/``.

    Args:
        out_dir: the output folder (created).
        url: where to download the zip from (a mirror, or a local server in tests).
        expected_size: the zip's size in bytes, or None not to check it.
        sha256: the zip's hex sha256, or None not to check it.
        test_split, val_fraction, seed: see above.

    Returns:
        The :class:`~maskrcnn_finetune.data.convert.ConversionResult` of the conversion.

    Raises:
        DatasetError: the download, the archive or its annotations cannot be used.
    """
    out_dir = Path(out_dir)
    zip_path = download_file(url, out_dir / "downloads" / "balloon_dataset.zip", expected_size=expected_size, sha256=sha256)
    root = _find_balloon_root(extract_zip(zip_path, out_dir / "raw"))
    split_dirs = {}
    for split in BALLOON_SPLITS:
        via_to_labelme(root / split / VIA_FILE, root / split, label=BALLOON_LABEL)
        split_dirs[split] = root / split
    if test_split:
        return convert_labelme_splits({"train": root / "train", "test": root / "val"}, out_dir, labels=[BALLOON_LABEL],
                                      val_from="train", val_fraction=val_fraction, seed=seed)
    return convert_labelme_splits(split_dirs, out_dir, labels=[BALLOON_LABEL])

