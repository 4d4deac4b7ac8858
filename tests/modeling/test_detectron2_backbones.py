"""The timm backbones registered in detectron2, their own config keys, the config mapping, and the
conversion of detectron2's outputs into the kit's Instances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from detectron2.structures import Boxes
from detectron2.structures import Instances as D2Instances

from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.modeling import ModelSpec
from maskrcnn_finetune.modeling.backbones import BACKBONES, Backbone
from maskrcnn_finetune.modeling.detectron2.checkpoints import spec_from_config
from maskrcnn_finetune.modeling.detectron2.inference import from_detectron2, to_torchvision_output
from maskrcnn_finetune.modeling.detectron2.model_config import build_config
from maskrcnn_finetune.modeling.detectron2.timm_backbones import (
    ADD_CONFIG,
    add_mobilenetv2_config,
    add_vovnet_config,
    create_timm_features,
)


def _spec(backbone: str, **options) -> ModelSpec:
    return ModelSpec(backbone, ["a", "b"], min_size=64, max_size=96, anchor_sizes=[8, 16, 32, 64, 128],
                     mask_head_layers=[32], box_head_dim=64, **options)


def test_each_family_adds_only_its_own_config_keys():
    cfg = get_cfg()
    add_mobilenetv2_config(cfg)
    assert cfg.MODEL.MOBILENETV2.TIMM_NAME == "mobilenetv2_100" and "VOVNET" not in cfg.MODEL
    add_vovnet_config(cfg)
    assert cfg.MODEL.VOVNET.TIMM_NAME == "ese_vovnet19b_dw"
    assert "build_mobilenetv2_fpn_backbone" in BACKBONE_REGISTRY and "build_vovnet_fpn_backbone" in BACKBONE_REGISTRY


@pytest.mark.parametrize("name, channels", [("mobilenetv2_fpnlite", 128), ("vovnet19_fpn", 256), ("resnet18_fpn", 128)])
def test_registered_backbones_give_the_fpn_levels_they_announce(name, channels):
    cfg = build_config(_spec(name))
    assert cfg.MODEL.PIXEL_MEAN == pytest.approx([123.675, 116.28, 103.53]) and cfg.INPUT.FORMAT == "RGB"
    backbone = build_backbone(cfg).eval()
    shapes = backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        f"p{i}": (channels, 2 ** i) for i in range(2, 7)}
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, 64, 96))
    for key, shape in shapes.items():  # each level is the input divided by its stride, rounded up
        assert features[key].shape == (1, channels, -(-64 // shape.stride), -(-96 // shape.stride)), key


def test_every_backbone_of_the_one_list_has_its_detectron2_config():
    """The list in modeling/backbones.py is the detectron2 engine's too: each name maps to a config whose
    summary (the model.json spec) names it back."""
    for name, backbone in BACKBONES.items():
        cfg = build_config(_spec(name))
        assert spec_from_config(cfg, ["a", "b"]).backbone == name
        assert cfg.MODEL.FPN.OUT_CHANNELS == backbone.fpn_channels
        if backbone.detectron2.builder:
            assert backbone.detectron2.family in ADD_CONFIG, name
            assert cfg.MODEL[backbone.detectron2.family].TIMM_NAME == backbone.detectron2_timm_name, name
    # timm's ResNet-18, as detectron2's model zoo has none
    assert build_config(_spec("resnet18_fpn")).MODEL.TIMM.TIMM_NAME == "resnet18"


def test_a_backbone_of_the_torchvision_engine_only_is_refused_by_name(monkeypatch):
    only = Backbone("only_torchvision_fpn", builder=lambda backbone, pretrained: None)
    monkeypatch.setitem(BACKBONES._entries, only.name, only)  # a registry entry for this test only
    with pytest.raises(ConfigError, match="backbone 'only_torchvision_fpn' is built by the torchvision engine only; "
                                          "use --engine torchvision, or one of these with --engine detectron2: "
                                          "resnet50_fpn, resnet18_fpn"):
        build_config(_spec("only_torchvision_fpn"))
    with pytest.raises(ConfigError, match="unknown backbone 'resnet34_fpn'"):
        build_config(_spec("resnet34_fpn"))


def test_a_vovnet_timm_describes_but_does_not_register_is_built():
    """timm's ``ese_vovnet19b`` (the older VoVNet project's V-19-eSE) exists only in timm's vovnet.model_cfgs."""
    body = create_timm_features("ese_vovnet19b")
    assert body.feature_info.channels() == [256, 512, 768, 1024] and body.feature_info.reduction() == [4, 8, 16, 32]
    with pytest.raises(ConfigError, match="timm has no ImageNet weights for 'ese_vovnet19b'; set PRETRAINED False"):
        create_timm_features("ese_vovnet19b", pretrained=True)
    with pytest.raises(ConfigError, match="timm has no network 'ese_vovnet21'"):
        create_timm_features("ese_vovnet21")


def test_config_mapping_carries_the_spec():
    cfg = build_config(_spec("resnet50_fpn", detections_per_image=7))
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 2 and cfg.TEST.DETECTIONS_PER_IMAGE == 7
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[8], [16], [32], [64], [128]]
    assert (cfg.MODEL.ROI_MASK_HEAD.NUM_CONV, cfg.MODEL.ROI_MASK_HEAD.CONV_DIM, cfg.MODEL.ROI_BOX_HEAD.FC_DIM) == (1, 32, 64)
    # from scratch: trainable BatchNorm everywhere and no weights to download
    assert cfg.MODEL.RESNETS.NORM == "BN" and cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.MODEL.WEIGHTS == ""
    with pytest.raises(ConfigError, match="5 values"):
        build_config(ModelSpec("vovnet19_fpn", ["a"], anchor_sizes=[8, 16]))


def test_detectron2_outputs_become_the_kit_instances():
    d2 = D2Instances((4, 5))
    d2.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 4.0, 3.0]]))
    d2.scores = torch.tensor([0.9, 0.2])
    d2.pred_classes = torch.tensor([1, 0])
    masks = torch.zeros(2, 4, 5, dtype=torch.bool)
    masks[0, :2, :2] = True
    masks[1, 1:3, 1:4] = True
    d2.pred_masks = masks
    inst = from_detectron2(d2, ["a", "b"], threshold=0.5)
    assert len(inst) == 1 and inst.labels == ["b"] and inst.image_size == (4, 5)
    assert inst.masks.dtype == bool and inst.masks.sum() == 4
    assert np.allclose(inst.boxes, [[0, 0, 2, 2]]) and inst.scores == pytest.approx([0.9])
    tv = to_torchvision_output(d2)
    assert tv["labels"].tolist() == [2, 1] and tv["masks"].shape == (2, 1, 4, 5)
    assert float(tv["masks"][1].sum()) == 6.0
