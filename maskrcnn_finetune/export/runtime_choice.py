"""Which runtime serves a model folder: torch, or OpenVINO where it answers like the plain model.

    predictor, choice = choose_runtime("outputs/demo/model", runtime="auto")
    print(choice["runtime"], choice["why"])

``runtime``:

- ``"torch"``: the kit's fast CPU path as it is (no check needed: it is the reference's own code);
- ``"openvino"``: the backbone compiled by OpenVINO (:mod:`maskrcnn_finetune.modeling.openvino_backbone`),
  kept only when its predictions match the plain fp32 model's on the model's own val images
  (the parity gate of :mod:`maskrcnn_finetune.parity`, as for exports); otherwise torch, saying why;
- ``"openvino-int8"``: the backbone quantised to int8 by NNCF's post-training quantisation,
  calibrated on a few of the user's images (``calibration``: default, the first
  :data:`CALIBRATION_IMAGES` of the model's training json), kept only when it passes the same gate;
- ``"auto"``: OpenVINO (f32/bf16) when it is installed, passes the gate and is faster on those
  images (timed alternately with torch), else torch.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from maskrcnn_finetune.cli import RUNTIME_CHOICES
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.export.checking import check_images, compare_with_eager
from maskrcnn_finetune.model_dir import read_model_info
from maskrcnn_finetune.modeling.openvino_backbone import openvino_missing
from maskrcnn_finetune.devices import resolve_device
from maskrcnn_finetune.predictor import Predictor
from maskrcnn_finetune.timing import alternating_rounds

logger = logging.getLogger(__name__)

CALIBRATION_IMAGES = 32
TIMED_IMAGES = 3
TIMED_ROUNDS = 3


def time_alternately(predictors: dict[str, Predictor], images, rounds: int = TIMED_ROUNDS) -> dict[str, float]:
    """Median ms per image of each predictor over ``rounds`` alternating rounds (after one warm-up each),
    see :func:`~maskrcnn_finetune.timing.alternating_rounds`."""
    for predictor in predictors.values():
        predictor(images[0])
    times = alternating_rounds(predictors, images, rounds)
    return {name: statistics.median(values) for name, values in times.items()}


def calibration_images(info: dict, calibration=None) -> list:
    """The int8 calibration images: ``calibration`` (paths, folders or arrays, as the gate's images), else
    the first :data:`CALIBRATION_IMAGES` of the model's training json when it is here.

    Raises:
        ConfigError: none given and the training images are not here (the message names the flag).
    """
    from maskrcnn_finetune.data.coco import load_coco

    if calibration is None:
        train_json = (info.get("training") or {}).get("train_json")
        if train_json and Path(train_json).is_file():
            coco = load_coco(train_json, check_images=False)
            calibration = [p for p in (coco.image_path(image) for image in coco.images[:CALIBRATION_IMAGES])
                           if p.is_file()]
        if not calibration:
            raise ConfigError("int8 needs calibration images and the model's training images are not here; pass a "
                              "folder of a few dozen of your images with --calibration-images DIR")
    arrays, _ = check_images(calibration, None, info)
    return arrays


def choose_runtime(model_dir, runtime: str = "auto", device="cpu", images=None, threshold: float | None = None,
                   fast: bool | None = None, calibration=None) -> tuple[Predictor, dict]:
    """The Predictor of ``model_dir`` on the runtime asked for, where the parity gate allows it.

    Args:
        model_dir: a model folder.
        runtime: one of :data:`RUNTIME_CHOICES`.
        device: where the model runs; OpenVINO is for the CPU only.
        images: the gate's images (default: the model's own val images, else synthetic ones; see
            :func:`maskrcnn_finetune.export.checking.check_images`).
        calibration: for ``openvino-int8``, its calibration images (see :func:`calibration_images`).
        threshold: the gate's score threshold (default: the model folder's).
        fast: the Predictor's fast path (None: on for the CPU).

    Returns:
        ``(predictor, choice)``; ``choice`` has ``runtime`` (the one used), ``asked``, ``why``, and
        where the gate ran ``parity`` (its report) and, for ``auto``, ``ms_per_image`` of each.

    Raises:
        ConfigError: an unknown runtime, or ``openvino`` asked for where it cannot run (not
            installed, not the CPU): the message says how to install it or to use torch.
    """
    if runtime not in RUNTIME_CHOICES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIME_CHOICES)}, got '{runtime}'")
    torch_predictor = Predictor.from_dir(model_dir, device=device, fast=fast)
    if runtime == "torch":
        return torch_predictor, {"runtime": "torch", "asked": runtime, "why": "asked for"}
    int8 = runtime == "openvino-int8"
    why_not = openvino_missing(int8)
    if why_not is None and (resolve_device(device).type != "cpu" or not torch_predictor.fast):
        why_not = "OpenVINO runs the CPU's fast path only (a CPU device, fast not turned off, a torchvision model)"
    if why_not:
        if runtime != "auto":
            raise ConfigError(f"cannot use --runtime {runtime}: {why_not}; or use --runtime torch")
        return torch_predictor, {"runtime": "torch", "asked": runtime, "why": why_not}

    info = read_model_info(model_dir)
    threshold = torch_predictor.score_threshold if threshold is None else threshold
    candidate = Predictor.from_dir(model_dir, device=device, fast=fast, runtime="openvino-int8" if int8 else "openvino",
                                   calibration=calibration_images(info, calibration) if int8 else None)
    eager = Predictor.from_dir(model_dir, device=device, fast=False)
    arrays, names = check_images(images, eager.spec, info)
    report = compare_with_eager(eager, candidate, arrays, threshold, names)
    del eager
    choice = {"asked": runtime, "parity": report.describe(), "parity_ok": report.ok}
    if not report.ok:
        logger.warning("%s does not answer like the plain model on %d images (%s): serving with torch",
                       candidate.runtime, len(arrays), report.describe())
        return torch_predictor, {**choice, "runtime": "torch",
                                 "why": f"{'OpenVINO int8' if int8 else 'OpenVINO'} failed the parity check: "
                                        + report.describe()}
    if runtime != "auto":
        return candidate, {**choice, "runtime": candidate.runtime, "why": "asked for, and it passed the parity check"}
    ms = time_alternately({"torch": torch_predictor, "openvino": candidate}, arrays[:TIMED_IMAGES])
    best = min(ms, key=ms.get)
    why = (f"passed the parity check; {ms['openvino']:.0f} ms an image against torch's {ms['torch']:.0f} ms "
           f"(median of {TIMED_ROUNDS} rounds on {min(len(arrays), TIMED_IMAGES)} images)")
    return (candidate if best == "openvino" else torch_predictor), {**choice, "runtime": best, "why": why,
                                                                     "ms_per_image": ms}
