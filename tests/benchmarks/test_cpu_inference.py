"""benchmarks/cpu_inference.py end to end on one small backbone and the tiny trained model: its three sections."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmark_scripts import BENCHMARKS, load_benchmark, results_block


@pytest.mark.slow
def test_latency_speed_sources_and_parity_each_go_into_their_section(tiny_model_dir, tiny_coco, tmp_path):
    results, out = tmp_path / "RESULTS.md", tmp_path / "cpu.json"
    parity = f"{tiny_model_dir}:{tiny_coco['val']}"
    run = subprocess.run([sys.executable, str(BENCHMARKS / "cpu_inference.py"), "--backbones", "mobilenetv2_fpnlite",
                          "--sizes", "64", "--runs", "1", "--warmup", "0", "--d2-backbones", "--typical-instances", "2",
                          "--ablation", "mobilenetv2_fpnlite:64", "--parity", parity, "--parity-sizes", "96",
                          "--parity-images", "1", "--out", str(out), "--plot", str(tmp_path / "latency.png"),
                          "--results-md", str(results)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    args = ("--backbones mobilenetv2_fpnlite --sizes 64", f"--parity {parity}")

    latency = results_block(results, "cpu-latency", "cpu_inference.py", *args)
    assert latency.startswith("Median of 1 runs after 0 warm-up calls (min-max in brackets), ms per image.\n\n| backbone |")
    row = result["latency"][0]
    assert f"| mobilenetv2_fpnlite | {row['input']} | {row['gmacs']:.0f} | {row['floor_ms']:.0f} | " in latency
    assert latency.rstrip().endswith("![CPU latency per backbone](latency.png)")  # the plot lies beside the file
    assert (tmp_path / "latency.png").stat().st_size > 0

    sources = results_block(results, "cpu-speed-sources", "cpu_inference.py", *args)
    assert sources.startswith("| mobilenetv2_fpnlite at a 64 px short side, 100 detections | ms (median, min-max) |")
    assert [a["variant"] for a in result["ablation"]] == [line.split(" | ")[0][2:] for line in sources.strip().splitlines()[2:]]

    table = results_block(results, "cpu-parity", "cpu_inference.py", *args)
    rows = table.strip().splitlines()[4:]
    assert len(rows) == 2 == len(result["parity"])  # the model's own size, then 96 px
    for line, check in zip(rows, result["parity"]):
        cells = line.strip("| ").split(" | ")
        assert cells[1:3] == ["mobilenetv2_fpnlite", str(check["model_input"])]
        assert cells[-1] == ("match" if check["ok"] else "DIFFER")

    # a run that measures only parity writes only that section
    assert set(load_benchmark("cpu_inference").sections({**result, "latency": [], "ablation": []})) == {"cpu-parity"}
