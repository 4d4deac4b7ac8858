"""coco_dataset.json beside coco_results.json: batch prediction's output says on its own which file
each image id is, for every kind of input, and stays so when a run continues an earlier one."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskrcnn_finetune.data.coco import load_coco
from maskrcnn_finetune.predict import predict_images

OPTIONS = dict(device="cpu", threshold=0.0, formats=["coco"], progress=False)  # every detection: many to compare


@pytest.fixture
def photos(tiny_coco, tmp_path):
    """The tiny data set's images in a folder tree, each at a size of its own (so a size names its file)."""
    folder = tmp_path / "photos"
    coco = load_coco(tiny_coco["train"])
    for n, image in enumerate(coco.images):
        target = folder / ("sub" if n % 2 else "") / f"{Path(image['file_name']).stem}.{'png' if n % 3 else 'jpg'}"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(coco.image_path(image)) as source:
            source.convert("RGB").resize((70 + 9 * n, 60 + 4 * n)).save(target)
    return folder


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def _check(out: Path, read_file) -> COCO:
    """coco_dataset.json loads in pycocotools, each image id is the file its file_name names (by its
    size), its annotations are the results list's, and the results load against it."""
    dataset = COCO(str(out / "coco_dataset.json"))
    results = json.loads((out / "coco_results.json").read_text())
    assert len(dataset.imgs) > 0 and len(results) > 0
    for image_id, image in dataset.imgs.items():
        assert (image["width"], image["height"]) == _size(read_file(image["file_name"])), image
    annotations = dataset.dataset["annotations"]
    assert [a["id"] for a in annotations] == list(range(1, len(results) + 1))
    assert len(annotations) == len(results)
    for result, annotation in zip(results, annotations):
        assert {k: annotation[k] for k in result} == result  # image id, class, box, score, mask
        assert annotation["iscrowd"] == 0
        assert annotation["area"] == float(mask_utils.area({**result["segmentation"],
                                                            "counts": result["segmentation"]["counts"].encode()}))
        image = dataset.imgs[result["image_id"]]
        assert result["segmentation"]["size"] == [image["height"], image["width"]]
    assert {c["id"] for c in dataset.dataset["categories"]} >= {r["category_id"] for r in results}
    loaded = dataset.loadRes(str(out / "coco_results.json"))
    assert len(loaded.anns) == len(results) and set(loaded.imgs) == set(dataset.imgs)
    return dataset


def test_a_folder_names_its_files_relative_to_it_and_a_continued_run_writes_the_same(tiny_model_dir, photos,
                                                                                      tmp_path):
    out = tmp_path / "out"
    summary = predict_images(photos, out, model_dir=tiny_model_dir, **OPTIONS)
    dataset = _check(out, lambda name: (photos / name).read_bytes())
    files = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*") if p.is_file())
    assert sorted(i["file_name"] for i in dataset.imgs.values()) == files and summary["images"] == len(files)
    assert sorted(dataset.imgs) == list(range(1, len(files) + 1))
    written = (out / "coco_dataset.json").read_bytes()

    # as if the run had stopped half-way: the next one predicts the rest and writes the same files
    (out / ".records" / "sub").rename(tmp_path / "gone")
    again = predict_images(photos, out, model_dir=tiny_model_dir, **OPTIONS)
    assert again["predicted"] == len(list((photos / "sub").iterdir())) and again["skipped"] > 0
    assert (out / "coco_dataset.json").read_bytes() == written

    # a new image between two runs moves the ids of those after it: both files take the new ids
    before = {i["file_name"]: dataset.getAnnIds(imgIds=[image_id]) for image_id, i in dataset.imgs.items()}
    with Image.open(photos / files[0]) as first:
        first.resize((41, 33)).save(photos / "aaa_new.png")  # sorted first: every other image's id moves
    predict_images(photos, out, model_dir=tiny_model_dir, **OPTIONS)
    moved = _check(out, lambda name: (photos / name).read_bytes())
    assert len(moved.imgs) == len(files) + 1
    for image_id, image in moved.imgs.items():
        if image["file_name"] in before:
            old = [dataset.anns[k] for k in before[image["file_name"]]]
            new = moved.loadAnns(moved.getAnnIds(imgIds=[image_id]))
            assert [(a["bbox"], a["score"]) for a in new] == [(a["bbox"], a["score"]) for a in old]


