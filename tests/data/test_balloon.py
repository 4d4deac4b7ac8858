"""The balloon dataset: VIA -> labelme, and download -> COCO json end to end on a local server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from maskrcnn_finetune.data.balloon import prepare_balloon, via_to_labelme
from maskrcnn_finetune.errors import DatasetError

REPO = Path(__file__).resolve().parents[2]

# split -> {file name: (width, height, [polygon as [(x, y), ...], ...])}
BALLOON_LAYOUT = {
    "train": {
        "34020010494_e5cb88e1c4_k.jpg": (64, 48, [[(10, 8), (30, 6), (34, 28), (12, 30)], [(40, 20), (60, 22), (50, 44)]]),
        "24631331976_defa3bb61f_k.jpg": (48, 64, [[(5, 5), (40, 10), (20, 50)]]),
        "2917282960_06beee649a_b.jpg": (56, 40, [[(2.5, 3.5), (50.5, 3.5), (50.5, 36.5), (2.5, 36.5)]]),
    },
    "val": {
        "3825919971_93fb1ec581_b.jpg": (64, 48, [[(20, 10), (44, 12), (40, 40), (18, 36)]]),
        "4838031651_3e7b5ea5c7_b.jpg": (40, 40, [[(4, 4), (36, 6), (30, 34)], [(8, 20), (16, 20), (12, 30)]]),
    },
}


def via_region(points) -> dict:
    return {
        "shape_attributes": {
            "name": "polygon",
            "all_points_x": [p[0] for p in points],
            "all_points_y": [p[1] for p in points],
        },
        "region_attributes": {},
    }


def via_entry(filename: str, size: int, regions) -> dict:
    return {"filename": filename, "size": size, "regions": regions, "file_attributes": {}}


def jpeg_bytes(width: int, height: int, exif_orientation: int | None = None) -> bytes:
    img = Image.new("RGB", (width, height), (90, 140, 200))
    buf = io.BytesIO()
    if exif_orientation is None:
        img.save(buf, "JPEG")
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def write_via_split(folder: Path, images: dict, regions_as: str) -> None:
    """Writes images and a via_region_data.json, with ``regions`` as a "dict" (VIA 1) or a "list"."""
    folder.mkdir(parents=True, exist_ok=True)
    via = {}
    for name, (width, height, polygons) in images.items():
        data = jpeg_bytes(width, height)
        (folder / name).write_bytes(data)
        regions = [via_region(p) for p in polygons]
        if regions_as == "dict":
            regions = {str(i): r for i, r in enumerate(regions)}
        via[f"{name}{len(data)}"] = via_entry(name, len(data), regions)
    (folder / "via_region_data.json").write_text(json.dumps(via))


def balloon_zip(tmp_path: Path) -> bytes:
    """A small zip with the real balloon_dataset.zip layout (including macOS junk)."""
    src = tmp_path / "zip_src"
    write_via_split(src / "balloon" / "train", BALLOON_LAYOUT["train"], regions_as="dict")
    write_via_split(src / "balloon" / "val", BALLOON_LAYOUT["val"], regions_as="list")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(src.rglob("*")):
            zf.write(path, path.relative_to(src).as_posix())
        zf.writestr("__MACOSX/balloon/train/._via_region_data.json", b"\x00\x05\x16\x07junk")
    return buf.getvalue()


def extent(points) -> list[float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


# ---- VIA -> labelme on its own ---------------------------------------------------------


def test_via_to_labelme_dict_regions(tmp_path):
    images = BALLOON_LAYOUT["train"]
    write_via_split(tmp_path, images, regions_as="dict")
    written = via_to_labelme(tmp_path / "via_region_data.json", tmp_path)
    assert [p.name for p in written] == [Path(n).with_suffix(".json").name for n in images]
    name = "34020010494_e5cb88e1c4_k.jpg"
    doc = json.loads((tmp_path / "34020010494_e5cb88e1c4_k.json").read_text())
    assert doc == {
        "version": "5.2.1",
        "flags": {},
        "shapes": [
            {
                "label": "balloon",
                "points": [[float(x), float(y)] for x, y in polygon],
                "group_id": None,
                "description": "",
                "shape_type": "polygon",
                "flags": {},
                "mask": None,
            }
            for polygon in images[name][2]
        ],
        "imagePath": name,
        "imageData": None,
        "imageHeight": 48,
        "imageWidth": 64,
    }


def test_via_to_labelme_list_regions_and_other_shapes(tmp_path):
    write_via_split(tmp_path, BALLOON_LAYOUT["val"], regions_as="list")
    (tmp_path / "shapes.jpg").write_bytes(jpeg_bytes(80, 60))
    regions = [
        {"shape_attributes": {"name": "rect", "x": 5, "y": 6, "width": 20, "height": 10}, "region_attributes": {}},
        {"shape_attributes": {"name": "circle", "cx": 40, "cy": 30, "r": 8}, "region_attributes": {}},
        {"shape_attributes": {"name": "ellipse", "cx": 60, "cy": 20, "rx": 10, "ry": 5}, "region_attributes": {}},
        {"shape_attributes": {"name": "point", "cx": 1, "cy": 1}, "region_attributes": {}},
    ]
    via = json.loads((tmp_path / "via_region_data.json").read_text())
    via["shapes.jpg123"] = via_entry("shapes.jpg", 123, regions)
    (tmp_path / "via_region_data.json").write_text(json.dumps(via))

    written = via_to_labelme(tmp_path / "via_region_data.json", tmp_path, label="thing")
    assert len(written) == 3
    val_doc = json.loads((tmp_path / "4838031651_3e7b5ea5c7_b.json").read_text())
    assert [s["points"][0] for s in val_doc["shapes"]] == [[4.0, 4.0], [8.0, 20.0]]
    assert (val_doc["imageWidth"], val_doc["imageHeight"]) == (40, 40)

    shapes = json.loads((tmp_path / "shapes.json").read_text())["shapes"]
    assert [s["shape_type"] for s in shapes] == ["rectangle", "circle", "polygon"]  # the point has no area
    assert {s["label"] for s in shapes} == {"thing"}
    assert shapes[0]["points"] == [[5.0, 6.0], [25.0, 16.0]]
    assert shapes[1]["points"] == [[40.0, 30.0], [48.0, 30.0]]
    ellipse = shapes[2]["points"]
    assert len(ellipse) == 32
    assert extent(ellipse) == pytest.approx([50.0, 15.0, 20.0, 10.0], abs=1e-6)


def test_via_to_labelme_size_is_upright(tmp_path):
    (tmp_path / "rotated.jpg").write_bytes(jpeg_bytes(60, 40, exif_orientation=6))  # shown rotated by 90 degrees
    via = {"rotated.jpg1": via_entry("rotated.jpg", 1, [via_region([(1, 1), (30, 2), (20, 50)])])}
    (tmp_path / "via.json").write_text(json.dumps(via))
    (written,) = via_to_labelme(tmp_path / "via.json", tmp_path)
    doc = json.loads(written.read_text())
    assert (doc["imageWidth"], doc["imageHeight"]) == (40, 60)


def test_via_to_labelme_lists_every_missing_image(tmp_path):
    write_via_split(tmp_path, BALLOON_LAYOUT["val"], regions_as="list")
    via = json.loads((tmp_path / "via_region_data.json").read_text())
    via["gone1.jpg1"] = via_entry("gone1.jpg", 1, [])
    via["gone2.jpg1"] = via_entry("gone2.jpg", 1, [])
    via["bad.jpg1"] = via_entry("3825919971_93fb1ec581_b.jpg", 1, [via_region([(1, 1), (2, 2)])])
    (tmp_path / "via_region_data.json").write_text(json.dumps(via))
    with pytest.raises(DatasetError) as info:
        via_to_labelme(tmp_path / "via_region_data.json", tmp_path)
    message = str(info.value)
    assert "'gone1.jpg' is listed but not found" in message
    assert "'gone2.jpg' is listed but not found" in message
    assert "region 0 polygon has 2 point(s)" in message
    assert [p.name for p in tmp_path.glob("*.json")] == ["via_region_data.json"]  # nothing was written


def test_via_to_labelme_rejects_non_via_json(tmp_path):
    (tmp_path / "via.json").write_text("[1, 2, 3]")
    with pytest.raises(DatasetError, match="not a VIA region file"):
        via_to_labelme(tmp_path / "via.json", tmp_path)


# ---- end to end ------------------------------------------------------------------------


def test_prepare_balloon_end_to_end(http_server, tmp_path):
    data = balloon_zip(tmp_path)
    url = http_server.serve("/balloon_dataset.zip", data)
    out = tmp_path / "balloon_coco"

    prepare_balloon(out, url=url, expected_size=len(data))

    for split, images in BALLOON_LAYOUT.items():
        json_path = out / f"{split}.json"
        assert json_path.is_file()
        coco = json.loads(json_path.read_text())
        assert len(coco["images"]) == len(images)
        assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "balloon")]
        n_annotations = 0
        for image in coco["images"]:
            assert (json_path.parent / image["file_name"]).is_file()
            original = next(n for n in images if Path(n).stem == Path(image["file_name"]).stem)
            width, height, polygons = images[original]
            assert (image["width"], image["height"]) == (width, height)
            bboxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image["id"]]
            assert len(bboxes) == len(polygons)
            for bbox, polygon in zip(bboxes, polygons):
                assert bbox == pytest.approx(extent(polygon), abs=1.0)
            n_annotations += len(polygons)
        assert len(coco["annotations"]) == n_annotations
        assert {a["category_id"] for a in coco["annotations"]} == {1}

    # a second run reuses the download
    prepare_balloon(out, url=url, expected_size=len(data))
    assert http_server.count("/balloon_dataset.zip") == 1


def test_prepare_balloon_wrong_layout(http_server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("something_else/readme.txt", "not balloons")
    url = http_server.serve("/other.zip", buf.getvalue())
    with pytest.raises(DatasetError, match=r"expected balloon/train/via_region_data\.json.*found something_else/"):
        prepare_balloon(tmp_path / "out", url=url, expected_size=None)


# ---- the script ------------------------------------------------------------------------


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "download_balloon.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_script_404_is_a_one_line_error(http_server, tmp_path):
    url = http_server.url("/no/such/balloon_dataset.zip")
    proc = run_script(str(tmp_path / "out"), "--url", url)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert "404" in errors[0] and url in errors[0]
    assert proc.stderr.rstrip().splitlines()[-1] == errors[0]  # nothing after it: a one-line message


def test_script_converts_with_no_size_check(http_server, tmp_path):
    url = http_server.serve("/balloon_dataset.zip", balloon_zip(tmp_path))
    out = tmp_path / "out"
    proc = run_script(str(out), "--url", url, "--no-size-check")
    assert proc.returncode == 0, proc.stderr
    assert (out / "train.json").is_file() and (out / "val.json").is_file()
    assert str(out / "train.json") in proc.stdout


def test_prepare_balloon_with_the_rest_api_kits_test_split(http_server, tmp_path):
    data = balloon_zip(tmp_path)
    url = http_server.serve("/balloon_dataset.zip", data)
    out = tmp_path / "balloon_coco"
    result = prepare_balloon(out, url=url, expected_size=len(data), test_split=True, val_fraction=0.2, seed=0)
    assert set(result.json_paths) == {"train", "val", "test"}
    names = {split: sorted(Path(i["file_name"]).stem for i in json.loads((out / f"{split}.json").read_text())["images"])
             for split in ("train", "val", "test")}
    # test: the original val images; train + val: the original train images, one in five (at least one) to val
    assert names["test"] == sorted(Path(n).stem for n in BALLOON_LAYOUT["val"])
    assert sorted(names["train"] + names["val"]) == sorted(Path(n).stem for n in BALLOON_LAYOUT["train"])
    assert len(names["val"]) == 1 and len(names["train"]) == 2
    # the same seed, the same split; the annotations travel with their images
    again = tmp_path / "again"
    prepare_balloon(again, url=url, expected_size=len(data), test_split=True, seed=0)
    assert json.loads((again / "val.json").read_text())["images"][0]["file_name"].endswith(
        Path(json.loads((out / "val.json").read_text())["images"][0]["file_name"]).name)
    val = json.loads((out / "val.json").read_text())
    original = next(n for n in BALLOON_LAYOUT["train"] if Path(n).stem == names["val"][0])
    assert len(val["annotations"]) == len(BALLOON_LAYOUT["train"][original][2])


def test_the_script_offers_the_test_split(http_server, tmp_path):
    data = balloon_zip(tmp_path)
    url = http_server.serve("/balloon_dataset.zip", data)
    script = Path(__file__).resolve().parents[2] / "scripts" / "download_balloon.py"
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "b"), "--url", url, "--no-size-check",
                          "--test-split"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "test: " in run.stdout and (tmp_path / "b" / "test.json").is_file()
