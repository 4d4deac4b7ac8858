"""A torchvision Mask R-CNN as its parts with weights, and put back together around other runners of those parts.

The parts (:data:`PARTS`, named by their place in the model) are the modules whose shapes are fixed
by each call: the backbone with its FPN, the RPN head's convolutions, the box head and predictor,
the mask head and predictor (a first dimension that is the number of RoIs). Everything between
them depends on the data and stays torchvision's Python: the resize transform, anchors, proposal
selection and NMS, RoIAlign, box decoding, mask pasting. :func:`python_settings` reads how that
Python part is configured (plain JSON), and :func:`assemble` builds a torchvision ``MaskRCNN`` from
those settings with a runner in the place of each part: a ``torch.export`` program
(:mod:`~maskrcnn_finetune.modeling.programs`) or an ONNX Runtime session.

    settings = python_settings(model)                     # JSON: what the Python part needs
    inputs = example_inputs(model)                        # an input of each part, as inference gives it
    rebuilt = assemble({name: runner(name) for name in PARTS}, settings)

The result is a torchvision ``MaskRCNN`` like any other (the fast CPU path and the OpenVINO backbone
apply to it), whose resize, NMS and pasting run eagerly, exactly as the model they came from.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.mask_rcnn import MaskRCNN
from torchvision.ops import MultiScaleRoIAlign

from maskrcnn_finetune.modeling.fast_cpu import supports_fast
from maskrcnn_finetune.modeling.maskrcnn import CoarseLevelsAnchorGenerator

PARTS = ("backbone", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.mask_head",
         "roi_heads.mask_predictor")
"""The parts with weights, by their names in a torchvision ``MaskRCNN``; the box and mask predictors stay
parts of their own, as on the fast path (its bf16 autocast leaves the box predictor in fp32)."""

SETTINGS_VERSION = 1

__all__ = ["PARTS", "SETTINGS_VERSION", "assemble", "example_inputs", "flatten", "part_modules", "python_settings",
           "structure_of", "unflatten"]


def part_modules(model: MaskRCNN) -> dict[str, nn.Module]:
    """The model's own modules of :data:`PARTS`, by name."""
    return {name: model.get_submodule(name) for name in PARTS}


def example_inputs(model: MaskRCNN, image_size: tuple[int, int] = (128, 160), rois: int = 8) -> dict[str, tuple]:
    """An input of each part (the positional arguments of its call), of the shapes inference gives it.

    Batch 2 and ``rois`` RoIs, so that no size is 0 or 1 (which an exporter would take as fixed).
    """
    generator = torch.Generator().manual_seed(0)
    heads = model.roi_heads
    channels = model.backbone.out_channels
    images = torch.rand(2, 3, *image_size, generator=generator)
    box_rois = torch.rand(rois, channels, *heads.box_roi_pool.output_size, generator=generator)
    mask_rois = torch.rand(rois, channels, *heads.mask_roi_pool.output_size, generator=generator)
    with torch.no_grad():
        features = model.backbone(images)
        box_features = heads.box_head(box_rois)
        mask_features = heads.mask_head(mask_rois)
    return {"backbone": (images,), "rpn.head": (list(features.values()),), "roi_heads.box_head": (box_rois,),
            "roi_heads.box_predictor": (box_features,), "roi_heads.mask_head": (mask_rois,),
            "roi_heads.mask_predictor": (mask_features,)}


def python_settings(model: MaskRCNN) -> dict:
    """How the Python part of ``model`` is configured, as JSON: what :func:`assemble` needs besides the parts.

    Raises:
        TypeError: ``model`` is not a torchvision Mask R-CNN of the parts this module knows (those of the
            fast CPU path, anchors by torchvision's generator, RoIAlign by ``MultiScaleRoIAlign``).
    """
    unknown = TypeError(f"{type(model).__name__} is not a torchvision Mask R-CNN of the parts the export knows")
    if not supports_fast(model):
        raise unknown
    generator, skip, heads = model.rpn.anchor_generator, 0, model.roi_heads
    if isinstance(generator, CoarseLevelsAnchorGenerator):
        generator, skip = generator.generator, generator.skip
    if (type(generator) is not AnchorGenerator or type(heads.box_roi_pool) is not MultiScaleRoIAlign
            or type(heads.mask_roi_pool) is not MultiScaleRoIAlign or not hasattr(model.backbone, "out_channels")):
        raise unknown
    transform, rpn = model.transform, model.rpn
    return {
        "version": SETTINGS_VERSION,
        "out_channels": int(model.backbone.out_channels),
        "transform": {"min_size": list(transform.min_size), "max_size": int(transform.max_size),
                      "image_mean": list(transform.image_mean), "image_std": list(transform.image_std),
                      "size_divisible": int(transform.size_divisible),
                      "fixed_size": list(transform.fixed_size) if transform.fixed_size else None},
        "rpn": {"anchor_sizes": [list(s) for s in generator.sizes],
                "aspect_ratios": [list(r) for r in generator.aspect_ratios], "skip_levels": int(skip),
                "pre_nms_top_n": int(rpn._pre_nms_top_n["testing"]), "post_nms_top_n": int(rpn._post_nms_top_n["testing"]),
                "nms_thresh": float(rpn.nms_thresh), "score_thresh": float(rpn.score_thresh)},
        "box_roi_pool": _pool_settings(heads.box_roi_pool),
        "mask_roi_pool": _pool_settings(heads.mask_roi_pool),
        "roi_heads": {"score_thresh": float(heads.score_thresh), "nms_thresh": float(heads.nms_thresh),
                      "detections_per_img": int(heads.detections_per_img),
                      "bbox_reg_weights": [float(w) for w in heads.box_coder.weights]},
    }


