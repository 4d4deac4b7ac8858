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

The fast model is built by :func:`maskrcnn_finetune.modeling.fast_cpu.make_fast` (a module that
holds torchvision's parts and runs them, the score threshold an argument of each call), through
:func:`prepare_model`; the Predictor converts inputs and outputs. Programs (the server, batch
prediction, evaluation, the benchmarks) load a model folder through
:func:`maskrcnn_finetune.loading.load_predictor`, which also chooses the runtime.

The fast path's predictions match fp32's (same instances, mask IoU >= 0.95, scores within 0.05); see
:mod:`maskrcnn_finetune.parity` and ``benchmarks/cpu_inference.py``, which checks it on every run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maskrcnn_finetune.data.images import load_rgb
from maskrcnn_finetune.devices import RUNTIME_CHOICES, RUNTIMES, resolve_device
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.model_dir import load_model_dir
from maskrcnn_finetune.model_spec import DEFAULT_SCORE_THRESHOLD
from maskrcnn_finetune.modeling import ModelSpec
from maskrcnn_finetune.modeling.fast_cpu import BF16_PARTS, make_fast, paste_masks_bool, supports_fast
from maskrcnn_finetune.modeling import openvino_backbone
from maskrcnn_finetune.structures import Instances

__all__ = ["BF16_MIN_INPUT", "BF16_PARTS", "InferenceMode", "InferenceOptions", "Predictor", "RUNTIMES", "native_bf16",
           "paste_masks_bool", "prepare_model", "resolve_device"]

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


BF16_MIN_INPUT = 512
"""bf16 is the default only for models whose input short side is at least this many pixels.

At small inputs bf16 saves little and moves the edges of small masks by a pixel; at large ones it
saves most of the time and masks keep their fp32 shape but for rare ambiguous ones
(benchmarks/RESULTS.md, "Fast CPU inference": the parity table)."""


@dataclass(frozen=True)
class InferenceOptions:
    """How a :class:`Predictor` runs its model.

    Attributes:
        fast: the fast CPU path (channels-last, bf16 where the CPU has it, threshold before the
            mask head); ``None`` means on for the CPU, off for CUDA. ``False`` runs the plain
            fp32 model. Only torchvision models have it: detectron2 and exported models run as
            they are.
        bf16: bf16 autocast of :data:`BF16_PARTS` within the fast path; ``None`` means where the
            CPU computes bf16 in hardware (:func:`native_bf16`) and the model's input short side
            is at least :data:`BF16_MIN_INPUT` pixels.
        runtime: one of :data:`RUNTIMES`: ``"torch"``; ``"openvino"``: on the fast path, the backbone
            and FPN compiled by OpenVINO (:func:`~maskrcnn_finetune.modeling.openvino_backbone.compile_backbone`,
            in bf16 where the torch path would use bf16, else f32; needs ``pip install openvino``); or
            ``"openvino-int8"``: quantised by NNCF on ``calibration``. Used as asked, unchecked:
            :func:`maskrcnn_finetune.loading.load_predictor` keeps OpenVINO only where it answers
            like the plain model, and chooses ``auto``.
        calibration: for ``openvino-int8``, a few of your images (paths, RGB arrays or PIL images).
        int8_model: for ``openvino-int8``, the backbone quantised before (an OpenVINO model, or the path of the
            IR :meth:`~maskrcnn_finetune.modeling.openvino_backbone.OpenVINOPart.save` wrote), run instead of
            quantising on ``calibration`` (the runtime cache of :mod:`maskrcnn_finetune.loading`).

    Raises:
        ConfigError: an unknown runtime (the message lists :data:`RUNTIMES`).
    """

    fast: bool | None = None
    bf16: bool | None = None
    runtime: str = "torch"
    calibration: Sequence | None = None
    int8_model: object | None = None

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            chosen = (" (auto is chosen when loading: maskrcnn_finetune.loading.load_predictor)"
                      if self.runtime in RUNTIME_CHOICES else "")
            raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got '{self.runtime}'{chosen}")


@dataclass(frozen=True)
class InferenceMode:
    """How a model runs, as :func:`prepare_model` built it: the fast path or not, bf16, the runtime."""

    fast: bool = False
    bf16: bool = False
    runtime: str = "torch"
    fp32_reason: str = ""

    def as_dict(self) -> dict:
        return {"fast": self.fast, "precision": "bf16" if self.bf16 else "fp32", "channels_last": self.fast,
                "runtime": self.runtime}

    def describe(self) -> str:
        if not self.fast:
            return "plain fp32 model"
        if self.runtime.startswith("openvino"):
            precision = "int8" if self.runtime == "openvino-int8" else ("bf16" if self.bf16 else "f32")
            return f"fast path: backbone by OpenVINO in {precision}, the rest by torch"
        return ("fast path: bf16 autocast, channels-last" if self.bf16
                else f"fast path: fp32 ({self.fp32_reason}), channels-last")


def prepare_model(model: torch.nn.Module, spec: ModelSpec, device: torch.device,
                  options: InferenceOptions) -> tuple[torch.nn.Module, InferenceMode]:
    """``model`` as ``options`` ask it to run on ``device``: moved there in eval mode, and on the fast
    path wrapped in :class:`~maskrcnn_finetune.modeling.fast_cpu.FastMaskRCNN` (with the OpenVINO
    backbone for those runtimes).

    Returns:
        ``(the module to call, how it runs)``.

    Raises:
        ConfigError: an OpenVINO runtime that cannot run here (not installed, not the CPU's fast
            path, int8 without calibration images).
    """
    model = getattr(model, "module", model).to(device).eval()
    on_cpu = device.type == "cpu"
    # the fast path knows torchvision's Mask R-CNN; detectron2 and exported models run as they are
    fast = (on_cpu if options.fast is None else bool(options.fast)) and supports_fast(model)
    bf16, fp32_reason = options.bf16, ""
    if bf16 is None:
        bf16 = native_bf16() and getattr(spec, "min_size", 0) >= BF16_MIN_INPUT
        fp32_reason = ("no bf16 units on this CPU" if not native_bf16() else
                       f"{getattr(spec, 'min_size', 0)} px input: bf16 only from {BF16_MIN_INPUT} px, "
                       "below it saves little and moves small masks")
    elif not bf16:
        fp32_reason = "bf16 turned off"
    bf16 = fast and on_cpu and bool(bf16)
    if options.runtime == "torch":
        return (make_fast(model, bf16) if fast else model), InferenceMode(fast, bf16, "torch", fp32_reason)
    int8 = options.runtime == "openvino-int8"
    why_not = openvino_backbone.openvino_missing(int8) or (
        None if fast else "the openvino runtime runs on the CPU's fast path only (a CPU device, fast not turned off, "
                          "a torchvision model)")
    if why_not:
        raise ConfigError(f"cannot use the openvino runtime: {why_not}; use runtime torch")
    if int8 and not options.calibration and options.int8_model is None:
        raise ConfigError("the openvino-int8 runtime needs calibration images (a few of your own); pass them")
    plain = make_fast(model, bf16)  # channels-last, as the backbone will run
    if int8 and options.int8_model is not None:
        backbone = openvino_backbone.compile_backbone(plain.backbone, "int8", model=options.int8_model)
    elif int8:
        # the backbone's inputs: each image as the model's transform resizes and normalises it
        tensors = [model.transform([torch.from_numpy(_to_rgb_array(image)).permute(2, 0, 1).float().div(255.0)])[0]
                   .tensors.numpy() for image in options.calibration]
        backbone = openvino_backbone.compile_backbone(plain.backbone, "int8", calibration=tensors)
    else:
        backbone = openvino_backbone.compile_backbone(plain.backbone, precision="bf16" if bf16 else "f32")
    return make_fast(model, bf16, backbone), InferenceMode(fast, bf16, options.runtime, fp32_reason)


class Predictor:
    """Runs a Mask R-CNN on images and returns :class:`Instances`.

    Args:
        model: a torchvision Mask R-CNN, or a detectron2 one behind the same interface
            (:class:`~maskrcnn_finetune.modeling.detectron2.inference.Detectron2Model`, what
            :meth:`from_dir` builds for a folder whose ``model.json`` names the detectron2 engine),
            or an exported one (:mod:`maskrcnn_finetune.export`).
        spec: its :class:`ModelSpec` (class names, sizes).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device`
            (:func:`~maskrcnn_finetune.devices.resolve_device`).
        score_threshold: instances below it are dropped unless a call says otherwise.
        info: the model folder's ``model.json`` (reported by the server).
        options: how it runs (:class:`InferenceOptions`: the fast CPU path by default, bf16, the
            runtime); built by :func:`prepare_model`.

    The Predictor takes the model over: it is moved, put in eval mode and, on the fast path,
    converted to channels-last in place. ``choice`` says which runtime runs it and why
    (:func:`maskrcnn_finetune.loading.load_predictor` fills it when it chose).
    """

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, device="cpu",
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 info: dict | None = None, options: InferenceOptions | None = None) -> None:
        self.device = resolve_device(device)
        self.spec = spec
        self.score_threshold = score_threshold
        self.info = info or {}
        options = options or InferenceOptions()
        self.model, self._mode = prepare_model(model, spec, self.device, options)
        self.choice = {"runtime": self.runtime, "asked": options.runtime,
                       "why": "asked for" if self.runtime == "torch" else
                       "asked for, not checked against the plain model (maskrcnn_finetune.loading.load_predictor "
                       "checks it)"}
        logger.info("inference on %s: %s", self.device, self.describe_mode())

    @classmethod
    def from_dir(cls, model_dir, device="cpu", score_threshold: float | None = None,
                 fast: bool | None = None, bf16: bool | None = None, runtime: str = "torch",
                 calibration: Sequence | None = None, int8_model=None) -> "Predictor":
        """Loads a model folder written by training (see :mod:`maskrcnn_finetune.model_dir`).

        ``fast``, ``bf16``, ``runtime``, ``calibration`` and ``int8_model``: see :class:`InferenceOptions` (an
        OpenVINO runtime is used as asked; :func:`maskrcnn_finetune.loading.load_predictor` checks it first).
        """
        options = InferenceOptions(fast, bf16, runtime, calibration, int8_model)  # a bad runtime fails before the loading
        device = resolve_device(device)
        model, spec, info = load_model_dir(model_dir, device)
        threshold = info.get("score_threshold", DEFAULT_SCORE_THRESHOLD) if score_threshold is None else score_threshold
        return cls(model, spec, device, threshold, info, options)

    @property
    def fast(self) -> bool:
        """Whether the fast CPU path runs the model."""
        return self._mode.fast

    @property
    def bf16(self) -> bool:
        """Whether the fast path runs :data:`BF16_PARTS` in bf16."""
        return self._mode.bf16

    @property
    def runtime(self) -> str:
        """What runs the model: one of :data:`RUNTIMES`."""
        return self._mode.runtime

    @property
    def mode(self) -> dict:
        """How the model runs: ``{"fast", "precision", "channels_last", "runtime"}`` (reported by the server)."""
        return self._mode.as_dict()

    def describe_mode(self) -> str:
        return self._mode.describe()

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
