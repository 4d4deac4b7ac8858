"""A small labelme dataset drawn from nothing: solid shapes on textured backgrounds.

The demo and the tests need data that exists without a download, whose annotations are
exactly right, and that still asks something of the model: three shape classes at many
sizes and rotations, on backgrounds with colour gradients, noise and unannotated clutter
lines, some instances touching, and some cut in two by a bar drawn over them. A cut
instance is written as labelme writes one: two polygons with the same label and the same
``group_id``, which the converter (:mod:`maskrcnn_finetune.data.labelme`) merges into one
instance.

Every file depends only on ``(seed, index, image_size, classes)``: the same arguments give
byte-identical files, and asking for more images leaves the first ones unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from maskrcnn_finetune.data.labelme import labelme_record, labelme_shape, polygon_area, rasterize
from maskrcnn_finetune.errors import ConfigError

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle")
JPEG_QUALITY = 95

_MIN_SIDE = 64  # smaller images leave no room for shapes of 8%-40% of the short side
_SIZE_JITTER = 0.25  # each image side is image_size * U(1 - j, 1 + j)
_EXTENT_RANGE = (0.08, 0.40)  # largest bounding-box side of a shape, as a fraction of the short side
_MAX_INSTANCES = 6
_CIRCLE_VERTICES = 32
_MAX_OVERLAP = 0.10  # of the smaller instance, and of the hidden part of any instance
_OCCLUDED_FRACTION = 1 / 6
_MIN_OCCLUDED_WIDTH = 24  # px; narrower shapes are never cut by a bar
_PLACEMENT_TRIES = 40
_COLOUR_CANDIDATES = 64
_MIN_BACKGROUND_DISTANCE = 90.0  # RGB distance of a shape's colour to nearly all pixels around it
_MIN_COLOUR_DISTANCE = 90.0  # RGB distance between the colours of shapes and bars in one image


@dataclass
class _Instance:
    label: str
    outline: np.ndarray  # the whole shape as drawn
    parts: list[np.ndarray]  # what is annotated: the outline, or its two sides when a bar cuts it
    colour: tuple[int, int, int]
    mask: np.ndarray  # visible pixels as annotated (union of parts)
    claimed: np.ndarray  # mask plus its bar: what later shapes may only touch a little
    hidden: np.ndarray  # pixels of mask painted over by later shapes
    bar: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1), inclusive
    bar_colour: tuple[int, int, int] | None = None


def make_synthetic(
    out_dir: str | Path,
    n_images: int,
    seed: int = 0,
    image_size: tuple[int, int] = (320, 256),
    classes: tuple[str, ...] | list[str] = SHAPES,
) -> list[Path]:
    """Writes a labelme dataset of coloured shapes: ``synth_00000.jpg`` + ``synth_00000.json``, ...

    Each image holds 1-6 instances of the chosen shape classes (``circle``: a 32-gon,
    ``square`` and ``triangle``: rotated at random), 8%-40% of the short side across, in solid
    colours that stand out from the background around them. Instances overlap by at most 10%
    of the smaller one; about one in six is cut by a vertical bar and annotated as two
    polygons sharing a ``group_id``. Existing files of the same names are overwritten.

    Args:
        out_dir: folder to write into; created if missing.
        n_images: number of images, at least 1.
        seed: non-negative integer; the same arguments always give byte-identical files.
        image_size: ``(width, height)`` around which each image's size varies by +-25%.
        classes: the shape classes to draw, a non-empty subset of ``SHAPES``.

    Returns:
        The written labelme json paths, sorted.

    Raises:
        ValueError: an argument is out of range; the message says what to pass instead.
    """
    out_dir = Path(out_dir)
    classes = _check_args(out_dir, n_images, seed, image_size, classes)
    out_dir.mkdir(parents=True, exist_ok=True)

    # one independent stream per image, so image i does not depend on n_images
    streams = np.random.SeedSequence(seed).spawn(n_images)
    written = []
    n_instances = 0
    for index in tqdm(range(n_images), desc="synthetic images", unit="img"):
        rng = np.random.default_rng(streams[index])
        image, instances = _render_image(rng, image_size, classes)
        stem = f"synth_{index:05d}"
        image.save(out_dir / f"{stem}.jpg", quality=JPEG_QUALITY)
        json_path = out_dir / f"{stem}.json"
        record = _labelme_record(f"{stem}.jpg", image.width, image.height, instances)
        json_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        written.append(json_path)
        n_instances += len(instances)
    logger.debug("wrote %d synthetic images with %d instances to %s", n_images, n_instances, out_dir)
    return sorted(written)


def clip_polygon_to_halfplane(points, normal, offset: float) -> np.ndarray:
    """Clips a polygon to the half-plane ``normal . p <= offset`` (Sutherland-Hodgman, one edge).

    For a convex polygon the result is the exact intersection; new vertices lie on the
    boundary line. ``normal=(1, 0), offset=a`` keeps ``x <= a``; ``normal=(-1, 0), offset=-b``
    keeps ``x >= b``.

    Args:
        points: ``(N, 2)`` polygon vertices in order.
        normal: ``(nx, ny)`` of the boundary line; the half-plane it points away from is kept.
        offset: the line is ``normal . p == offset``.

    Returns:
        ``(M, 2)`` float array of the clipped polygon; ``M`` is 0 when nothing is left.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    side = pts @ np.asarray(normal, dtype=float) - offset  # <= 0: kept
    out = []
    for i in range(len(pts)):
        j = (i + 1) % len(pts)
        if side[i] <= 0:
            out.append(pts[i])
        if (side[i] < 0 < side[j]) or (side[j] < 0 < side[i]):
            t = side[i] / (side[i] - side[j])
            out.append(pts[i] + t * (pts[j] - pts[i]))
    return np.array(out, dtype=float).reshape(-1, 2)


