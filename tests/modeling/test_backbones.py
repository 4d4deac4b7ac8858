"""Every registered backbone trains, saves, reloads and predicts; bad choices are explained."""

from __future__ import annotations

import json
import math
import urllib.error

import numpy as np
import pytest
import torch

from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.modeling import BACKBONES, ModelSpec, build_model
from maskrcnn_finetune.modeling.backbones import register_backbone
from maskrcnn_finetune.modeling.maskrcnn import WeightsUnavailableError
from maskrcnn_finetune.predictor import Predictor
from maskrcnn_finetune.registries import Registry


def test_registry_has_the_promised_backbones():
    assert set(BACKBONES) >= {"resnet50_fpn", "resnet101_fpn", "mobilenetv2_fpn", "mobilenetv2_fpnlite",
                              "vovnet19_fpn", "vovnet39_fpn", "resnet18_fpn"}
    # both engines build every one of them, with one FPN width
    assert all(b.detectron2 is not None for b in BACKBONES.values())
    assert {n: b.fpn_channels for n, b in BACKBONES.items() if b.fpn_channels != 256} == {
        "resnet18_fpn": 128, "mobilenetv2_fpnlite": 128}


def another_resnet18(backbone, pretrained):
    raise AssertionError("never built: its registration is refused")


def test_a_backbone_name_registered_twice_is_refused_naming_both_places():
    before = dict(BACKBONES)
    with pytest.raises(ValueError, match=r"the backbone 'resnet18_fpn' is registered twice: first by "
                                         r"maskrcnn_finetune\.modeling\.backbones\.resnet18_fpn, then by "
                                         r"test_backbones\.another_resnet18; give the second one another name"):
        register_backbone("resnet18_fpn", another_resnet18)
    with pytest.raises(ValueError, match=r"first by maskrcnn_finetune\.modeling\.backbones\.resnet18_fpn, then by "
                                         r"test_backbones\.test_a_backbone_name_registered_twice_is_refused_naming_"
                                         r"both_places\.<locals>\.resnet18"):
        @register_backbone("resnet18_fpn")
        def resnet18(backbone, pretrained):
            raise AssertionError("never built")
    assert dict(BACKBONES) == before  # the first registration stands
    assert BACKBONES["resnet18_fpn"].build(False).out_channels == 128


def test_a_registry_with_a_list_of_names_refuses_others():
    registry = Registry("engine", names=("torchvision", "detectron2"))
    registry.register("torchvision", another_resnet18)
    assert registry.missing() == ["detectron2"] and registry.place("torchvision").endswith(".another_resnet18")
    with pytest.raises(ValueError, match="registers the engine 'mmdet', which is not one of torchvision, detectron2"):
        registry.register("mmdet", another_resnet18)
    with pytest.raises(ConfigError, match="unknown engine 'mmdet'; choose one of: torchvision"):
        registry.lookup("mmdet")


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_trains_reloads_and_predicts(backbone, tiny_model, tiny_coco):
    out = tiny_model(backbone, val_json=str(tiny_coco["val"]))  # trained, and evaluated on the val split
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    info = json.loads((out / "model.json").read_text())
    assert info["backbone"] == backbone and 0.0 <= info["metrics"]["segm_AP50"] <= 1.0
    predictor = Predictor.from_dir(out, score_threshold=0.0)
    assert predictor.class_names == ["circle", "square", "triangle"]
    image = np.zeros((70, 90, 3), dtype=np.uint8)
    image[10:40, 20:60] = (200, 30, 30)
    result = predictor(image)
    n = len(result)
    assert 0 < n <= 20, f"{backbone} found {n} instances at threshold 0"
    assert result.masks.shape == (n, 70, 90) and result.masks.dtype == bool
    assert result.boxes.shape == (n, 4) and result.scores.shape == (n,) and result.class_ids.shape == (n,)
    assert all(0 <= c < 3 for c in result.class_ids)
    assert np.all(result.boxes[:, 2:] >= result.boxes[:, :2]) and np.all(result.boxes >= 0)
    assert np.all(result.boxes[:, [0, 2]] <= 90) and np.all(result.boxes[:, [1, 3]] <= 70)
    assert np.all((result.scores >= 0) & (result.scores <= 1)) and np.all(np.diff(result.scores) <= 0)


