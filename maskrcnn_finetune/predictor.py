"""Predictor: a model folder in, :class:`~maskrcnn_finetune.structures.Instances` out.

    predictor = Predictor.from_dir("outputs/demo/model", device="cpu")
    instances = predictor("photo.jpg")            # or an RGB array, a PIL image, or a list of them
    print(instances.labels, instances.scores, instances.masked_fraction())
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maskrcnn_finetune.data.images import load_rgb
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.modeling import ModelSpec
from maskrcnn_finetune.structures import Instances


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; asking for CUDA without one is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but no GPU is visible; use --device cpu (or a GPU runtime in Colab)")
    return device


def _to_rgb_array(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        return load_rgb(image)
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ConfigError(f"expected an RGB image array of shape (H, W, 3), got {array.shape}")
    if array.dtype != np.uint8:
        raise ConfigError(f"expected uint8 pixels (0-255), got {array.dtype}; convert with .astype('uint8')")
    return array[:, :, :3]


class Predictor:
    """Runs a Mask R-CNN on images and returns :class:`Instances`.

    Args:
        model: a torchvision Mask R-CNN, or a detectron2 one behind the same interface
            (:class:`~maskrcnn_finetune.modeling.detectron2.inference.Detectron2Model`, what
            :meth:`from_dir` builds for a folder whose ``model.json`` names the detectron2 engine);
            moved to ``device`` and put in eval mode here.
        spec: its :class:`ModelSpec` (class names, sizes).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        score_threshold: instances below it are dropped unless a call says otherwise.
    """

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, device="cpu", score_threshold: float = 0.5,
                 info: dict | None = None) -> None:
        self.device = resolve_device(device)
        self.model = getattr(model, "module", model).to(self.device).eval()
        self.spec = spec
        self.score_threshold = score_threshold
        self.info = info or {}

    @classmethod
    def from_dir(cls, model_dir, device="cpu", score_threshold: float | None = None) -> "Predictor":
        """Loads a model folder written by training (see :mod:`maskrcnn_finetune.model_dir`)."""
        from maskrcnn_finetune.model_dir import load_model_dir

        device = resolve_device(device)
        model, spec, info = load_model_dir(model_dir, device)
        threshold = info.get("score_threshold", 0.5) if score_threshold is None else score_threshold
        return cls(model, spec, device, threshold, info)

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    @torch.inference_mode()
    def __call__(self, images, threshold: float | None = None):
        """Predicts on one image (path, RGB array, PIL image) or a list of them.

        Returns:
            One :class:`Instances`, or a list of them for a list input.
        """
        single = not isinstance(images, (list, tuple))
        arrays = [_to_rgb_array(img) for img in ([images] if single else images)]
        threshold = self.score_threshold if threshold is None else threshold
        tensors = [torch.from_numpy(a).to(self.device).permute(2, 0, 1).float().div_(255.0) for a in arrays]
        outputs = self.model(tensors)
        results = [self._to_instances(out, a.shape[:2], threshold) for out, a in zip(outputs, arrays)]
        return results[0] if single else results

    def _to_instances(self, out: dict, size: tuple[int, int], threshold: float) -> Instances:
        keep = out["scores"] >= threshold
        masks = out["masks"][keep]
        return Instances(
            image_size=(int(size[0]), int(size[1])),
            boxes=out["boxes"][keep].float().cpu().numpy(),
            scores=out["scores"][keep].float().cpu().numpy(),
            class_ids=(out["labels"][keep] - 1).cpu().numpy().astype(np.int64),
            masks=(masks[:, 0] > 0.5).cpu().numpy() if len(masks) else np.zeros((0, *size), dtype=bool),
            class_names=self.class_names,
        )
