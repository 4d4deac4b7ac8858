"""Loading any COCO json for the engines: validation errors, and targets that match the masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn_finetune.data.coco import load_coco
from maskrcnn_finetune.data.dataset import CocoInstanceDataset
from maskrcnn_finetune.data.convert import convert_labelme
from maskrcnn_finetune.errors import DatasetError

from labelme_builders import polygon, square, write_labelme


@pytest.fixture
def converted(tmp_path):
    src = tmp_path / "labelme"
    write_labelme(src, "a", [square("cat", 4, 4, 20), polygon("dog", [(30, 5), (60, 5), (45, 40)])])
    write_labelme(src, "b", [square("dog", 10, 10, 30)])
    return convert_labelme(src, tmp_path / "coco", val_fraction=0).json_paths["dataset"]


def _rewrite(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_dataset_items_match_the_annotations(converted):
    ds = CocoInstanceDataset(converted)
    assert ds.class_names == ["cat", "dog"] and len(ds) == 2
    image, target = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert target["labels"].tolist() == [1, 2]
    masks, boxes = target["masks"], target["boxes"]
    assert masks.shape == (2, 48, 64) and masks.dtype == torch.uint8
    # the square (4,4)-(24,24) as a mask and its box
    assert int(masks[0].sum()) == pytest.approx(400, abs=45)
    assert boxes[0].tolist() == pytest.approx([4, 4, 24, 24], abs=1)
    for mask, box in zip(masks, boxes):  # every box is the tight box of its mask
        ys, xs = np.nonzero(mask.numpy())
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_non_contiguous_category_ids_are_renumbered(converted):
    def shift(data):
        for c in data["categories"]:
            c["id"] += 10
        for a in data["annotations"]:
            a["category_id"] += 10
    ds = CocoInstanceDataset(_rewrite(converted, shift))
    assert ds[0][1]["labels"].tolist() == [1, 2]


def test_crowd_and_empty_boxes_are_left_out_with_a_warning(converted, caplog):
    def crowd(data):
        data["annotations"][0]["iscrowd"] = 1
        data["annotations"][1]["bbox"] = [0, 0, 0, 0]
    coco = load_coco(_rewrite(converted, crowd))
    assert sum(len(v) for v in coco.annotations.values()) == 1
    assert "crowd" in caplog.text and "empty or missing box" in caplog.text


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d["annotations"][0].update(image_id=99), "refers to image id 99"),
        (lambda d: d["annotations"][0].update(category_id=7), "has category id 7"),
        (lambda d: d["annotations"][0].update(segmentation=[]), "has no usable mask"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), "has no usable mask"),
        (lambda d: d["images"].append(dict(d["images"][0])), "image id 1 is used twice"),
        (lambda d: d["images"][0].update(file_name="images/missing.jpg"), "'images/missing.jpg' not found"),
        (lambda d: d["images"][0].update(width=640), "is 64x48 but the json says 640x48"),
        (lambda d: d.pop("annotations"), "not a COCO dataset"),
    ],
)
def test_invalid_coco_is_explained(converted, edit, expected):
    with pytest.raises(DatasetError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        load_coco(_rewrite(converted, edit))


def test_unreadable_inputs(tmp_path, converted):
    with pytest.raises(DatasetError, match="does not exist; convert your labelme folder first"):
        load_coco(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_coco(bad)
    image = converted.parent / json.loads(converted.read_text())["images"][0]["file_name"]
    image.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="cannot be read"):
        load_coco(converted)


def test_all_problems_are_listed_together(converted):
    def many(data):
        data["annotations"][0]["image_id"] = 99
        data["annotations"][1]["category_id"] = 7
    with pytest.raises(DatasetError) as info:
        load_coco(_rewrite(converted, many))
    assert len(info.value.problems) == 2


def test_rle_segmentations_and_grayscale_images(tmp_path, converted):
    import pycocotools.mask as mask_utils

    def to_rle(data):
        mask = np.zeros((48, 64), dtype=np.uint8, order="F")
        mask[5:15, 5:25] = 1
        rle = mask_utils.encode(mask)
        rle["counts"] = rle["counts"].decode()
        data["annotations"][0]["segmentation"] = rle
    coco_path = _rewrite(converted, to_rle)
    first = coco_path.parent / json.loads(coco_path.read_text())["images"][0]["file_name"]
    Image.open(first).convert("L").save(first, format="JPEG")  # grayscale file, same name
    image, target = CocoInstanceDataset(coco_path)[0]
    assert image.shape == (3, 48, 64)
    assert int(target["masks"][0].sum()) == 200 and target["boxes"][0].tolist() == [5, 5, 25, 15]
