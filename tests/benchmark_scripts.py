"""The benchmark scripts of benchmarks/ for the tests: loaded as modules, and the block a run wrote into its
``--results-md`` file read back and checked."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


MACHINE_LINE = re.compile(r"Run on \d{4}-\d\d-\d\d: .+, \d+ threads, torch \S+; fp32 sgemm \d+ GFLOP/s at the start, "
                          r"\d+ at the end; bf16 \d+ GFLOP/s; bf16 units: (yes|no)")


def results_block(path: Path, name: str, script: str, *args: str) -> str:
    """The tables of the block ``name`` in ``path``, after checking that the block starts with the command
    that wrote it (``python benchmarks/<script>`` with ``args`` among its arguments) and one machine line.
    """
    text = path.read_text()
    start, end = f"<!-- results:{name} -->\n", f"<!-- /results:{name} -->"
    assert text.count(start) == 1 and text.count(end) == 1, f"{name} is not in {path} once:\n{text[:3000]}"
    block = text.split(start, 1)[1].split(end, 1)[0]
    command, machine, tables = block.split("\n\n", 2)
    assert command.startswith(f"`python benchmarks/{script} ") and command.endswith("`"), command
    assert f"--results-md {path}" in command and all(arg in command for arg in args), command
    assert MACHINE_LINE.fullmatch(machine), machine
    assert tables.endswith("\n\n") and "<!--" not in tables
    return tables
