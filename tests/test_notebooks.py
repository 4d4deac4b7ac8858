"""The Colab notebooks: committed clean (no outputs, no functions, no secrets), and each one runs.

Each notebook is executed by nbval (``pytest --nbval-lax``, the tool the issue chose) in a child
pytest with ``MRCNN_SMOKE=1``: synthetic data, a few iterations of a tiny model, the server on
loopback. A cell that raises fails the test; then the files the notebook wrote are checked, as a
user would look at them.

Without an ngrok token, the notebooks' servers open a TryCloudflare quick tunnel: the tests put a
stand-in ``cloudflared`` program where pycloudflared looks for it (tests/cloudflared_stand_in.py;
mocked, as TryCloudflare cannot be reached), which forwards a local port to the server.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import pytest
import requests
import torch
from PIL import Image

import cloudflared_stand_in
from maskrcnn_finetune import forms
from maskrcnn_finetune.data.synthetic import SHAPES
from maskrcnn_finetune.modeling.backbones import BACKBONES

from colab_stand_in import FAKE_COLAB

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = ["00_quickstart.ipynb", "01_prepare_dataset.ipynb", "02_finetune_and_compare.ipynb", "03_serve.ipynb",
             "04_prelabel.ipynb"]
NOTEBOOK_METADATA = {"accelerator", "colab", "kernelspec", "language_info", "gpuClass"}


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def code_cells(name) -> list[str]:
    book = nbformat.read(name, as_version=4) if isinstance(name, Path) else read(name)
    return [cell.source for cell in book.cells if cell.cell_type == "code"]


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
def test_metadata_names_the_notebook_by_its_file(name):
    """Colab shows metadata.colab.name as the notebook's title and saves a copy under it."""
    assert read(name).metadata.colab.name == name


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
        assert "--ngrok-authtoken" not in source and "ngrok_token=" not in source
    if any("start_notebook_server" in s for s in sources):  # asked once, up front, into the environment
        assert "colab.request_ngrok_token()" in sources[settings_cell(name)]
        assert not any("read_ngrok_token" in s or "getpass" in s for s in sources)


def settings_cell(name) -> int:
    """The index (among code cells) of a notebook's settings cell: the one that picks the work folder."""
    found = [k for k, s in enumerate(code_cells(name)) if "handover.work_dir(" in s]
    assert len(found) == 1, found
    return found[0]


def called(source: str) -> set[str]:
    """The names of the functions a cell calls (``train``, ``request_ngrok_token``, ...)."""
    calls = [n.func for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)]
    return {f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "") for f in calls}


# what needs someone at the screen (a dialog, a prompt, the file picker), and what takes a while
QUESTIONS = {"work_dir", "request_ngrok_token", "dataset_source", "upload_files", "mount_drive"}
LONG_STEPS = {"train", "demo_model", "demo_data", "prepare_balloon", "convert_labelme", "convert_labelme_splits",
              "install_detectron2", "prepare_engine", "predict_images", "compare_backbones", "start_server",
              "start_notebook_server"}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_run_all_asks_its_questions_before_the_long_steps(name):
    """Run all needs someone at the screen once, at the start: every question is asked in or before the settings
    cell, and every long step comes after it (04's corrected labels, which come back after the user corrected the
    predictions, are the one exception)."""
    sources = code_cells(name)
    settings = settings_cell(name)
    corrected = {k for k, s in enumerate(sources) if "CORRECTED = " in s}
    asks = [k for k, s in enumerate(sources) if called(s) & QUESTIONS and k not in corrected]
    long = [k for k, s in enumerate(sources) if called(s) & LONG_STEPS]
    assert max(asks) == settings and min(long) > settings, (asks, long)
    if "start_notebook_server" in "".join(sources):
        assert "request_ngrok_token" in called(sources[settings])


