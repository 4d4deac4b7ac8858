"""One way to get a ready model: a model folder and a runtime in, a :class:`Predictor` out that says what runs it and why.

    predictor = load_predictor("outputs/demo/model", runtime="auto", device="cpu")
    print(predictor.choice["runtime"], predictor.choice["why"])
    instances = predictor("photo.jpg")

``runtime`` is one of :data:`~maskrcnn_finetune.devices.RUNTIME_CHOICES`:

- ``"torch"``: the kit's fast CPU path as it is (no check needed: it is the reference's own code);
- ``"openvino"``: the backbone compiled by OpenVINO (:mod:`maskrcnn_finetune.modeling.openvino_backbone`),
  kept only when its predictions match the plain fp32 model's on the model's own val images
  (the parity gate of :mod:`maskrcnn_finetune.parity`, as for exports); otherwise torch, saying why;
- ``"openvino-int8"``: the backbone quantised to int8 by NNCF's post-training quantisation,
  calibrated on a few of the user's images (``calibration``: default, the first
  :data:`CALIBRATION_IMAGES` of the model's training json), kept only when it passes the same gate;
- ``"auto"``: OpenVINO (f32/bf16) when it is installed, passes the gate and is faster on those
  images (timed alternately with torch), else torch.

The server, batch prediction, ``scripts/evaluate.py``, the backbone comparison and the benchmarks
that stand for them load their model here. :meth:`Predictor.from_dir` stays the short form for a
notebook: it runs what it is asked to run, unchecked.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from maskrcnn_finetune.data.coco import load_coco
from maskrcnn_finetune.devices import RUNTIME_CHOICES, RUNTIMES, resolve_device
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.model_dir import read_model_info
from maskrcnn_finetune.modeling.openvino_backbone import openvino_missing
from maskrcnn_finetune.parity import check_images, compare_with_eager
from maskrcnn_finetune.predictor import Predictor
from maskrcnn_finetune.timing import alternating_rounds

__all__ = ["CALIBRATION_IMAGES", "RUNTIMES", "RUNTIME_CHOICES", "calibration_images", "choose_runtime",
           "load_predictor", "time_alternately"]

logger = logging.getLogger(__name__)

CALIBRATION_IMAGES = 32
TIMED_IMAGES = 3
TIMED_ROUNDS = 3


def check_runtime(runtime: str) -> str:
    """``runtime``, when it is one of :data:`~maskrcnn_finetune.devices.RUNTIME_CHOICES`.

    Raises:
        ConfigError: another name; the message lists them.
    """
    if runtime not in RUNTIME_CHOICES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIME_CHOICES)}, got '{runtime}'")
    return runtime


def load_predictor(model_dir, runtime: str = "torch", *, device="auto", fast: bool | None = None,
                   calibration=None, gate_images=None, gate_threshold: float | None = None) -> Predictor:
    """The :class:`Predictor` of ``model_dir`` on the runtime asked for, where the parity gate allows it.

    Args:
        model_dir: a model folder (errors name the fix, see :mod:`maskrcnn_finetune.model_dir`).
        runtime: one of :data:`~maskrcnn_finetune.devices.RUNTIME_CHOICES` (see the module's text).
        device: where the model runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``); OpenVINO is for the CPU only.
        fast: the Predictor's fast path (``None``: on for the CPU; ``False``: the plain fp32 model).
        calibration: for ``openvino-int8``, its calibration images (see :func:`calibration_images`).
        gate_images: the gate's images (default: the model's own val images, else synthetic ones; see
            :func:`maskrcnn_finetune.parity.check_images`).
        gate_threshold: the gate's score threshold (default: the model folder's).

    Returns:
        The Predictor, with the model folder's threshold. Its ``choice`` says which runtime runs it
        (``runtime``), what was ``asked`` and ``why``; where the gate ran also ``parity`` (its report)
        and ``parity_ok``, and for ``auto`` the ``ms_per_image`` of each.

    Raises:
        ConfigError: an unknown runtime, or ``openvino`` asked for where it cannot run (not
            installed, not the CPU): the message says how to install it or to use torch.
    """
    check_runtime(runtime)
    logger.info("loading the model from %s on %s (runtime %s)", model_dir, device, runtime)
    torch_predictor = Predictor.from_dir(model_dir, device=device, fast=fast)
    if runtime == "torch":
        return torch_predictor
    int8 = runtime == "openvino-int8"
    why_not = openvino_missing(int8)
    if why_not is None and (resolve_device(device).type != "cpu" or not torch_predictor.fast):
        why_not = "OpenVINO runs the CPU's fast path only (a CPU device, fast not turned off, a torchvision model)"
    if why_not:
        if runtime != "auto":
            raise ConfigError(f"cannot use --runtime {runtime}: {why_not}; or use --runtime torch")
        return _chosen(torch_predictor, {"runtime": "torch", "asked": runtime, "why": why_not})

    info = read_model_info(model_dir)
    threshold = torch_predictor.score_threshold if gate_threshold is None else gate_threshold
    candidate = Predictor.from_dir(model_dir, device=device, fast=fast, runtime="openvino-int8" if int8 else "openvino",
                                   calibration=calibration_images(info, calibration) if int8 else None)
    eager = Predictor.from_dir(model_dir, device=device, fast=False)
    arrays, names = check_images(gate_images, eager.spec, info)
    report = compare_with_eager(eager, candidate, arrays, threshold, names)
    del eager
    choice = {"asked": runtime, "parity": report.describe(), "parity_ok": report.ok}
    if not report.ok:
        logger.warning("%s does not answer like the plain model on %d images (%s): serving with torch",
                       candidate.runtime, len(arrays), report.describe())
        return _chosen(torch_predictor, {**choice, "runtime": "torch",
                                         "why": f"{'OpenVINO int8' if int8 else 'OpenVINO'} failed the parity check: "
                                                + report.describe()})
    if runtime != "auto":
        return _chosen(candidate, {**choice, "runtime": candidate.runtime,
                                   "why": "asked for, and it passed the parity check"})
    ms = time_alternately({"torch": torch_predictor, "openvino": candidate}, arrays[:TIMED_IMAGES])
    best = min(ms, key=ms.get)
    why = (f"passed the parity check; {ms['openvino']:.0f} ms an image against torch's {ms['torch']:.0f} ms "
           f"(median of {TIMED_ROUNDS} rounds on {min(len(arrays), TIMED_IMAGES)} images)")
    return _chosen(candidate if best == "openvino" else torch_predictor,
                   {**choice, "runtime": best, "why": why, "ms_per_image": ms})


def _chosen(predictor: Predictor, choice: dict) -> Predictor:
    predictor.choice = choice
    logger.info("runtime %s (asked: %s): %s", choice["runtime"], choice["asked"], choice["why"])
    return predictor


def choose_runtime(model_dir, runtime: str = "auto", device="cpu", images=None, threshold: float | None = None,
                   fast: bool | None = None, calibration=None) -> tuple[Predictor, dict]:
    """:func:`load_predictor` in its older form: ``(predictor, predictor.choice)``; ``images`` and
    ``threshold`` are the gate's."""
    predictor = load_predictor(model_dir, runtime, device=device, fast=fast, calibration=calibration,
                               gate_images=images, gate_threshold=threshold)
    return predictor, predictor.choice


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