def _check_args(out_dir: Path, n_images, seed, image_size, classes) -> tuple[str, ...]:
    """Raises ValueError naming the bad argument and what to pass; returns classes as a tuple."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir {out_dir} is a file; pass a folder path (it is created if missing)")
    if isinstance(n_images, bool) or not isinstance(n_images, numbers.Integral) or n_images < 1:
        raise ConfigError(f"n_images must be an integer >= 1, got {n_images!r}; pass e.g. n_images=60")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}; pass e.g. seed=0")
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < _MIN_SIDE for s in image_size)
    ):
        raise ConfigError(
            f"image_size must be (width, height) with integers >= {_MIN_SIDE}, got {image_size!r}; "
            f"pass e.g. image_size=(320, 256)"
        )
    if isinstance(classes, str):
        raise ConfigError(f"classes must be a sequence of names, got the string {classes!r}; pass e.g. ({classes!r},)")
    classes = tuple(classes)
    unknown = [c for c in classes if c not in SHAPES]
    if not classes or unknown or len(set(classes)) != len(classes):
        raise ConfigError(
            f"classes must be distinct names from {SHAPES}, got {classes!r}; "
            f"pass a non-empty subset such as {SHAPES!r}"
        )
    return classes


def _render_image(rng: np.random.Generator, image_size, classes) -> tuple[Image.Image, list[_Instance]]:
    """Draws one image and returns it with its instances in drawing (= annotation) order."""
    width = int(round(image_size[0] * rng.uniform(1 - _SIZE_JITTER, 1 + _SIZE_JITTER)))
    height = int(round(image_size[1] * rng.uniform(1 - _SIZE_JITTER, 1 + _SIZE_JITTER)))
    background = _draw_background(rng, width, height)

    instances: list[_Instance] = []
    for _ in range(int(rng.integers(1, _MAX_INSTANCES + 1))):
        label = classes[int(rng.integers(len(classes)))]
        instance = _place_instance(rng, label, background, instances)
        if instance is not None:
            for earlier in instances:
                earlier.hidden |= instance.claimed & earlier.mask
            instances.append(instance)

    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    for instance in instances:
        # the full shape first, then the bar over it: the visible pixels are exactly the parts
        draw.polygon([tuple(p) for p in instance.outline.tolist()], fill=instance.colour)
        if instance.bar is not None:
            draw.rectangle(instance.bar, fill=instance.bar_colour)
    return image, instances


def _place_instance(rng, label: str, background: np.ndarray, placed: list[_Instance]) -> _Instance | None:
    """Finds a position, size and colour for one shape that keeps overlaps small; None if none found."""
    height, width = background.shape[:2]
    short = min(width, height)
    for _ in range(_PLACEMENT_TRIES):
        extent = rng.uniform(*_EXTENT_RANGE) * short
        polygon = _shape_polygon(rng, label, extent)
        low, high = polygon.min(axis=0), polygon.max(axis=0)
        centre = np.array([rng.uniform(-low[0], width - 1 - high[0]), rng.uniform(-low[1], height - 1 - high[1])])
        polygon = _tidy(polygon + centre, width, height)
        mask = rasterize([polygon], width, height)
        if not _overlap_ok(mask, placed):
            continue

        parts, bar, claimed = [polygon], None, mask
        if rng.random() < _OCCLUDED_FRACTION:
            cut = _cut_with_bar(rng, polygon, width, height)
            if cut is not None:
                bar_mask = np.zeros_like(mask)
                x0, y0, x1, y1 = cut[1]
                bar_mask[y0 : y1 + 1, x0 : x1 + 1] = True
                # a bar over an earlier shape would make that shape's polygon wrong
                if not any((bar_mask & other.mask).any() for other in placed):
                    parts, bar = cut
                    mask = rasterize(parts, width, height)
                    claimed = mask | bar_mask
                    if not _overlap_ok(claimed, placed):
                        parts, bar, claimed = [polygon], None, rasterize([polygon], width, height)
                        mask = claimed

        others = [p.colour for p in placed] + [p.bar_colour for p in placed if p.bar_colour is not None]
        colour = _pick_colour(rng, background, claimed, others)
        bar_colour = _pick_colour(rng, background, claimed, others + [colour]) if bar is not None else None
        return _Instance(label, polygon, parts, colour, mask, claimed, np.zeros_like(mask), bar, bar_colour)
    logger.debug("no room for another %s after %d tries; image keeps %d", label, _PLACEMENT_TRIES, len(placed))
    return None


def _overlap_ok(claimed: np.ndarray, placed: list[_Instance]) -> bool:
    """True if a new shape covering ``claimed`` hides at most 10% of the smaller and of any earlier one."""
    area = np.count_nonzero(claimed)
    for other in placed:
        shared = np.count_nonzero(claimed & other.mask)
        if shared > _MAX_OVERLAP * min(area, np.count_nonzero(other.mask)):
            return False
        if np.count_nonzero((other.hidden | claimed) & other.mask) > _MAX_OVERLAP * np.count_nonzero(other.mask):
            return False
    return True


def _shape_polygon(rng, label: str, extent: float) -> np.ndarray:
    """A shape centred on the origin, rotated at random, whose bounding box's larger side is ``extent``."""
    if label == "circle":
        angles = rng.uniform(0, 2 * math.pi) + np.linspace(0, 2 * math.pi, _CIRCLE_VERTICES, endpoint=False)
    elif label == "square":
        # half of the squares stay axis-aligned, the way squares are usually photographed
        tilt = 0.0 if rng.random() < 0.5 else rng.uniform(0, math.pi / 2)
        angles = tilt + math.pi / 4 + np.arange(4) * math.pi / 2
    else:  # triangle: equilateral, any rotation, corners moved a little so not all are alike
        angles = rng.uniform(0, 2 * math.pi) + np.arange(3) * 2 * math.pi / 3 + rng.uniform(-0.15, 0.15, 3)
    unit = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return unit * (extent / np.ptp(unit, axis=0).max())


