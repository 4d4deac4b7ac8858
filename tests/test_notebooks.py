"""The Colab notebooks: committed clean (no outputs, no functions, no secrets), and each one runs.

Each notebook is executed by nbval (``pytest --nbval-lax``, the tool the issue chose) in a child
pytest with ``MRCNN_SMOKE=1``: synthetic data, a few iterations of a tiny model, the server on
loopback without a tunnel. A cell that raises fails the test; then the files the notebook wrote
are checked, as a user would look at them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from maskrcnn_finetune import colab
from maskrcnn_finetune.data.synthetic import SHAPES
from maskrcnn_finetune.modeling.backbones import BACKBONES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = ["00_quickstart.ipynb", "01_prepare_dataset.ipynb", "02_finetune_and_compare.ipynb", "03_serve.ipynb"]
NOTEBOOK_METADATA = {"accelerator", "colab", "kernelspec", "language_info", "gpuClass"}


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def code_cells(name: str) -> list[str]:
    return [cell.source for cell in read(name).cells if cell.cell_type == "code"]


def form_options(source: str, variable: str) -> list[str]:
    """The choices of a Colab form field ``VARIABLE = ...  # @param [...]``."""
    match = re.search(rf"^{variable} = .*# @param (\[.*\])$", source, re.M)
    assert match, f"no form field {variable}"
    return json.loads(match.group(1))


def test_every_notebook_is_there_and_valid():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == NOTEBOOKS
    for name in NOTEBOOKS:
        nbformat.validate(read(name))
        assert read(name).metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_with_outputs_stripped(name):
    book = read(name)
    assert set(book.metadata) <= NOTEBOOK_METADATA, "strip run metadata (widgets state, ...) before committing"
    for k, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {k} of {name} has outputs: clear them before committing"
            assert cell.execution_count is None, f"cell {k} of {name} has an execution count"
        assert not {"execution", "collapsed", "scrolled"} & set(cell.metadata), f"cell {k} of {name}: run metadata"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_cells_only_call_the_packages(name):
    for k, source in enumerate(code_cells(name)):
        tree = ast.parse(source)  # also refuses IPython magics (!pip, %cd): cells stay plain Python
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)), \
                f"cell {k} of {name} defines {node.name}: move it into the package"
            if isinstance(node, ast.ImportFrom | ast.Import):
                modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(m.startswith("google") for m in modules), \
                    f"cell {k} of {name} imports google.colab: call maskrcnn_finetune.colab, which guards it"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_no_token_in_cell_source(name):
    sources = code_cells(name)
    for k, source in enumerate(sources):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value:
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                assert not any("token" in n.lower() for n in names), f"cell {k} of {name} holds a token in its source"
        assert "--ngrok-authtoken" not in source
    if any("start_server" in s for s in sources):
        assert any("colab.read_ngrok_token()" in s for s in sources)


def test_first_cell_installs_the_kit_without_torch():
    first = {name: code_cells(name)[0] for name in NOTEBOOKS}
    assert len(set(first.values())) == 1, "the install cell is the same in every notebook"
    source = first[NOTEBOOKS[0]]
    assert re.search(r'^KIT_SOURCE = "git\+https://\S+"  # @param \{type:"string"\}$', source, re.M)
    assert 'IN_COLAB = "google.colab" in sys.modules' in source
    tree = ast.parse(source)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "subprocess.run"]
    assert len(calls) == 1
    args = [ast.unparse(a) for a in calls[0].args[0].elts]
    assert args[:4] == ["sys.executable", "'-m'", "'pip'", "'install'"] and args[-1] == "KIT_SOURCE"
    assert not [a for a in args if re.search(r"torch|--upgrade$|-U|--force-reinstall", a)]
    # the pip install sits under the Colab guard: here (and on a laptop) nothing is installed
    guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test).startswith("IN_COLAB and")]
    assert len(guarded) == 1 and any(node is calls[0] for stmt in guarded[0].body for node in ast.walk(stmt))


