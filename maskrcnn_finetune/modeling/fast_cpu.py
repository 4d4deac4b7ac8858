"""The fast CPU path: a module that holds a torchvision Mask R-CNN's parts and runs its inference faster.

:class:`FastMaskRCNN` (built by :func:`make_fast`) holds the model's own transform, backbone, RPN and
RoI heads (the same modules and weights: its state dict is the model's) and runs them for
inference as torchvision does, but:

- ``forward(images, score_floor=...)``: the per-call score threshold. Detections under it are
  dropped between NMS and the mask head, so masks are computed and pasted only for the instances
  that will be returned (exact: NMS and the top-k see the same boxes as torchvision's);
- masks pasted into their boxes as booleans (:func:`paste_masks_bool`, the same pixels as
  torchvision's float pasting followed by ``> 0.5``);
- RoIAlign on every core (:class:`~maskrcnn_finetune.modeling.pooling.ParallelRoIAlign`, poolers of
  its own: the same sums as torchvision's single-threaded kernel, in another order);
- with ``bf16=True``, the backbone, the RPN head and the box and mask heads run under
  ``torch.autocast("cpu", torch.bfloat16)``, their outputs handed on in fp32 (:data:`BF16_PARTS`);
- optionally another module in the backbone's place (the OpenVINO-compiled backbone of
  :mod:`maskrcnn_finetune.modeling.openvino_backbone`).

The model it is built from is not changed but for its memory layout (channels-last, in place: no
weight is copied) and eval mode; it stays the torchvision model it was, for training or export.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch.nn import functional as F
from torchvision.models.detection.mask_rcnn import MaskRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, expand_boxes, expand_masks, maskrcnn_inference
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from maskrcnn_finetune.modeling.pooling import ParallelRoIAlign

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


class FastMaskRCNN(torch.nn.Module):
    """A torchvision Mask R-CNN's parts, run for inference by the fast path (see the module's text).

    Call it as ``fast(images, score_floor=threshold)`` (a list of ``(3, H, W)`` float images; the
    answer is torchvision's list of dicts, ``masks`` as ``(N, 1, H, W)`` booleans). Inference only.

    Args:
        model: a torchvision Mask R-CNN (see :func:`supports_fast`); its parts are held, not copied.
        bf16: run :data:`BF16_PARTS` under CPU bf16 autocast.
        backbone: a module run in place of the model's backbone (e.g. compiled by OpenVINO), called
            like it; ``None`` for the model's own.

    Raises:
        TypeError: ``model`` has parts the fast path does not know.
    """

    def __init__(self, model: MaskRCNN, bf16: bool = False, backbone: torch.nn.Module | None = None) -> None:
        if not supports_fast(model):
            raise TypeError(f"the fast CPU path needs a torchvision Mask R-CNN, not {type(model).__name__}")
        super().__init__()
        # the model's parts under its own names: the same state dict, the same hooks
        self.transform = model.transform
        self.backbone = model.backbone if backbone is None else backbone
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads
        self.bf16 = bool(bf16)
        heads = model.roi_heads
        # poolers of its own (they hold no weights), so the model's RoI heads stay as they are
        self.box_roi_pool = ParallelRoIAlign.like(heads.box_roi_pool, inference=True)
        self.mask_roi_pool = ParallelRoIAlign.like(heads.mask_roi_pool, inference=True)

    def forward(self, images: list[torch.Tensor], score_floor: float | None = None) -> list[dict[str, torch.Tensor]]:
        if self.training or self.rpn.training or self.roi_heads.training:
            raise RuntimeError("the fast path runs inference only; train the torchvision model it was built from")
        original_image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        images, _ = self.transform(images)
        features = _run(self.backbone, self.bf16, images.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals = self._proposals(images, features)
        detections = self._detections(features, proposals, images.image_sizes, score_floor)
        return self._postprocess(detections, images.image_sizes, original_image_sizes)

    def _proposals(self, images: ImageList, features: OrderedDict) -> list[torch.Tensor]:
        """The RPN's proposals: torchvision's RPN itself, or its inference steps with the head under bf16."""
        rpn: RegionProposalNetwork = self.rpn
        if not self.bf16:
            return rpn(images, features)[0]
        features = list(features.values())
        objectness, pred_bbox_deltas = _run(rpn.head, True, features)
        anchors = rpn.anchor_generator(images, features)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        proposals = rpn.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        return boxes

    def _detections(self, features, proposals, image_shapes, score_floor: float | None) -> list[dict]:
        """torchvision's box and mask heads, dropping detections under ``score_floor`` before the mask head.

        Filtering after torchvision's own post-processing (score floor, NMS, top-k) rather than by
        raising its score floor keeps the answer exact: NMS sees the same boxes either way.
        """
        heads: RoIHeads = self.roi_heads
        box_features = self.box_roi_pool(features, proposals, image_shapes)
        box_features = _run(heads.box_head, self.bf16, box_features)
        class_logits, box_regression = heads.box_predictor(box_features)
        boxes, scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        if score_floor is not None:
            keep = [s >= score_floor for s in scores]
            boxes, scores, labels = ([b[k] for b, k in zip(boxes, keep)], [s[k] for s, k in zip(scores, keep)],
                                     [label[k] for label, k in zip(labels, keep)])
        result = [{"boxes": b, "labels": label, "scores": s} for b, s, label in zip(boxes, scores, labels)]
        mask_features = self.mask_roi_pool(features, boxes, image_shapes)
        mask_features = _run(heads.mask_head, self.bf16, mask_features)
        mask_logits = _run(heads.mask_predictor, self.bf16, mask_features)
        for probs, r in zip(maskrcnn_inference(mask_logits, labels), result):
            r["masks"] = probs
        return result

    def _postprocess(self, result, image_shapes, original_image_sizes) -> list[dict]:
        """torchvision's post-processing (boxes back to image size), the masks pasted as booleans."""
        small = [pred.pop("masks", None) for pred in result]
        result = self.transform.postprocess(result, image_shapes, original_image_sizes)
        for pred, masks, (height, width) in zip(result, small, original_image_sizes):
            if masks is not None:
                pred["masks"] = paste_masks_bool(masks, pred["boxes"], int(height), int(width))[:, None]
        return result


def supports_fast(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a torchvision Mask R-CNN made of the parts :class:`FastMaskRCNN` knows."""
    return (type(model) is MaskRCNN
            and type(model.rpn) is RegionProposalNetwork
            and type(model.roi_heads) is RoIHeads and model.roi_heads.has_mask() and not model.roi_heads.has_keypoint()
            and type(model.transform) is GeneralizedRCNNTransform)


def make_fast(model: MaskRCNN, bf16: bool = False, backbone: torch.nn.Module | None = None) -> FastMaskRCNN:
    """The fast path of ``model``: a :class:`FastMaskRCNN` holding its parts.

    The model is converted to channels-last (in place: the same parameters, no weight copied) and
    put in eval mode; nothing else of it changes. Call the result as
    ``fast(images, score_floor=threshold)``.

    Args:
        model: a torchvision Mask R-CNN (see :func:`supports_fast`).
        bf16: run :data:`BF16_PARTS` under CPU bf16 autocast.
        backbone: run in place of the model's backbone (see :class:`FastMaskRCNN`).

    Raises:
        TypeError: ``model`` has parts the fast path does not know.
    """
    if not supports_fast(model):
        raise TypeError(f"the fast CPU path needs a torchvision Mask R-CNN, not {type(model).__name__}")
    model.to(memory_format=torch.channels_last).eval()
    return FastMaskRCNN(model, bf16, backbone).eval()
