"""timm backbones with an FPN, registered in detectron2's ``BACKBONE_REGISTRY``.

Each is a timm network (``features_only``) under detectron2's own :class:`FPN`; each family owns
its config keys, added by :func:`add_mobilenetv2_config` / :func:`add_vovnet_config` /
:func:`add_timm_config` (any other timm network, e.g. ``resnet18``):

    cfg.MODEL.BACKBONE.NAME = "build_mobilenetv2_fpn_backbone"
    cfg.MODEL.MOBILENETV2.TIMM_NAME = "mobilenetv2_100"

Written here on top of timm (the public detectron2 VoVNet / MobileNet repositories are CC BY-NC).
"""

from __future__ import annotations

import timm
import torch
from timm.models import build_model_with_cfg, vovnet
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from maskrcnn_finetune.errors import ConfigError

STAGE_NAMES = ("res2", "res3", "res4", "res5")
"""Names of the stride 4-32 outputs, as detectron2's ResNet calls them, so FPN configs carry over."""


def add_mobilenetv2_config(cfg: CN) -> None:
    """Adds ``cfg.MODEL.MOBILENETV2``: the timm model name, whether to load ImageNet weights, and
    whether to freeze BatchNorm (sensible only with pretrained statistics)."""
    cfg.MODEL.MOBILENETV2 = CN()
    cfg.MODEL.MOBILENETV2.TIMM_NAME = "mobilenetv2_100"
    cfg.MODEL.MOBILENETV2.PRETRAINED = False
    cfg.MODEL.MOBILENETV2.FREEZE_BN = False
    cfg.MODEL.MOBILENETV2.OUT_FEATURES = list(STAGE_NAMES)


def add_vovnet_config(cfg: CN) -> None:
    """Adds ``cfg.MODEL.VOVNET``: as for MobileNetV2; ``ese_vovnet19b_dw`` or ``ese_vovnet39b``."""
    cfg.MODEL.VOVNET = CN()
    cfg.MODEL.VOVNET.TIMM_NAME = "ese_vovnet19b_dw"
    cfg.MODEL.VOVNET.PRETRAINED = False
    cfg.MODEL.VOVNET.FREEZE_BN = False
    cfg.MODEL.VOVNET.OUT_FEATURES = list(STAGE_NAMES)


def add_timm_config(cfg: CN) -> None:
    """Adds ``cfg.MODEL.TIMM``: as for MobileNetV2, for any timm network with stride 4-32 features."""
    cfg.MODEL.TIMM = CN()
    cfg.MODEL.TIMM.TIMM_NAME = "resnet18"
    cfg.MODEL.TIMM.PRETRAINED = False
    cfg.MODEL.TIMM.FREEZE_BN = False
    cfg.MODEL.TIMM.OUT_FEATURES = list(STAGE_NAMES)


ADD_CONFIG = {"MOBILENETV2": add_mobilenetv2_config, "VOVNET": add_vovnet_config, "TIMM": add_timm_config}
"""Each family's config node -> the function that adds it (the families of :class:`~maskrcnn_finetune.modeling.
backbones.Detectron2Build`)."""


def create_timm_features(timm_name: str, pretrained: bool = False) -> torch.nn.Module:
    """timm's network ``timm_name`` as stride 4-32 feature maps (``features_only``).

    Besides timm's registered models, this takes the VoVNets that timm describes in
    ``timm.models.vovnet.model_cfgs`` without registering them (``ese_vovnet19b``: the older
    detectron2 VoVNet project's V-19-eSE), built by timm from that description; they have no
    ImageNet weights.

    Raises:
        ConfigError: an unknown name, or ImageNet weights asked for a network timm has none of.
    """
    out_indices = (1, 2, 3, 4)
    if timm.is_model(timm_name):
        return timm.create_model(timm_name, pretrained=pretrained, features_only=True, out_indices=out_indices)
    if timm_name not in vovnet.model_cfgs:
        raise ConfigError(f"timm has no network '{timm_name}'; choose a timm model name (timm.list_models())")
    if pretrained:
        raise ConfigError(f"timm has no ImageNet weights for '{timm_name}'; set PRETRAINED False (train from "
                          "scratch or load a checkpoint)")
    # as timm's own vovnet builders do, with the description given and no pretrained entry to look up
    return build_model_with_cfg(vovnet.VovNet, timm_name, False, pretrained_cfg={"architecture": timm_name},
                                model_cfg=vovnet.model_cfgs[timm_name], feature_cfg={"flatten_sequential": True},
                                features_only=True, out_indices=out_indices)


class TimmBackbone(Backbone):
    """A timm network's stride 4, 8, 16 and 32 feature maps, named ``res2``..``res5``.

    Args:
        timm_name: a timm model that supports ``features_only`` (see :func:`create_timm_features`).
        out_features: which of ``res2``..``res5`` to return.
        pretrained: load timm's ImageNet weights (downloaded once, then cached).
        freeze_bn: turn BatchNorm into frozen BatchNorm (keeps ImageNet statistics with small batches).
    """

    def __init__(self, timm_name: str, out_features: list[str], pretrained: bool = False, freeze_bn: bool = False):
        super().__init__()
        self.body = create_timm_features(timm_name, pretrained)
        if freeze_bn:
            timm.layers.freeze_batch_norm_2d(self.body)
        info = self.body.feature_info
        unknown = sorted(set(out_features) - set(STAGE_NAMES))
        if unknown:
            raise ValueError(f"unknown OUT_FEATURES {unknown}; choose from {list(STAGE_NAMES)}")
        self._out_features = [n for n in STAGE_NAMES if n in out_features]
        self._out_feature_channels = dict(zip(STAGE_NAMES, info.channels()))
        self._out_feature_strides = dict(zip(STAGE_NAMES, info.reduction()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = dict(zip(STAGE_NAMES, self.body(x)))
        return {name: features[name] for name in self._out_features}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
                for n in self._out_features}


def _timm_fpn(cfg: CN, node: CN) -> FPN:
    bottom_up = TimmBackbone(node.TIMM_NAME, node.OUT_FEATURES, node.PRETRAINED, node.FREEZE_BN)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_fpn_backbone(cfg: CN, input_shape: ShapeSpec) -> FPN:
    """MobileNetV2 (timm) + FPN, configured by ``cfg.MODEL.MOBILENETV2`` and ``cfg.MODEL.FPN``."""
    return _timm_fpn(cfg, cfg.MODEL.MOBILENETV2)


@BACKBONE_REGISTRY.register()
def build_vovnet_fpn_backbone(cfg: CN, input_shape: ShapeSpec) -> FPN:
    """ESE-VoVNet (timm) + FPN, configured by ``cfg.MODEL.VOVNET`` and ``cfg.MODEL.FPN``."""
    return _timm_fpn(cfg, cfg.MODEL.VOVNET)


@BACKBONE_REGISTRY.register()
def build_timm_fpn_backbone(cfg: CN, input_shape: ShapeSpec) -> FPN:
    """A timm network + FPN, configured by ``cfg.MODEL.TIMM`` and ``cfg.MODEL.FPN``."""
    return _timm_fpn(cfg, cfg.MODEL.TIMM)
