"""Training from pretrained weights, and the model folder it writes, with weights files in torch's hub cache.

Nothing is downloaded here: each test writes a weights file of the right shapes where torch keeps the
downloads (``$TORCH_HOME/hub/checkpoints/<the file name of the weights' URL>``), so the kit's loading
path (torchvision's weights enum -> ``torch.hub.load_state_dict_from_url`` -> the cached file) runs for
real, as it does in Colab after the first download.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn
from torchvision.ops import misc as misc_ops

from maskrcnn_finetune.data.coco import load_coco
from maskrcnn_finetune.evaluate import evaluate_predictor
from maskrcnn_finetune.model_dir import WEIGHTS, write_model_dir
from maskrcnn_finetune.modeling import ModelSpec, build_model
from maskrcnn_finetune.predictor import Predictor

from training_options import train_tiny


def _place_in_hub_cache(torch_home: Path, weights, state: dict) -> Path:
    """``state`` saved as torch saves the download of ``weights`` (its URL's file name in the hub cache)."""
    path = torch_home / "hub" / "checkpoints" / Path(weights.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.mark.slow
def test_a_model_trained_from_imagenet_weights_reloads_as_trained(torch_home, tiny_coco, tmp_path, caplog):
    torch.manual_seed(7)
    imagenet = mobilenet_v2(weights=None).state_dict()
    imagenet = {k: (v + 0.01 * torch.randn_like(v) if v.is_floating_point() and "running_var" not in k else v)
                for k, v in imagenet.items() if not k.endswith("num_batches_tracked")}
    _place_in_hub_cache(torch_home, MobileNet_V2_Weights.IMAGENET1K_V1, imagenet)

    out = train_tiny(tiny_coco["train"], tmp_path / "m", pretrained="default", val_json=str(tiny_coco["val"]),
                     detections_per_image=20, max_iter=3)
    saved = torch.load(out / WEIGHTS, weights_only=True)
    # the cached file was loaded: the stem (kept fixed) and every frozen norm hold its values
    assert torch.equal(saved["backbone.body.0.0.weight"], imagenet["features.0.0.weight"])
    assert torch.equal(saved["backbone.body.5.conv.1.1.running_mean"], imagenet["features.5.conv.1.1.running_mean"])
    assert not any(k.endswith("num_batches_tracked") for k in saved)  # frozen norms, as pretrained models have

    # the folder comes back with the same frozen norms, and scores what training wrote in model.json
    predictor = Predictor.from_dir(out, device="cpu", fast=False)
    assert any(isinstance(m, misc_ops.FrozenBatchNorm2d) for m in predictor.model.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in predictor.model.modules())
    val = load_coco(tiny_coco["val"])
    results = predictor([val.image_path(i) for i in val.images], threshold=0.0)
    assert sum(len(r) for r in results) > 0
    metrics = evaluate_predictor(Predictor.from_dir(out, device="cpu"), val)
    written = json.loads((out / "model.json").read_text())["metrics"]
    assert written["segm_AP50"] == pytest.approx(metrics["segm"]["AP50"], abs=1e-9)

    # the next round (--init-from that folder) keeps the frozen norms and their statistics
    again = train_tiny(tiny_coco["train"], tmp_path / "round2", init_from=str(out), max_iter=1, detections_per_image=20)
    second = torch.load(again / WEIGHTS, weights_only=True)
    assert set(second) == set(saved)
    assert torch.equal(second["backbone.body.5.conv.1.1.running_mean"], saved["backbone.body.5.conv.1.1.running_mean"])
    assert not any(type(m) is torch.nn.BatchNorm2d for m in Predictor.from_dir(again, device="cpu").model.modules())


@pytest.mark.slow
def test_resnet50_starts_from_the_coco_model_in_the_hub_cache(torch_home, tmp_path):
    torch.manual_seed(3)
    coco = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                 norm_layer=misc_ops.FrozenBatchNorm2d).state_dict()
    _place_in_hub_cache(torch_home, MaskRCNN_ResNet50_FPN_Weights.COCO_V1, coco)

    spec = ModelSpec("resnet50_fpn", ["balloon"], min_size=320, max_size=480)
    model = build_model(spec, pretrained="default")
    state = model.state_dict()
    # everything but the class-specific predictors comes from the file; those are new, for one class
    assert torch.equal(state["backbone.body.layer4.2.conv3.weight"], coco["backbone.body.layer4.2.conv3.weight"])
    assert torch.equal(state["roi_heads.mask_head.0.0.weight"], coco["roi_heads.mask_head.0.0.weight"])
    assert state["roi_heads.box_predictor.cls_score.weight"].shape[0] == 2
    assert state["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape[0] == 2

    # its model folder rebuilds the same network: the same outputs, bit for bit
    write_model_dir(tmp_path / "m", model, spec, engine="torchvision", score_threshold=0.5, training={}, metrics={})
    reloaded = Predictor.from_dir(tmp_path / "m", device="cpu", fast=False)
    image = (np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    model.eval()
    with torch.no_grad():
        ours, theirs = model.backbone(x), reloaded.model.backbone(x)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
