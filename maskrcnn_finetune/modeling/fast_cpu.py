"""The fast CPU path: torchvision's Mask R-CNN parts as subclasses that run inference faster.

:func:`make_fast` turns a torchvision Mask R-CNN into the model the Predictor runs on a CPU, in
place and without copying a weight (the same modules, the same state dict), by giving four of its
parts a subclass, as the export gives the transform its eager-rounding subclass:

- :class:`FastMaskRCNN`: ``forward(images, score_floor=...)``, the per-call score threshold passed
  on to the box head;
- :class:`FastRoIHeads`: detections under ``score_floor`` are dropped between NMS and the mask
  head, so masks are computed and pasted only for the instances that will be returned (exact:
  NMS and the top-k see the same boxes as torchvision's);
- :class:`BoolPasteTransform`: masks pasted into their boxes as booleans (:func:`paste_masks_bool`,
  the same pixels as torchvision's float pasting followed by ``> 0.5``);
- RoIAlign on every core (:class:`~maskrcnn_finetune.modeling.pooling.ParallelRoIAlign`: the
  same sums as torchvision's single-threaded kernel, in another order);
- with ``bf16=True``, the backbone, the RPN head and the box and mask heads run under
  ``torch.autocast("cpu", torch.bfloat16)``, their outputs handed on in fp32 (:data:`BF16_PARTS`;
  the RPN through :class:`FastRPN`).

In training mode every part behaves exactly as torchvision's.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch.nn import functional as F
from torchvision.models.detection.mask_rcnn import MaskRCNN
from torchvision.models.detection.roi_heads import RoIHeads, expand_boxes, expand_masks, maskrcnn_inference
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from maskrcnn_finetune.modeling.pooling import use_parallel_roi_align

BF16_PARTS = ("backbone", "rpn.head", "roi_heads.box_head", "roi_heads.mask_head", "roi_heads.mask_predictor")
"""The parts of a torchvision Mask R-CNN that run in bf16 on the fast path: the convolutions and
the box head's wide layers, nearly all of the work. The layer that turns features into box
offsets and scores (``box_predictor``), and everything between the parts (anchors, NMS,
RoIAlign, box decoding, mask pasting), stay in fp32: with the box offsets in bf16, masks moved
by a pixel and more."""


def as_float(value):
    """bf16 tensors (also inside dicts, lists and tuples) back to fp32, in the standard memory layout."""
    if torch.is_tensor(value):
        # contiguous: RoIAlign's CPU kernel makes its own NCHW copy of a channels-last map on every call
        return value.float().contiguous() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, as_float(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(as_float(v) for v in value)
    return value


def _run(part: torch.nn.Module, bf16: bool, *args):
    """``part(*args)``, under CPU bf16 autocast with its outputs back in fp32 when ``bf16``."""
    if not bf16:
        return part(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = part(*args)
    return as_float(out)  # one conversion here instead of one per RoIAlign call on every feature map


def paste_masks_bool(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The model's ``(N, 1, 28, 28)`` mask probabilities pasted into their boxes as ``(N, H, W)`` booleans (> 0.5).

    torchvision's ``paste_masks_in_image`` step by step (the same padding, box rounding and
    bilinear resize, so the same pixels), thresholded inside each box instead of afterwards:
    it never builds a float mask of the whole image per instance, which at 800x1067 and 100
    instances is 340 MB written, copied and compared.
    """
    out = torch.zeros((len(masks), height, width), dtype=torch.bool)
    if len(masks) == 0:
        return out
    masks, scale = expand_masks(masks, padding=1)
    boxes = expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        resized = F.interpolate(masks[k : k + 1].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        cx0, cx1, cy0, cy1 = max(x0, 0), min(x1 + 1, width), max(y0, 0), min(y1 + 1, height)
        if cx1 > cx0 and cy1 > cy0:
            out[k, cy0:cy1, cx0:cx1] = resized[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] > 0.5
    return out


class BoolPasteTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform, pasting masks at image size as booleans (:func:`paste_masks_bool`)."""

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training:
            return result
        small = [pred.pop("masks", None) for pred in result]
        result = super().postprocess(result, image_shapes, original_image_sizes)
        for pred, masks, (height, width) in zip(result, small, original_image_sizes):
            if masks is not None:
                pred["masks"] = paste_masks_bool(masks, pred["boxes"], int(height), int(width))[:, None]
        return result


class FastRPN(RegionProposalNetwork):
    """torchvision's RPN, whose head runs in bf16 when ``bf16`` is set (inference only)."""

    bf16 = False

    def forward(self, images, features, targets=None):
        if self.training or not self.bf16:
            return super().forward(images, features, targets)
        # torchvision's inference path, the head under autocast
        features = list(features.values())
        objectness, pred_bbox_deltas = _run(self.head, True, features)
        anchors = self.anchor_generator(images, features)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        return boxes, {}


class FastRoIHeads(RoIHeads):
    """torchvision's box and mask heads, dropping detections under ``score_floor`` before the mask head.

    Filtering after torchvision's own post-processing (score floor, NMS, top-k) rather than by
    raising its score floor keeps the answer exact: NMS sees the same boxes either way.
    """

    bf16 = False

    def forward(self, features, proposals, image_shapes, targets=None, score_floor: float | None = None):
        if self.training or self.has_keypoint() or not self.has_mask():
            return super().forward(features, proposals, image_shapes, targets)
        box_features = self.box_roi_pool(features, proposals, image_shapes)
        box_features = _run(self.box_head, self.bf16, box_features)
        class_logits, box_regression = self.box_predictor(box_features)
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        if score_floor is not None:
            keep = [s >= score_floor for s in scores]
            boxes, scores, labels = ([b[k] for b, k in zip(boxes, keep)], [s[k] for s, k in zip(scores, keep)],
                                     [label[k] for label, k in zip(labels, keep)])
        result = [{"boxes": b, "labels": label, "scores": s} for b, s, label in zip(boxes, scores, labels)]
        mask_features = self.mask_roi_pool(features, boxes, image_shapes)
        mask_features = _run(self.mask_head, self.bf16, mask_features)
        mask_logits = _run(self.mask_predictor, self.bf16, mask_features)
        for probs, r in zip(maskrcnn_inference(mask_logits, labels), result):
            r["masks"] = probs
        return result, {}


class FastMaskRCNN(MaskRCNN):
    """torchvision's Mask R-CNN with the per-call ``score_floor`` of the fast path (see :class:`FastRoIHeads`)."""

    bf16 = False

    def forward(self, images, targets=None, score_floor: float | None = None):
        if self.training:
            return super().forward(images, targets)
        original_image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        images, _ = self.transform(images)
        features = _run(self.backbone, self.bf16, images.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = self.rpn(images, features)
        detections, _ = self.roi_heads(features, proposals, images.image_sizes, score_floor=score_floor)
        return self.transform.postprocess(detections, images.image_sizes, original_image_sizes)


_FAST_CLASSES = ((MaskRCNN, FastMaskRCNN), (RegionProposalNetwork, FastRPN), (RoIHeads, FastRoIHeads),
                 (GeneralizedRCNNTransform, BoolPasteTransform))


def supports_fast(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a torchvision Mask R-CNN made of the parts :func:`make_fast` knows."""
    return (type(model) in (MaskRCNN, FastMaskRCNN)
            and type(model.rpn) in (RegionProposalNetwork, FastRPN)
            and type(model.roi_heads) in (RoIHeads, FastRoIHeads)
            and type(model.transform) in (GeneralizedRCNNTransform, BoolPasteTransform))


def make_fast(model: MaskRCNN, bf16: bool = False) -> FastMaskRCNN:
    """``model`` as the fast path runs it: its parts given the subclasses of this module, in place.

    The modules and weights stay the same objects (the state dict is unchanged); the model is
    converted to channels-last and put in eval mode. Call it as
    ``model(images, score_floor=threshold)``.

    Args:
        model: a torchvision Mask R-CNN (see :func:`supports_fast`).
        bf16: run :data:`BF16_PARTS` under CPU bf16 autocast.

    Raises:
        TypeError: ``model`` has parts the fast path does not know.
    """
    if not supports_fast(model):
        raise TypeError(f"the fast CPU path needs a torchvision Mask R-CNN, not {type(model).__name__}")
    for part, (_, fast_class) in zip((model, model.rpn, model.roi_heads, model.transform), _FAST_CLASSES):
        part.__class__ = fast_class
    for part in (model, model.rpn, model.roi_heads):
        part.bf16 = bool(bf16)
    use_parallel_roi_align(model, inference=True)
    return model.to(memory_format=torch.channels_last).eval()

