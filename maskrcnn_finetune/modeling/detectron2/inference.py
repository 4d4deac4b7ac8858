"""detectron2 models behind the kit's inference seam.

:class:`Detectron2Model` takes what a torchvision Mask R-CNN takes (a list of RGB ``(3, H, W)``
tensors in [0, 1]) and returns what it returns (dicts of ``boxes``, ``scores``, 1-based
``labels`` and ``(N, 1, H, W)`` ``masks``), so :class:`~maskrcnn_finetune.predictor.Predictor`,
evaluation, timing and the server work unchanged. Images are prepared exactly as detectron2's
``DefaultPredictor`` prepares them, so both give the same predictions.
"""

from __future__ import annotations

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.structures import Instances as D2Instances
from torch import nn

from maskrcnn_finetune.structures import Instances


def from_detectron2(instances: D2Instances, class_names: list[str], threshold: float = 0.0) -> Instances:
    """The kit's :class:`Instances` from a detectron2 ``Instances`` (``outputs["instances"]``).

    Args:
        instances: detectron2's predictions for one image, at the image's size.
        class_names: the model's classes (``pred_classes`` index them).
        threshold: instances scoring below it are left out.
    """
    instances = instances.to("cpu")
    keep = instances.scores >= threshold
    height, width = instances.image_size
    masks = instances.pred_masks[keep].numpy().astype(bool) if instances.has("pred_masks") else \
        np.zeros((int(keep.sum()), height, width), dtype=bool)
    return Instances(
        image_size=(int(height), int(width)),
        boxes=instances.pred_boxes.tensor[keep].float().numpy(),
        scores=instances.scores[keep].float().numpy(),
        class_ids=instances.pred_classes[keep].numpy().astype(np.int64),
        masks=masks,
        class_names=list(class_names),
    )


def to_torchvision_output(instances: D2Instances) -> dict[str, torch.Tensor]:
    """A detectron2 ``Instances`` as torchvision's detection output (labels from 1, masks as (N, 1, H, W))."""
    height, width = instances.image_size
    masks = instances.pred_masks if instances.has("pred_masks") else \
        torch.zeros((len(instances), height, width), dtype=torch.bool, device=instances.scores.device)
    return {
        "boxes": instances.pred_boxes.tensor,
        "scores": instances.scores,
        "labels": instances.pred_classes + 1,
        "masks": masks[:, None].float(),
    }


class Detectron2Model(nn.Module):
    """A detectron2 Mask R-CNN with torchvision's inference interface.

    Args:
        model: a model from ``detectron2.modeling.build_model(cfg)``.
        cfg: its config (input format and test sizes are read from it).
    """

    def __init__(self, model: nn.Module, cfg: CfgNode) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg.clone()
        self.input_format = cfg.INPUT.FORMAT
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)

    def _prepare(self, image: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """An RGB (3, H, W) tensor in [0, 1] as detectron2's input: 0-255, its channel order, resized."""
        # back to the 0-255 pixels detectron2 reads (exact for images that came from uint8)
        rgb = image.detach().mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        pixels = rgb[:, :, ::-1] if self.input_format == "BGR" else rgb
        height, width = pixels.shape[:2]
        resized = self.resize.get_transform(pixels).apply_image(pixels)
        return torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)), height, width

    @torch.inference_mode()
    def count_gmacs(self, height: int = 800, width: int = 1066) -> float:
        """Giga multiply-adds of one inference on a ``height x width`` image, counted as
        :func:`maskrcnn_finetune.modeling.complexity.count_gmacs` counts torchvision models: backbone
        and FPN, the RPN head on every level, the box head on the full test-time proposal count and
        the mask head on ``detections_per_image`` boxes, whatever the weights."""
        from detectron2.structures import Boxes
        from torch.utils.flop_counter import FlopCounterMode

        from maskrcnn_finetune.modeling.complexity import fixed_boxes  # the same fixed boxes as for torchvision

        model = self.model.eval()
        tensor, _, _ = self._prepare(torch.rand(3, height, width))
        images = model.preprocess_image([{"image": tensor}])
        size = images.image_sizes[0]
        heads, rpn = model.roi_heads, model.proposal_generator
        proposals = Boxes(fixed_boxes(rpn.post_nms_topk[False], *size).to(images.tensor.device))
        detections = Boxes(fixed_boxes(heads.box_predictor.test_topk_per_image, *size).to(images.tensor.device))
        counter = FlopCounterMode(display=False)
        with counter:
            features = model.backbone(images.tensor)
            rpn.rpn_head([features[f] for f in rpn.in_features])
            boxes = heads.box_pooler([features[f] for f in heads.box_in_features], [proposals])
            heads.box_predictor(heads.box_head(boxes))
            if heads.mask_on:
                heads.mask_head.layers(heads.mask_pooler([features[f] for f in heads.mask_in_features], [detections]))
        return counter.get_total_flops() / 2 / 1e9

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Predicts on RGB ``(3, H, W)`` float tensors in [0, 1], one image at a time.

        One at a time because detectron2 pads a batch to a common size, which changes the
        results slightly; single images give exactly what ``DefaultPredictor`` gives.
        """
        if self.training:
            raise RuntimeError("Detectron2Model is for inference; train with the detectron2 engine")
        outputs = []
        for image in images:
            tensor, height, width = self._prepare(image)
            result = self.model([{"image": tensor, "height": height, "width": width}])[0]
            outputs.append(to_torchvision_output(result["instances"]))
        return outputs
