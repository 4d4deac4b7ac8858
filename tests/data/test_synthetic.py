"""The synthetic labelme generator: determinism, valid labelme, annotations that match the pixels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from maskrcnn_finetune.data.synthetic import SHAPES, clip_polygon_to_halfplane, make_synthetic

REPO_ROOT = Path(__file__).resolve().parents[2]
SHAPE_KEYS = {"label", "points", "group_id", "description", "shape_type", "flags", "mask"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """30 images at seed 0: (json paths, loaded records)."""
    out = tmp_path_factory.mktemp("synthetic")
    paths = make_synthetic(out, 30, seed=0)
    return paths, [json.loads(p.read_text()) for p in paths]


def _instances(record: dict) -> list[list[dict]]:
    """Shapes grouped into instances the way labelme does: by (label, group_id), or alone."""
    groups: dict = {}
    for index, shape in enumerate(record["shapes"]):
        gid = shape["group_id"]
        key = (shape["label"], gid) if gid is not None else ("alone", index)
        groups.setdefault(key, []).append(shape)
    return list(groups.values())


def _rasterise(shapes: list[dict], width: int, height: int) -> Image.Image:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        draw.polygon([tuple(p) for p in shape["points"]], fill=255)
    return canvas


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_gives_identical_files_and_other_seed_different(tmp_path):
    first = make_synthetic(tmp_path / "a", 4, seed=7)
    make_synthetic(tmp_path / "b", 4, seed=7)
    make_synthetic(tmp_path / "c", 4, seed=8)
    make_synthetic(tmp_path / "d", 2, seed=7)

    a, b, c, d = (_files(tmp_path / name) for name in "abcd")
    assert [p.name for p in first] == [f"synth_{i:05d}.json" for i in range(4)]
    assert sorted(a) == sorted(f"synth_{i:05d}.{ext}" for i in range(4) for ext in ("jpg", "json"))
    assert a == b
    assert sorted(c) == sorted(a)
    assert all(a[name] != c[name] for name in a)
    # image i depends on (seed, i) only, not on how many images were asked for
    assert d == {name: a[name] for name in d}


def test_records_are_valid_labelme_inside_the_image(dataset):
    paths, records = dataset
    for path, record in zip(paths, records):
        assert set(record) == {"version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"}
        assert record["version"] == "5.2.1"
        assert record["imageData"] is None
        assert record["imagePath"] == path.with_suffix(".jpg").name
        with Image.open(path.parent / record["imagePath"]) as image:
            assert image.format == "JPEG"
            assert image.size == (record["imageWidth"], record["imageHeight"])
        width, height = record["imageWidth"], record["imageHeight"]
        assert 0.75 * 320 - 1 <= width <= 1.25 * 320 + 1
        assert 0.75 * 256 - 1 <= height <= 1.25 * 256 + 1
        assert 1 <= len(_instances(record)) <= 6

        for shape in record["shapes"]:
            assert set(shape) == SHAPE_KEYS
            assert shape["shape_type"] == "polygon"
            assert shape["label"] in SHAPES
            assert shape["group_id"] is None or type(shape["group_id"]) is int
            points = np.array(shape["points"])
            assert points.ndim == 2 and points.shape[1] == 2 and len(points) >= 3
            assert all(type(v) is float for p in shape["points"] for v in p)
            assert points.min() >= 0
            assert points[:, 0].max() <= width - 1 and points[:, 1].max() <= height - 1

        # a group_id ties exactly the two parts of one cut instance, never two instances
        groups = Counter(s["group_id"] for s in record["shapes"] if s["group_id"] is not None)
        assert all(n == 2 for n in groups.values())
        for gid in groups:
            assert len({s["label"] for s in record["shapes"] if s["group_id"] == gid}) == 1


def test_shape_sizes_span_the_requested_range(dataset):
    _, records = dataset
    extents = []
    for record in records:
        short = min(record["imageWidth"], record["imageHeight"])
        for shapes in _instances(record):
            points = np.concatenate([np.array(s["points"]) for s in shapes])
            extents.append(np.ptp(points, axis=0).max() / short)
    extents = np.array(extents)
    assert extents.min() >= 0.07 and extents.max() <= 0.41
    assert extents.min() < 0.15 and extents.max() > 0.30  # small and large ones both occur


def test_annotations_match_the_pixels(dataset):
    """Inside each instance's mask the pixels share one colour; just outside they do not."""
    paths, records = dataset
    checked = 0
    for path, record in zip(paths, records):
        pixels = np.asarray(Image.open(path.with_suffix(".jpg")).convert("RGB"), dtype=float)
        width, height = record["imageWidth"], record["imageHeight"]
        for shapes in _instances(record):
            mask = _rasterise(shapes, width, height)
            # rank filters are slow on whole images: work on the instance's box plus a margin
            x0, y0, x1, y1 = mask.getbbox()
            box = (max(0, x0 - 8), max(0, y0 - 8), min(width, x1 + 8), min(height, y1 + 8))
            mask, crop = mask.crop(box), pixels[box[1] : box[3], box[0] : box[2]]
            inside = np.asarray(mask.filter(ImageFilter.MinFilter(3))) > 0  # 1 px in from the edge
            near = np.asarray(mask.filter(ImageFilter.MaxFilter(5))) > 0  # 2 px out
            far = np.asarray(mask.filter(ImageFilter.MaxFilter(11))) > 0  # 5 px out
            ring = far & ~near
            assert inside.sum() > 20 and ring.sum() > 20

            colour = np.median(crop[inside], axis=0)
            # later shapes may hide up to 10% of an instance; JPEG blurs its edges a little
            in_colour_inside = (np.linalg.norm(crop[inside] - colour, axis=1) < 40).mean()
            in_colour_ring = (np.linalg.norm(crop[ring] - colour, axis=1) < 40).mean()
            assert in_colour_inside > 0.8, (path.name, shapes[0]["label"], in_colour_inside)
            assert in_colour_ring < 0.1, (path.name, shapes[0]["label"], in_colour_ring)
            mean_gap = np.linalg.norm(crop[inside].mean(axis=0) - crop[ring].mean(axis=0))
            assert mean_gap > 40, (path.name, shapes[0]["label"], mean_gap)
            checked += 1
    assert checked >= 60


