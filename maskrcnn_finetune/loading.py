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
  :data:`CALIBRATION_IMAGES` of the model's training json), kept only when its val mask AP and box
  AP are each within a point of the plain fp32 model's (:mod:`maskrcnn_finetune.ap_check`, on the
  model's own val json or ``val_json``); otherwise torch, with both figures;
- ``"auto"`` (:data:`~maskrcnn_finetune.devices.DEFAULT_RUNTIME`, what the server and batch prediction
  run unless told otherwise): the fastest of torch, openvino and openvino-int8 that passes its
  check, timed alternately on the same images; where OpenVINO is not installed (or the model does
  not run on the CPU's fast path), torch, without a warning. int8 takes part where NNCF is installed
  and its calibration images and val json are here.

The choice costs seconds to minutes (compiling, quantising, the checks, the timings): it is
remembered per model folder and machine (:mod:`maskrcnn_finetune.runtime_cache`), so the next start
pays only for building the runtime chosen. ``choice`` says what was chosen, why, its timings and
checks, how long deciding took (``decision_s``) and, when it came from the cache, ``cached``.

The server, batch prediction, ``scripts/evaluate.py``, the backbone comparison and the benchmarks
that stand for them load their model here. :meth:`Predictor.from_dir` stays the short form for a
notebook: it runs what it is asked to run, unchecked.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from pathlib import Path

from maskrcnn_finetune.ap_check import compare_ap, model_val_json
from maskrcnn_finetune.data.coco import load_coco
from maskrcnn_finetune.devices import DEFAULT_RUNTIME, RUNTIME_CHOICES, RUNTIMES, resolve_device
from maskrcnn_finetune.errors import ConfigError, ExportError
from maskrcnn_finetune.model_dir import read_model_info
from maskrcnn_finetune.modeling.openvino_backbone import openvino_missing
from maskrcnn_finetune.parity import check_images, compare_with_eager
from maskrcnn_finetune.predictor import Predictor
from maskrcnn_finetune.runtime_cache import RuntimeCache, decision_key, describe_images
from maskrcnn_finetune.timing import alternating_rounds

__all__ = ["CALIBRATION_IMAGES", "DEFAULT_RUNTIME", "RUNTIMES", "RUNTIME_CHOICES", "calibration_images",
           "choose_runtime", "load_predictor", "time_alternately"]

logger = logging.getLogger(__name__)

CALIBRATION_IMAGES = 32
TIMED_IMAGES = 3
TIMED_ROUNDS = 3
INT8_FILE = ".int8.xml"
"""The suffix of a cache entry's int8 backbone (OpenVINO IR, with its .bin)."""
NAMES = {"openvino": "OpenVINO", "openvino-int8": "OpenVINO int8"}


def check_runtime(runtime: str) -> str:
    """``runtime``, when it is one of :data:`~maskrcnn_finetune.devices.RUNTIME_CHOICES`.

    Raises:
        ConfigError: another name; the message lists them.
    """
    if runtime not in RUNTIME_CHOICES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIME_CHOICES)}, got '{runtime}'")
    return runtime