def test_form_fields_match_the_kit():
    train_form = next(s for s in code_cells("02_finetune_and_compare.ipynb") if "BACKBONE = " in s)
    assert sorted(form_options(train_form, "BACKBONE")) == sorted(BACKBONES)
    assert form_options(train_form, "ENGINE") == ["torchvision", "detectron2"]
    assert set(form_options(train_form, "PRESET")) == {"finetune", "demo"}
    for name in NOTEBOOKS:
        assert sum("# @param" in s for s in code_cells(name)) >= 2, f"{name} has no Colab form"
        assert f"notebooks/{name})" in read(name).cells[0].source, f"{name} has no 'Open in Colab' link"


# --- running them -------------------------------------------------------------------------------


def run_notebook(name: str, work_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NGROK_AUTHTOKEN", "PYTEST_ADDOPTS")}
    env.update({colab.SMOKE_ENV: "1", colab.WORK_DIR_ENV: str(work_dir)})
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-cell-timeout=600",
           "-p", "no:cacheprovider", "-q", f"notebooks/{name}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    n_cells = len(code_cells(name))
    assert proc.returncode == 0 and f"{n_cells} passed" in proc.stdout, proc.stdout[-6000:] + proc.stderr[-3000:]
    return proc


def assert_png(path: Path, min_size: int = 200) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_size, (path, image.size)


def assert_server_ran_and_stopped(served: Path) -> None:
    """The server wrote its log and answered the notebook's one sample request, and is gone."""
    log = (served / "server.log").read_text()
    results = [json.loads(p.read_text()) for p in served.rglob("result.json")]
    assert len(results) == 1 and results[0]["num_instances"] == len(results[0]["instances"])
    port = int(re.search(r"Serving on http://127\.0\.0\.1:(\d+)", log).group(1))
    assert "Public URL" not in log  # smoke mode never opens a tunnel
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the last cell should have stopped the server"


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_00_quickstart_runs(tmp_path):
    run_notebook("00_quickstart.ipynb", tmp_path)
    assert (tmp_path / "model" / "model_final.pth").is_file()
    info = json.loads((tmp_path / "model" / "model.json").read_text())
    assert info["class_names"] == sorted(SHAPES) and "segm_AP50" in info["metrics"]
    for png in ("samples.png", "predictions.png", "model/training_curves.png"):
        assert_png(tmp_path / png)
    assert_server_ran_and_stopped(tmp_path / "served")


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_01_prepare_dataset_runs(tmp_path):
    run_notebook("01_prepare_dataset.ipynb", tmp_path)
    coco_dir = tmp_path / "coco" / "synthetic"
    splits = {s: json.loads((coco_dir / f"{s}.json").read_text()) for s in ("train", "val")}
    assert [c["name"] for c in splits["train"]["categories"]] == sorted(SHAPES)
    assert len(splits["train"]["images"]) + len(splits["val"]["images"]) == colab.SMOKE_SYNTHETIC["n_images"]
    assert all((coco_dir / img["file_name"]).is_file() for s in splits.values() for img in s["images"])
    assert_png(coco_dir / "samples.png")


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_02_finetune_and_compare_runs(tmp_path):
    run_notebook("02_finetune_and_compare.ipynb", tmp_path)
    run = tmp_path / "runs" / "run1"
    assert json.loads((run / "config.json").read_text())["max_iter"] == colab.SMOKE_TRAINING["max_iter"]
    assert (run / "model_final.pth").is_file()
    assert_png(run / "training_curves.png")
    assert_png(run / "predictions.png")
    rows = json.loads((tmp_path / "compare" / "comparison.json").read_text())
    assert [r["backbone"] for r in rows] == colab.SMOKE_BACKBONES
    assert all(r["ms_per_image"] > 0 and 0 <= r["val_mask_AP50"] <= 1 for r in rows)
    table = (tmp_path / "compare" / "comparison.md").read_text()
    assert all(f"| {b} |" in table for b in colab.SMOKE_BACKBONES)
    assert_png(tmp_path / "compare" / "comparison.png")


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_03_serve_runs(tmp_path):
    run_notebook("03_serve.ipynb", tmp_path)
    assert (tmp_path / "demo" / "model" / "model.json").is_file()
    assert_server_ran_and_stopped(tmp_path / "served")