def test_first_cell_installs_the_kit_without_torch():
    first = {name: code_cells(name)[0] for name in NOTEBOOKS}
    assert len(set(first.values())) == 1, "the install cell is the same in every notebook"
    source = first[NOTEBOOKS[0]]
    assert re.search(r'^KIT_SOURCE = "git\+https://\S+@\S+"  # @param \{type:"string"\}$', source, re.M)
    assert 'IN_COLAB = "google.colab" in sys.modules' in source
    tree = ast.parse(source)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "subprocess.run"]
    assert len(calls) == 1
    args = [ast.unparse(a) for a in calls[0].args[0].elts]
    assert args[:4] == ["sys.executable", "'-m'", "'pip'", "'install'"] and args[-1] == "KIT_SOURCE"
    assert not [a for a in args if re.search(r"torch|--upgrade$|-U|--force-reinstall", a)]
    # the pip install sits under the Colab guard: here (and on a laptop) nothing is installed
    guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test).startswith("IN_COLAB and")]
    assert any(node is calls[0] for g in guarded for stmt in g.body for node in ast.walk(stmt))
    # the placeholder check comes before the pip install
    assert ast.unparse(guarded[0].test) == "IN_COLAB and '__OWNER__' in KIT_SOURCE"


def test_form_fields_match_the_kit():
    train_form = next(s for s in code_cells("02_finetune_and_compare.ipynb") if "BACKBONE = " in s)
    assert sorted(form_options(train_form, "BACKBONE")) == sorted(BACKBONES)
    assert form_options(train_form, "ENGINE") == ["torchvision", "detectron2"]
    assert set(form_options(train_form, "PRESET")) == {"finetune", "demo"}
    for name in NOTEBOOKS:
        assert sum("# @param" in s for s in code_cells(name)) >= 2, f"{name} has no Colab form"
        assert f"notebooks/{name})" in read(name).cells[0].source, f"{name} has no 'Open in Colab' link"


# --- running them -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def stand_in_cloudflared(fake_cloudflared):
    """Every notebook run here (its kernel and the servers it starts) finds the stand-in cloudflared."""
    return fake_cloudflared