def test_a_broken_file_is_left_out_of_the_images(tiny_model_dir, photos, tmp_path):
    (photos / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    summary = predict_images(photos, out, model_dir=tiny_model_dir, **OPTIONS)
    assert summary["errors"] == 1
    dataset = _check(out, lambda name: (photos / name).read_bytes())
    assert "broken.png" not in {i["file_name"] for i in dataset.imgs.values()}
    assert len(dataset.imgs) == summary["images"] - 1


def test_a_zip_names_its_members(tiny_model_dir, photos, tmp_path):
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(photos.rglob("*")):
            if path.is_file():
                zf.write(path, "batch/" + path.relative_to(photos).as_posix())
    out = tmp_path / "out"
    predict_images(archive, out, model_dir=tiny_model_dir, **OPTIONS)
    with zipfile.ZipFile(archive) as zf:
        dataset = _check(out, zf.read)
        assert sorted(i["file_name"] for i in dataset.imgs.values()) == sorted(zf.namelist())


def test_a_glob_and_a_list_name_the_paths_as_given(tiny_model_dir, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "by_glob"
    predict_images("photos/**/*.png", out, model_dir=tiny_model_dir, **OPTIONS)
    dataset = _check(out, lambda name: Path(name).read_bytes())
    assert sorted(i["file_name"] for i in dataset.imgs.values()) == sorted(
        os.path.join("photos", p.relative_to(photos)) for p in photos.rglob("*.png"))

    lists = tmp_path / "lists"
    lists.mkdir()
    given = [os.path.relpath(p, lists) for p in sorted(photos.rglob("*")) if p.is_file()]
    (lists / "todo.txt").write_text("# to predict\n" + "\n".join(given) + "\n")
    out = tmp_path / "by_list"
    predict_images(lists / "todo.txt", out, model_dir=tiny_model_dir, **OPTIONS)
    dataset = _check(out, lambda name: (lists / name).read_bytes())
    assert sorted(i["file_name"] for i in dataset.imgs.values()) == sorted(given)


def test_a_coco_json_keeps_its_ids_file_names_and_category_ids(tiny_model_dir, photos, tmp_path):
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    classes = json.loads((tiny_model_dir / "model.json").read_text())["class_names"]
    source = {"images": [], "annotations": [],
              "categories": [{"id": 40 + k, "name": name} for k, name in enumerate(reversed(classes))]}
    for k, path in enumerate(files):
        width, height = _size(path.read_bytes())
        source["images"].append({"id": 1000 - 7 * k, "file_name": path.relative_to(photos).as_posix(),
                                 "width": width, "height": height})
        source["annotations"].append({"id": k + 1, "image_id": 1000 - 7 * k, "category_id": 40, "iscrowd": 0,
                                      "bbox": [2, 2, 20, 20], "area": 400,
                                      "segmentation": [[2, 2, 22, 2, 22, 22, 2, 22]]})  # a json as labelled
    (photos / "input.json").write_text(json.dumps(source))
    out = tmp_path / "out"
    predict_images(photos / "input.json", out, model_dir=tiny_model_dir, **OPTIONS)
    dataset = _check(out, lambda name: (photos / name).read_bytes())
    assert {i: (im["file_name"], im["width"], im["height"]) for i, im in dataset.imgs.items()} == {
        im["id"]: (im["file_name"], im["width"], im["height"]) for im in source["images"]}
    assert sorted((c["id"], c["name"]) for c in dataset.dataset["categories"]) == sorted(
        (c["id"], c["name"]) for c in source["categories"])
    scores = np.array([a["score"] for a in dataset.dataset["annotations"]])
    assert scores.size and scores.min() >= 0.0
