"""Mask R-CNN assembled from a registered backbone, as a :class:`~maskrcnn_finetune.model_spec.ModelSpec` describes it."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from maskrcnn_finetune.errors import ConfigError, WeightsUnavailableError
from maskrcnn_finetune.model_spec import ModelSpec, default_anchor_sizes
from maskrcnn_finetune.modeling.backbones import BACKBONES, build_backbone

__all__ = ["PRETRAINED_CHOICES", "ModelSpec", "build_model", "default_anchor_sizes", "frozen_norm_eps"]

PRETRAINED_CHOICES = ("default", "none")
"""``default``: COCO Mask R-CNN weights for resnet50_fpn, ImageNet weights for the others."""


def build_model(spec: ModelSpec, pretrained: str = "none", train_min_sizes: list[int] | None = None) -> MaskRCNN:
    """Builds Mask R-CNN for ``spec``.

    Args:
        spec: the model's description.
        pretrained: ``"default"`` to start from published weights (downloaded once, then
            cached by torch/timm), ``"none"`` to start from random weights.
        train_min_sizes: several short-side sizes to pick from at random while training
            (multi-scale augmentation); test time always uses ``spec.min_size``.

    Raises:
        ConfigError: unknown backbone or ``pretrained`` value, or no classes.
        WeightsUnavailableError: pretrained weights cannot be fetched; the message says to
            connect or pass ``--pretrained none``.
    """
    if pretrained not in PRETRAINED_CHOICES:
        raise ConfigError(f"--pretrained must be one of {', '.join(PRETRAINED_CHOICES)}, got '{pretrained}'")
    BACKBONES.lookup(spec.backbone)  # an unknown name: ConfigError listing the known ones
    if not spec.class_names:
        raise ConfigError("the model needs at least one class name")
    if len(spec.anchor_sizes) != spec.rpn_levels:
        raise ConfigError(f"the model needs one anchor size per RPN level ({spec.rpn_levels}), got {spec.anchor_sizes}")
    num_classes = len(spec.class_names) + 1
    min_size = tuple(train_min_sizes) if train_min_sizes else spec.min_size
    options = dict(
        min_size=min_size,
        max_size=spec.max_size,
        rpn_pre_nms_top_n_train=spec.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=spec.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=spec.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=spec.rpn_post_nms_top_n_test,
        box_batch_size_per_image=spec.box_batch_size_per_image,
        box_detections_per_img=spec.detections_per_image,
    )
    use_weights = pretrained == "default"
    try:
        if spec.backbone == "resnet50_fpn" and use_weights:
            if spec.box_head_dim != 1024 or spec.mask_head_layers != [256] * 4 or spec.fpn_norm != "none":
                raise ConfigError("the COCO weights of resnet50_fpn come with the standard FPN and heads; "
                                  "keep fpn_norm none, box_head_dim 1024 and mask_head_layers 256,256,256,256, "
                                  "or use --pretrained none")
            # torchvision's COCO model has a 256-channel FPN
            model = maskrcnn_resnet50_fpn(weights=MaskRCNN_ResNet50_FPN_Weights.COCO_V1, **options,
                                          **_rpn_parts(spec, 256))
            _replace_heads(model, num_classes)
        else:
            backbone = build_backbone(spec.backbone, use_weights)
            if spec.fpn_norm == "bn":
                backbone.fpn = _with_batch_norm(backbone.fpn)
            # the heads first, then the RPN head: the order MaskRCNN drew their random weights in before
            model = MaskRCNN(backbone, num_classes=None, **options, **_heads(spec, backbone.out_channels, num_classes),
                             **_rpn_parts(spec, backbone.out_channels))
    except (OSError, RuntimeError) as exc:  # urllib/requests/hub errors are OSErrors
        if not use_weights:
            raise
        raise WeightsUnavailableError(
            f"could not fetch the pretrained weights for {spec.backbone} ({type(exc).__name__}: {exc}). "
            "Connect to the internet once (they are cached afterwards), or pass --pretrained none "
            "to train from scratch"
        ) from exc
    return _propose_from_coarse_levels(model, spec)


FPN_LEVELS = 5
"""P2-P5 and the pooled P6 of every backbone's FPN."""