def _cut_with_bar(rng, polygon: np.ndarray, width: int, height: int):
    """Splits a shape with a vertical bar near its middle.

    Returns:
        ``([left_part, right_part], (x0, y0, x1, y1))`` with the bar's inclusive pixel box, or
        None when the shape is too narrow to leave two clear parts.
    """
    xmin, xmax = polygon[:, 0].min(), polygon[:, 0].max()
    ymin, ymax = polygon[:, 1].min(), polygon[:, 1].max()
    span = xmax - xmin
    if span < _MIN_OCCLUDED_WIDTH:
        return None
    bar_width = int(rng.integers(max(4, round(0.08 * span)), max(5, round(0.2 * span)) + 1))
    left = int(math.floor(xmin + rng.uniform(0.35, 0.65) * span - bar_width / 2))
    right = left + bar_width
    # the parts end on the columns x = left and x = right, which PIL fills; the bar covers
    # the columns strictly between them, so the visible pixels are exactly the two parts
    parts = [
        _tidy(clip_polygon_to_halfplane(polygon, (1.0, 0.0), left), width, height),
        _tidy(clip_polygon_to_halfplane(polygon, (-1.0, 0.0), -right), width, height),
    ]
    whole = polygon_area(polygon)
    if any(len(p) < 3 or polygon_area(p) < 0.1 * whole for p in parts):
        return None
    reach = rng.uniform(0.05, 0.3, size=2) * height
    bar = (left + 1, max(0, int(ymin - reach[0])), right - 1, min(height - 1, int(math.ceil(ymax + reach[1]))))
    return parts, bar