def load_predictor(model_dir, runtime: str = "torch", *, device="auto", fast: bool | None = None,
                   calibration=None, gate_images=None, gate_threshold: float | None = None, val_json=None,
                   cache: bool = True) -> Predictor:
    """The :class:`Predictor` of ``model_dir`` on the runtime asked for, where its check allows it.

    Args:
        model_dir: a model folder (errors name the fix, see :mod:`maskrcnn_finetune.model_dir`).
        runtime: one of :data:`~maskrcnn_finetune.devices.RUNTIME_CHOICES` (see the module's text).
        device: where the model runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``); OpenVINO is for the CPU only.
        fast: the Predictor's fast path (``None``: on for the CPU; ``False``: the plain fp32 model).
        calibration: for int8, its calibration images (see :func:`calibration_images`).
        gate_images: the parity gate's and the timings' images (default: the model's own val images, else
            synthetic ones; see :func:`maskrcnn_finetune.parity.check_images`).
        gate_threshold: the checks' score threshold (default: the model folder's).
        val_json: for int8, the COCO json its AP is measured on (default: the model's own val json).
        cache: use and write the cached decision (:mod:`maskrcnn_finetune.runtime_cache`).

    Returns:
        The Predictor, with the model folder's threshold. Its ``choice`` says which runtime runs it
        (``runtime``), what was ``asked`` and ``why``; where a check ran also ``parity`` (its report)
        and ``parity_ok`` (openvino), ``ap`` and ``ap_ok`` (int8); for ``auto`` the ``ms_per_image``
        of each candidate; ``decision_s``, the seconds the choice took, and ``cached`` where it came
        from the cache.

    Raises:
        ConfigError: an unknown runtime; an OpenVINO runtime asked for where it cannot run (not
            installed, not the CPU) or int8 where it cannot be judged (no val json, no calibration
            images): the message says what to install or pass, or to use torch.
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
    judge = _Judge(model_dir, info, device, fast, threshold, gate_images, calibration, val_json, runtime)
    store = RuntimeCache.for_model(model_dir, judge.key()) if cache else None
    # --workers' processes start together: one decides, the others wait for its entry
    with store.deciding() if store is not None else contextlib.nullcontext():
        cached = store.load() if store is not None else None
        if cached is not None:
            predictor = judge.rebuild(cached, torch_predictor, store)
            if predictor is not None:
                return _chosen(predictor, cached)
        logger.info("choosing the runtime for this model on this machine (asked: %s): checking %s against the plain "
                    "model takes a while on a small CPU; %s", runtime,
                    "and timing the candidates" if runtime == "auto" else runtime,
                    "the decision is cached for later starts" if store is not None else "not cached")
        start = time.perf_counter()
        predictor, choice = judge.decide(torch_predictor)
        choice["decision_s"] = round(time.perf_counter() - start, 2)
        logger.info("choosing the runtime took %.1f s%s", choice["decision_s"],
                    "" if store is not None else " (not cached: the next start chooses again)")
        if store is not None:
            judge.remember(store, predictor, choice)
    return _chosen(predictor, choice)


def _chosen(predictor: Predictor, choice: dict) -> Predictor:
    predictor.choice = choice
    source = f" (decided before, cached in {choice['cached']['file']})" if choice.get("cached") else ""
    logger.info("runtime %s (asked: %s): %s%s", choice["runtime"], choice["asked"], choice["why"], source)
    return predictor


class _Judge:
    """What one runtime question needs: the candidates, their checks and timings, and their cache entry."""

    def __init__(self, model_dir, info, device, fast, threshold, gate_images, calibration, val_json, asked) -> None:
        self.model_dir, self.info, self.device, self.fast = model_dir, info, device, fast
        self.threshold, self.gate_images, self.calibration, self.asked = threshold, gate_images, calibration, asked
        self.val_json_given = val_json
        self._eager = None
        self._calibration = None

    def key(self) -> dict:
        return decision_key(self.model_dir, asked=self.asked, device=str(resolve_device(self.device)), fast=self.fast,
                            threshold=self.threshold, gate_images=describe_images(self.gate_images),
                            calibration=describe_images(self.calibration),
                            val_json=describe_images(self.val_json_given))

    @property
    def eager(self) -> Predictor:
        """The plain fp32 model, the reference of every check (loaded once, when a check needs it)."""
        if self._eager is None:
            self._eager = Predictor.from_dir(self.model_dir, device=self.device, fast=False)
        return self._eager

    def calibration_arrays(self) -> list:
        if self._calibration is None:
            self._calibration = calibration_images(self.info, self.calibration)
        return self._calibration

    def build(self, runtime: str, int8_model=None) -> Predictor:
        if runtime == "openvino-int8" and int8_model is None:
            return Predictor.from_dir(self.model_dir, device=self.device, fast=self.fast, runtime=runtime,
                                      calibration=self.calibration_arrays())
        return Predictor.from_dir(self.model_dir, device=self.device, fast=self.fast, runtime=runtime,
                                  int8_model=int8_model)

    def int8_missing(self) -> str | None:
        """Why int8 cannot be built and judged here (every reason, each with its fix), or None."""
        why = openvino_missing(int8=True)
        if why:
            return why
        problems = []
        if model_val_json(self.info, self.val_json_given) is None:
            problems.append("int8 is judged by its val AP and the model's val json is not here; pass the COCO json "
                            "of your val images with --val-json FILE")
        try:
            self.calibration_arrays()
        except ConfigError as exc:
            problems.append(str(exc))
        return "; ".join(problems) or None

    def parity(self, candidate: Predictor) -> dict:
        arrays, names = check_images(self.gate_images, self.eager.spec, self.info)
        report = compare_with_eager(self.eager, candidate, arrays, self.threshold, names)
        return {"parity": report.describe(), "parity_ok": report.ok}

    def ap(self, candidate: Predictor) -> dict:
        val_json = model_val_json(self.info, self.val_json_given)
        report = compare_ap(self.eager, candidate, val_json, self.threshold)
        logger.info("%s", report.describe())
        return {"ap": report.to_dict(), "ap_ok": report.ok, "ap_summary": report.describe()}

    def check(self, runtime: str, candidate: Predictor) -> tuple[bool, dict, str]:
        """``(passed, the check's figures, why in words)`` of a candidate runtime."""
        if runtime == "openvino-int8":
            figures = self.ap(candidate)
            verdict = figures["ap_summary"]
            return figures["ap_ok"], figures, verdict
        figures = self.parity(candidate)
        return figures["parity_ok"], figures, ("passed the parity check" if figures["parity_ok"] else
                                               f"{NAMES[runtime]} failed the parity check: {figures['parity']}")

    def decide(self, torch_predictor: Predictor) -> tuple[Predictor, dict]:
        if self.asked == "openvino-int8":
            why_not = self.int8_missing()
            if why_not:
                raise ConfigError(f"cannot use --runtime openvino-int8: {why_not}; or use --runtime torch or auto")
        if self.asked != "auto":
            candidate = self.build(self.asked)
            ok, figures, verdict = self.check(self.asked, candidate)
            choice = {"asked": self.asked, **figures}
            if not ok:
                logger.warning("%s: serving with torch", verdict)
                return torch_predictor, {**choice, "runtime": "torch", "why": f"{verdict}: kept torch"}
            return candidate, {**choice, "runtime": candidate.runtime, "why": f"asked for, and it {verdict}"
                               if self.asked == "openvino" else f"asked for, and kept: {verdict}"}
        return self.decide_auto(torch_predictor)

    def decide_auto(self, torch_predictor: Predictor) -> tuple[Predictor, dict]:
        """The fastest candidate that passes its check: all timed alternately, then checked fastest first."""
        candidates = {"torch": torch_predictor, "openvino": self.build("openvino")}
        left_out = {}
        why_not_int8 = self.int8_missing()
        if why_not_int8:
            left_out["openvino-int8"] = why_not_int8
            logger.info("int8 not tried: %s", why_not_int8)
        else:
            candidates["openvino-int8"] = self.build("openvino-int8")
        arrays, _ = check_images(self.gate_images, torch_predictor.spec, self.info)
        ms = time_alternately(candidates, arrays[:TIMED_IMAGES])
        timing = f"median of {TIMED_ROUNDS} rounds on {min(len(arrays), TIMED_IMAGES)} images"
        choice = {"asked": "auto", "ms_per_image": ms, "timed": timing, **({"left_out": left_out} if left_out else {})}
        refused = []
        for name in sorted(ms, key=ms.get):
            if name == "torch":
                break
            ok, figures, verdict = self.check(name, candidates[name])
            choice.update(figures)
            if ok:
                why = (f"the fastest that passes its check: {ms[name]:.0f} ms an image against torch's "
                       f"{ms['torch']:.0f} ms ({timing}); {verdict}")
                return candidates[name], {**choice, "runtime": name, "why": why}
            refused.append(verdict)
            logger.info("%s: not chosen", verdict)
        faster = f"; faster but refused: {'; '.join(refused)}" if refused else ""
        why = f"{ms['torch']:.0f} ms an image, the fastest that needs no check ({timing}){faster}"
        return torch_predictor, {**choice, "runtime": "torch", "why": why}

    def remember(self, store: RuntimeCache, predictor: Predictor, choice: dict) -> None:
        """Caches the choice, with the int8 backbone it chose (so the next start does not quantise again)."""
        files = []
        if choice["runtime"] == "openvino-int8" and store.prepare() is not None:
            store.clear_files([INT8_FILE, INT8_FILE.replace(".xml", ".bin")])
            try:
                predictor.model.backbone.save(store.file(INT8_FILE))
                files = [store.file(INT8_FILE).name, store.file(INT8_FILE).with_suffix(".bin").name]
            except (OSError, RuntimeError) as exc:
                logger.warning("the int8 backbone could not be cached (%s): the next start decides again", exc)
                return
        store.store(choice, files)

    def rebuild(self, choice: dict, torch_predictor: Predictor, store: RuntimeCache) -> Predictor | None:
        """The runtime a cached choice names, built without its checks (None where it cannot be built: logged)."""
        runtime = choice["runtime"]
        if runtime == "torch":
            return torch_predictor
        try:
            return self.build(runtime, int8_model=store.file(INT8_FILE) if runtime == "openvino-int8" else None)
        except (OSError, RuntimeError, ValueError, ConfigError) as exc:
            logger.warning("the cached runtime %s cannot be built (%s): deciding again", runtime, exc)
            return None


def choose_runtime(model_dir, runtime: str = "auto", device="cpu", images=None, threshold: float | None = None,
                   fast: bool | None = None, calibration=None, val_json=None, cache: bool = True) -> tuple[Predictor, dict]:
    """:func:`load_predictor` in its older form: ``(predictor, predictor.choice)``; ``images`` and
    ``threshold`` are the gate's."""
    predictor = load_predictor(model_dir, runtime, device=device, fast=fast, calibration=calibration,
                               gate_images=images, gate_threshold=threshold, val_json=val_json, cache=cache)
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
    try:
        arrays, _ = check_images(calibration, None, info)
    except ExportError as exc:  # its advice names the export's flag
        raise ConfigError(f"the int8 calibration images cannot be read ({str(exc).split('; ')[0]}); pass a folder "
                          "of a few dozen of your images with --calibration-images DIR") from exc
    return arrays
