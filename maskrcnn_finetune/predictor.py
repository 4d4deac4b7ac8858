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

The fast model is built by :func:`maskrcnn_finetune.modeling.fast_cpu.make_fast` (subclasses of
torchvision's parts, the score threshold an argument of each call); the Predictor converts inputs
and outputs. The predictions match fp32's (same instances, mask IoU >= 0.95, scores within 0.05); see
:mod:`maskrcnn_finetune.parity` and ``benchmarks/cpu_inference.py``, which checks it on every run.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maskrcnn_finetune.data.images import load_rgb
from maskrcnn_finetune.devices import resolve_device
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.model_spec import DEFAULT_SCORE_THRESHOLD
from maskrcnn_finetune.modeling import ModelSpec
from maskrcnn_finetune.modeling.fast_cpu import BF16_PARTS, make_fast, paste_masks_bool, supports_fast
from maskrcnn_finetune.structures import Instances

__all__ = ["BF16_MIN_INPUT", "BF16_PARTS", "Predictor", "RUNTIMES", "native_bf16", "paste_masks_bool", "resolve_device"]

logger = logging.getLogger(__name__)


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


RUNTIMES = ("torch", "openvino", "openvino-int8")
"""What runs the fast path's backbone: torch, OpenVINO, or OpenVINO quantised to int8 (an optional extra)."""

BF16_MIN_INPUT = 512
"""bf16 is the default only for models whose input short side is at least this many pixels.

At small inputs bf16 saves little and moves the edges of small masks by a pixel; at large ones it
saves most of the time and masks keep their fp32 shape but for rare ambiguous ones
(benchmarks/RESULTS.md, "Fast CPU inference": the parity table)."""


class Predictor:
    """Runs a Mask R-CNN on images and returns :class:`Instances`.

    Args:
        model: a torchvision Mask R-CNN, or a detectron2 one behind the same interface
            (:class:`~maskrcnn_finetune.modeling.detectron2.inference.Detectron2Model`, what
            :meth:`from_dir` builds for a folder whose ``model.json`` names the detectron2 engine);
            moved to ``device`` and put in eval mode here.
        spec: its :class:`ModelSpec` (class names, sizes).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device`
            (:func:`~maskrcnn_finetune.devices.resolve_device`).
        score_threshold: instances below it are dropped unless a call says otherwise.
        fast: the fast CPU path (channels-last, bf16 where the CPU has it, threshold before the
            mask head); ``None`` means on for the CPU, off for CUDA. ``False`` runs the plain
            fp32 model. Only torchvision models have it: detectron2 and exported models run as
            they are.
        bf16: bf16 autocast of :data:`BF16_PARTS` within the fast path; ``None`` means where the
            CPU computes bf16 in hardware (:func:`native_bf16`) and the model's input short side
            is at least :data:`BF16_MIN_INPUT` pixels.
        runtime: ``"torch"``, or ``"openvino"``: on the fast path, the backbone and FPN compiled by
            OpenVINO (:func:`~maskrcnn_finetune.modeling.openvino_backbone.compile_backbone`, in bf16
            where the torch path would use bf16, else f32); needs ``pip install openvino``; or
            ``"openvino-int8"``: quantised by NNCF on ``calibration`` (images). Whether
            it answers like the plain model is checked by
            :func:`maskrcnn_finetune.export.runtime_choice.choose_runtime`, which servers and batch
            prediction use.

    The Predictor takes the model over: it is moved, put in eval mode and, on the fast path,
    converted to channels-last in place.
    """

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, device="cpu", score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 info: dict | None = None, fast: bool | None = None, bf16: bool | None = None,
                 runtime: str = "torch", calibration: list | None = None) -> None:
        if runtime not in RUNTIMES:
            raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got '{runtime}'")
        self.device = resolve_device(device)
        self.model = getattr(model, "module", model).to(self.device).eval()
        self.spec = spec
        self.score_threshold = score_threshold
        self.info = info or {}
        on_cpu = self.device.type == "cpu"
        # the fast path knows torchvision's Mask R-CNN; detectron2 and exported models run as they are
        self.fast = (on_cpu if fast is None else bool(fast)) and supports_fast(self.model)
        self._fp32_reason = ""
        if bf16 is None:
            bf16 = native_bf16() and getattr(spec, "min_size", 0) >= BF16_MIN_INPUT
            self._fp32_reason = ("no bf16 units on this CPU" if not native_bf16() else
                                 f"{getattr(spec, 'min_size', 0)} px input: bf16 only from {BF16_MIN_INPUT} px, "
                                 "below it saves little and moves small masks")
        elif not bf16:
            self._fp32_reason = "bf16 turned off"
        self.bf16 = self.fast and on_cpu and bool(bf16)
        if self.fast:
            self.model = make_fast(self.model, bf16=self.bf16)
        self.runtime = "torch"
        if runtime.startswith("openvino"):
            self._use_openvino(calibration if runtime == "openvino-int8" else None)
        logger.info("inference on %s: %s", self.device, self.describe_mode())

    def _use_openvino(self, calibration: list | None = None) -> None:
        from maskrcnn_finetune.modeling.openvino_backbone import compile_backbone, openvino_missing

        int8 = calibration is not None
        why_not = openvino_missing(int8) or (None if self.fast else "the openvino runtime runs on the CPU's fast path "
                                         "only (a CPU device, fast not turned off, a torchvision model)")
        if why_not:
            raise ConfigError(f"cannot use the openvino runtime: {why_not}; use runtime torch")
        if int8:
            if not calibration:
                raise ConfigError("the openvino-int8 runtime needs calibration images (a few of your own); pass them")
            # the backbone's inputs: each image as the model's transform resizes and normalises it
            tensors = [self.model.transform([torch.from_numpy(_to_rgb_array(image)).permute(2, 0, 1).float().div(255.0)])[0]
                       .tensors.numpy() for image in calibration]
            self.model.backbone = compile_backbone(self.model.backbone, "int8", calibration=tensors)
        else:
            self.model.backbone = compile_backbone(self.model.backbone, precision="bf16" if self.bf16 else "f32")
        self.runtime = "openvino-int8" if int8 else "openvino"

    @classmethod
    def from_dir(cls, model_dir, device="cpu", score_threshold: float | None = None,
                 fast: bool | None = None, bf16: bool | None = None, runtime: str = "torch",
                 calibration: list | None = None) -> "Predictor":
        """Loads a model folder written by training (see :mod:`maskrcnn_finetune.model_dir`)."""
        from maskrcnn_finetune.model_dir import load_model_dir

        device = resolve_device(device)
        model, spec, info = load_model_dir(model_dir, device)
        threshold = info.get("score_threshold", DEFAULT_SCORE_THRESHOLD) if score_threshold is None else score_threshold
        return cls(model, spec, device, threshold, info, fast=fast, bf16=bf16, runtime=runtime, calibration=calibration)

    @property
    def mode(self) -> dict:
        """How the model runs: ``{"fast", "precision", "channels_last"}`` (reported by the server)."""
        return {"fast": self.fast, "precision": "bf16" if self.bf16 else "fp32", "channels_last": self.fast,
                "runtime": self.runtime}

    def describe_mode(self) -> str:
        if not self.fast:
            return "plain fp32 model"
        if self.runtime.startswith("openvino"):
            precision = "int8" if self.runtime == "openvino-int8" else ("bf16" if self.bf16 else "f32")
            return f"fast path: backbone by OpenVINO in {precision}, the rest by torch"
        return ("fast path: bf16 autocast, channels-last" if self.bf16
                else f"fast path: fp32 ({self._fp32_reason}), channels-last")

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
        outputs = self.model(tensors, score_floor=float(threshold)) if self.fast else self.model(tensors)
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
