"""Backbones with an FPN, registered by name.

Every builder takes ``pretrained`` (bool) and returns a module whose forward gives an
``OrderedDict`` of feature maps ``"0".."3"`` (strides 4-32) plus ``"pool"``, and which has an
``out_channels`` attribute, as torchvision's Mask R-CNN expects. With pretrained weights the
normalisation layers are frozen (their statistics come from ImageNet); from scratch they are
trainable BatchNorm, since frozen random statistics would make the network untrainable.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, ResNet101_Weights, mobilenet_v2
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from maskrcnn_finetune.errors import ConfigError

logger = logging.getLogger(__name__)

BACKBONES: dict[str, Callable[..., nn.Module]] = {}
"""Backbone name -> builder ``(pretrained: bool) -> nn.Module`` with ``out_channels``."""


def register_backbone(name: str):
    """Decorator that adds a backbone builder to :data:`BACKBONES` under ``name``."""

    def decorator(fn):
        BACKBONES[name] = fn
        return fn

    return decorator


def build_backbone(name: str, pretrained: bool) -> nn.Module:
    """Builds the backbone registered as ``name``.

    Raises:
        ConfigError: for an unknown name (the message lists the known ones).
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}'; choose one of: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](pretrained)


def _norm(pretrained: bool):
    return misc_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d


def freeze_norms(model: nn.Module, eps: float | None = None) -> nn.Module:
    """Replaces the trainable BatchNorm layers of a model built from scratch by the frozen ones its
    pretrained form has (torchvision's ``FrozenBatchNorm2d``; timm's in timm backbones), in place.

    A model trained from pretrained weights keeps frozen norms, whose weights have no
    ``num_batches_tracked``: this is how its model folder is rebuilt as it was trained, computing
    what training computed. ``eps``: the frozen norms' epsilon (None: each layer's own).
    """
    for name, child in list(model.named_children()):
        if isinstance(child, TimmFPN):
            import timm

            child.body = timm.layers.freeze_batch_norm_2d(child.body)
        elif type(child) is nn.BatchNorm2d:
            frozen = misc_ops.FrozenBatchNorm2d(child.num_features, eps=child.eps if eps is None else eps)
            setattr(model, name, frozen)
        else:
            freeze_norms(child, eps)
    return model


@register_backbone("resnet50_fpn")
def resnet50_fpn(pretrained: bool) -> nn.Module:
    # Pretrained resnet50_fpn takes the whole COCO Mask R-CNN (see modeling.maskrcnn); here
    # only the from-scratch or ImageNet form of the backbone is built.
    from torchvision.models import ResNet50_Weights

    weights = ResNet50_Weights.IMAGENET1K_V1 if pretrained else None
    return resnet_fpn_backbone(backbone_name="resnet50", weights=weights, norm_layer=_norm(pretrained),
                               trainable_layers=3 if pretrained else 5)


@register_backbone("resnet18_fpn")
def resnet18_fpn(pretrained: bool) -> nn.Module:
    """ResNet-18 with a 128-channel FPN: plain convolutions train fast from scratch on a CPU (the demo preset)."""
    from torchvision.models import ResNet18_Weights, resnet18

    body = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1 if pretrained else None, norm_layer=_norm(pretrained))
    if pretrained:  # as torchvision's resnet_fpn_backbone does: train layer2-4 only
        for name, param in body.named_parameters():
            param.requires_grad_(name.startswith(("layer2", "layer3", "layer4")))
    return BackboneWithFPN(body, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                           in_channels_list=[64, 128, 256, 512], out_channels=128, extra_blocks=LastLevelMaxPool())


@register_backbone("resnet101_fpn")
def resnet101_fpn(pretrained: bool) -> nn.Module:
    weights = ResNet101_Weights.IMAGENET1K_V1 if pretrained else None
    return resnet_fpn_backbone(backbone_name="resnet101", weights=weights, norm_layer=_norm(pretrained),
                               trainable_layers=3 if pretrained else 5)


def _mobilenetv2(pretrained: bool, out_channels: int) -> nn.Module:
    weights = MobileNet_V2_Weights.IMAGENET1K_V1 if pretrained else None
    features = mobilenet_v2(weights=weights, norm_layer=_norm(pretrained)).features
    if pretrained:  # as torchvision does for its detection backbones: keep the stem fixed
        for layer in list(features)[:2]:
            layer.requires_grad_(False)
    # outputs of blocks 3, 6, 13 and 18 have strides 4, 8, 16 and 32
    return BackboneWithFPN(
        features,
        return_layers={"3": "0", "6": "1", "13": "2", "18": "3"},
        in_channels_list=[24, 32, 96, 1280],
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
    )


@register_backbone("mobilenetv2_fpn")
def mobilenetv2_fpn(pretrained: bool) -> nn.Module:
    return _mobilenetv2(pretrained, out_channels=256)


@register_backbone("mobilenetv2_fpnlite")
def mobilenetv2_fpnlite(pretrained: bool) -> nn.Module:
    """MobileNetV2 with a 128-channel FPN: about half the FPN and head cost of the 256 one."""
    return _mobilenetv2(pretrained, out_channels=128)


class TimmFPN(nn.Module):
    """A timm network (``features_only``) with an FPN on its stride 4-32 outputs."""

    def __init__(self, model_name: str, pretrained: bool, out_channels: int = 256) -> None:
        super().__init__()
        import timm

        self.body = timm.create_model(model_name, pretrained=pretrained, features_only=True, out_indices=(1, 2, 3, 4))
        if pretrained:
            timm.layers.freeze_batch_norm_2d(self.body)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        feats = OrderedDict((str(i), f) for i, f in enumerate(self.body(x)))
        return self.fpn(feats)


@register_backbone("vovnet19_fpn")
def vovnet19_fpn(pretrained: bool) -> nn.Module:
    return TimmFPN("ese_vovnet19b_dw", pretrained)


@register_backbone("vovnet39_fpn")
def vovnet39_fpn(pretrained: bool) -> nn.Module:
    return TimmFPN("ese_vovnet39b", pretrained)
