"""--init-from: the next round of the labelling loop starts from the model the last round trained."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from maskrcnn_finetune.model_dir import WEIGHTS

from training_options import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]


def _flags(train_json, out, **extra) -> list[str]:
    options = {**TINY_MODEL, "max_iter": 1, "lr": 1e-6, "warmup_iters": 1, **extra}
    flags = ["--train-json", str(train_json), "--output-dir", str(out), "--backbone", "mobilenetv2_fpnlite",
             "--detections-per-image", "20"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, list):
            flags += [flag, *map(str, value)] if value else []
        else:
            flags += [flag, str(value)]
    return flags


def test_a_run_starts_from_a_trained_folder_with_a_new_class(tiny_model_dir, tiny_coco, tmp_path):
    old = json.loads((tiny_model_dir / "model.json").read_text())["class_names"]
    data = json.loads(Path(tiny_coco["train"]).read_text())
    renamed = data["categories"][-1]["name"]
    data["categories"][-1]["name"] = "balloon"  # the new round's data: one class relabelled as a new one
    for image in data["images"]:  # the json moves: its images stay where they are
        image["file_name"] = str((Path(tiny_coco["train"]).parent / image["file_name"]).resolve())
    train_json = tmp_path / "round2.json"
    train_json.write_text(json.dumps(data))

    out = tmp_path / "round2"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"),
                           *_flags(train_json, out, init_from=tiny_model_dir)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "new classes start untrained: balloon" in proc.stderr
    assert f"classes not in this data are dropped: {renamed}" in proc.stderr
    assert "training from scratch" not in proc.stderr
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["init_from"] == str(tiny_model_dir)
    assert sorted(info["class_names"]) == sorted([n for n in old if n != renamed] + ["balloon"])
    # one step at lr 1e-6 from the trained weights: the backbone is still the trained one
    before = torch.load(tiny_model_dir / WEIGHTS, weights_only=True)
    after = torch.load(out / WEIGHTS, weights_only=True)
    key = "backbone.body.features.0.0.weight" if "backbone.body.features.0.0.weight" in after else next(
        k for k in after if k.startswith("backbone.") and after[k].ndim == 4)
    assert torch.allclose(after[key], before[key], atol=1e-3)


def test_init_from_another_architecture_stops_before_training(tiny_model_dir, tiny_coco, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"),
                           *_flags(tiny_coco["train"], tmp_path / "r", init_from=tiny_model_dir, box_head_dim=32)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert "another architecture (box_head_dim 64 there, 32 here)" in proc.stderr
    assert not (tmp_path / "r" / "model.json").exists()


def test_init_from_alone_takes_the_recipe_of_the_run_it_starts_from(tiny_model_dir, tiny_coco, tmp_path):
    out = tmp_path / "r2"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--init-from", str(tiny_model_dir),
                           "--train-json", str(tiny_coco["train"]), "--output-dir", str(out), "--max-iter", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "every weight reused" in proc.stderr
    earlier = json.loads((tiny_model_dir / "model.json").read_text())
    now = json.loads((out / "model.json").read_text())
    assert now["model"] == earlier["model"]  # the same architecture, image size and heads
    assert now["training"]["max_iter"] == 1 and now["training"]["init_from"] == str(tiny_model_dir)