def test_cut_instances_and_every_class_occur(dataset):
    _, records = dataset
    labels = Counter(s["label"] for r in records for s in r["shapes"])
    assert set(labels) == set(SHAPES)
    cut = [shapes for r in records for shapes in _instances(r) if len(shapes) == 2]
    assert cut, "no instance split into two polygons by a bar"
    for left, right in cut:
        left_x, right_x = np.array(left["points"])[:, 0], np.array(right["points"])[:, 0]
        assert left["group_id"] == right["group_id"] and left["label"] == right["label"]
        assert left_x.max() < right_x.min()  # the bar lies between the two parts


def test_only_requested_classes_are_drawn(tmp_path):
    paths = make_synthetic(tmp_path, 3, seed=1, image_size=(128, 96), classes=("circle",))
    labels = {s["label"] for p in paths for s in json.loads(p.read_text())["shapes"]}
    assert labels == {"circle"}


def test_clip_polygon_to_halfplane_cuts_a_square():
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]
    left = clip_polygon_to_halfplane(square, (1, 0), 4)  # x <= 4
    right = clip_polygon_to_halfplane(square, (-1, 0), -6)  # x >= 6
    assert sorted(map(tuple, left.tolist())) == [(0, 0), (0, 10), (4, 0), (4, 10)]
    assert sorted(map(tuple, right.tolist())) == [(6, 0), (6, 10), (10, 0), (10, 10)]
    assert len(clip_polygon_to_halfplane(square, (1, 0), -1)) == 0
    assert len(clip_polygon_to_halfplane(square, (1, 0), 20)) == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_images": 0}, "n_images=60"),
        ({"n_images": 2, "seed": -1}, "seed=0"),
        ({"n_images": 2, "image_size": (32, 256)}, "image_size=\\(320, 256\\)"),
        ({"n_images": 2, "classes": ("circle", "star")}, "subset"),
        ({"n_images": 2, "classes": "circle"}, "\\('circle',\\)"),
    ],
)
def test_bad_arguments_say_what_to_pass(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def test_cli_writes_the_images(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script must find the package itself
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "make_synthetic.py"), str(out), "--images", "3", "--seed", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.jpg")) == [f"synth_{i:05d}.jpg" for i in range(3)]
    assert len(list(out.glob("*.json"))) == 3
    assert "wrote 3 images with" in result.stderr
    assert _files(out) == _files(Path(make_synthetic(tmp_path / "same", 3, seed=2)[0]).parent)