class CoarseLevelsAnchorGenerator(nn.Module):
    """torchvision's anchor generator on the coarsest feature maps only (the first ``skip`` left out).

    It holds no weights (the state dict is unchanged), so it wraps the generator instead of
    subclassing it: TorchScript compiles no ``super()`` call.
    """

    def __init__(self, generator: AnchorGenerator, skip: int):
        super().__init__()
        self.generator = generator
        self.skip = skip

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        return self.generator(image_list, feature_maps[self.skip:])


class CoarseLevelsRPNHead(RPNHead):
    """torchvision's RPN head on the coarsest feature maps only (the first ``skip`` left out); the same weights."""

    def __init__(self, in_channels: int, num_anchors: int, skip: int) -> None:
        super().__init__(in_channels, num_anchors)
        self.skip = skip

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, bbox_reg = [], []
        for feature in x[self.skip:]:  # RPNHead.forward's loop (TorchScript compiles no super() call)
            t = self.conv(feature)
            logits.append(self.cls_logits(t))
            bbox_reg.append(self.bbox_pred(t))
        return logits, bbox_reg


def _with_batch_norm(fpn: FeaturePyramidNetwork) -> FeaturePyramidNetwork:
    """An FPN of the same sizes with BatchNorm after each convolution (and no conv biases), new weights."""
    in_channels = [block[0].in_channels for block in fpn.inner_blocks]
    return FeaturePyramidNetwork(in_channels, fpn.layer_blocks[0][0].out_channels, extra_blocks=fpn.extra_blocks,
                                 norm_layer=nn.BatchNorm2d)


def _rpn_parts(spec: ModelSpec, channels: int) -> dict:
    """MaskRCNN's ``rpn_anchor_generator`` and ``rpn_head`` for a backbone of ``channels`` FPN channels:
    one anchor size and three aspect ratios per level the RPN proposes from (``spec.rpn_levels``). On
    fewer levels than the FPN has, the head is :class:`CoarseLevelsRPNHead` (the same weights: they are
    shared by all levels), and :func:`_propose_from_coarse_levels` wraps the generator once the model is
    built (torchvision accepts only its own class there)."""
    generator = AnchorGenerator(tuple((s,) for s in spec.anchor_sizes), ((0.5, 1.0, 2.0),) * len(spec.anchor_sizes))
    anchors = generator.num_anchors_per_location()[0]
    skip = FPN_LEVELS - spec.rpn_levels
    head = CoarseLevelsRPNHead(channels, anchors, skip) if skip else RPNHead(channels, anchors)
    return {"rpn_anchor_generator": generator, "rpn_head": head}


def _propose_from_coarse_levels(model: MaskRCNN, spec: ModelSpec) -> MaskRCNN:
    """The model's anchor generator on the levels its RPN head reads (see :func:`_rpn_parts`)."""
    skip = FPN_LEVELS - spec.rpn_levels
    if skip:
        model.rpn.anchor_generator = CoarseLevelsAnchorGenerator(model.rpn.anchor_generator, skip)
    return model


def frozen_norm_eps(backbone: str) -> float | None:
    """The epsilon of the frozen norms of ``backbone``'s pretrained form, where it is not the layers' default.

    torchvision's COCO Mask R-CNN weights (v1), where pretrained resnet50_fpn starts, were trained
    with eps 0, and torchvision builds that model so (``overwrite_eps``); a model folder fine-tuned
    from them is rebuilt the same way.
    """
    return 0.0 if backbone == "resnet50_fpn" else None


def _heads(spec: ModelSpec, channels: int, num_classes: int) -> dict:
    """Box and mask heads of the sizes the spec asks for (torchvision's defaults otherwise)."""
    layers = list(spec.mask_head_layers)
    return dict(
        box_head=TwoMLPHead(channels * 7 * 7, spec.box_head_dim),
        box_predictor=FastRCNNPredictor(spec.box_head_dim, num_classes),
        mask_head=MaskRCNNHeads(channels, layers, dilation=1),
        mask_predictor=MaskRCNNPredictor(layers[-1], layers[-1], num_classes),
    )


def _replace_heads(model: MaskRCNN, num_classes: int) -> None:
    """New box and mask predictors for our classes on top of the COCO-trained heads."""
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    hidden = model.roi_heads.mask_predictor.conv5_mask.out_channels
    in_channels = model.roi_heads.mask_predictor.conv5_mask.in_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(in_channels, hidden, num_classes)
