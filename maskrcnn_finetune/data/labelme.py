"""Reading labelme annotation files, with validation that names every problem and its fix.

labelme2coco 0.2.x (the usual one-step converter) is not used for the geometry: it truncates
polygon coordinates to integers and routes them through shapely's ``make_valid``, writes
rectangles with an empty segmentation (which Mask R-CNN drops), splits ``group_id`` instances
into separate objects and turns ``__ignore__`` into a class. This module follows labelme's own
``labelme2coco.py`` instead, whose output is the project's reference: shapes with the same
label and ``group_id`` form one instance, masks are rasterised with PIL exactly as labelme does,
and area and box come from that mask through pycocotools.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import io
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from maskrcnn_finetune.data.images import IMAGE_SUFFIXES, image_size_of
from maskrcnn_finetune.errors import DatasetError

logger = logging.getLogger(__name__)

IGNORED_LABELS = frozenset({"__ignore__", "_background_"})
"""labelme's conventional non-class labels: regions to leave out, not objects to learn."""

MASK_SHAPES = ("polygon", "rectangle", "circle")
LABELME_VERSION = "5.2.1"
"""The labelme version written into the files the kit makes (synthetic data, converted balloon)."""
SKIP_HINT = "Fix the files named above, or pass --skip-invalid to leave out the shapes and files that have problems."


@dataclass
class Instance:
    """One object: a label and the polygons (each an (N, 2) float array) that cover it."""

    label: str
    polygons: list[np.ndarray]
    source: str  # where it came from, for messages: "file.json shape 3"


@dataclass
class LabelmeFile:
    """One validated labelme annotation file and the image it describes."""

    json_path: Path
    rel_name: str  # the json's path relative to the source folder, for messages and output names
    width: int
    height: int
    instances: list[Instance]
    image_path: Path | None = None  # the image on disk, or None when it is embedded
    image_bytes: bytes | None = None  # embedded imageData, decoded
    image_suffix: str = ".jpg"