def _pool_settings(pool: MultiScaleRoIAlign) -> dict:
    return {"featmap_names": list(pool.featmap_names), "output_size": list(pool.output_size),
            "sampling_ratio": int(pool.sampling_ratio), "canonical_scale": int(pool.canonical_scale),
            "canonical_level": int(pool.canonical_level)}


def _pool(settings: dict) -> MultiScaleRoIAlign:
    return MultiScaleRoIAlign(settings["featmap_names"], tuple(settings["output_size"]), settings["sampling_ratio"],
                              canonical_scale=settings["canonical_scale"], canonical_level=settings["canonical_level"])


def assemble(parts: dict[str, nn.Module], settings: dict) -> MaskRCNN:
    """A torchvision ``MaskRCNN`` in eval mode, configured by ``settings``, with ``parts`` in the places of :data:`PARTS`.

    Args:
        parts: a module for each name of :data:`PARTS`, called as the model's own part is (the same
            inputs and outputs); the backbone's has ``out_channels``.
        settings: from :func:`python_settings`.

    Raises:
        ValueError: a part is missing, the backbone's has no ``out_channels``, or the settings are of
            another version.
    """
    missing = [name for name in PARTS if name not in parts]
    backbone = parts.get("backbone")
    if missing or not hasattr(backbone, "out_channels") or settings.get("version") != SETTINGS_VERSION:
        raise ValueError(f"cannot assemble a Mask R-CNN: parts missing {missing}, backbone's out_channels "
                         f"{getattr(backbone, 'out_channels', None)}, settings version {settings.get('version')!r} "
                         f"(this kit reads {SETTINGS_VERSION})")
    t, r, h = settings["transform"], settings["rpn"], settings["roi_heads"]
    generator = AnchorGenerator(tuple(tuple(s) for s in r["anchor_sizes"]), tuple(tuple(a) for a in r["aspect_ratios"]))
    model = MaskRCNN(
        backbone, num_classes=None,
        min_size=tuple(t["min_size"]), max_size=t["max_size"], image_mean=t["image_mean"], image_std=t["image_std"],
        size_divisible=t["size_divisible"], fixed_size=tuple(t["fixed_size"]) if t["fixed_size"] else None,
        rpn_anchor_generator=generator, rpn_head=parts["rpn.head"],
        rpn_pre_nms_top_n_test=r["pre_nms_top_n"], rpn_post_nms_top_n_test=r["post_nms_top_n"],
        rpn_nms_thresh=r["nms_thresh"], rpn_score_thresh=r["score_thresh"],
        box_roi_pool=_pool(settings["box_roi_pool"]), box_head=parts["roi_heads.box_head"],
        box_predictor=parts["roi_heads.box_predictor"], box_score_thresh=h["score_thresh"],
        box_nms_thresh=h["nms_thresh"], box_detections_per_img=h["detections_per_img"],
        bbox_reg_weights=tuple(h["bbox_reg_weights"]),
        mask_roi_pool=_pool(settings["mask_roi_pool"]), mask_head=parts["roi_heads.mask_head"],
        mask_predictor=parts["roi_heads.mask_predictor"],
    )
    if r["skip_levels"]:
        # the RPN head's part reads the coarse levels itself; the anchors must be for those levels too
        model.rpn.anchor_generator = CoarseLevelsAnchorGenerator(generator, r["skip_levels"])
    return model.eval()


def flatten(value) -> list[torch.Tensor]:
    """The tensors of a part's inputs or outputs (a tensor, or dicts, lists and tuples of them), in order."""
    if torch.is_tensor(value):
        return [value]
    values = value.values() if isinstance(value, dict) else value
    return [tensor for item in values for tensor in flatten(item)]


def structure_of(value):
    """The shape of ``value``'s nesting as JSON, for :func:`unflatten`: ``"tensor"``, ``{"dict": keys}``
    (of tensors), ``{"list": [...]}`` or ``{"tuple": [...]}``."""
    if torch.is_tensor(value):
        return "tensor"
    if isinstance(value, dict):
        return {"dict": [str(key) for key in value]}
    return {"tuple" if isinstance(value, tuple) else "list": [structure_of(item) for item in value]}


def unflatten(tensors: list[torch.Tensor], structure):
    """``tensors`` (from :func:`flatten`) back in the nesting :func:`structure_of` described; dicts as ordered dicts."""
    queue = iter(tensors)

    def build(shape):
        if shape == "tensor":
            return next(queue)
        if "dict" in shape:
            return OrderedDict((key, next(queue)) for key in shape["dict"])
        kind = tuple if "tuple" in shape else list
        return kind(build(item) for item in shape["tuple" if kind is tuple else "list"])

    return build(structure)