def test_anchor_generator_matches_feature_levels():
    for name in BACKBONES:
        model = build_model(ModelSpec(name, ["a"], min_size=64, max_size=96, anchor_sizes=[8, 16, 32, 64, 128],
                                      box_head_dim=32, mask_head_layers=[16]))
        model.eval()
        with torch.no_grad():
            features = model.backbone(torch.zeros(1, 3, 64, 64))
        assert len(features) == len(model.rpn.anchor_generator.sizes) == 5, name
        assert model.rpn.head.cls_logits.out_channels == 3  # one size x three ratios per level


def test_rpn_levels_leave_out_the_finest_feature_map_and_keep_the_weights():
    spec = dict(min_size=64, max_size=96, box_head_dim=32, mask_head_layers=[16])
    full = build_model(ModelSpec("resnet18_fpn", ["a"], anchor_sizes=[8, 16, 32, 64, 128], **spec)).eval()
    coarse = build_model(ModelSpec("resnet18_fpn", ["a"], anchor_sizes=[16, 32, 64, 128], rpn_levels=4, **spec)).eval()
    assert full.state_dict().keys() == coarse.state_dict().keys()  # the same weights, fewer inputs to the RPN
    coarse.load_state_dict(full.state_dict())
    image = torch.rand(3, 64, 96)
    with torch.no_grad():
        images, _ = coarse.transform([image])
        features = coarse.backbone(images.tensors)
        maps = list(features.values())
        assert len(maps) == 5  # the heads still pool from P2-P5
        objectness, deltas = coarse.rpn.head(maps)
        assert [o.shape[-2:] for o in objectness] == [m.shape[-2:] for m in maps[1:]]
        anchors = coarse.rpn.anchor_generator(images, maps)
        assert anchors[0].shape[0] == 3 * sum(m.shape[-2] * m.shape[-1] for m in maps[1:])
        # the coarse levels' scores are the full model's for the same maps
        full_objectness, _ = full.rpn.head(maps)
        for a, b in zip(objectness, full_objectness[1:]):
            assert torch.equal(a, b)
        assert set(coarse([image])[0]) == {"boxes", "labels", "scores", "masks"}  # inference runs on the coarse RPN
    coarse.train()
    target = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 30.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 64, 96, dtype=torch.uint8)}
    target["masks"][0, 10:30, 10:40] = 1
    losses = coarse([image], [target])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_objectness"] > 0
    with pytest.raises(ConfigError, match=r"one anchor size per RPN level \(4\), got \[8, 16, 32, 64, 128\]"):
        build_model(ModelSpec("resnet18_fpn", ["a"], anchor_sizes=[8, 16, 32, 64, 128], rpn_levels=4, **spec))


def test_fpn_norm_puts_batch_norm_after_every_fpn_convolution_of_every_backbone():
    for name in BACKBONES:
        spec = ModelSpec(name, ["a"], min_size=64, max_size=96, anchor_sizes=[8, 16, 32, 64, 128], box_head_dim=32,
                         mask_head_layers=[16], fpn_norm="bn")
        fpn = build_model(spec).backbone.fpn
        blocks = [*fpn.inner_blocks, *fpn.layer_blocks]
        assert len(blocks) == 8, name
        for block in blocks:
            conv, norm = block[0], block[1]
            assert isinstance(norm, torch.nn.BatchNorm2d) and conv.bias is None and norm.num_features == conv.out_channels
        plain = build_model(ModelSpec(name, ["a"], min_size=64, max_size=96, anchor_sizes=[8, 16, 32, 64, 128],
                                      box_head_dim=32, mask_head_layers=[16])).backbone.fpn
        assert [b[0].in_channels for b in fpn.inner_blocks] == [b[0].in_channels for b in plain.inner_blocks], name
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules()), name
    with pytest.raises(ConfigError, match="keep fpn_norm none"):
        build_model(ModelSpec("resnet50_fpn", ["a"], fpn_norm="bn"), pretrained="default")


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet34_fpn'; choose one of: mobilenetv2_fpn"):
        build_model(ModelSpec("resnet34_fpn", ["a"]))


def test_missing_pretrained_weights_say_what_to_do(monkeypatch, tmp_path):
    # The network is the one thing that cannot exist here: downloads fail as they do offline.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError, match="pass --pretrained none to train from scratch"):
        build_model(ModelSpec("mobilenetv2_fpnlite", ["a"]), pretrained="default")
    with pytest.raises(WeightsUnavailableError, match="resnet50_fpn"):
        build_model(ModelSpec("resnet50_fpn", ["a"]), pretrained="default")


def test_scratch_models_have_trainable_normalisation():
    model = build_model(ModelSpec("mobilenetv2_fpnlite", ["a"], box_head_dim=32, mask_head_layers=[16]))
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.weight.requires_grad for m in norms)
