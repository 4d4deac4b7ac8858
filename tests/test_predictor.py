"""The Predictor and the result type: inputs of every kind, thresholds, and the masked fraction."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.model_dir import ModelDirError
from maskrcnn_finetune.predictor import Predictor
from maskrcnn_finetune.structures import Instances

from detections import assert_same_detections


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


def test_every_input_kind_gives_the_same_result(model_dir, tiny_coco, tmp_path):
    predictor = Predictor.from_dir(model_dir, score_threshold=0.0)
    data = json.loads(tiny_coco["val"].read_text())
    path = tiny_coco["val"].parent / data["images"][0]["file_name"]
    rgb = np.array(Image.open(path).convert("RGB"))
    from_path, from_array, from_pil = predictor(path), predictor(rgb), predictor(Image.open(path))
    batch = predictor([path, rgb])
    assert len(batch) == 2 and len(from_path) > 0 and from_path.masks.any()  # instances, with pixels
    for other in (from_array, from_pil):  # the same call on the same pixels: bit for bit, row for row
        assert np.array_equal(other.scores, from_path.scores) and np.array_equal(other.masks, from_path.masks)
    for other in batch:  # in a batch of two, RoIAlign's sums on every core run in another order: float
        # rounding, which may also swap tied scores, so compared as sets (the parity gate's mask IoU)
        assert_same_detections(other, from_path, score_atol=1e-4, mask_iou=0.95, mask_pixels=2)
    assert from_path.masks.shape[1:] == rgb.shape[:2]


def test_threshold_and_odd_images(model_dir, tmp_path):
    predictor = Predictor.from_dir(model_dir, score_threshold=0.0)
    image = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    everything = predictor(image)
    assert 0 < len(everything) <= 20
    cut = float(np.median(everything.scores))
    above = predictor(image, threshold=cut)  # the same computation, cut after NMS: the same rows in one order
    assert len(above) == int((everything.scores >= cut).sum())
    assert len(above) > 0 and np.array_equal(above.scores, everything.scores[everything.scores >= cut])
    grey = predictor(image[:, :, 0])  # a 2-D grey array is the grey RGB image: the same pixels, bit for bit
    same_grey = predictor(np.dstack([image[:, :, 0]] * 3))
    assert len(grey) > 0 and grey.masks.shape[1:] == (60, 80)
    assert np.array_equal(grey.scores, same_grey.scores) and np.array_equal(grey.masks, same_grey.masks)
    rgba = np.dstack([image, np.full((60, 80), 128, np.uint8)])  # the alpha channel is dropped
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    for dropped in (predictor(tmp_path / "rgba.png"), predictor(rgba)):
        assert len(dropped) == len(everything) and dropped.masks.shape[1:] == (60, 80)
        assert np.array_equal(dropped.scores, everything.scores) and np.array_equal(dropped.masks, everything.masks)
    with pytest.raises(ConfigError, match="uint8"):
        predictor(image.astype(np.float32))


def test_masked_fraction_counts_overlaps_once():
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, :5, :] = True   # 50 pixels
    masks[1, 3:6, :] = True  # 30 pixels, 20 of them shared
    inst = Instances((10, 10), np.zeros((2, 4), np.float32), np.array([0.9, 0.4], np.float32),
                     np.array([0, 1]), masks, ["a", "b"])
    assert inst.masked_fraction() == pytest.approx(0.6)
    assert inst.labels == ["a", "b"]
    assert len(inst.above(0.5)) == 1 and inst.above(0.5).masked_fraction() == pytest.approx(0.5)


def test_model_folder_problems_are_explained(model_dir, tmp_path):
    import shutil

    with pytest.raises(ModelDirError, match="does not exist"):
        Predictor.from_dir(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelDirError, match="corrupt"):
        Predictor.from_dir(broken)
    mismatch = tmp_path / "mismatch"
    shutil.copytree(model_dir, mismatch)
    info = json.loads((mismatch / "model.json").read_text())
    info["model"]["class_names"].append("hexagon")
    (mismatch / "model.json").write_text(json.dumps(info))
    with pytest.raises(ModelDirError, match="trained for 3 classes but model.json lists 4"):
        Predictor.from_dir(mismatch)
    (mismatch / "model.json").unlink()
    with pytest.raises(ModelDirError, match="has no model.json"):
        Predictor.from_dir(mismatch)
    (broken / "model_final.pth").unlink()
    with pytest.raises(ModelDirError, match="has no model_final.pth"):
        Predictor.from_dir(broken)
