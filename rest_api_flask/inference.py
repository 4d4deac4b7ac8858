"""The model, loaded once per process, warmed up, and run on one dedicated thread.

A Mask R-CNN is not safe to call from several threads at once and each call can take most
of a GPU's memory, so requests queue for one inference thread: memory stays flat however many
clients there are, and a long queue is answered with 429 instead of growing without bound.
The model always runs on that same thread, whichever server thread took the request, so an
image gets the same answer alone or under load: torch's per-thread state (autocast, inference
mode, the intra-op thread settings) is the inference thread's, set once, never the caller's.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from flask import Flask, current_app

from maskrcnn_finetune.predictor import Predictor
from maskrcnn_finetune.structures import Instances
from rest_api_flask.errors import ApiError

logger = logging.getLogger(__name__)


class InferenceService:
    """One :class:`Predictor` run by one dedicated thread.

    Args:
        predictor: the loaded model.
        max_waiting: requests allowed to wait for the model before new ones get 429.
    """

    def __init__(self, predictor: Predictor, max_waiting: int = 32) -> None:
        self.predictor = predictor
        self.max_waiting = max_waiting
        # the intra-op thread count the process was configured with, applied on the inference thread
        threads = torch.get_num_threads()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference",
                                            initializer=torch.set_num_threads, initargs=(threads,))
        self._count_lock = threading.Lock()
        self._waiting = 0

    def _run(self, images: list[np.ndarray], threshold: float) -> tuple[list[Instances], float]:
        start = time.perf_counter()
        results = [self.predictor(image, threshold=threshold) for image in images]
        return results, (time.perf_counter() - start) * 1000

    def warm_up(self) -> float:
        """Runs the model once on a blank image so the first request is not the slow one.

        Returns:
            The warm-up time in milliseconds.
        """
        # the model resizes every image to its own input size, so a small blank image is enough
        _, ms = self._executor.submit(self._run, [np.zeros((64, 64, 3), dtype=np.uint8)], 1.0).result()
        logger.info("model warmed up in %.0f ms", ms)
        return ms

    def predict(self, images: list[np.ndarray], threshold: float) -> tuple[list[Instances], float]:
        """Runs the model on RGB arrays on the inference thread, one request after the other.

        Returns:
            ``(instances per image, milliseconds spent in the model)``.

        Raises:
            ApiError: 429 when too many requests already wait.
        """
        with self._count_lock:
            if self._waiting >= self.max_waiting:
                raise ApiError(f"the server is busy ({self._waiting} requests waiting for the model); "
                               "retry in a few seconds", 429)
            self._waiting += 1
        try:
            return self._executor.submit(self._run, images, threshold).result()
        finally:
            with self._count_lock:
                self._waiting -= 1

    def close(self) -> None:
        """Lets the running request finish and stops the inference thread."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def model_info(self) -> dict:
        """What ``GET /api/v1/model`` and every prediction report about the model."""
        info = self.predictor.info
        return {
            "engine": info.get("engine", "torchvision"),
            "backbone": info.get("backbone", getattr(self.predictor.spec, "backbone", None)),
            "classes": self.predictor.class_names,
            "device": str(self.predictor.device),
            "inference": self.predictor.mode,
            "default_threshold": current_app.config["THRESHOLD"],
            "image_size": info.get("image_size"),
            "metrics": info.get("metrics", {}),
        }


def load_predictor(model_dir, device: str = "auto", fast: bool | None = None, runtime: str = "torch",
                   calibration=None) -> Predictor:
    """The :class:`Predictor` of a model folder (errors name the fix, see :mod:`maskrcnn_finetune.model_dir`);
    a ``runtime`` other than torch goes through the parity gate (``choose_runtime``)."""
    logger.info("loading the model from %s on %s", model_dir, device)
    if runtime == "torch":
        return Predictor.from_dir(model_dir, device=device, fast=fast)
    from maskrcnn_finetune.export.runtime_choice import choose_runtime

    predictor, choice = choose_runtime(model_dir, runtime, device=device, fast=fast, calibration=calibration)
    logger.info("runtime %s (asked: %s): %s", choice["runtime"], runtime, choice["why"])
    return predictor


def init_app(app: Flask) -> None:
    """Loads (or takes ``app.config["PREDICTOR"]``), warms up and attaches the model to the app."""
    predictor = app.config.get("PREDICTOR") or load_predictor(app.config["MODEL_DIR"], app.config["DEVICE"],
                                                                     app.config.get("FAST"), app.config["RUNTIME"],
                                                                     app.config["CALIBRATION_IMAGES"])
    service = InferenceService(predictor, max_waiting=app.config["MAX_WAITING"])
    if app.config["WARMUP"]:
        service.warm_up()
    app.extensions["inference"] = service


def get_service() -> InferenceService:
    """The app's :class:`InferenceService`."""
    return current_app.extensions["inference"]
