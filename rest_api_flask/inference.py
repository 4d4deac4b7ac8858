"""The model, loaded once per process, warmed up, and run on one dedicated thread.

A Mask R-CNN is not safe to call from several threads at once and each call can take most
of a GPU's memory, so requests queue for one inference thread: memory stays flat however many
clients there are, and a long queue is answered with 429 instead of growing without bound.
The model always runs on that same thread, whichever server thread took the request, so an
image gets the same answer alone or under load: torch's per-thread state (autocast, inference
mode, the intra-op thread settings) is the inference thread's, set once, never the caller's.

With ``--micro-batch N`` the inference thread runs requests that wait together (same threshold,
images of one size) in one model call of up to N images, holding the first for at most
``--micro-batch-wait-ms`` to let others join. Their answers equal one-by-one answers to float
rounding (the same instances; scores within 1e-4), not bit for bit: a batched convolution sums in
another order. It is off by default: on a CPU it paid nothing (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future

import numpy as np
import torch
from flask import Flask, current_app

from maskrcnn_finetune.loading import load_predictor
from maskrcnn_finetune.predictor import Predictor
from maskrcnn_finetune.structures import Instances
from rest_api_flask.config import DEFAULTS
from rest_api_flask.errors import ApiError

logger = logging.getLogger(__name__)


class _Job:
    """One request's images waiting for the model, and where its answer goes."""

    def __init__(self, images: list[np.ndarray], threshold: float) -> None:
        self.images, self.threshold = images, threshold
        self.future: Future = Future()

    def joins(self, other: "_Job") -> bool:
        """Whether the two can run in one model call with answers equal to separate calls: the same threshold
        and every image of the same size (so the model pads none of them differently)."""
        shapes = {image.shape for image in self.images + other.images}
        return self.threshold == other.threshold and len(shapes) == 1


