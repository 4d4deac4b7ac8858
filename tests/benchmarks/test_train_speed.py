"""benchmarks/train_speed.py end to end on one iteration per configuration: its section of a results file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmark_scripts import BENCHMARKS, load_benchmark, results_block


@pytest.mark.slow
def test_every_configuration_is_a_row_of_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    run = subprocess.run([sys.executable, str(BENCHMARKS / "train_speed.py"), "--iters", "1", "--warmup", "0",
                          "--rounds", "1", "--work-dir", str(tmp_path / "work"), "--results-md", str(results)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    table = results_block(results, "train-speed", "train_speed.py", "--iters 1 --warmup 0 --rounds 1")
    assert table.startswith("Demo preset from random weights, 1 round(s) of 0 + 1 iterations per configuration.\n\n"
                            "| configuration | s / iteration (mean) | median | speed-up over fp32 |\n|---|---|---|---|\n")
    rows = [line.split(" | ") for line in table.strip().splitlines()[4:]]
    assert [row[0].lstrip("| ") for row in rows] == list(load_benchmark("train_speed").VARIANTS)
    seconds = json.loads((tmp_path / "work" / "train_speed.json").read_text())["seconds"]
    for row, values in zip(rows, seconds.values()):
        assert len(values) == 1 and row[1] == f"{values[0]:.3f}" and float(row[1]) > 0
    assert rows[0][3] == "1.00x |"  # the first configuration is the reference
