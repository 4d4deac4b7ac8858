"""benchmarks/predict_speed.py end to end on the tiny model: images per second and memory, each in its section."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmark_scripts import BENCHMARKS, results_block


@pytest.mark.slow
def test_speed_and_memory_go_into_their_sections(tiny_model_dir, tiny_coco, tmp_path):
    results, out = tmp_path / "RESULTS.md", tmp_path / "predict.json"
    run = subprocess.run([sys.executable, str(BENCHMARKS / "predict_speed.py"), "--model-dir", str(tiny_model_dir),
                          "--images", str(tiny_coco["val"]), "--count", "3", "--r50-count", "0", "--memory-count", "4",
                          "--out", str(out), "--results-md", str(results)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())

    speed = results_block(results, "predict-speed", "predict_speed.py", "--count 3 --r50-count 0")
    lines = speed.strip().splitlines()
    assert lines[0] == "| model | formats written | processes | images | images/s |"
    assert len(lines) == 2 + 4 == 2 + len(result["runs"])  # every format and coco alone, in one and two processes
    info = json.loads((tiny_model_dir / "model.json").read_text())
    for line, run_ in zip(lines[2:], result["runs"]):
        cells = line.strip("| ").split(" | ")
        assert cells[0].endswith(f"m ({info['model']['backbone']}, {info['image_size']} px)")
        assert cells[1:4] == [run_["formats"], str(run_["processes"]), "3"]
        assert cells[4] == f"{run_['images_per_second']:.2f}"

    memory = results_block(results, "predict-memory", "predict_speed.py", "--memory-count 4")
    assert ", 4 images, formats coco,csv, one process;" in memory.splitlines()[0]
    assert "| images done | seconds | resident memory (MB) |" in memory
    last = memory.strip().splitlines()[-1]
    assert last.startswith("| 4 (last sample) | ")
    assert float(last.split(" | ")[-1].rstrip(" |")) == pytest.approx(result["memory"]["rss_mb_last"][2], abs=0.5)
