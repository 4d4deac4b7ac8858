"""Batch prediction and pre-labelling: files written, resumed runs, bad files, several processes,
and predictions that go through labelme and the converter and come back the same."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn_finetune.data.coco import load_coco
from maskrcnn_finetune.data.convert import convert_labelme
from maskrcnn_finetune.data.labelme import rasterize
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.predict import collect_images, predict_images
from maskrcnn_finetune.prelabel import draw, instances_to_labelme, mask_to_polygons
from maskrcnn_finetune.structures import Instances

ROOT = Path(__file__).resolve().parents[1]
# the 3-iteration test model scores its detections around 0.2-0.3: a low threshold keeps some
THRESHOLD = 0.05


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _tree(folder: Path) -> dict[str, str]:
    """Every file's hash, but summary.json's (it holds this run's timing and counts)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "summary.json"}


# -- masks -> polygons ---------------------------------------------------------------------------

def test_masks_become_polygons_that_draw_the_same_pixels():
    yy, xx = np.mgrid[:120, :160]
    ring = ((yy - 60) ** 2 + (xx - 60) ** 2 < 40 ** 2) & ((yy - 60) ** 2 + (xx - 60) ** 2 >= 15 ** 2)
    square = (yy >= 100) & (yy < 115) & (xx >= 120) & (xx < 150)
    dot = (yy - 20) ** 2 + (xx - 140) ** 2 < 3 ** 2
    mask = ring | square | dot
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 3  # three separate pieces
    drawn = draw(polygons, 120, 160)  # as pycocotools draws the converted json for training
    assert _iou(drawn, mask) >= 0.95
    assert not drawn[60, 60]  # the ring's hole stays a hole
    assert max(len(p) for p in polygons) < 80  # simplified: far fewer points than the outline's pixels
    exact = mask_to_polygons(mask, min_iou=0.999)
    assert _iou(draw(exact, 120, 160), mask) >= 0.999
    assert _iou(rasterize(exact, 160, 120), mask) >= 0.9  # labelme's own drawing: half a pixel more around
    assert mask_to_polygons(np.zeros((10, 10), bool)) == []


def test_labelme_files_of_real_annotations_convert_back_to_the_same_instances(labelme_examples, tmp_path):
    """labelme's own example annotations (people, cars, a bottle...) as if a model had predicted
    them: written as labelme files by the kit, converted back by the kit's converter."""
    src = labelme_examples / "instance_segmentation" / "data_annotated"
    original = load_coco(convert_labelme(src, tmp_path / "original", val_fraction=0).json_paths["dataset"])
    names = original.class_names
    folder = tmp_path / "predicted"
    folder.mkdir()
    expected = {}
    for image in original.images:
        anns = original.annotations[image["id"]]
        height, width = image["height"], image["width"]
        masks = np.stack([mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], height, width)).any(-1)
                          if isinstance(a["segmentation"], list) else mask_utils.decode(a["segmentation"]) > 0
                          for a in anns]).astype(bool)
        label = original.label_of_category
        instances = Instances((height, width), np.array([a["bbox"] for a in anns], np.float32),
                              np.linspace(0.99, 0.5, len(anns)).astype(np.float32),
                              np.array([label[a["category_id"]] - 1 for a in anns]), masks, names)
        image_file = original.image_path(image)
        json_path = folder / f"{image_file.stem}.json"
        document = instances_to_labelme(instances, os.path.relpath(image_file, folder), review_below=0.7)
        json_path.write_text(json.dumps(document))
        expected[image_file.name] = instances
        assert {s["flags"]["review"] for s in document["shapes"]} == {True, False}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "labelme_to_coco.py"), folder, tmp_path / "back",
                           "--val-fraction", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr, proc.stderr  # the converter's own checks find nothing to say
    back = load_coco(tmp_path / "back" / "dataset.json")
    assert back.class_names == names
    checked = 0
    for image in back.images:
        want = expected[Path(image["file_name"]).name]
        got = back.annotations[image["id"]]
        assert len(got) == len(want)  # the same instances: one each, several pieces joined again
        for k, ann in enumerate(got):
            assert back.class_names[back.label_of_category[ann["category_id"]] - 1] == want.labels[k]
            mask = mask_utils.decode(mask_utils.frPyObjects(ann["segmentation"], image["height"],
                                                            image["width"])).any(-1)
            assert _iou(mask, want.masks[k]) >= 0.9, (image["file_name"], k)
            checked += 1
    assert checked >= 10


# -- batch prediction ----------------------------------------------------------------------------

