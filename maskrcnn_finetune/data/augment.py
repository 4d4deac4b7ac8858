"""Augmentations that move masks and boxes together with the image.

They run in the training loop's process on torch's global random generator, whose state the
checkpoints save, so that a resumed run sees exactly the augmentations an uninterrupted one
would. Resizing (and multi-scale training) is done by the model's own transform.
"""

from __future__ import annotations

import torch


def horizontal_flip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Mirrors an image (C, H, W) and its target's boxes and masks left-right."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


def augment_batch(images, targets, hflip: float):
    """Applies a random horizontal flip (probability ``hflip``) to each image of a batch."""
    out_images, out_targets = [], []
    for image, target in zip(images, targets):
        if hflip > 0 and torch.rand(()) < hflip:
            image, target = horizontal_flip(image, target)
        out_images.append(image)
        out_targets.append(target)
    return out_images, out_targets
