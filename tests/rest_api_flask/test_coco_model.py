"""``flask_app.py --model-dir coco``: torchvision's COCO Mask R-CNN served before any training.

Nothing is downloaded here: the tests write a weights file of the right shapes where torch keeps the
download (``$TORCH_HOME/hub/checkpoints/<the file name of the weights' URL>``), so torchvision's
loading path runs for real; only a failing network is simulated (it cannot be reached from tests).
"""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import requests
import torch
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn

from maskrcnn_finetune.coco_model import FOLDER_NAME, coco_class_names, coco_model_dir
from maskrcnn_finetune.errors import WeightsUnavailableError
from rest_api_flask.launcher import start_server

WEIGHTS_FILE = Path(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url).name


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A torch hub cache holding a COCO Mask R-CNN weights file (random weights, torchvision's shapes)."""
    home = tmp_path_factory.mktemp("torch_home")
    torch.manual_seed(0)
    state = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, home / "hub" / "checkpoints" / WEIGHTS_FILE)
    return home


@pytest.mark.slow
def test_the_server_serves_the_coco_model_without_training(torch_home, tmp_path, sample_png):
    env = {"TORCH_HOME": str(torch_home), "OMP_NUM_THREADS": "2", "NGROK_AUTHTOKEN": ""}
    with start_server("coco", tmp_path / "up", tmp_path / "out", infer_with_cpu=True, env=env, cwd=tmp_path,
                      stop_previous=False, timeout=300) as server:
        health = server.health()
        assert health["classes"] == coco_class_names() and len(health["classes"]) == 90
        assert {"person", "bicycle", "toothbrush"} <= set(health["classes"])
        model = requests.get(f"{server.url}/api/v1/model", timeout=10).json()
        assert model["backbone"] == "resnet50_fpn" and model["engine"] == "torchvision"
        answer = requests.post(f"{server.url}/api/v1/predict", files={"image": ("a.png", sample_png)},
                               params={"threshold": 0.0}, timeout=300)
        assert answer.status_code == 200 and answer.json()["model"]["classes"][0] == "person"
        assert "Serving torchvision's COCO Mask R-CNN" in "\n".join(server.lines)
    folder = tmp_path / "out" / "models" / FOLDER_NAME
    info = json.loads((folder / "model.json").read_text())
    assert info["model"]["backbone"] == "resnet50_fpn" and info["metrics"]["coco_val2017_mask_AP"] == pytest.approx(0.346)
    # the folder holds the cached file's weights (norms frozen, as torchvision builds this model)
    served = torch.load(folder / "model_final.pth", weights_only=True)
    cached = torch.load(torch_home / "hub" / "checkpoints" / WEIGHTS_FILE, weights_only=True)
    assert torch.equal(served["backbone.body.layer3.1.conv2.weight"], cached["backbone.body.layer3.1.conv2.weight"])
    assert torch.equal(served["roi_heads.mask_predictor.mask_fcn_logits.weight"],
                       cached["roi_heads.mask_predictor.mask_fcn_logits.weight"])
    assert not any(k.endswith("num_batches_tracked") for k in served)


def test_the_folder_is_made_once_and_a_failed_download_says_what_to_do(torch_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    folder = coco_model_dir(tmp_path / "models")
    assert folder == tmp_path / "models" / FOLDER_NAME and (folder / "model.json").is_file()
    written = (folder / "model_final.pth").stat().st_mtime_ns
    assert coco_model_dir(tmp_path / "models") == folder  # made once: not written again
    assert (folder / "model_final.pth").stat().st_mtime_ns == written

    # no cached file, and the network (which cannot exist here) fails as it does offline
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError, match=f"Connect to the internet once.*{WEIGHTS_FILE}.*--model-dir"):
        coco_model_dir(tmp_path / "other")
    assert not (tmp_path / "other" / FOLDER_NAME).exists()
