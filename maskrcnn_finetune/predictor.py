"""Predictor: a model folder in, :class:`~maskrcnn_finetune.structures.Instances` out.

    predictor = Predictor.from_dir("outputs/demo/model", device="cpu")
    instances = predictor("photo.jpg")            # or an RGB array, a PIL image, or a list of them
    print(instances.labels, instances.scores, instances.masked_fraction())

On the CPU the Predictor runs the model fast by default (``fast=False`` turns it off and runs
the plain fp32 model exactly as it was trained):

- bf16 matrix units where the CPU has them (AVX512-BF16 or AMX), for models whose input is
  512 px or more (:data:`BF16_MIN_INPUT`): the backbone, the RPN head
  and the box and mask heads run under ``torch.autocast("cpu", torch.bfloat16)``; the layers
  that predict box offsets, scores and mask logits stay fp32 (see :data:`BF16_PARTS`);
- channels-last memory layout, which oneDNN's convolutions prefer;
- the score threshold applied between NMS and the mask head, so masks are computed and
  pasted at image size only for the instances that will be returned (exact: the boxes and
  scores are those of the plain model, filtered earlier);
- masks pasted into their boxes as booleans (:func:`paste_masks_bool`, the same pixels as
  torchvision's float pasting followed by ``> 0.5``).

The predictions match fp32's (same instances, mask IoU >= 0.95, scores within 0.05); see
:mod:`maskrcnn_finetune.parity` and ``benchmarks/cpu_inference.py``, which checks it on every run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

from maskrcnn_finetune.data.images import load_rgb
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.modeling import ModelSpec
from maskrcnn_finetune.structures import Instances

logger = logging.getLogger(__name__)


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


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX), which oneDNN uses.

    Without it bf16 is emulated and slower than fp32, so the fast path stays in fp32.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = set(next((line for line in info if line.startswith("flags")), "").split())
    except OSError:  # not Linux: no way to tell, stay with fp32
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


BF16_PARTS = ("backbone", "rpn.head", "roi_heads.box_head", "roi_heads.mask_head", "roi_heads.mask_predictor")
"""The parts of a torchvision Mask R-CNN that run in bf16 on the fast path: the convolutions and
the box head's wide layers, nearly all of the work. The layer that turns features into box
offsets and scores (``box_predictor``), and everything between the parts (anchors, NMS,
RoIAlign, box decoding, mask pasting), stay in fp32: with the box offsets in bf16, masks moved
by a pixel and more."""


BF16_MIN_INPUT = 512
"""bf16 is the default only for models whose input short side is at least this many pixels.