class _Problems:
    """Collects errors and warnings so that a user sees all of them at once."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, message: str) -> None:
        self.errors.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def find_labelme_files(source_dir: Path, exclude: list[Path] = ()) -> list[Path]:
    """All ``*.json`` files under ``source_dir`` (sorted), leaving out hidden folders and ``exclude``."""
    found = []
    for path in sorted(source_dir.rglob("*.json")):
        rel_parts = path.relative_to(source_dir).parts
        if any(part.startswith(".") for part in rel_parts):
            continue
        if any(_is_within(path, skip) for skip in exclude):
            continue
        found.append(path)
    return found


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def read_labelme_file(
    json_path: Path,
    source_dir: Path,
    labels: list[str] | None = None,
    problems: _Problems | None = None,
) -> LabelmeFile | None:
    """Reads and validates one labelme file.

    Args:
        json_path: the labelme ``.json`` file.
        source_dir: the folder the dataset was given as (for messages and output names).
        labels: the allowed class names, or None to accept every label.
        problems: collector for errors and warnings; a fresh one when None.

    Returns:
        The file with its instances, or None when it is not a labelme file or cannot be used
        (the reasons are in ``problems``). Shapes with problems are left out of ``instances``.
    """
    problems = problems if problems is not None else _Problems()
    rel = json_path.relative_to(source_dir).as_posix()
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        problems.error(
            f"{rel}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "re-save it from labelme or repair the syntax"
        )
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.error(f"{rel}: cannot be read ({exc}); check the file's permissions and encoding")
        return None

    if not isinstance(data, dict) or not ("shapes" in data or "imagePath" in data):
        problems.warn(f"{rel}: not a labelme annotation (no 'shapes' or 'imagePath'); skipped")
        return None
    shapes = data.get("shapes")
    if not isinstance(shapes, list):
        problems.error(f"{rel}: 'shapes' must be a list of shapes; re-save the file from labelme")
        return None

    image = _locate_image(json_path, rel, data, problems)
    if image is None:
        return None
    image_path, image_bytes, suffix, (width, height) = image
    for key, actual in (("imageWidth", width), ("imageHeight", height)):
        stated = data.get(key)
        if stated is not None and stated != actual:
            problems.error(
                f"{rel}: says {key}={stated} but its image is {width}x{height}; the annotations do not "
                "belong to this image. Open the image in labelme and save the annotations again"
            )
            return None

    instances = _read_shapes(shapes, rel, width, height, labels, problems)
    return LabelmeFile(
        json_path=json_path,
        rel_name=rel,
        width=width,
        height=height,
        instances=instances,
        image_path=image_path,
        image_bytes=image_bytes,
        image_suffix=suffix,
    )


def _locate_image(json_path: Path, rel: str, data: dict, problems: _Problems):
    """Finds the image a labelme file describes: on disk beside it, else its embedded imageData."""
    image_ref = data.get("imagePath")
    folder = json_path.parent
    candidates: list[Path] = []
    if isinstance(image_ref, str) and image_ref:
        image_ref = image_ref.replace("\\", "/")  # labelme on Windows writes backslashes
        candidates += [folder / image_ref, folder / Path(image_ref).name]
    candidates += [json_path.with_suffix(suffix) for suffix in IMAGE_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            size = _read_image_size(candidate.read_bytes, f"{rel}: image {candidate.name}", problems)
            if size is None:
                return None
            return candidate, None, candidate.suffix.lower(), size

    embedded = data.get("imageData")
    if isinstance(embedded, str) and embedded:
        try:
            raw = base64.b64decode(embedded, validate=True)
        except (binascii.Error, ValueError):
            problems.error(f"{rel}: its embedded imageData is not valid base64; put the image file beside the json")
            return None
        size = _read_image_size(lambda: raw, f"{rel}: embedded imageData", problems)
        if size is None:
            return None
        with Image.open(io.BytesIO(raw)) as img:
            suffix = "." + (img.format or "png").lower().replace("jpeg", "jpg")
        return None, raw, suffix, size

    problems.error(
        f"{rel}: image '{image_ref}' not found beside the json and the file has no embedded imageData; "
        "copy the image next to the json (or correct 'imagePath')"
    )
    return None


def _read_image_size(read_bytes, what: str, problems: _Problems) -> tuple[int, int] | None:
    """Decodes an image fully (so truncated files are caught) and returns its upright size."""
    try:
        size = image_size_of(io.BytesIO(read_bytes()))
    except Image.DecompressionBombError as exc:
        problems.error(f"{what} is too large to decode safely ({exc}); resize it before annotating")
        return None
    except (OSError, ValueError, SyntaxError) as exc:
        problems.error(f"{what} cannot be read as an image ({exc}); replace it with a valid JPEG or PNG")
        return None
    return size


def _read_shapes(shapes, rel, width, height, labels, problems) -> list[Instance]:
    """Turns labelme shapes into instances: grouping, conversion to polygons, clipping."""
    groups: dict[tuple, Instance] = {}
    unsupported: Counter = Counter()
    clipped = 0
    for index, shape in enumerate(shapes):
        where = f"{rel}: shape {index}"
        if not isinstance(shape, dict):
            problems.error(f"{where} is not an object; re-save the file from labelme")
            continue
        label = shape.get("label")
        if not isinstance(label, str) or not label.strip():
            problems.error(f"{where} has no label; give it a class name in labelme")
            continue
        label = label.strip()
        if label in IGNORED_LABELS:
            continue
        where = f"{rel}: shape {index} ('{label}')"
        shape_type = shape.get("shape_type") or "polygon"  # labelme before 3.x had no shape_type
        if shape_type not in MASK_SHAPES:
            unsupported[shape_type] += 1
            continue
        if labels is not None and label not in labels:
            problems.error(
                f"{where}: label '{label}' is not one of --labels ({', '.join(labels)}); "
                "correct the label or add it to --labels"
            )
            continue
        polygon = _shape_to_polygon(shape.get("points"), shape_type, where, problems)
        if polygon is None:
            continue
        inside = np.clip(polygon, [0.0, 0.0], [float(width), float(height)])
        if not np.array_equal(inside, polygon):
            clipped += 1
        if polygon_area(inside) <= 0.0:
            problems.error(f"{where} lies entirely outside the {width}x{height} image; delete or redraw it")
            continue
        group_id = shape.get("group_id")
        key = (label, group_id) if group_id is not None else (label, "shape", index)
        if key in groups:
            groups[key].polygons.append(inside)
        else:
            groups[key] = Instance(label=label, polygons=[inside], source=where)
    for shape_type, count in sorted(unsupported.items()):
        problems.error(
            f"{rel}: {count} '{shape_type}' shape(s), which describe no area; only "
            f"{', '.join(MASK_SHAPES)} shapes make masks. Redraw them as polygons or delete them"
        )
    if clipped:
        problems.warn(f"{rel}: {clipped} shape(s) reached outside the {width}x{height} image; clipped to its border")
    return list(groups.values())


def _shape_to_polygon(points, shape_type: str, where: str, problems: _Problems) -> np.ndarray | None:
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        pts = None
    if pts is None or pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        problems.error(f"{where}: 'points' must be a list of [x, y] pairs; redraw the shape in labelme")
        return None
    if not np.isfinite(pts).all():
        problems.error(f"{where}: has a point that is not a finite number; redraw the shape")
        return None
    if shape_type == "polygon":
        if len(pts) < 3:
            problems.error(f"{where}: polygon has {len(pts)} point(s), a polygon needs at least 3; redraw or delete it")
            return None
        return pts
    if shape_type == "rectangle":
        if len(pts) < 2:
            problems.error(f"{where}: rectangle needs 2 corner points, has {len(pts)}; redraw it")
            return None
        (x1, y1), (x2, y2) = pts.min(axis=0), pts.max(axis=0)
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            problems.error(f"{where}: rectangle has no area; redraw or delete it")
            return None
        return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
    # circle: centre and one point on the circle, as labelme stores it
    if len(pts) != 2:
        problems.error(f"{where}: circle needs a centre and a point on the circle, has {len(pts)} point(s); redraw it")
        return None
    (cx, cy), edge = pts[0], pts[1]
    radius = float(np.hypot(*(edge - pts[0])))
    if radius <= 0:
        problems.error(f"{where}: circle has zero radius; redraw or delete it")
        return None
    steps = max(16, int(math.ceil(2 * math.pi * radius / 3)))  # a vertex every ~3 px
    angles = np.linspace(0, 2 * math.pi, steps, endpoint=False)
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def polygon_area(polygon: np.ndarray) -> float:
    """The area of an ``(N, 2)`` polygon (shoelace formula), whichever way it turns."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def labelme_shape(label: str, points, shape_type: str = "polygon", group_id: int | None = None) -> dict:
    """One labelme 5 shape, as labelme itself writes it."""
    return {
        "label": label,
        "points": [[float(x), float(y)] for x, y in points],
        "group_id": group_id,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
        "mask": None,
    }