def _tidy(polygon: np.ndarray, width: int, height: int) -> np.ndarray:
    """Rounds to 0.01 px, keeps points inside the image and drops repeated consecutive points."""
    polygon = np.round(polygon, 2)
    polygon[:, 0] = np.clip(polygon[:, 0], 0, width - 1)
    polygon[:, 1] = np.clip(polygon[:, 1], 0, height - 1)
    keep = np.any(polygon != np.roll(polygon, 1, axis=0), axis=1)
    return polygon[keep] + 0.0  # + 0.0 turns -0.0 into 0.0 so the json never says "-0.0"


def _draw_background(rng, width: int, height: int) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 texture: colour gradient, clutter lines and stripes, noise."""
    start, end = rng.uniform(40, 215, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    t = (along - along.min()) / max(np.ptp(along), 1.0)
    image = Image.fromarray(np.clip(start + t[..., None] * (end - start), 0, 255).astype(np.uint8))

    # clutter: lines and wide faint stripes that belong to no class and are not annotated
    for _ in range(int(rng.integers(2, 7))):
        layer = image.copy()
        draw = ImageDraw.Draw(layer)
        ends = rng.uniform(-0.2, 1.2, size=(2, 2)) * (width, height)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.7:
            line_width, alpha = int(rng.integers(1, 4)), rng.uniform(0.5, 1.0)
        else:
            line_width, alpha = int(rng.integers(6, 21)), rng.uniform(0.15, 0.35)
        draw.line([tuple(ends[0]), tuple(ends[1])], fill=colour, width=line_width)
        image = Image.blend(image, layer, alpha)

    noisy = np.asarray(image, dtype=float) + rng.normal(0, rng.uniform(3, 10), size=(height, width, 3))
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def _pick_colour(rng, background: np.ndarray, region: np.ndarray, others: list) -> tuple[int, int, int]:
    """A solid colour far from nearly every background pixel around ``region`` and from ``others``.

    Draws candidate colours at random and keeps the first that passes both distances, else the
    one that comes closest, so the choice always terminates and stays deterministic.
    """
    ys, xs = np.nonzero(region)
    height, width = region.shape
    pad = 6
    rows = slice(max(0, ys.min() - pad), min(height, ys.max() + pad + 1))
    cols = slice(max(0, xs.min() - pad), min(width, xs.max() + pad + 1))
    around = background[rows, cols].reshape(-1, 3).astype(float)
    if len(around) > 1024:  # a fixed-stride sample is plenty for a percentile
        around = around[:: len(around) // 1024 + 1]
    candidates = rng.integers(0, 256, size=(_COLOUR_CANDIDATES, 3)).astype(float)
    distances = np.sqrt(((around[None, :, :] - candidates[:, None, :]) ** 2).sum(axis=2))
    to_background = np.percentile(distances, 2, axis=1)
    if others:
        to_others = np.linalg.norm(candidates[:, None, :] - np.asarray(others, float)[None], axis=2).min(axis=1)
    else:
        to_others = np.full(len(candidates), np.inf)
    good = (to_background >= _MIN_BACKGROUND_DISTANCE) & (to_others >= _MIN_COLOUR_DISTANCE)
    best = int(np.argmax(good)) if good.any() else int(np.argmax(np.minimum(to_background, to_others)))
    return tuple(int(c) for c in candidates[best])


def _labelme_record(image_name: str, width: int, height: int, instances: list[_Instance]) -> dict:
    """The labelme 5 json for one image; a cut instance is two shapes with one ``group_id``."""
    shapes = []
    next_group = 1
    for instance in instances:
        group_id = None
        if len(instance.parts) > 1:
            group_id, next_group = next_group, next_group + 1
        shapes += [labelme_shape(instance.label, part.tolist(), group_id=group_id) for part in instance.parts]
    return labelme_record(image_name, width, height, shapes)
