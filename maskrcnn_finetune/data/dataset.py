"""The torch dataset the engines train on: images and targets (boxes, labels, masks) from COCO."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pycocotools.mask as mask_utils
import torch
from torch.utils.data import Dataset

from maskrcnn_finetune.data.coco import CocoData, load_coco
from maskrcnn_finetune.data.images import load_rgb
from maskrcnn_finetune.errors import DatasetError


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """One annotation's mask (polygons or RLE) as a (height, width) uint8 array."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    return mask_utils.decode(rle)


class CocoInstanceDataset(Dataset):
    """Items are ``(image, target)`` as torchvision's detection models take them.

    ``image`` is a float tensor (3, H, W) in [0, 1]; ``target`` has ``boxes`` (N, 4, xyxy),
    ``labels`` (N, classes numbered 1..K in category order), ``masks`` (N, H, W uint8),
    ``image_id``, ``area`` and ``iscrowd``.

    Args:
        coco: a :class:`CocoData` or the path of a COCO json (validated on load).
        transforms: optional callable ``(image, target) -> (image, target)`` that moves
            masks and boxes together with the image.
    """

    def __init__(self, coco, transforms: Callable | None = None) -> None:
        self.coco = coco if isinstance(coco, CocoData) else load_coco(coco)
        self.transforms = transforms
        self._labels = self.coco.label_of_category

    def __len__(self) -> int:
        return len(self.coco.images)

    @property
    def class_names(self) -> list[str]:
        return self.coco.class_names

    def __getitem__(self, index: int):
        info = self.coco.images[index]
        path = self.coco.image_path(info)
        array = load_rgb(path)
        height, width = array.shape[:2]
        if (width, height) != (info["width"], info["height"]):
            raise DatasetError(f"image {path} is {width}x{height} but its json says {info['width']}x{info['height']}; "
                               "regenerate the json")
        anns = self.coco.annotations[info["id"]]
        masks = np.zeros((len(anns), height, width), dtype=np.uint8)
        for k, ann in enumerate(anns):
            masks[k] = annotation_mask(ann, height, width)
        boxes = _boxes_from_masks(masks) if len(anns) else np.zeros((0, 4), dtype=np.float32)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        target = {
            "boxes": torch.as_tensor(boxes[keep], dtype=torch.float32),
            "labels": torch.as_tensor([self._labels[a["category_id"]] for a in anns], dtype=torch.int64)[keep],
            "masks": torch.from_numpy(masks[keep]),
            "image_id": info["id"],
            "area": torch.as_tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32)[keep],
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
        }
        image = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight xyxy boxes around each mask (pixel edges), so boxes always agree with masks."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs):
            boxes[k] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return boxes