def smoke_env(work_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NGROK_AUTHTOKEN", "PYTEST_ADDOPTS")}
    env.update({forms.SMOKE_ENV: "1", forms.WORK_DIR_ENV: str(work_dir)})
    return env


def with_form(name: str, out: Path, **fields) -> Path:
    """A copy of notebook ``name`` with form fields set, as a user types them into Colab's form."""
    book = read(name)
    for cell in book.cells:
        for field, value in fields.items():
            # the form field's own line only (it carries "# @param"), not later lines that reuse the name
            cell.source = re.sub(rf"^{field} = [^#\n]*(  # @param.*)$", lambda m: f"{field} = {value!r}{m.group(1)}",
                                 cell.source, flags=re.M)
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(book, out / name)
    return out / name


def run_notebook(name: str, work_dir: Path, path: Path | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Runs a notebook with nbval in its own process (its own runtime); only ``work_dir`` is shared."""
    path = path or NOTEBOOK_DIR / name
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-cell-timeout=600",
           "-p", "no:cacheprovider", "-q", "--rootdir", str(path.parent), str(path)]
    proc = subprocess.run(cmd, cwd=cwd, env=smoke_env(work_dir), capture_output=True, text=True, timeout=1500)
    n_cells = len(code_cells(name))
    assert proc.returncode == 0 and f"{n_cells} passed" in proc.stdout, proc.stdout[-6000:] + proc.stderr[-3000:]
    return proc


KIT_SOURCE = "git+https://github.com/someone/maskrcnn-finetune.git@main"  # set, as a user's copy has it


@dataclasses.dataclass
class StandInColab:
    """A notebook kernel that runs as in Colab, with the stand-in ``google.colab`` of tests/fake_colab (mocked:
    it exists only in Colab) imported, as Colab's kernel has it.

    Its Drive is ``folder/google_drive``, mounted at ``folder/content/drive`` (``/content/drive`` cannot exist
    here); ``secrets`` are the Colab secrets; a prompt (``getpass``) gets ``answer``. ``events`` lists, in order,
    ``(code cell index, what)`` for every question the notebook asked: a dialog the stand-in recorded
    (``drive.mount``, ``userdata.get NAME``, ``files.upload``) or a prompt (``prompt: ...``).
    """

    folder: Path
    secrets: dict = dataclasses.field(default_factory=dict)
    answer: str = ""
    events: list = dataclasses.field(default_factory=list)

    def env(self) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = [str(FAKE_COLAB)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        return {"PYTHONPATH": os.pathsep.join(path), "FAKE_COLAB_DRIVE": str(self.folder / "google_drive"),
                "FAKE_COLAB_CALLS": str(self.calls), "FAKE_COLAB_SECRETS": json.dumps(self.secrets)}

    @property
    def calls(self) -> Path:
        return self.folder / "calls.txt"

    def preamble(self) -> str:
        return ("import pathlib, google.colab\nfrom maskrcnn_finetune import handover\n"
                f"handover.DRIVE_ROOT = pathlib.Path({str(self.folder / 'content' / 'drive')!r})")

    def prompted(self, cell: int, kc, msg) -> None:
        self.collect(cell)  # the dialogs before it come first
        self.events.append((cell, f"prompt: {msg['content']['prompt']}"))
        kc.input(self.answer)

    def collect(self, cell: int) -> None:
        lines = self.calls.read_text().splitlines() if self.calls.exists() else []
        seen = sum(1 for event in self.events if not event[1].startswith("prompt: "))
        self.events.extend((cell, line) for line in lines[seen:])


def run_all_keep_kernel(path: Path, work_dir: Path, cwd: Path, colab: StandInColab | None = None):
    """Runs every code cell as Colab's Run all does; returns (kernel manager, kernel client, printed text).

    The kernel stays alive afterwards, as a Colab runtime does, until :func:`shutdown`. With ``colab``
    it runs as in Colab, and ``colab.events`` tells which cell asked what.
    """
    from jupyter_client.manager import start_new_kernel

    env = {**smoke_env(work_dir), **(colab.env() if colab else {})}
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(cwd))
    printed = []

    def keep(msg):
        content = msg["content"]
        printed.append(content.get("text", "") + str(content.get("data", {}).get("text/plain", "")))

    if colab:
        assert kc.execute_interactive(colab.preamble(), timeout=300)["content"]["status"] == "ok"
    for k, source in enumerate(code_cells(path.name if path.parent == NOTEBOOK_DIR else path)):
        answer = (lambda msg, k=k: colab.prompted(k, kc, msg)) if colab else None
        reply = kc.execute_interactive(source, timeout=900, output_hook=keep, stdin_hook=answer)
        if colab:
            colab.collect(k)
        if reply["content"]["status"] != "ok":
            text = "\n".join(printed)[-4000:]
            shutdown((km, kc))
            raise AssertionError(f"cell {k} of {path.name} failed: {reply['content'].get('evalue')}\n{text}")
    return (km, kc), "\n".join(printed)


def shutdown(kernel) -> None:
    km, kc = kernel
    kc.stop_channels()
    km.shutdown_kernel(now=False)


def assert_png(path: Path, min_size: int = 200) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_size, (path, image.size)


def served_port(served: Path) -> int:
    results = [json.loads(p.read_text()) for p in served.rglob("result.json")]
    assert len(results) == 1 and results[0]["num_instances"] == len(results[0]["instances"])
    log = (served / "server.log").read_text()
    return int(re.search(r"Serving on http://127\.0\.0\.1:(\d+)", log).group(1))


def assert_public_through_cloudflared(text: str, served: Path, cloudflared_log: Path, port: int) -> None:
    """No ngrok token: the notebook printed the quick tunnel's URL once, and the server answers through it."""
    started, opened = cloudflared_stand_in.notes(cloudflared_log)[-2:]
    url = opened["url"]
    assert re.fullmatch(r"https://[a-z-]+\.trycloudflare\.com", url)
    assert text.count(url) == 1 and f"Public URL: {url}" in text, text[-3000:]
    assert "no account, and no uptime promise" in text and "can use the model" in text
    assert started["argv"][-2:] == ["--url", f"http://127.0.0.1:{port}"]  # the tunnel points at the server
    assert f"Public URL: {url}" in (served / "server.log").read_text()
    # the stand-in forwards from a local port as Cloudflare's edge would from the public name
    assert requests.get(opened["forward"] + "/health", timeout=30).json()["status"] == "ok"


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_00_quickstart_run_all_leaves_the_server_up(tmp_path, stand_in_cloudflared):
    runtime = tmp_path / "content"
    runtime.mkdir()
    client, text = run_all_keep_kernel(NOTEBOOK_DIR / "00_quickstart.ipynb", tmp_path / "work", runtime)
    work = tmp_path / "work"
    try:
        run = work / "runs" / "synthetic_demo"  # named by dataset and preset
        assert (run / "model_final.pth").is_file()
        info = json.loads((run / "model.json").read_text())
        assert info["class_names"] == sorted(SHAPES) and "segm_AP50" in info["metrics"]
        for png in ("samples.png", "predictions.png", "runs/synthetic_demo/training_curves.png"):
            assert_png(work / png)
        port = served_port(work / "served")
        assert port_open(port), "Run all must leave the server it published running"
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=30).json()["status"] == "ok"
        assert_public_through_cloudflared(text, work / "served", stand_in_cloudflared, port)
        assert "The server keeps running at the public URL printed above" in text
        assert "INFO: model folder written" in text  # the kit's log messages reach the notebook
    finally:
        shutdown(client)
    assert_stops_with_the_runtime(port, stand_in_cloudflared)


def assert_stops_with_the_runtime(port: int, cloudflared_log: Path) -> None:
    tunnel_pid = cloudflared_stand_in.notes(cloudflared_log)[-2]["pid"]
    deadline = time.monotonic() + 30
    while (port_open(port) or cloudflared_stand_in.alive(tunnel_pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not port_open(port), "the server stops with the runtime"
    assert not cloudflared_stand_in.alive(tunnel_pid), "and so does its tunnel"


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_00_asks_everything_in_its_settings_cell(tmp_path):
    """Run all as in Colab, the token in a Colab secret: Drive's dialog and the secret's access come in the settings
    cell and nothing asks after it; the token reaches the server through the kernel's environment, never an output;
    what the server receives stays in the runtime, not on Drive."""
    token = "secret-token-4f1c"
    colab = StandInColab(tmp_path / "colab", secrets={"NGROK_AUTHTOKEN": token})
    runtime, work = tmp_path / "content", tmp_path / "work"
    runtime.mkdir()
    nb00 = with_form("00_quickstart.ipynb", tmp_path / "nb", KIT_SOURCE=KIT_SOURCE)
    client, text = run_all_keep_kernel(nb00, work, runtime, colab=colab)
    try:
        settings = settings_cell("00_quickstart.ipynb")
        assert colab.events == [(settings, "drive.mount"), (settings, "userdata.get NGROK_AUTHTOKEN")]
        assert "ngrok token: found" in text and token not in text
        km, kc = client
        seen = []
        check = ("import os\nwith open(f'/proc/{server.process.pid}/environ', 'rb') as fh:\n"
                 f"    print(b'NGROK_AUTHTOKEN={token}' in fh.read().split(b'\\0'))")
        kc.execute_interactive(check, timeout=60, output_hook=lambda msg: seen.append(msg["content"].get("text", "")))
        assert "".join(seen).strip() == "True"  # the server process has it in its environment
        served_port(runtime / "outputs" / "served")  # a visitor's upload and its results: in the runtime
        assert not (work / "served").exists() and not (work / "uploads").exists()
        assert (work / "runs" / "synthetic_demo" / "model.json").is_file()  # the work folder (Drive) has the model
    finally:
        shutdown(client)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_01_02_03_hand_over_through_the_work_folder_only(tmp_path):
    """Each notebook in its own process and its own /content; the shared work folder stands for Drive. 02 and 03
    run with every field left empty: each takes what the notebook before left, and says which. 03 runs as in Colab
    (the stand-in google.colab, no ngrok secret): its questions all come in its settings cell."""
    drive = tmp_path / "drive"
    runtimes = [tmp_path / f"runtime{i}" for i in range(3)]
    for folder in runtimes:
        folder.mkdir()

    run_notebook("01_prepare_dataset.ipynb", drive, cwd=runtimes[0])
    coco_dir = drive / "coco" / "synthetic"
    splits = {s: json.loads((coco_dir / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    assert [c["name"] for c in splits["train"]["categories"]] == sorted(SHAPES)
    assert len(splits["train"]["images"]) + len(splits["val"]["images"]) == forms.SMOKE_SYNTHETIC["n_images"]
    # TEST_SPLIT (on by default): a held-out set of its own, as the older REST API kit's tables report
    assert len(splits["test"]["images"]) == forms.SMOKE_SYNTHETIC["n_images"]
    assert splits["test"]["categories"] == splits["train"]["categories"]
    assert_png(coco_dir / "samples.png")

    client, text02 = run_all_keep_kernel(NOTEBOOK_DIR / "02_finetune_and_compare.ipynb", drive, runtimes[1])
    shutdown(client)
    assert ("INFO: TRAIN_JSON is empty: training on the newest data set 01_prepare_dataset converted, coco/synthetic "
            "(train.json, val.json, test.json") in text02
    run = drive / "runs" / "run1"
    config = json.loads((run / "config.json").read_text())
    assert config["train_json"] == str(coco_dir / "train.json")  # 01's output, not data made here
    assert config["val_json"] == str(coco_dir / "val.json")
    assert config["max_iter"] == forms.SMOKE_TRAINING["max_iter"]
    assert not (drive / "synthetic").exists()
    assert_png(run / "training_curves.png")
    assert_png(run / "predictions.png")
    rows = json.loads((drive / "compare" / "comparison.json").read_text())
    assert [r["backbone"] for r in rows] == forms.SMOKE_BACKBONES
    assert all(r["ms_per_image"] > 0 and 0 <= r["val_mask_AP50"] <= 1 for r in rows)
    assert all(0 <= r["test_mask_AP50"] <= 1 and 0 <= r["test_box_AP50"] <= 1 for r in rows)  # val and test columns
    assert "mask AP50 (test)" in (drive / "compare" / "comparison.md").read_text()
    assert_png(drive / "compare" / "comparison.png")
    predictions = drive / "predictions" / "run1"  # the val images, predicted and pre-labelled
    summary = json.loads((predictions / "summary.json").read_text())
    assert (summary["images_done"], summary["errors"]) == (len(splits["val"]["images"]), 0)
    assert len(list((predictions / "labelme").glob("*.json"))) == summary["images_done"]
    assert len((predictions / "review_order.txt").read_text().splitlines()) == summary["images_done"] + 1

    colab = StandInColab(tmp_path / "colab")  # no secret: the settings cell asks, and the user skips
    nb03 = with_form("03_serve.ipynb", runtimes[2] / "nb", KIT_SOURCE=KIT_SOURCE, STOP_SERVER=True)
    client, text = run_all_keep_kernel(nb03, drive, runtimes[2], colab=colab)
    try:
        assert "INFO: MODEL_DIR is empty: using the newest model trained in the work folder, runs/run1 (" in text
        assert f"serving {run} - engine: torchvision" in text  # 02's run, not the comparison's nor a demo
        settings = settings_cell("03_serve.ipynb")
        assert [what for _, what in colab.events][:2] == ["drive.mount", "userdata.get NGROK_AUTHTOKEN"]
        assert colab.events[2][1].startswith("prompt: ngrok authtoken") and len(colab.events) == 3
        assert {cell for cell, _ in colab.events} == {settings}  # before the model, the server, the request
        port = served_port(runtimes[2] / "outputs" / "served")  # uploads and results stay in the runtime
        assert not (drive / "served").exists() and not (drive / "uploads").exists()
        assert not port_open(port), "STOP_SERVER stops it in the last cell"
        assert "exit code 0" in text
        val_names = {img["file_name"] for img in splits["val"]["images"]}
        assert any(f"sending {coco_dir / name}" in text for name in val_names)  # an image of the model's own val set
        assert not (drive / "demo").exists()
    finally:
        shutdown(client)


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_04_prelabel_runs_the_labelling_loop(tmp_path):
    """Predict unlabelled images, hand out image + labelme pairs, take corrections back, train from the model."""
    drive = tmp_path / "drive"
    run_notebook("04_prelabel.ipynb", drive, cwd=tmp_path)
    round_dir = drive / "rounds" / "round2"
    summary = json.loads((round_dir / "predictions" / "summary.json").read_text())
    assert summary["images_done"] == forms.SMOKE_SYNTHETIC["n_images"] and summary["errors"] == 0
    with zipfile.ZipFile(round_dir / "to_correct.zip") as bundle:
        names = set(bundle.namelist())
        documents = [json.loads(bundle.read(n)) for n in names if n.endswith(".json")]
    assert len(documents) == summary["images_done"]
    assert all(d["imagePath"] in names and "/" not in d["imagePath"] for d in documents)  # the pair opens as is
    info = json.loads((round_dir / "model" / "model.json").read_text())
    assert info["training"]["init_from"] == str(drive / "demo" / "model")
    assert info["class_names"] == sorted(SHAPES)
    assert_png(round_dir / "rounds.png")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_02_errors_name_the_form_fields(tmp_path):
    """A training error inside the notebook names its field, RUN_NAME, where the command line's says --output-dir."""
    drive = tmp_path / "drive"
    run = drive / "runs" / "run1"
    run.mkdir(parents=True)
    (run / "last_checkpoint.pth").write_bytes(b"cut off when the runtime stopped")  # a checkpoint that cannot be read
    with pytest.raises(AssertionError) as failed:
        run_all_keep_kernel(NOTEBOOK_DIR / "02_finetune_and_compare.ipynb", drive, tmp_path)
    message = str(failed.value).splitlines()[0]  # "cell K of NAME failed: <the error's message>"
    assert "cannot resume: no checkpoint in" in message and "train into another RUN_NAME" in message, message
    assert "--output-dir" not in message
    assert (run / "last_checkpoint.pth").read_bytes() == b"cut off when the runtime stopped"  # kept as it was


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_02_refuses_a_missing_handover_early(tmp_path):
    nb02 = with_form("02_finetune_and_compare.ipynb", tmp_path / "nb", TRAIN_JSON="coco/mine/train.json")
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider", "-q",
           "--rootdir", str(nb02.parent), str(nb02)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=smoke_env(tmp_path / "drive"), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode != 0
    assert "run 01_prepare_dataset first" in proc.stdout
    assert not (tmp_path / "drive" / "runs").exists()  # nothing trained


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_03_serves_the_coco_model_before_any_training(tmp_path, monkeypatch, stand_in_cloudflared):
    """MODEL_DIR = "coco": torchvision's COCO Mask R-CNN, no training. Nothing is downloaded: a weights file of
    torchvision's shapes sits where torch keeps the download (TORCH_HOME), so the loading path runs for real.
    No ngrok token: the notebook ends with the no-account tunnel's URL, and the server stays up."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn

    from maskrcnn_finetune.coco_model import FOLDER_NAME, coco_class_names

    home = tmp_path / "torch_home" / "hub" / "checkpoints"
    home.mkdir(parents=True)
    torch.manual_seed(0)
    state = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    torch.save(state, home / Path(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # the kernel and the server inherit it
    drive, runtime = tmp_path / "drive", tmp_path / "runtime"
    runtime.mkdir()
    nb03 = with_form("03_serve.ipynb", tmp_path / "nb", MODEL_DIR="coco")
    client, text = run_all_keep_kernel(nb03, drive, runtime)
    try:
        assert f"serving {drive / 'models' / FOLDER_NAME} - engine: torchvision" in text
        port = served_port(drive / "served")
        results = [json.loads(p.read_text()) for p in (drive / "served").rglob("result.json")]
        assert results[0]["model"]["classes"] == coco_class_names()  # the 80 COCO names (90 ids), person first
        assert_public_through_cloudflared(text, drive / "served", stand_in_cloudflared, port)
        assert "The server keeps running at the public URL printed above" in text
        assert not (drive / "demo").exists()  # no demo model was trained
    finally:
        shutdown(client)
    assert_stops_with_the_runtime(port, stand_in_cloudflared)


# --- the design's own `!python rest_api_flask/flask_app.py ... --use-ngrok --infer-with-cpu` cell --------------

PYTHON_CELL_NOTEBOOK = ROOT / "tests" / "notebooks" / "flask_app_cell.ipynb"


def run_python_cell(tmp_path: Path, model_dir: Path, secrets: dict, agent: Path) -> tuple[str, str]:
    """Runs tests/notebooks/flask_app_cell.ipynb as Run all does, in a kernel whose ``google.colab`` is the stand-in
    (working in the kernel, failing in the ``!python`` process as colabtools does), with the stand-in ngrok agent.

    The last cell runs as long as the server: once the server has said how its tunnel went and answered
    ``/health``, the test presses the stop button (interrupts the kernel). Returns (the cell's output, the
    server's local URL)."""
    from jupyter_client.manager import start_new_kernel

    from colab_stand_in import FAKE_COLAB

    env = {k: v for k, v in os.environ.items() if k not in ("NGROK_AUTHTOKEN", "PYTEST_ADDOPTS")}
    env.update({"PYTHONPATH": os.pathsep.join([str(FAKE_COLAB), env.get("PYTHONPATH", "")]),
                "FAKE_COLAB_SECRETS": json.dumps(secrets), "PYNGROK_NGROK_PATH": str(agent), "HOME": str(tmp_path),
                "SERVE_MODEL_DIR": str(model_dir), "SERVE_WORK_DIR": str(tmp_path / "work"), "OMP_NUM_THREADS": "1",
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])})  # `python`: the kernel's
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(ROOT))
    try:
        *settings, serving = code_cells(PYTHON_CELL_NOTEBOOK)
        assert serving.startswith("!python rest_api_flask/flask_app.py ") and "--use-ngrok --infer-with-cpu" in serving
        for source in settings:  # the question for a token, if asked, gets Enter (skip)
            reply = kc.execute_interactive(source, timeout=120, allow_stdin=True, stdin_hook=lambda msg: kc.input(""))
            assert reply["content"]["status"] == "ok", reply["content"]
        msg_id = kc.execute(serving)
        text, ended, deadline = "", False, time.monotonic() + 300
        while not re.search(r"Public URL: \S+|WARNING: no public URL[^\n]*\n", text) and time.monotonic() < deadline:
            try:
                msg = kc.get_iopub_msg(timeout=5)
            except Exception:  # noqa: BLE001 - queue.Empty: nothing printed yet
                continue
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                text += msg["content"]["text"]
            if msg["parent_header"].get("msg_id") == msg_id and msg["content"].get("execution_state") == "idle":
                ended = True  # the cell ended by itself: the server stopped
                break
        assert not ended, "the server stopped at start-up:\n" + text[-3000:]
        url = re.search(r"Serving on (http://127\.0\.0\.1:\d+)", text)
        assert url, text[-3000:]
        assert requests.get(url.group(1) + "/health", timeout=30).json()["model_loaded"] is True
        km.interrupt_kernel()  # the stop button
        reply = kc.get_shell_msg(timeout=60)
        assert reply["parent_header"]["msg_id"] == msg_id
        port = int(url.group(1).rsplit(":", 1)[1])
        deadline = time.monotonic() + 30
        while port_open(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not port_open(port), "the stop button stops the server"
        return text.replace("\r\n", "\n"), url.group(1)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_python_cell_opens_ngrok_with_the_token_the_kernel_handed_down(tmp_path, tiny_model_dir):
    from ngrok_stand_in import agent_log, fake_ngrok_binary

    agent, log = fake_ngrok_binary(tmp_path, "ok")
    text, _ = run_python_cell(tmp_path, tiny_model_dir, {"NGROK_AUTHTOKEN": "tok-secret"}, agent)
    assert "Traceback" not in text and "Public URL: https://fake-tunnel.ngrok-free.app" in text, text[-3000:]
    started = agent_log(log)[0]["argv"]
    assert started[started.index("--authtoken") + 1] == "tok-secret"  # read in the kernel, through the environment
    assert "tok-secret" not in text  # never printed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_python_cell_without_a_token_says_in_one_line_how_to_give_it(tmp_path, tiny_model_dir):
    from ngrok_stand_in import agent_log, fake_ngrok_binary

    agent, log = fake_ngrok_binary(tmp_path, "ok")
    text, _ = run_python_cell(tmp_path, tiny_model_dir, {}, agent)  # no secret; Enter at the question
    assert "Traceback" not in text, text[-3000:]
    warnings = [line for line in text.splitlines() if "no public URL" in line or "NGROK_AUTHTOKEN" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("WARNING: no public URL: no ngrok authtoken: a server started from a notebook cell "
                                  "cannot read Colab secrets")
    assert "run the notebook's settings cell again" in warnings[0]
    assert "NGROK_AUTHTOKEN=... python rest_api_flask/flask_app.py" in warnings[0]
    assert warnings[0].endswith("the server keeps serving locally.")
    assert agent_log(log) == []  # ngrok was never started without a token
