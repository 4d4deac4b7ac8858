"""The torchvision training loop: exact resume, schedules, safety checks, the scripts, and DDP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maskrcnn_finetune.config import TrainConfig, resolve_config
from maskrcnn_finetune.engines import train
from maskrcnn_finetune.engines.torchvision_engine import (CHECKPOINT, PREVIOUS_CHECKPOINT, BatchIndexSampler, TrainingError,
                                                          lr_factor)
from maskrcnn_finetune.errors import ConfigError

from training_options import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tiny_coco, out, **overrides):
    options = {**TINY_MODEL, "backbone": "mobilenetv2_fpnlite", **overrides}
    return resolve_config(None, train_json=str(tiny_coco["train"]), val_json=str(tiny_coco["val"]),
                          output_dir=str(out), **options)


def _weights(model_dir):
    return torch.load(Path(model_dir) / "model_final.pth", weights_only=True)


def test_resume_continues_exactly_where_it_stopped(tiny_coco, tmp_path):
    options = dict(max_iter=6, eval_period=3, train_sizes=[56, 64, 72], hflip=0.5, batch_size=2)
    train(_cfg(tiny_coco, tmp_path / "straight", **options))
    interrupted = _cfg(tiny_coco, tmp_path / "resumed", **options)
    train(interrupted, stop_after=3)
    assert (tmp_path / "resumed" / CHECKPOINT).is_file() and not (tmp_path / "resumed" / "model_final.pth").exists()
    assert torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=False)["iteration"] == 3
    train(_cfg(tiny_coco, tmp_path / "resumed", resume=True, **options))
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    log = [json.loads(l) for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_other_training_options_and_takes_new_test_time_ones(tiny_coco, tmp_path, caplog):
    """A preset whose test-time proposal count changed must not block `make demo --resume` of a finished run."""
    options = dict(max_iter=4, eval_period=100)
    run = tmp_path / "run"
    train(_cfg(tiny_coco, run, **options), stop_after=2)
    width = _cfg(tiny_coco, run, **options).box_head_dim
    with pytest.raises(ConfigError, match=rf"other model options \(box_head_dim: {width} there, 24 now\)"):
        train(_cfg(tiny_coco, run, resume=True, box_head_dim=24, **options))
    with caplog.at_level("INFO"):
        train(_cfg(tiny_coco, run, resume=True, rpn_post_nms_top_n_test=20, detections_per_image=7, **options))
    assert "resuming from iteration 2" in caplog.text
    assert "rpn_post_nms_top_n_test, detections_per_image differ from the checkpoint's" in caplog.text
    spec = json.loads((run / "model.json").read_text())["model"]
    assert (spec["rpn_post_nms_top_n_test"], spec["detections_per_image"]) == (20, 7)


def test_resume_refuses_a_checkpoint_trained_on_other_data(tiny_coco, tmp_path):
    """`make demo` after its data set grew must not re-evaluate the old model as if it were trained on the new data."""
    from dataclasses import replace

    options = dict(max_iter=4, eval_period=100)
    run = tmp_path / "run"
    train(_cfg(tiny_coco, run, **options), stop_after=2)
    source = Path(tiny_coco["train"])
    data = json.loads(source.read_text())
    images = [{**image, "file_name": str(source.parent / image["file_name"])} for image in data["images"]]

    def write(name, images, annotations):  # absolute image paths: the json can live anywhere
        path = tmp_path / name
        path.write_text(json.dumps({**data, "images": images, "annotations": annotations}))
        return path

    kept = images[:-1]
    fewer = write("fewer.json", kept, [a for a in data["annotations"] if a["image_id"] in {i["id"] for i in kept}])
    moved_boxes = [dict(a) for a in data["annotations"]]
    moved_boxes[0]["bbox"] = [moved_boxes[0]["bbox"][0] + 1, *moved_boxes[0]["bbox"][1:]]
    moved = write("moved.json", images, moved_boxes)  # the same counts, one box a pixel to the right
    resumed = _cfg(tiny_coco, run, resume=True, **options)
    with pytest.raises(ConfigError, match=rf"trained on other data than {re.escape(str(fewer))} "
                                          rf"\({len(images)} images and \d+ annotations then, {len(kept)} and"):
        train(replace(resumed, train_json=str(fewer)))
    with pytest.raises(ConfigError, match=r"\(the same counts, other contents\); train into another --output-dir"):
        train(replace(resumed, train_json=str(moved)))
    same = write("same.json", images, data["annotations"])  # the same content from another file: it goes on
    train(replace(resumed, train_json=str(same)))
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log if "loss" in r] == [1, 2, 3, 4] and (run / "model.json").is_file()


def test_a_cut_off_checkpoint_falls_back_to_the_previous_one(tiny_coco, tmp_path, caplog):
    """A runtime killed while Drive syncs can leave the last checkpoint truncated: resume from the one before."""
    options = dict(max_iter=6, eval_period=100, log_period=1)
    train(_cfg(tiny_coco, tmp_path / "straight", **options))
    run = tmp_path / "resumed"
    train(_cfg(tiny_coco, run, **options), stop_after=2)
    train(_cfg(tiny_coco, run, resume=True, **options), stop_after=4)
    assert (run / PREVIOUS_CHECKPOINT).is_file()
    last = (run / CHECKPOINT).read_bytes()
    (run / CHECKPOINT).write_bytes(last[: len(last) // 2])
    with (run / "metrics.jsonl").open("a") as log:  # the killed run was writing a row
        log.write('{"iter": 5, "loss": 1.2')
    with caplog.at_level("WARNING"):
        train(_cfg(tiny_coco, run, resume=True, **options))
    assert "resuming from the previous checkpoint" in caplog.text and "iteration 2" in caplog.text
    straight, resumed = _weights(tmp_path / "straight"), _weights(run)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # iterations 3 and 4 were logged twice and a row was cut off: the rolled-back rows are gone
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_no_readable_checkpoint_stops_and_keeps_the_files(tiny_coco, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tiny_coco, run, max_iter=4), stop_after=1)
    train(_cfg(tiny_coco, run, max_iter=4, resume=True), stop_after=2)
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (run / name).write_bytes(b"cut off")
    with pytest.raises(TrainingError, match="no checkpoint in .* can be read .* They were kept as they are"):
        train(_cfg(tiny_coco, run, max_iter=4, resume=True))
    assert (run / CHECKPOINT).read_bytes() == b"cut off"


def test_an_existing_run_is_never_overwritten(tiny_coco, tmp_path):
    train(_cfg(tiny_coco, tmp_path / "run"))
    before = (tmp_path / "run" / "model_final.pth").read_bytes()
    with pytest.raises(ConfigError, match="already holds a training run; pass --resume"):
        train(_cfg(tiny_coco, tmp_path / "run"))
    assert (tmp_path / "run" / "model_final.pth").read_bytes() == before


def test_diverging_loss_stops_with_advice(tiny_coco, tmp_path):
    cfg = _cfg(tiny_coco, tmp_path / "nan", optimizer="sgd", lr=1e30, clip_grad=0.0, max_iter=5, warmup_iters=0)
    with pytest.raises(TrainingError, match=r"the loss became .* Lower --lr \(now 1e\+30\)"):
        train(cfg)


def test_outputs_of_a_run(tiny_coco, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_coco, out, max_iter=4, eval_period=2))
    info = json.loads((out / "model.json").read_text())
    assert info["engine"] == "torchvision" and info["backbone"] == "mobilenetv2_fpnlite"
    assert info["class_names"] == ["circle", "square", "triangle"] and info["image_size"] == 64
    assert info["training"]["max_iter"] == 4 and set(info["metrics"]) >= {"bbox_AP50", "segm_AP50"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["val"]["segm"]["AP50"] <= 1.0 and metrics["iterations"] == 4
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "segm_AP50" in l]
    assert [e["iter"] for e in evals] == [2, 4]
    assert (out / "training_curves.png").stat().st_size > 10_000
    assert json.loads((out / "config.json").read_text())["lr"] == TINY_MODEL["lr"]


def test_learning_rate_schedules():
    step = TrainConfig(max_iter=100, warmup_iters=10, schedule="step", steps=[0.5, 0.8], gamma=0.1)
    assert lr_factor(0, step, 100) == pytest.approx(0.001)
    assert lr_factor(5, step, 100) == pytest.approx(0.5005)
    assert [lr_factor(i, step, 100) for i in (10, 49, 50, 79, 80, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cosine = TrainConfig(max_iter=110, warmup_iters=10, schedule="cosine")
    assert [lr_factor(i, cosine, 110) for i in (10, 60, 110)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-9)


def test_batch_order_depends_only_on_seed_and_iteration():
    full = list(BatchIndexSampler(10, 3, seed=1, start_iter=0, max_iter=12))
    assert list(BatchIndexSampler(10, 3, seed=1, start_iter=5, max_iter=12)) == full[5:]
    assert sorted(i for b in full[:10] for i in b)[:30] == sorted(list(range(10)) * 3)  # every image, once per epoch
    ranks = [list(BatchIndexSampler(10, 2, seed=1, start_iter=0, max_iter=4, rank=r, world_size=2)) for r in (0, 1)]
    single = list(BatchIndexSampler(10, 4, seed=1, start_iter=0, max_iter=4))
    assert [a + b for a, b in zip(*ranks)] == single  # two ranks split exactly one global batch


def test_bad_options_are_explained(tiny_coco, tmp_path):
    with pytest.raises(ConfigError, match="give --max-iter or --epochs"):
        resolve_config(None, train_json="t.json", output_dir="o")
    with pytest.raises(ConfigError, match="unknown preset 'fast'; choose one of: demo"):
        resolve_config("fast")
    with pytest.raises(ConfigError, match="--optimizer must be one of sgd, adamw"):
        _cfg(tiny_coco, tmp_path, optimizer="adam")


def _script(name, *args, env=None, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _tiny_flags(tiny_coco, out):
    return ["--train-json", tiny_coco["train"], "--val-json", tiny_coco["val"], "--output-dir", out,
            "--backbone", "mobilenetv2_fpnlite", "--pretrained", "none", "--max-iter", "2", "--batch-size", "1",
            "--image-size", "64", "--max-size", "96", "--box-head-dim", "64", "--mask-head-layers", "32",
            "--box-batch-size-per-image", "32", "--device", "cpu"]


def test_train_and_evaluate_scripts(tiny_coco, tmp_path):
    out = tmp_path / "model"
    proc = _script("train.py", *_tiny_flags(tiny_coco, out), "--epochs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["epochs"] == 1.0
    proc = _script("evaluate.py", "--model-dir", out, "--json", tiny_coco["val"], "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| segm |" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["val"]["segm"]) >= {"AP", "AP50", "AP75", "per_class_AP"}
    proc = _script("train.py", *_tiny_flags(tiny_coco, out))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tiny_coco, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", str(ROOT / "scripts" / "train.py"), *map(str, _tiny_flags(tiny_coco, out))],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["max_iter"] == 2
    assert "x2" in proc.stderr  # "training ... on cpu x2": both ranks took part


def test_what_training_scores_is_what_the_model_folder_predicts(tiny_coco, tmp_path):
    """Multi-scale training: torchvision's transform would evaluate at the last training size, the
    folder at --image-size. Training must score exactly what Predictor.from_dir runs."""
    from maskrcnn_finetune.data.coco import load_coco
    from maskrcnn_finetune.modeling import ModelSpec, build_model
    from maskrcnn_finetune.predictor import InferenceOptions, Predictor
    from maskrcnn_finetune.engines.torchvision_engine import evaluation_predictor

    out = tmp_path / "run"
    train(_cfg(tiny_coco, out, max_iter=8, eval_period=100, train_sizes=[48, 64, 96], image_size=64,
               detections_per_image=20, lr=0.02))
    info = json.loads((out / "model.json").read_text())
    assert info["image_size"] == 64
    # the model as training left it: built with its training sizes, holding the trained weights
    spec = ModelSpec.from_dict(info["model"])
    trained = build_model(spec, train_min_sizes=[48, 64, 96])
    trained.load_state_dict(torch.load(out / CHECKPOINT, weights_only=False)["model"])
    images = [load_coco(tiny_coco["val"]).image_path(i) for i in load_coco(tiny_coco["val"]).images]
    from_dir = Predictor.from_dir(out, device="cpu")(images, threshold=0.0)
    in_memory = evaluation_predictor(trained, spec, "cpu")(images, threshold=0.0)
    assert sum(len(r) for r in from_dir) > 0
    for a, b in zip(in_memory, from_dir):  # one path (the Predictor's default), one set of weights: row for row
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.masks, b.masks)
    # what the old evaluation ran (the training model in eval mode) resizes to 96 px, not 64
    naive = Predictor(trained, spec, "cpu", score_threshold=0.0, options=InferenceOptions(fast=False))(images, threshold=0.0)
    assert any(len(a) != len(b) or not np.allclose(a.boxes, b.boxes) for a, b in zip(naive, from_dir))
    # the AP written to model.json is the AP scripts/evaluate.py measures on the folder
    proc = _script("evaluate.py", "--model-dir", out, "--json", tiny_coco["val"], "--device", "cpu",
                   "--output", tmp_path / "evaluated.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "evaluated.json").read_text())["val"]
    for kind in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75"):
            assert info["metrics"][f"{kind}_{key}"] == evaluated[kind][key], (kind, key)
    assert "loaded the trained mobilenetv2_fpnlite weights" in proc.stderr
    assert "training from scratch" not in proc.stderr


def test_the_chosen_test_size_is_the_best_one_and_the_folder_keeps_it(tiny_coco, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        train(_cfg(tiny_coco, out, max_iter=6, eval_period=100, train_sizes=[48, 64, 96], image_size=64,
                   choose_test_size=True, detections_per_image=20, lr=0.02))
    scores = {int(m[0]): float(m[1]) for m in re.findall(r"test size (\d+) px: box AP50 [\d.]+, mask AP50 ([\d.]+)", caplog.text)}
    assert sorted(scores) == [48, 64, 96]
    info = json.loads((out / "model.json").read_text())
    best = max(scores.values())
    assert info["image_size"] == info["model"]["min_size"] == next(s for s in (64, 48, 96) if scores[s] == best)
    assert info["metrics"]["segm_AP50"] == best
    # the checkpoint keeps the training options: running the finished run again (make demo does) resumes it
    train(_cfg(tiny_coco, out, max_iter=6, eval_period=100, train_sizes=[48, 64, 96], image_size=64,
               choose_test_size=True, detections_per_image=20, lr=0.02, resume=True))
    assert json.loads((out / "model.json").read_text())["image_size"] == info["image_size"]
    proc = _script("evaluate.py", "--model-dir", out, "--json", tiny_coco["val"], "--device", "cpu",
                   "--output", tmp_path / "evaluated.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "evaluated.json").read_text())["val"]["segm"]["AP50"] == best
