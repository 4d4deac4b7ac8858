"""Backbones with an FPN, registered by name: the one list of backbones, which both engines read.

Each entry (:class:`Backbone`) says how the torchvision engine builds it and, in
:attr:`Backbone.detectron2`, how the detectron2 engine does (None: the torchvision engine only).

Every torchvision builder takes the entry and ``pretrained`` (bool) and returns a module whose forward
gives an ``OrderedDict`` of feature maps ``"0".."3"`` (strides 4-32) plus ``"pool"``, and which has an
``out_channels`` attribute (the entry's ``fpn_channels``), as torchvision's Mask R-CNN expects. With
pretrained weights the normalisation layers are frozen (their statistics come from ImageNet); from
scratch they are trainable BatchNorm, since frozen random statistics would make the network untrainable.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, ResNet101_Weights, mobilenet_v2
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from maskrcnn_finetune.registries import Registry, place_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detectron2Build:
    """How the detectron2 engine builds a backbone (read by :mod:`.detectron2.model_config`).

    Attributes:
        zoo_config: a model-zoo yaml whose ResNet (and, pretrained, COCO weights) it takes.
        builder: else a ``BACKBONE_REGISTRY`` builder of :mod:`.detectron2.timm_backbones` ...
        family: ... and the config node that builder reads (``cfg.MODEL.<family>``).
        timm_name: the timm network the builder makes, where the torchvision engine builds the body
            otherwise ("": the backbone's own :attr:`Backbone.timm_name`).
    """

    zoo_config: str = ""
    builder: str = ""
    family: str = ""
    timm_name: str = ""


@dataclass(frozen=True)
class Backbone:
    """One backbone name, as both engines build it.

    Attributes:
        name: the name ``--backbone`` and ``model.json`` use.
        builder: the torchvision engine's builder, ``builder(backbone, pretrained) -> nn.Module``.
        fpn_channels: the FPN's width (``out_channels``), on both engines.
        timm_name: the timm network of the body, on both engines ("" where it is not a timm network).
        detectron2: how the detectron2 engine builds it; None: the torchvision engine only.
    """

    name: str
    builder: Callable[["Backbone", bool], nn.Module]
    fpn_channels: int = 256
    timm_name: str = ""
    detectron2: Detectron2Build | None = None

    def build(self, pretrained: bool) -> nn.Module:
        """The torchvision engine's FPN backbone (``pretrained``: ImageNet weights)."""
        return self.builder(self, pretrained)

    @property
    def detectron2_timm_name(self) -> str:
        """The timm network detectron2 builds for it ("" for a model-zoo ResNet)."""
        return (self.detectron2.timm_name or self.timm_name) if self.detectron2 and self.detectron2.builder else ""


BACKBONES: Registry[Backbone] = Registry("backbone")
"""Backbone name -> :class:`Backbone`. A name is registered once (a second registration raises)."""


def register_backbone(name: str, builder: Callable[[Backbone, bool], nn.Module] | None = None, *,
                      fpn_channels: int = 256, timm_name: str = "", detectron2: Detectron2Build | None = None):
    """Adds a backbone to :data:`BACKBONES`; without ``builder``, a decorator for the builder function.

    Args:
        name: the backbone's name.
        builder: ``builder(backbone, pretrained) -> nn.Module`` with ``out_channels`` (see :class:`Backbone`).
        fpn_channels / timm_name / detectron2: the :class:`Backbone` fields.

    Raises:
        ValueError: ``name`` is registered already (the message names both builders).
    """
    if builder is None:
        def decorator(fn):
            register_backbone(name, fn, fpn_channels=fpn_channels, timm_name=timm_name, detectron2=detectron2)
            return fn

        return decorator
    entry = Backbone(name, builder, fpn_channels=fpn_channels, timm_name=timm_name, detectron2=detectron2)
    BACKBONES.register(name, entry, place=place_of(builder))
    return entry


def build_backbone(name: str, pretrained: bool) -> nn.Module:
    """Builds the backbone registered as ``name`` (the torchvision engine's).

    Raises:
        ConfigError: for an unknown name (the message lists the known ones).
    """
    return BACKBONES.lookup(name).build(pretrained)


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


ZOO_R50 = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
ZOO_R101 = "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml"


@register_backbone("resnet50_fpn", detectron2=Detectron2Build(zoo_config=ZOO_R50))
def resnet50_fpn(backbone: Backbone, pretrained: bool) -> nn.Module:
    # Pretrained resnet50_fpn takes the whole COCO Mask R-CNN (see modeling.maskrcnn); here
    # only the from-scratch or ImageNet form of the backbone is built.
    from torchvision.models import ResNet50_Weights

    weights = ResNet50_Weights.IMAGENET1K_V1 if pretrained else None
    return resnet_fpn_backbone(backbone_name="resnet50", weights=weights, norm_layer=_norm(pretrained),
                               trainable_layers=3 if pretrained else 5)


# detectron2's model zoo has no ResNet-18 (neither config nor weights): its detectron2 form is timm's
# ResNet-18 under detectron2's FPN, as MobileNetV2 is
@register_backbone("resnet18_fpn", fpn_channels=128, detectron2=Detectron2Build(
    builder="build_timm_fpn_backbone", family="TIMM", timm_name="resnet18"))
def resnet18_fpn(backbone: Backbone, pretrained: bool) -> nn.Module:
    """ResNet-18 with a 128-channel FPN: plain convolutions train fast from scratch on a CPU (the demo preset)."""
    from torchvision.models import ResNet18_Weights, resnet18

    body = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1 if pretrained else None, norm_layer=_norm(pretrained))
    if pretrained:  # as torchvision's resnet_fpn_backbone does: train layer2-4 only
        for name, param in body.named_parameters():
            param.requires_grad_(name.startswith(("layer2", "layer3", "layer4")))
    return BackboneWithFPN(body, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                           in_channels_list=[64, 128, 256, 512], out_channels=backbone.fpn_channels,
                           extra_blocks=LastLevelMaxPool())


