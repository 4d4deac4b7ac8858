"""Measuring inference time the way users experience it: warm-up first, then the median of runs."""

from __future__ import annotations

import statistics
import time

import torch


def measure_latency(predictor, images: list, warmup: int = 2, runs: int | None = None) -> dict:
    """Milliseconds per image of ``predictor`` over ``images`` (cycled), after ``warmup`` calls.

    Returns:
        ``{"median_ms", "min_ms", "max_ms", "runs"}``.
    """
    if not images:
        raise ValueError("measure_latency needs at least one image")
    runs = runs or len(images)
    for k in range(warmup):
        predictor(images[k % len(images)])
    times = []
    for k in range(runs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        predictor(images[k % len(images)])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": runs}
