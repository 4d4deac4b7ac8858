"""benchmarks/backbone_complexity.py end to end: its table, and its section of a results file."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmark_scripts import BENCHMARKS, results_block


@pytest.mark.slow
def test_the_cost_table_goes_into_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    run = subprocess.run([sys.executable, str(BENCHMARKS / "backbone_complexity.py"), "--short-side", "64",
                          "--backbones", "mobilenetv2_fpnlite", "resnet18_fpn", "--results-md", str(results)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    table = results_block(results, "model-cost", "backbone_complexity.py", "--short-side 64")
    lines = table.strip().splitlines()
    assert lines[:2] == ["| backbone | params (M) | GMACs at 64x85 |", "|---|---|---|"]
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| mobilenetv2_fpnlite", "| resnet18_fpn"]
    assert lines[2].startswith("| mobilenetv2_fpnlite | 13.0 | ") and lines[3].startswith("| resnet18_fpn | 21.9 | ")