@register_backbone("resnet101_fpn", detectron2=Detectron2Build(zoo_config=ZOO_R101))
def resnet101_fpn(backbone: Backbone, pretrained: bool) -> nn.Module:
    weights = ResNet101_Weights.IMAGENET1K_V1 if pretrained else None
    return resnet_fpn_backbone(backbone_name="resnet101", weights=weights, norm_layer=_norm(pretrained),
                               trainable_layers=3 if pretrained else 5)


def mobilenetv2_fpn(backbone: Backbone, pretrained: bool) -> nn.Module:
    """torchvision's MobileNetV2 with an FPN of ``backbone.fpn_channels``."""
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
        out_channels=backbone.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


# detectron2 builds timm's MobileNetV2 (the same network; ImageNet weights of its own)
_D2_MOBILENETV2 = Detectron2Build(builder="build_mobilenetv2_fpn_backbone", family="MOBILENETV2",
                                  timm_name="mobilenetv2_100")
register_backbone("mobilenetv2_fpn", mobilenetv2_fpn, detectron2=_D2_MOBILENETV2)
# a 128-channel FPN: about half the FPN and head cost of the 256 one
register_backbone("mobilenetv2_fpnlite", mobilenetv2_fpn, fpn_channels=128, detectron2=_D2_MOBILENETV2)


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


def timm_fpn(backbone: Backbone, pretrained: bool) -> TimmFPN:
    """The :class:`TimmFPN` of ``backbone.timm_name``."""
    return TimmFPN(backbone.timm_name, pretrained, backbone.fpn_channels)


_D2_VOVNET = Detectron2Build(builder="build_vovnet_fpn_backbone", family="VOVNET")
register_backbone("vovnet19_fpn", timm_fpn, timm_name="ese_vovnet19b_dw", detectron2=_D2_VOVNET)
register_backbone("vovnet39_fpn", timm_fpn, timm_name="ese_vovnet39b", detectron2=_D2_VOVNET)
