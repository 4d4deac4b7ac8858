"""benchmarks/server_before_after.py end to end on the tiny model: two checkouts' servers started for real,
alternately, their start-up and per-request overhead in one table, the repository's worktrees left as found."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmark_scripts import BENCHMARKS, ROOT, results_block


def worktrees() -> str:
    return subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.slow
def test_both_commits_start_answer_and_go_into_one_table(tiny_model_dir, tmp_path):
    before = worktrees()
    results = tmp_path / "RESULTS.md"
    run = subprocess.run([sys.executable, str(BENCHMARKS / "server_before_after.py"), "--model-dir", str(tiny_model_dir),
                          "--before", "HEAD~1", "--after", "HEAD", "--rounds", "1", "--requests", "2", "--size", "160",
                          "--results-md", str(results)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert worktrees() == before  # the temporary checkouts are gone
    rounds = [line for line in run.stdout.splitlines() if line.startswith("round 1/1 ")]
    assert [line.split()[2] for line in rounds] == ["before", "after"]

    tables = results_block(results, "server-before-after", "server_before_after.py", "--before 'HEAD~1'", "--rounds 1")
    lines = tables.strip().splitlines()
    assert lines[0].startswith("1 start-ups of each, alternately, 2 requests each (160 px JPEG)")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert lines[2].endswith(f"| after ({head}) | after / before |")
    for line, unit in zip(lines[4:], ("start-up to a loaded model (s)", "overhead per request (ms)")):
        cells = line.strip("| ").split(" | ")
        assert cells[0].startswith(unit)
        before_value, after_value, ratio = map(float, cells[1:])
        assert before_value > 0 and after_value > 0
        assert abs(ratio - after_value / before_value) < 0.02 + 0.01 * ratio
