"""labelme -> COCO: conformance with labelme's own output, and every validation error."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskrcnn_finetune.data.convert import convert_labelme
from maskrcnn_finetune.errors import DatasetError

from labelme_builders import polygon, square, write_labelme

ROOT = Path(__file__).resolve().parents[2]


def _instances(coco, image_name):
    names = {c["id"]: c["name"] for c in coco["categories"]}
    image = next(i for i in coco["images"] if Path(i["file_name"]).name == image_name)
    anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    return sorted((names[a["category_id"]], a["bbox"], a["area"], a) for a in anns)


def test_conforms_to_labelme_reference_output(labelme_examples, tmp_path):
    src = labelme_examples / "instance_segmentation" / "data_annotated"
    ref = json.loads((labelme_examples / "instance_segmentation" / "data_dataset_coco" / "annotations.json").read_text())
    result = convert_labelme(src, tmp_path / "out", val_fraction=0)
    ours = json.loads(result.json_paths["dataset"].read_text())
    assert len(ours["images"]) == 3
    for image in ref["images"]:
        name = Path(image["file_name"]).name
        mine, theirs = _instances(ours, name), _instances(ref, name)
        assert [m[0] for m in mine] == [t[0] for t in theirs], name
        for (cls, bbox, area, _), (_, ref_bbox, ref_area, _) in zip(mine, theirs):
            assert np.abs(np.subtract(bbox, ref_bbox)).max() <= 1.0, (name, cls, bbox, ref_bbox)
            assert abs(area - ref_area) <= 0.02 * ref_area, (name, cls, area, ref_area)


def test_groups_ignore_and_category_ids(labelme_examples, tmp_path):
    src = labelme_examples / "instance_segmentation" / "data_annotated"
    coco = json.loads(convert_labelme(src, tmp_path / "out", val_fraction=0).json_paths["dataset"].read_text())
    names = [c["name"] for c in coco["categories"]]
    assert names == sorted(names) and "__ignore__" not in names and "_background_" not in names
    assert [c["id"] for c in coco["categories"]] == list(range(1, len(names) + 1))
    sofa = [a for _, _, _, a in _instances(coco, "2011_000006.jpg") if coco["categories"][a["category_id"] - 1]["name"] == "sofa"]
    assert len(sofa) == 1 and len(sofa[0]["segmentation"]) == 4  # four shapes, group_id 0: one instance
    persons = [a for c, _, _, a in _instances(coco, "2011_000003.jpg") if c == "person"]
    assert sorted(len(a["segmentation"]) for a in persons) == [1, 2]


def test_rectangles_become_masks(labelme_examples, tmp_path):
    src = labelme_examples / "bbox_detection" / "data_annotated"
    coco = json.loads(convert_labelme(src, tmp_path / "out", val_fraction=0).json_paths["dataset"].read_text())
    assert len(coco["annotations"]) == 9
    for ann in coco["annotations"]:
        (seg,) = ann["segmentation"]
        assert len(seg) == 8  # four corners
        x, y, w, h = ann["bbox"]
        assert ann["area"] == pytest.approx(w * h, rel=0.02)
        assert w > 10 and h > 10


def test_labels_order_split_and_moved_folder(tmp_path):
    src = tmp_path / "labelme"
    for i in range(10):
        write_labelme(src, f"img{i}", [square("zebra", 2, 2, 20), square("ant", 30, 10, 12)])
    out = tmp_path / "out"
    result = convert_labelme(src, out, val_fraction=0.3, seed=1, labels=["zebra", "ant"])
    train, val = (json.loads(result.json_paths[s].read_text()) for s in ("train", "val"))
    assert (len(train["images"]), len(val["images"])) == (7, 3)
    assert train["categories"] == val["categories"] == [
        {"id": 1, "name": "zebra", "supercategory": ""}, {"id": 2, "name": "ant", "supercategory": ""}]
    assert not {i["id"] for i in train["images"]} & {i["id"] for i in val["images"]}
    again = convert_labelme(src, tmp_path / "again", val_fraction=0.3, seed=1, labels=["zebra", "ant"])
    assert json.loads(again.json_paths["val"].read_text())["images"] == val["images"]
    other = convert_labelme(src, tmp_path / "other", val_fraction=0.3, seed=2, labels=["zebra", "ant"])
    assert json.loads(other.json_paths["val"].read_text())["images"] != val["images"]
    # the output folder is self-contained: move it and every image still resolves
    moved = shutil.move(str(out), str(tmp_path / "moved"))
    for image in val["images"]:
        with Image.open(Path(moved) / image["file_name"]) as img:
            assert img.size == (image["width"], image["height"])


def test_embedded_image_data_is_written_out(tmp_path):
    src = tmp_path / "labelme"
    write_labelme(src, "embedded", [square("cat", 5, 5, 20)], image="embedded")
    coco = json.loads(convert_labelme(src, tmp_path / "out", val_fraction=0).json_paths["dataset"].read_text())
    (image,) = coco["images"]
    written = tmp_path / "out" / image["file_name"]
    with Image.open(written) as img:
        assert img.size == (64, 48)
    assert coco["annotations"][0]["bbox"] == [5.0, 5.0, 21.0, 21.0]  # labelme draws the outline too


def test_circle_becomes_round_mask(tmp_path):
    src = tmp_path / "labelme"
    write_labelme(src, "c", [polygon("coin", [(32, 24), (42, 24)], shape_type="circle")])
    coco = json.loads(convert_labelme(src, tmp_path / "out", val_fraction=0).json_paths["dataset"].read_text())
    (ann,) = coco["annotations"]
    assert ann["area"] == pytest.approx(np.pi * 10 ** 2, rel=0.15)
    assert ann["bbox"] == pytest.approx([22, 14, 21, 21], abs=1)


def test_points_outside_image_are_clipped_with_a_warning(tmp_path, caplog):
    src = tmp_path / "labelme"
    write_labelme(src, "edge", [polygon("cat", [(-10, -5), (40, -5), (40, 30), (-10, 30)])])
    result = convert_labelme(src, tmp_path / "out", val_fraction=0)
    (ann,) = json.loads(result.json_paths["dataset"].read_text())["annotations"]
    assert ann["bbox"][:2] == [0.0, 0.0]
    assert min(ann["segmentation"][0]) >= 0
    assert any("clipped" in w and "edge.json" in w for w in result.warnings)


def _error(src, tmp_path, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        convert_labelme(src, tmp_path / "out", val_fraction=0, **kwargs)
    return str(info.value)


def test_every_problem_is_reported_at_once_with_its_file(tmp_path):
    src = tmp_path / "labelme"
    write_labelme(src, "good", [square("cat", 2, 2, 20)])
    write_labelme(src, "broken", [], raw_json='{"shapes": [ {"label": "cat",')
    write_labelme(src, "noimage", [square("cat", 2, 2, 20)], image="none")
    notimg = write_labelme(src, "notimage", [square("cat", 2, 2, 20)])
    notimg.with_suffix(".jpg").write_bytes(b"this is not a picture")
    trunc = write_labelme(src, "truncated", [square("cat", 2, 2, 20)])
    trunc.with_suffix(".jpg").write_bytes(trunc.with_suffix(".jpg").read_bytes()[:300])
    write_labelme(src, "twopoints", [polygon("cat", [(1, 1), (9, 9)])])
    write_labelme(src, "lines", [polygon("cat", [(1, 1), (9, 9)], shape_type="line"),
                                  polygon("cat", [(3, 3)], shape_type="point"), square("cat", 2, 2, 9)])
    write_labelme(src, "wrongsize", [square("cat", 2, 2, 9)], width=64, height=48,
                  raw_json=json.dumps({"shapes": [square("cat", 2, 2, 9)], "imagePath": "wrongsize.jpg",
                                       "imageWidth": 640, "imageHeight": 480}))
    message = _error(src, tmp_path)
    expected = {
        "broken.json: not valid JSON": "re-save",
        "noimage.json: image 'noimage.jpg' not found": "copy the image",
        "notimage.json: image notimage.jpg cannot be read": "valid JPEG",
        "truncated.json: image truncated.jpg cannot be read": "valid JPEG",
        "twopoints.json: shape 0 ('cat'): polygon has 2 point(s)": "at least 3",
        "lines.json: 1 'line' shape(s)": "Redraw them as polygons",
        "lines.json: 1 'point' shape(s)": "Redraw them as polygons",
        "wrongsize.json: says imageWidth=640": "save the annotations again",
    }
    for problem, fix in expected.items():
        line = next((l for l in message.splitlines() if problem in l), None)
        assert line is not None, f"{problem!r} missing from:\n{message}"
        assert fix in line
    assert "--skip-invalid" in message
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_skip_invalid_keeps_the_good_part(tmp_path):
    src = tmp_path / "labelme"
    write_labelme(src, "good", [square("cat", 2, 2, 20), polygon("cat", [(1, 1), (9, 9)])])
    write_labelme(src, "broken", [], raw_json="{nope")
    result = convert_labelme(src, tmp_path / "out", val_fraction=0, skip_invalid=True)
    coco = json.loads(result.json_paths["dataset"].read_text())
    assert len(coco["images"]) == 1 and len(coco["annotations"]) == 1
    assert any("broken.json" in s for s in result.skipped) and any("2 point(s)" in s for s in result.skipped)


def test_empty_datasets_are_explained(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no labelme .json files found" in _error(empty, tmp_path)
    ignored = tmp_path / "ignored"
    write_labelme(ignored, "a", [square("__ignore__", 2, 2, 20)])
    assert "no annotated objects found" in _error(ignored, tmp_path)
    assert "does not exist" in _error(tmp_path / "nowhere", tmp_path)


def test_typo_label_beside_a_frequent_one(tmp_path):
    src = tmp_path / "labelme"
    for i in range(4):
        write_labelme(src, f"b{i}", [square("balloon", 2, 2, 20)])
    write_labelme(src, "typo", [square("ballon", 2, 2, 20)])
    message = _error(src, tmp_path)
    assert "label 'ballon' is used once (typo.json: shape 0" in message and "'balloon' 4 times" in message
    # naming the real classes turns the typo into a label outside --labels, which --skip-invalid drops
    assert "not one of --labels (balloon)" in _error(src, tmp_path, labels=["balloon"])
    result = convert_labelme(src, tmp_path / "out2", val_fraction=0, labels=["balloon"], skip_invalid=True)
    assert len(json.loads(result.json_paths["dataset"].read_text())["annotations"]) == 4


def test_split_needs_two_images_and_a_sane_fraction(tmp_path):
    src = tmp_path / "labelme"
    write_labelme(src, "only", [square("cat", 2, 2, 20)])
    with pytest.raises(DatasetError, match="--val-fraction 0"):
        convert_labelme(src, tmp_path / "out", val_fraction=0.2)
    with pytest.raises(DatasetError, match="below 1"):
        convert_labelme(src, tmp_path / "out", val_fraction=1.5)


def test_never_writes_into_or_changes_the_source(tmp_path):
    src = tmp_path / "labelme"
    for i in range(3):
        write_labelme(src, f"x{i}", [square("cat", 2, 2, 20)])
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()}
    with pytest.raises(DatasetError, match="is the labelme folder itself"):
        convert_labelme(src, src, val_fraction=0)
    convert_labelme(src, src / "coco", val_fraction=0)  # an output folder inside the source is fine...
    convert_labelme(src, src / "coco", val_fraction=0)  # ...and is not read back as labelme input
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir() if p.is_file()}
    assert after == before


def _run_script(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "labelme_to_coco.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_cli_converts_and_draws_a_preview(labelme_examples, tmp_path):
    out = tmp_path / "out"
    proc = _run_script(labelme_examples / "instance_segmentation" / "data_annotated", out,
                       "--val-fraction", "0.34", "--preview", out / "samples.png")
    assert proc.returncode == 0, proc.stderr
    assert "| person" in proc.stdout and "train images" in proc.stdout
    assert (out / "train.json").is_file() and (out / "val.json").is_file()
    with Image.open(out / "samples.png") as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200 and pixels.std() > 20


def test_cli_reports_user_errors_without_a_traceback(tmp_path):
    src = tmp_path / "labelme"
    write_labelme(src, "broken", [], raw_json="{nope")
    proc = _run_script(src, tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "broken.json: not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_takes_a_zip_url_of_a_labelme_folder(labelme_examples, tmp_path, http_server):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted((labelme_examples / "instance_segmentation" / "data_annotated").iterdir()):
            zf.write(path, f"my_upload/{path.name}")
    http_server.serve("/upload.zip", buf.getvalue())
    out = tmp_path / "out"
    proc = _run_script(http_server.url("/upload.zip"), out, "--val-fraction", "0")
    assert proc.returncode == 0, proc.stderr
    coco = json.loads((out / "dataset.json").read_text())
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 12
    assert http_server.count("/upload.zip") == 1
