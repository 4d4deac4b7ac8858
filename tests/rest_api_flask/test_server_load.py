"""The overlay gives the right pixels, drawn on its first request; benchmarks/server_load.py runs end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark_scripts import load_benchmark, results_block
from maskrcnn_finetune.structures import Instances
from maskrcnn_finetune.visualize import class_colors, draw_instances

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "server_load.py"


def test_overlay_blends_overlapping_masks_in_score_order():
    image = np.full((30, 40, 3), 200, dtype=np.uint8)
    masks = np.zeros((2, 30, 40), dtype=bool)
    masks[0, 5:20, 5:25] = True
    masks[1, 10:25, 15:35] = True
    inst = Instances((30, 40), np.array([[5, 5, 25, 20], [15, 10, 35, 25]], np.float32),
                     np.array([0.9, 0.6], np.float32), np.array([0, 1]), masks, ["a", "b"])
    out = draw_instances(image, inst, alpha=0.5, show_boxes=False, show_labels=False).astype(float)
    a, b = class_colors(2) * 255
    assert np.allclose(out[7, 7], 100 + a / 2, atol=1)
    assert np.allclose(out[22, 30], 100 + b / 2, atol=1)
    assert np.allclose(out[15, 20], (100 + b / 2) / 2 + a / 2, atol=1.5)  # the lower score first, the best on top
    assert (out[~masks.any(axis=0)] == 200).all()


@pytest.mark.slow
def test_server_load_benchmark_runs_end_to_end(model_dir, tmp_path):
    out, results = tmp_path / "load.json", tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(SCRIPT), "--model-dir", str(model_dir), "--size", "96", "--clients", "1", "2",
           "--requests-per-level", "4", "--memory-requests", "20", "--rss-every", "5", "--warmup", "1",
           "--threshold", "0.0", "--breakdown-repeats", "1", "--worst-case-instances", "3", "--torch-threads", "1",
           "--workers", "1", "2", "--micro-batch", "1", "2", "--work-dir", str(tmp_path / "work"), "--out", str(out), "--no-progress",
           "--results-md", str(results)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    report = json.loads(out.read_text())

    assert report["image"]["width"] == 128 and report["image"]["height"] == 96
    levels = report["load"]["levels"]
    assert [level["clients"] for level in levels] == [1, 2]
    for level in levels:
        assert level["requests"] == 4 and level["errors"] == 0 and level["statuses"] == ["200"]
        assert level["throughput_per_s"] > 0
        assert 0 < level["latency_min_ms"] <= level["latency_p50_ms"] <= level["latency_p95_ms"]
        for record in level["records"]:
            assert record["status"] == 200
            # the server's model time is part of what the client waited for
            assert 0 < record["model_ms"] <= record["server_ms"] <= record["latency_ms"]
        assert level["overhead_ms_median"] > 0

    memory = report["load"]["memory"]
    assert memory["errors"] == 0 and memory["requests"] == 20
    assert [s["requests"] for s in memory["samples"]] == [5, 10, 15, 20]
    assert all(s["rss_kb"] > 50_000 for s in memory["samples"])  # a Python process with torch: tens of MiB at least
    assert memory["rss_max_mb"] >= memory["rss_first_mb"] > 0

    assert all(load["startup_s"] > 0 for load in report["loads"])  # process start to /health with the model
    runs = [(load["workers"], load["micro_batch"], load["model"]["micro_batch"]["max_images"]) for load in report["loads"]]
    assert runs == [(1, 1, 1), (1, 2, 2), (2, 1, 1), (2, 2, 2)] and report["loads"][0] == report["load"]
    two = report["loads"][2]
    assert [level["errors"] for level in two["levels"]] == [0, 0]
    # the process that started them (no model) and its two workers, each with torch and the model
    starter, *workers = two["memory"]["rss_last_per_process_mb"].values()
    assert len(workers) == 2 and all(mb > 200 for mb in workers) and starter < min(workers) / 4
    # several --workers: the section of its own, so that it does not overwrite the one-worker run's
    table = results_block(results, "server-workers", "server_load.py", "--workers 1 2 --micro-batch 1 2")
    assert "| 2 | 1 | 2 | 4 | 0 |" in table and "| 1 | 2 | 2 | 4 | 0 |" in table
    assert "| 1 | 1 | 1 | 4 | 0 |" in table and "| 2 | 2 | 1 | 4 | 0 |" in table  # every run, every level
    assert "| 2 | 1 | 20 | 4 | 0 |" in table  # the memory run of two workers
    assert "| workers | micro-batch | start-up (s)" in table
    assert f"| 2 | 2 | {report['loads'][3]['startup_s']:.1f} |" in table
    assert "<!-- results:server-load -->" not in results.read_text()

    breakdown = report["breakdown"]
    assert breakdown["request_ms"] > breakdown["request_model_ms"] > 0
    stages = breakdown["stages_ms"]
    for stage in ("decode", "model", "RLE of the masks", "overlay: PNG (on its first GET)", "mask PNGs", "files written (all but the overlay)"):
        assert stages[stage] >= 0, stage
    assert breakdown["worst_case"]["num_instances"] == 3

    assert table.strip() in run.stdout  # the tables are also printed
    # the plain run's section holds the stages too; each kind of run has its own section
    server_load = load_benchmark("server_load")
    plain = server_load.markdown(report, with_stages=True)
    assert "| stage | ms | ms with 3 instances |" in plain and "| decode |" in plain and "| stage |" not in table
    parse = server_load.build_parser().parse_args
    assert [server_load.section_name(parse(["--model-dir", "m", *extra])) for extra in
            ([], ["--workers", "1", "2"], ["--micro-batch", "1", "4"])] == ["server-load", "server-workers",
                                                                               "server-micro-batch"]
    assert not list((tmp_path / "work" / "outputs" / "results").glob(".tmp-*"))  # nothing half written


def test_overlay_is_drawn_on_its_first_request_with_the_predictions(client, predictor, sample_png, folders):
    body = client.post("/api/v1/predict", data={"image": (io.BytesIO(sample_png), "s.png")},
                       content_type="multipart/form-data").get_json()
    assert body["num_instances"] > 0
    folder = folders[1] / "results" / body["id"]
    assert folder.is_dir() and not (folder / "overlay.png").exists()  # not drawn while the client waited
    overlay = client.get(body["links"]["overlay"])
    assert overlay.status_code == 200 and overlay.mimetype == "image/png"
    image = np.array(Image.open(io.BytesIO(sample_png)).convert("RGB"))
    expected = draw_instances(image, predictor(image, threshold=0.0))
    assert np.array_equal(np.array(Image.open(io.BytesIO(overlay.data))), expected)
    assert (folder / "overlay.png").is_file()
    assert client.get(body["links"]["overlay"]).data == overlay.data  # drawn once, then served