Measured (benchmarks/RESULTS.md): at the demo's 192 px input, bf16 saved about 25 ms of 100
per image, and moved the edges of a few small masks by a pixel (mask IoU with fp32 down to
0.84); at 800 px it saves more than half the time and masks keep IoU >= 0.98 with fp32 but
for rare ambiguous ones."""


def _as_float(value):
    """bf16 tensors (also inside dicts, lists and tuples) back to fp32, in the standard memory layout."""
    if torch.is_tensor(value):
        # contiguous: RoIAlign's CPU kernel makes its own NCHW copy of a channels-last map on every call
        return value.float().contiguous() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, _as_float(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_as_float(v) for v in value)
    return value


def _autocast_parts(model: torch.nn.Module, parts=BF16_PARTS) -> bool:
    """Runs ``parts`` of ``model`` under CPU bf16 autocast, their outputs handed on in fp32.

    The wrapper is set on each part's ``forward`` (not a wrapping module), so the state dict and
    the module tree stay as they are.

    Returns:
        Whether the model has those parts (a torchvision Mask R-CNN); other models stay in fp32.
    """
    try:
        modules = [model.get_submodule(name) for name in parts]
    except AttributeError:
        return False
    for module in modules:
        module.forward = _bf16_forward(module.forward)
    return True


def _bf16_forward(forward):
    @functools.wraps(forward)
    def wrapped(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = forward(*args, **kwargs)
        # one conversion here instead of one per RoIAlign call on every feature map
        return _as_float(out)

    return wrapped


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
        fast: the fast CPU path (channels-last, bf16 where the CPU has it, threshold before the
            mask head); ``None`` means on for the CPU, off for CUDA. ``False`` runs the plain
            fp32 model. Only torchvision models have it: detectron2 and exported models run as
            they are.
        bf16: bf16 autocast of :data:`BF16_PARTS` within the fast path; ``None`` means where the
            CPU computes bf16 in hardware (:func:`native_bf16`) and the model's input short side
            is at least :data:`BF16_MIN_INPUT` pixels.

    The Predictor takes the model over: it is moved, put in eval mode and, on the fast path,
    converted to channels-last in place.
    """

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, device="cpu", score_threshold: float = 0.5,
                 info: dict | None = None, fast: bool | None = None, bf16: bool | None = None) -> None:
        self.device = resolve_device(device)
        self.model = getattr(model, "module", model).to(self.device).eval()
        self.spec = spec
        self.score_threshold = score_threshold
        self.info = info or {}
        on_cpu = self.device.type == "cpu"
        # the fast path knows torchvision's Mask R-CNN; detectron2 and exported models run as they are
        self.fast = (on_cpu if fast is None else bool(fast)) and isinstance(self.model, GeneralizedRCNN)
        self._fp32_reason = ""
        if bf16 is None:
            bf16 = native_bf16() and getattr(spec, "min_size", 0) >= BF16_MIN_INPUT
            self._fp32_reason = ("no bf16 units on this CPU" if not native_bf16() else
                                 f"{getattr(spec, 'min_size', 0)} px input: bf16 only from {BF16_MIN_INPUT} px, "
                                 "below it saves little and moves small masks")
        elif not bf16:
            self._fp32_reason = "bf16 turned off"
        self.bf16 = self.fast and on_cpu and bool(bf16)
        self._mask_floor = None
        if self.fast:
            self.model = self.model.to(memory_format=torch.channels_last)
            self._install_mask_floor()
            self._install_bool_paste()
        if self.bf16:
            self.bf16 = _autocast_parts(self.model)
            self._fp32_reason = "" if self.bf16 else "bf16 needs a torchvision Mask R-CNN"
        logger.info("inference on %s: %s", self.device, self.describe_mode())

    @classmethod
    def from_dir(cls, model_dir, device="cpu", score_threshold: float | None = None,
                 fast: bool | None = None, bf16: bool | None = None) -> "Predictor":
        """Loads a model folder written by training (see :mod:`maskrcnn_finetune.model_dir`)."""
        from maskrcnn_finetune.model_dir import load_model_dir

        device = resolve_device(device)
        model, spec, info = load_model_dir(model_dir, device)
        threshold = info.get("score_threshold", 0.5) if score_threshold is None else score_threshold
        return cls(model, spec, device, threshold, info, fast=fast, bf16=bf16)

    @property
    def mode(self) -> dict:
        """How the model runs: ``{"fast", "precision", "channels_last"}`` (reported by the server)."""
        return {"fast": self.fast, "precision": "bf16" if self.bf16 else "fp32", "channels_last": self.fast}

    def describe_mode(self) -> str:
        if not self.fast:
            return "plain fp32 model"
        return ("fast path: bf16 autocast, channels-last" if self.bf16
                else f"fast path: fp32 ({self._fp32_reason}), channels-last")

    def _install_mask_floor(self) -> None:
        """Drops detections below the call's threshold between NMS and the mask head.

        Filtering after torchvision's own post-processing (score floor, NMS, top-k) rather than
        by raising its score floor keeps the answer exact: NMS sees the same boxes either way.
        """
        roi_heads = getattr(self.model, "roi_heads", None)
        postprocess = getattr(roi_heads, "postprocess_detections", None)
        if postprocess is None:
            return

        @functools.wraps(postprocess)
        def postprocess_above_threshold(*args, **kwargs):
            boxes, scores, labels = postprocess(*args, **kwargs)
            if self._mask_floor is None:
                return boxes, scores, labels
            keep = [s >= self._mask_floor for s in scores]
            return ([b[k] for b, k in zip(boxes, keep)], [s[k] for s, k in zip(scores, keep)],
                    [label[k] for label, k in zip(labels, keep)])

        roi_heads.postprocess_detections = postprocess_above_threshold

    def _install_bool_paste(self) -> None:
        """Masks pasted at image size as booleans (:func:`paste_masks_bool`) instead of floats."""
        transform = getattr(self.model, "transform", None)
        postprocess = getattr(transform, "postprocess", None)
        if postprocess is None or not hasattr(self.model, "roi_heads"):
            return

        @functools.wraps(postprocess)
        def postprocess_bool_masks(result, image_shapes, original_sizes):
            small = [pred.pop("masks", None) for pred in result]
            result = postprocess(result, image_shapes, original_sizes)
            for pred, masks, (height, width) in zip(result, small, original_sizes):
                if masks is not None:
                    pred["masks"] = paste_masks_bool(masks, pred["boxes"], int(height), int(width))[:, None]
            return result

        transform.postprocess = postprocess_bool_masks

    @contextlib.contextmanager
    def _fast_settings(self, threshold: float):
        """The score threshold before the mask head, for one call."""
        self._mask_floor = float(threshold) if self.fast else None
        try:
            yield
        finally:
            self._mask_floor = None

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
        with self._fast_settings(threshold):
            outputs = self.model(tensors)
        results = [self._to_instances(out, a.shape[:2], threshold) for out, a in zip(outputs, arrays)]
        return results[0] if single else results

    def _to_instances(self, out: dict, size: tuple[int, int], threshold: float) -> Instances:
        keep = out["scores"] >= threshold
        masks = out["masks"] if bool(keep.all()) else out["masks"][keep]
        return Instances(
            image_size=(int(size[0]), int(size[1])),
            boxes=out["boxes"][keep].float().cpu().numpy(),
            scores=out["scores"][keep].float().cpu().numpy(),
            class_ids=(out["labels"][keep] - 1).cpu().numpy().astype(np.int64),
            masks=(masks[:, 0] if masks.dtype == torch.bool else masks[:, 0] > 0.5).cpu().numpy()
            if len(masks) else np.zeros((0, *size), dtype=bool),
            class_names=self.class_names,
        )
