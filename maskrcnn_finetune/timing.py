"""Measuring time the way users experience it, and the machine's speed to read the times against.

Times differ between machines of the same kind, and on one machine from day to day, so every
benchmark prints :func:`sgemm_gflops` from the same run and times are compared as ratios.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch


def alternating_rounds(predictors: dict, images: list, rounds: int, desc: str | None = None) -> dict[str, list[float]]:
    """Mean ms per image of each predictor (a callable taking one image) in every round, the predictors
    timed in turn round after round, so that a machine getting faster or slower during the run affects
    them alike. No warm-up: call each once before. ``desc``: a progress bar over the rounds."""
    from tqdm import tqdm

    times: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in tqdm(range(rounds), desc=desc, disable=desc is None):
        for name, predictor in predictors.items():
            start = time.perf_counter()
            for image in images:
                predictor(image)
            times[name].append((time.perf_counter() - start) * 1000 / len(images))
    return times


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


def sgemm_gflops(n: int = 2048, repeats: int = 10, dtype=torch.float32) -> float:
    """This machine's matrix-multiply rate in GFLOP/s (2 n^3 per product), median of ``repeats``."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
