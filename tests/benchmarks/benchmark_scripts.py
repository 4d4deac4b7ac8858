"""The benchmark scripts of benchmarks/, loaded as modules (they import their neighbours by name), for the tests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "results_md.py")


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` imported as the module ``name``, benchmarks/ on the path as when a script runs
    (the scripts import results_md and cpu_inference by those names)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve() == BENCHMARKS / f"{name}.py", module.__file__
    return module