def labelme_record(image_path: str, width: int, height: int, shapes: list[dict]) -> dict:
    """The labelme 5 json of one image whose file is ``image_path`` (relative to the json)."""
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": height,
        "imageWidth": width,
    }


def rasterize(polygons: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """Union of polygons as a boolean (height, width) mask, drawn as labelme draws it."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon([tuple(p) for p in polygon.tolist()], outline=1, fill=1)
    return np.asarray(canvas, dtype=bool)


def _check_similar_labels(files: list[LabelmeFile], problems: _Problems) -> None:
    """Flags a label used once beside a much more frequent one that it nearly matches (a typo)."""
    counts: Counter = Counter(inst.label for f in files for inst in f.instances)
    first_use = {}
    for f in files:
        for inst in f.instances:
            first_use.setdefault(inst.label, inst.source)
    for rare, rare_count in counts.items():
        if rare_count > 1:
            continue
        for common, common_count in counts.most_common():
            if common == rare or common_count < 3:
                continue
            close = rare.lower() == common.lower() or difflib.SequenceMatcher(None, rare.lower(), common.lower()).ratio() >= 0.8
            if close:
                problems.error(
                    f"label '{rare}' is used once ({first_use[rare]}) but '{common}' {common_count} times: "
                    f"probably a typo. Correct it, or pass --labels to list the real classes"
                )
                break


def load_labelme_folder(
    source_dir: Path,
    labels: list[str] | None = None,
    skip_invalid: bool = False,
    exclude: list[Path] = (),
) -> tuple[list[LabelmeFile], list[str], list[str]]:
    """Reads and validates every labelme file under a folder.

    Args:
        source_dir: folder with labelme ``.json`` files and their images (sub-folders too).
        labels: allowed class names in id order, or None for every label found.
        skip_invalid: leave out shapes and files with problems instead of stopping.
        exclude: files and folders not to scan (the outputs of an earlier conversion).

    Returns:
        ``(files, class_names, warnings)``: the usable files, the class names in id order,
        and the warnings to show.

    Raises:
        DatasetError: listing every problem, when a file cannot be used and ``skip_invalid``
            is off, or when nothing usable is left.
    """
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise DatasetError(f"labelme folder '{source_dir}' does not exist; pass the folder that holds the .json files")
    json_paths = find_labelme_files(source_dir, exclude=exclude)
    if not json_paths:
        raise DatasetError(
            f"no labelme .json files found under '{source_dir}'; pass the folder where labelme saved its annotations"
        )
    problems = _Problems()
    files = []
    for path in tqdm(json_paths, desc="Reading labelme files", unit="file", disable=len(json_paths) < 20):
        record = read_labelme_file(path, source_dir, labels=labels, problems=problems)
        if record is not None:
            files.append(record)
    if labels is None:
        _check_similar_labels(files, problems)
    if problems.errors and not skip_invalid:
        raise DatasetError(problems.errors, hint=SKIP_HINT)
    warnings = problems.warnings + [f"left out: {e}" for e in problems.errors]
    files = [f for f in files if f.instances] if skip_invalid else files
    if not any(f.instances for f in files):
        raise DatasetError(
            f"no annotated objects found in '{source_dir}' (every shape was missing, ignored or invalid); "
            "draw polygons in labelme and save before converting"
        )
    class_names = list(labels) if labels is not None else sorted({i.label for f in files for i in f.instances})
    for message in warnings:
        logger.warning(message)
    return files, class_names, warnings