@pytest.fixture
def photo_folder(tiny_coco, tmp_path):
    """The tiny data set's images in a folder tree, with a broken file, a truncated JPEG and a text file."""
    folder = tmp_path / "photos"
    coco = load_coco(tiny_coco["train"])
    for n, image in enumerate(coco.images):
        target = folder / ("sub" if n % 2 else "") / Path(image["file_name"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(coco.image_path(image), target)
    (folder / "notes.txt").write_text("not an image, and not a suffix the kit reads")
    (folder / "broken.png").write_bytes(b"this is not a png")
    jpeg = next(folder.glob("*.jpg")).read_bytes()
    (folder / "sub" / "cut_off.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    return folder


def test_predict_a_folder_writes_every_format_skips_bad_files_and_resumes(tiny_model_dir, photo_folder, tmp_path):
    before = _tree(photo_folder)
    out = tmp_path / "out"
    summary = predict_images(photo_folder, out, model_dir=tiny_model_dir, device="cpu", threshold=THRESHOLD,
                             order="uncertainty", progress=False)
    images = len(collect_images(photo_folder)[0])
    assert summary["images"] == images == 8
    assert summary["predicted"] == 6 and summary["errors"] == 2
    assert _tree(photo_folder) == before  # the input is never written to
    with open(out / "errors.csv", newline="") as fh:
        errors = {row["image"]: row for row in csv.DictReader(fh)}
    assert set(errors) == {"broken", "sub/cut_off"}
    assert "Pillow cannot identify" in errors["broken"]["problem"]
    assert errors["sub/cut_off"]["file"] == str(photo_folder / "sub" / "cut_off.jpg")

    results = json.loads((out / "coco_results.json").read_text())
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(results) == len(rows) == sum(summary["instances_per_class"].values()) > 0
    assert all(r["score"] >= THRESHOLD for r in results)
    for row in rows:
        name, k = row["image"], int(row["instance"])
        mask = np.asarray(Image.open(out / "masks" / name / f"{k}.png")) > 0
        assert int(row["area_px"]) == np.count_nonzero(mask)
        assert float(row["area_percent"]) == pytest.approx(100 * mask.mean(), abs=1e-3)
        union = np.asarray(Image.open(out / "masks" / name / "union.png")) > 0
        assert not (mask & ~union).any()
    names = {row["image"] for row in rows}
    for name in names:
        document = json.loads((out / "labelme" / f"{name}.json").read_text())
        image_path = (out / "labelme" / f"{name}.json").parent / document["imagePath"]
        assert image_path.resolve() == (photo_folder / f"{name}.jpg").resolve()
        overlay = np.asarray(Image.open(out / "overlays" / f"{name}.png"))
        assert overlay.shape == (document["imageHeight"], document["imageWidth"], 3)
    order = [line.split("\t")[0] for line in (out / "review_order.txt").read_text().splitlines()[1:]]
    lowest = {n: min(float(r["score"]) for r in rows if r["image"] == n) for n in names}
    assert order[: len(names)] == sorted(names, key=lambda n: (round(lowest[n], 4), n))

    outputs = _tree(out)
    again = predict_images(photo_folder, out, model_dir=tiny_model_dir, device="cpu", threshold=THRESHOLD,
                           order="uncertainty", progress=False)
    assert (again["predicted"], again["skipped"]) == (0, 6)  # the two bad files are tried again
    assert _tree(out) == outputs
    (out / ".records" / "sub").rename(out / "gone")  # as if the run had stopped half-way
    (out / "masks" / "sub").rename(out / "gone_masks")
    resumed = predict_images(photo_folder, out, model_dir=tiny_model_dir, device="cpu", threshold=THRESHOLD,
                             order="uncertainty", progress=False)
    assert (resumed["predicted"], resumed["skipped"]) == (3, 3)
    shutil.rmtree(out / "gone")
    shutil.rmtree(out / "gone_masks")
    assert _tree(out) == outputs
    fresh = predict_images(photo_folder, out, model_dir=tiny_model_dir, device="cpu", threshold=THRESHOLD,
                           order="uncertainty", overwrite=True, progress=False)
    assert fresh["predicted"] == 6 and _tree(out) == outputs

    # predictions of other settings or another model are never mixed into these
    with pytest.raises(ConfigError, match=r"other settings \(threshold 0.05 there, 0.3 here\).*--overwrite"):
        predict_images(photo_folder, out, model_dir=tiny_model_dir, device="cpu", threshold=0.3, progress=False)
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model_dir, other)
    info = json.loads((other / "model.json").read_text())
    info["created"] = "2026-01-01T00:00:00+00:00"  # as another training run of the same recipe
    (other / "model.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="holds the predictions of another model .*pass --overwrite"):
        predict_images(photo_folder, out, model_dir=other, device="cpu", threshold=THRESHOLD, order="uncertainty",
                       progress=False)
    assert _tree(out) == outputs  # refused before anything was written


def test_a_coco_json_input_keeps_its_ids_and_the_results_score_with_pycocotools(tiny_model_dir, tiny_coco, tmp_path):
    from maskrcnn_finetune.evaluate import coco_metrics
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    summary = predict_images(tiny_coco["val"], out, model_dir=tiny_model_dir, device="cpu", threshold=0.0,
                             formats=["coco"], progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".records", "coco_dataset.json", "coco_results.json", "errors.csv",
                                                     "summary.json"]
    results = json.loads((out / "coco_results.json").read_text())
    gt = json.loads(Path(tiny_coco["val"]).read_text())
    assert {r["image_id"] for r in results} == {i["id"] for i in gt["images"]} and summary["images"] == len(gt["images"])
    assert {r["category_id"] for r in results} <= {c["id"] for c in gt["categories"]}
    metrics = coco_metrics(COCO(str(tiny_coco["val"])), results)
    assert 0.0 <= metrics["segm"]["AP50"] <= 1.0


def test_zip_glob_and_list_inputs_find_the_same_images(tiny_model_dir, photo_folder, tmp_path):
    (photo_folder / "broken.png").unlink()
    (photo_folder / "sub" / "cut_off.jpg").unlink()
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(photo_folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(photo_folder).as_posix())
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(os.path.relpath(p, tmp_path) for p in sorted(photo_folder.rglob("*.jpg"))))
    names = [s.name for s in collect_images(photo_folder)[0]]
    assert [s.name for s in collect_images(archive)[0]] == names
    assert [s.name for s in collect_images(listing)[0]] == names
    assert [s.name for s in collect_images(f"{photo_folder}/**/*.jpg")[0]] == names

    by_folder = predict_images(photo_folder, tmp_path / "a", model_dir=tiny_model_dir, device="cpu",
                               threshold=THRESHOLD, formats=["coco", "labelme"], progress=False)
    by_zip = predict_images(archive, tmp_path / "b", model_dir=tiny_model_dir, device="cpu",
                            threshold=THRESHOLD, formats=["coco", "labelme"], progress=False, workers=2)
    assert by_zip["predicted"] == by_folder["predicted"] == 6
    assert (tmp_path / "a" / "coco_results.json").read_text() == (tmp_path / "b" / "coco_results.json").read_text()
    # labelme opens a zipped image beside its json: the kit copies it there
    document = json.loads((tmp_path / "b" / "labelme" / "sub" / f"{names[1].split('/')[-1]}.json").read_text()) \
        if names[1].startswith("sub/") else json.loads((tmp_path / "b" / "labelme" / f"{names[1]}.json").read_text())
    assert "/" not in document["imagePath"]


def test_bad_arguments_name_the_problem(tiny_model_dir, photo_folder, tmp_path):
    with pytest.raises(ConfigError, match="inside the input folder"):
        predict_images(photo_folder, photo_folder / "out", model_dir=tiny_model_dir)
    with pytest.raises(ConfigError, match="does not exist"):
        predict_images(tmp_path / "nothing", tmp_path / "out", model_dir=tiny_model_dir)
    with pytest.raises(ConfigError, match="unknown output format"):
        predict_images(photo_folder, tmp_path / "out", model_dir=tiny_model_dir, formats=["coco", "pdf"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no image files"):
        predict_images(empty, tmp_path / "out", model_dir=tiny_model_dir)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), str(photo_folder), "--model-dir",
                           str(tiny_model_dir), "--output-dir", str(tmp_path / "out"), "--formats", "coco,pdf"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown format(s) pdf" in proc.stderr


@pytest.mark.slow
def test_two_processes_write_exactly_what_one_process_writes(tiny_model_dir, photo_folder, tmp_path):
    # the same arithmetic in every process: one thread, one image per model call, so each image's detections
    # come out bit for bit and in one order whichever process runs it, and the files can be compared whole
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(photo_folder), "--model-dir", str(tiny_model_dir), "--threshold", str(THRESHOLD), "--device", "cpu",
            "--order", "uncertainty"]
    single = subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), *args, "--output-dir",
                             str(tmp_path / "one")], capture_output=True, text=True, timeout=600, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    assert "| class | instances | images |" in single.stdout
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29523", str(ROOT / "scripts" / "predict.py"), *args, "--output-dir",
                             str(tmp_path / "two")], capture_output=True, text=True, timeout=600, env=env)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert one == two and len(one) > 20
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (summary["processes"], summary["predicted"], summary["errors"]) == (2, 6, 2)  # both processes counted