class InferenceService:
    """One :class:`Predictor` run by one dedicated thread, with optional micro-batching.

    Args:
        predictor: the loaded model.
        max_waiting: requests allowed to wait for the model before new ones get 429.
        micro_batch: at most this many images in one model call. Above 1, requests that wait for the model
            together, with the same threshold and images of the same size, run in one call (a GPU's throughput;
            on a CPU it paid nothing, see benchmarks/RESULTS.md); 1 runs each request's images one by one.
        micro_batch_wait_ms: how long the inference thread may hold a request to let others join it (the cap
            on the delay batching adds); 0 batches only requests that already wait.
    """

    def __init__(self, predictor: Predictor, max_waiting: int = DEFAULTS["MAX_WAITING"],
                 micro_batch: int = DEFAULTS["MICRO_BATCH"],
                 micro_batch_wait_ms: float = DEFAULTS["MICRO_BATCH_WAIT_MS"]) -> None:
        self.predictor = predictor
        self.max_waiting = max_waiting
        self.micro_batch, self.micro_batch_wait_ms = micro_batch, micro_batch_wait_ms
        self.batch_counts = {"model_calls": 0, "images": 0, "largest_call": 0}
        self._jobs: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._count_lock = threading.Lock()
        self._waiting = 0
        # the intra-op thread count the process was configured with, applied on the inference thread
        self._thread = threading.Thread(target=self._serve, args=(torch.get_num_threads(),), name="inference",
                                        daemon=True)
        self._thread.start()

    def _serve(self, threads: int) -> None:
        torch.set_num_threads(threads)
        while True:
            with self._wake:
                while not self._jobs and not self._closing:
                    self._wake.wait()
                if self._closing:
                    for job in self._jobs:
                        job.future.cancel()
                    self._jobs.clear()
                    return
                group = self._take_group()
            self._run_group(group)

    def _take_group(self) -> list[_Job]:
        """The first waiting request and those that may join it (within micro_batch images and the wait cap);
        called holding ``_wake``."""
        first = self._jobs.popleft()
        group, count = [first], len(first.images)
        if self.micro_batch <= 1 or not first.joins(first):
            return group
        deadline = time.monotonic() + self.micro_batch_wait_ms / 1000
        while count < self.micro_batch:
            joining = next((job for job in self._jobs if first.joins(job)
                            and count + len(job.images) <= self.micro_batch), None)
            if joining is not None:
                self._jobs.remove(joining)
                group.append(joining)
                count += len(joining.images)
                continue
            left = deadline - time.monotonic()
            if left <= 0 or self._closing:
                break
            self._wake.wait(left)
        return group

    def _run_group(self, group: list[_Job]) -> None:
        group = [job for job in group if job.future.set_running_or_notify_cancel()]
        if not group:
            return
        try:
            results, ms = self._call([image for job in group for image in job.images], group[0].threshold)
        except Exception as exc:  # noqa: BLE001 - each request of a group that failed together gets its own answer
            if len(group) == 1:
                group[0].future.set_exception(exc)
                return
            for job in group:
                try:
                    job.future.set_result(self._call(job.images, job.threshold))
                except Exception as own:  # noqa: BLE001 - the request's own failure is its answer
                    job.future.set_exception(own)
            return
        except BaseException as exc:  # the thread ends (interpreter exit): nobody waits forever
            for job in group:
                job.future.set_exception(exc)
            raise
        for job in group:
            job.future.set_result((results[:len(job.images)], ms))
            results = results[len(job.images):]

    def _call(self, images: list[np.ndarray], threshold: float) -> tuple[list[Instances], float]:
        """The model on ``images``: in calls of up to micro_batch images when they all have one size, else one
        by one. Returns the instances per image and the milliseconds it took."""
        start = time.perf_counter()
        size = self.micro_batch if len({image.shape for image in images}) == 1 else 1
        results: list[Instances] = []
        for first in range(0, len(images), size):
            chunk = images[first:first + size]
            results += self.predictor(chunk, threshold=threshold) if len(chunk) > 1 else \
                [self.predictor(chunk[0], threshold=threshold)]
            counts = self.batch_counts
            counts["model_calls"] += 1
            counts["images"] += len(chunk)
            counts["largest_call"] = max(counts["largest_call"], len(chunk))
        return results, (time.perf_counter() - start) * 1000

    @property
    def queued(self) -> int:
        """Requests queued for the model that the inference thread has not taken yet."""
        with self._wake:
            return len(self._jobs)

    def _submit(self, images: list[np.ndarray], threshold: float) -> Future:
        job = _Job(images, threshold)
        with self._wake:
            if self._closing:
                raise ApiError("the server is stopping; retry in a few seconds", 503)
            self._jobs.append(job)
            self._wake.notify()
        return job.future

    def warm_up(self) -> float:
        """Runs the model once on a blank image so the first request is not the slow one.

        Returns:
            The warm-up time in milliseconds.
        """
        # the model resizes every image to its own input size, so a small blank image is enough
        _, ms = self._submit([np.zeros((64, 64, 3), dtype=np.uint8)], 1.0).result()
        logger.info("model warmed up in %.0f ms", ms)
        return ms

    def predict(self, images: list[np.ndarray], threshold: float) -> tuple[list[Instances], float]:
        """Runs the model on RGB arrays on the inference thread, one request (or micro-batch) after the other.

        Returns:
            ``(instances per image, milliseconds spent in the model call that served them)``.

        Raises:
            ApiError: 429 when too many requests already wait, 503 while the server stops.
        """
        with self._count_lock:
            if self._waiting >= self.max_waiting:
                raise ApiError(f"the server is busy ({self._waiting} requests waiting for the model); "
                               "retry in a few seconds", 429)
            self._waiting += 1
        try:
            return self._submit(images, threshold).result()
        finally:
            with self._count_lock:
                self._waiting -= 1

    def close(self) -> None:
        """Lets the running model call finish, cancels the waiting requests and stops the inference thread."""
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        self._thread.join()

    def model_info(self) -> dict:
        """What ``GET /api/v1/model`` and every prediction report about the model."""
        info = self.predictor.info
        return {
            "engine": info.get("engine", "torchvision"),
            "backbone": info.get("backbone", getattr(self.predictor.spec, "backbone", None)),
            "classes": self.predictor.class_names,
            "device": str(self.predictor.device),
            "inference": {**self.predictor.mode, "choice": self.predictor.choice},
            "default_threshold": current_app.config["THRESHOLD"],
            "image_size": info.get("image_size"),
            "micro_batch": {"max_images": self.micro_batch, "wait_ms": self.micro_batch_wait_ms, **self.batch_counts},
            "metrics": info.get("metrics", {}),
        }


def init_app(app: Flask) -> None:
    """Loads the model folder (or takes ``app.config["PREDICTOR"]``), warms it up and attaches it to the app.

    The model comes from :func:`maskrcnn_finetune.loading.load_predictor`, as in batch prediction: the
    runtime asked for where the parity gate allows it (errors name the fix). ``THRESHOLD`` None (no
    ``--threshold``) becomes the model folder's own (``model.json``'s ``score_threshold``, the
    Predictor's): the default of the requests, the page's slider and ``/api/v1/model``.
    """
    predictor = app.config.get("PREDICTOR") or load_predictor(
        app.config["MODEL_DIR"], app.config["RUNTIME"], device=app.config["DEVICE"], fast=app.config.get("FAST"),
        calibration=app.config["CALIBRATION_IMAGES"], val_json=app.config.get("VAL_JSON"))
    if app.config["THRESHOLD"] is None:
        app.config["THRESHOLD"] = float(predictor.score_threshold)
    service = InferenceService(predictor, max_waiting=app.config["MAX_WAITING"], micro_batch=app.config["MICRO_BATCH"],
                               micro_batch_wait_ms=app.config["MICRO_BATCH_WAIT_MS"])
    if service.micro_batch > 1 and predictor.device.type == "cpu":
        logger.warning("--micro-batch %d on the CPU: in the kit's benchmark batched calls served fewer images per "
                       "second than one by one (benchmarks/RESULTS.md, micro-batching); it is meant for a GPU",
                       service.micro_batch)
    if app.config["WARMUP"]:
        service.warm_up()
    app.extensions["inference"] = service


def get_service() -> InferenceService:
    """The app's :class:`InferenceService`."""
    return current_app.extensions["inference"]
