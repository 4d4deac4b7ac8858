"""The notebooks' surroundings: smoke mode, work folders, backbone choices, and the Colab-only paths.

``google.colab`` cannot exist outside Colab, so the tests that take the Colab paths import the
stand-in package of tests/fake_colab (the ``fake_colab`` fixture of conftest.py), which behaves as
colabtools does today. Everything else runs for real.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat

import pytest

from maskrcnn_finetune import colab, forms, handover, kit_source
from maskrcnn_finetune.config import resolve_config
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.modeling.backbones import BACKBONES

from colab_stand_in import FAKE_COLAB


@pytest.fixture
def no_smoke(monkeypatch):
    monkeypatch.delenv(forms.SMOKE_ENV, raising=False)
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("0", False), ("", False)])
def test_smoke_mode_reads_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(forms.SMOKE_ENV, value)
    assert forms.smoke_mode() is expected


def test_smoke_mode_shrinks_training_and_data(monkeypatch, no_smoke, tmp_path):
    form = dict(train_json="t.json", output_dir=str(tmp_path / "m"), backbone="resnet101_fpn", max_iter=1500)
    assert forms.training_options(**form) == form
    assert forms.synthetic_options(60) == {"n_images": 60, "image_size": (320, 256)}
    monkeypatch.setenv(forms.SMOKE_ENV, "1")
    shrunk = forms.training_options(**form)
    assert shrunk["max_iter"] == 3 and shrunk["backbone"] == "mobilenetv2_fpnlite" and shrunk["device"] == "cpu"
    assert shrunk["train_json"] == "t.json"
    # the smoke options are valid on top of either preset
    for preset in ("demo", "finetune"):
        cfg = resolve_config(preset, **shrunk)
        assert (cfg.max_iter, cfg.image_size, cfg.pretrained) == (3, 64, "none")
    assert forms.synthetic_options(60) == {"n_images": 8, "image_size": (96, 80)}


def test_work_dir(monkeypatch, no_smoke, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert handover.work_dir() == tmp_path / "outputs" and (tmp_path / "outputs").is_dir()  # Drive only in Colab
    assert handover.work_dir(use_drive=False, local="elsewhere") == tmp_path / "elsewhere"
    monkeypatch.setenv(forms.SMOKE_ENV, "1")
    monkeypatch.setenv(forms.WORK_DIR_ENV, str(tmp_path / "smoke"))
    assert handover.work_dir(use_drive=True) == tmp_path / "smoke"
    monkeypatch.delenv(forms.WORK_DIR_ENV)
    first, second = handover.work_dir(), handover.work_dir()
    assert first != second and first.name.startswith("mrcnn_smoke_")  # a fresh temporary folder each time
    with pytest.raises(ConfigError, match="only be mounted in Colab"):
        handover.mount_drive()


def test_in_colab_the_work_folder_is_on_drive_by_default(fake_colab, no_smoke, monkeypatch, caplog):
    monkeypatch.chdir(fake_colab)
    folder = handover.work_dir()
    assert folder == (fake_colab / "content" / "drive" / "MyDrive" / "maskrcnn-finetune").resolve()
    assert (fake_colab / "google_drive" / "MyDrive" / "maskrcnn-finetune").is_dir()  # really on "Drive"
    with caplog.at_level(logging.WARNING):
        assert handover.work_dir(use_drive=False) == fake_colab / "outputs"
    assert "disappears with this runtime" in caplog.text


def test_handover_paths_are_checked_with_colab_hints(fake_colab, no_smoke, monkeypatch):
    work = fake_colab / "work"
    (work / "coco" / "mine").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"TRAIN_JSON .* does not exist: run 01_prepare_dataset first.*tick USE_DRIVE"):
        handover.coco_inputs("coco/mine/train.json", "", work)
    (work / "coco" / "mine" / "train.json").write_text("{}")
    assert handover.coco_inputs("coco/mine/train.json", "", work) == (str(work / "coco/mine/train.json"), "")
    with pytest.raises(ConfigError, match="VAL_JSON .* run 01_prepare_dataset"):
        handover.coco_inputs("coco/mine/train.json", "coco/mine/val.json", work)
    with pytest.raises(ConfigError, match="MODEL_DIR .* run 02_finetune_and_compare first"):
        handover.model_input("runs/run1", work)
    (work / "runs" / "run1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="has no model.json: its training run did not finish"):
        handover.model_input("runs/run1", work)
    # a path on Drive mounts Drive by itself
    drive_json = handover.DRIVE_ROOT / "MyDrive" / "labels" / "train.json"
    assert not handover.DRIVE_ROOT.exists()
    with pytest.raises(ConfigError, match="run 01_prepare_dataset"):
        handover.coco_inputs(str(drive_json), "", work)
    assert (handover.DRIVE_ROOT / "MyDrive").is_dir()


def test_run_folders_are_named_by_dataset_and_preset(tmp_path):
    assert handover.run_dir(tmp_path, "balloon", "finetune") == tmp_path / "runs" / "balloon_finetune"
    assert handover.run_dir(tmp_path, "path or URL", "demo") == tmp_path / "runs" / "path-or-URL_demo"


def test_an_empty_source_is_refused(no_smoke, tmp_path):
    with pytest.raises(ConfigError, match="PATH_OR_URL is empty"):
        handover.dataset_source("path or URL", "  ", tmp_path)
    assert handover.dataset_source("path or URL", "labels", tmp_path) == tmp_path / "labels"
    assert handover.dataset_source("path or URL", "https://x.org/a.zip", tmp_path) == "https://x.org/a.zip"


def test_comparison_backbones(monkeypatch, no_smoke):
    assert forms.comparison_backbones(" resnet50_fpn,vovnet19_fpn ,") == ["resnet50_fpn", "vovnet19_fpn"]
    with pytest.raises(ConfigError, match="unknown backbone.*resnet5_fpn.*choose from:.*mobilenetv2_fpn"):
        forms.comparison_backbones("resnet5_fpn, mobilenetv2_fpn")
    with pytest.raises(ConfigError, match="none given"):
        forms.comparison_backbones(" , ")
    monkeypatch.setenv(forms.SMOKE_ENV, "1")
    assert forms.comparison_backbones("resnet101_fpn") == forms.SMOKE_BACKBONES
    assert set(forms.SMOKE_BACKBONES) <= set(BACKBONES)


def test_outside_colab_nothing_colab_only_happens(no_smoke, tmp_path):
    assert not colab.in_colab()
    assert colab.request_ngrok_token() is False  # no prompt: there is nobody to answer it
    assert "NGROK_AUTHTOKEN" not in os.environ
    assert colab.proxy_url(5000) is None
    with pytest.raises(ConfigError, match="Colab only"):
        handover.upload_files(tmp_path / "up")
    text = colab.describe_runtime()
    assert "torch" in text and "local Python" in text


@pytest.fixture
def not_asked_yet(monkeypatch):
    """request_ngrok_token asks once per kernel: each test starts as a fresh kernel."""
    monkeypatch.setattr(colab, "_asked_for_token", False)


def test_token_from_the_environment_first(monkeypatch, fake_colab, not_asked_yet):
    monkeypatch.setenv("FAKE_COLAB_SECRETS", json.dumps({"NGROK_AUTHTOKEN": "from-secret"}))
    monkeypatch.setenv("NGROK_AUTHTOKEN", " from-env ")
    assert colab.request_ngrok_token() is True
    assert os.environ["NGROK_AUTHTOKEN"] == "from-env"


@pytest.mark.parametrize("secrets, browser", [({}, None), ({"NGROK_AUTHTOKEN": None}, None), ({}, "absent")])
def test_missing_secret_then_one_prompt(monkeypatch, fake_colab, not_asked_yet, capsys, secrets, browser):
    """SecretNotFoundError, NotebookAccessError and TimeoutException (colabtools' own classes) all lead to the prompt,
    asked once per kernel; the token goes into the kernel's environment, never into an output."""
    monkeypatch.setenv("FAKE_COLAB_SECRETS", json.dumps(secrets))
    if browser:
        monkeypatch.setenv("FAKE_COLAB_BROWSER", browser)
    assert colab.request_ngrok_token(ask=False) is False
    prompts = []
    # getpass needs a terminal, which a test does not have: answer for the user
    monkeypatch.setattr(colab.getpass, "getpass", lambda prompt: prompts.append(prompt) or "typed-token\n")
    assert colab.request_ngrok_token() is True
    assert os.environ["NGROK_AUTHTOKEN"] == "typed-token" and "dashboard.ngrok.com" in prompts[0]
    assert "typed-token" not in capsys.readouterr().out
    # a later call finds it in the environment: no second question
    assert colab.request_ngrok_token() is True and len(prompts) == 1


def test_enter_skips_and_is_not_asked_again(monkeypatch, fake_colab, not_asked_yet):
    monkeypatch.setenv("FAKE_COLAB_SECRETS", "{}")
    prompts = []
    monkeypatch.setattr(colab.getpass, "getpass", lambda prompt: prompts.append(prompt) or "")
    assert colab.request_ngrok_token() is False  # Enter skips: a no-account tunnel instead
    assert colab.request_ngrok_token() is False and len(prompts) == 1  # the start cell does not ask again
    assert "NGROK_AUTHTOKEN" not in os.environ


def test_token_from_the_colab_secret(monkeypatch, fake_colab, not_asked_yet):
    monkeypatch.setenv("FAKE_COLAB_SECRETS", json.dumps({"NGROK_AUTHTOKEN": "secret-token"}))
    assert colab.in_colab() and colab.in_notebook_kernel() and colab.request_ngrok_token() is True
    assert os.environ["NGROK_AUTHTOKEN"] == "secret-token"  # for the servers this kernel starts
    assert "Google Colab" in colab.describe_runtime()
    assert "Runtime > Change runtime type" in colab.describe_runtime()  # no GPU here, and how to get one


def test_a_process_the_notebook_started_reads_no_secret(monkeypatch, fake_colab, not_asked_yet):
    """In a !python child, colabtools' userdata.get fails with AttributeError: colab_secret does not call it."""
    import IPython

    monkeypatch.setenv("FAKE_COLAB_SECRETS", json.dumps({"NGROK_AUTHTOKEN": "secret-token"}))
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    monkeypatch.setattr(colab.getpass, "getpass", lambda prompt: pytest.fail("asked"))
    assert colab.in_colab() and not colab.in_notebook_kernel()
    assert colab.colab_secret("NGROK_AUTHTOKEN") is None
    assert colab.request_ngrok_token(ask=False) is False


def test_proxy_url_never_hangs(monkeypatch, fake_colab):
    assert colab.proxy_url(8000) == "https://8000-m-s-fake.colab.googleusercontent.com"
    monkeypatch.setenv("FAKE_COLAB_BROWSER", "absent")  # no browser tab answers: eval_js returns None after its timeout
    monkeypatch.setattr(colab, "PROXY_TIMEOUT_S", 0.2)
    assert colab.proxy_url(8000) is None


def _labelme_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("labels/a.json", "{}")
    return path


def test_a_download_goes_to_the_browser_in_colab_and_is_named_elsewhere(monkeypatch, fake_colab, capsys):
    bundle = fake_colab / "to_correct.zip"
    bundle.write_bytes(b"PK\x05\x06" + bytes(18))
    log = fake_colab / "downloads.txt"
    monkeypatch.setenv("FAKE_COLAB_DOWNLOADS", str(log))
    assert handover.offer_download(bundle) == bundle
    assert log.read_text().splitlines() == [str(bundle)]  # Colab's files.download had it
    assert "goes to your browser's downloads" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="Cannot find file"):  # as Colab's own
        handover.offer_download(fake_colab / "missing.zip")


def test_upload_one_zip_several_files_and_cancel(monkeypatch, fake_colab):
    picked = fake_colab / "browser"
    picked.mkdir()
    monkeypatch.setenv("FAKE_COLAB_UPLOAD", str(picked))
    with pytest.raises(ConfigError, match="nothing was uploaded.*Google Drive"):  # cancelled: Colab returns {}
        handover.upload_files(fake_colab / "uploads")
    _labelme_zip(picked / "labels.zip")
    first = handover.upload_files(fake_colab / "uploads")
    assert first == fake_colab / "uploads" / "labels.zip" and zipfile.is_zipfile(first)
    again = handover.upload_files(fake_colab / "uploads")  # Colab keeps both: "labels (1).zip"
    assert again == fake_colab / "uploads" / "labels (1).zip" and again.read_bytes() == first.read_bytes()
    (picked / "labels.zip").unlink()
    (picked / "a.json").write_text("{}")
    (picked / "a.jpg").write_bytes(b"\xff\xd8")
    folder = handover.upload_files(fake_colab / "files")  # several files: all kept, the folder is the source
    assert folder == fake_colab / "files" and sorted(p.name for p in folder.iterdir()) == ["a.jpg", "a.json"]
    assert handover.dataset_source("upload", "", fake_colab / "w") == fake_colab / "w" / "uploads"


def _server(public_url=None, via=None, error=None):
    from types import SimpleNamespace

    info = {"public_via": via} if via else {}
    return SimpleNamespace(public_url=public_url, url="http://127.0.0.1:8123", port=8123, info=info,
                           tunnel_error=error, stop=lambda: 0)


def test_show_server_in_colab_without_a_public_url_shows_the_page_and_prints_no_address(fake_colab, no_smoke,
                                                                                         capsys):
    url = colab.show_server(_server(error="cloudflared stopped (exit code 1) before the tunnel opened"))
    out = capsys.readouterr().out
    assert url == "http://127.0.0.1:8123"  # what this kernel uses; the page is in the iframe
    assert "Javascript" in out or "8123" in out  # the iframe output (IPython's display outside a kernel)
    assert "No public URL (cloudflared stopped" in out and "inside the notebook" in out
    assert "googleusercontent" not in out  # the proxy's address fails in another tab: never printed
    colab.keep_or_stop(_server(), False)
    assert "keeps running in the page shown above" in capsys.readouterr().out


@pytest.mark.parametrize("via, words", [("ngrok", "ngrok-skip-browser-warning"),
                                        ("cloudflared", "no account, and no uptime promise")])
def test_show_server_prints_a_public_url_once_with_what_comes_with_it(fake_colab, no_smoke, capsys, via, words):
    public = _server("https://abc.example", via)
    assert colab.show_server(public) == "https://abc.example"
    out = capsys.readouterr().out
    assert out.count("https://abc.example") == 1 and words in out and "can use the model" in out
    colab.keep_or_stop(public, False)
    out = capsys.readouterr().out
    assert "keeps running at the public URL printed above" in out and "https://abc.example" not in out
    colab.keep_or_stop(public, True)
    assert capsys.readouterr().out == "exit code 0\n"


def test_show_server_outside_colab_prints_the_local_address(no_smoke, capsys):
    assert colab.show_server(_server(error="no ngrok authtoken")) == "http://127.0.0.1:8123"
    assert "Open http://127.0.0.1:8123 (on this machine only; no public URL (no ngrok authtoken))" in \
        capsys.readouterr().out


def test_show_logs_prints_the_kits_messages(capsys):
    loggers = [logging.getLogger(name) for name in colab.LOGGERS]
    before = [(log.level, list(log.handlers)) for log in loggers]
    try:
        colab.show_logs()
        colab.show_logs()  # twice: still one line per message
        logging.getLogger("maskrcnn_finetune.engines").info("resuming from iteration 3")
        assert capsys.readouterr().out == "INFO: resuming from iteration 3\n"
    finally:  # the handlers write to this test's captured stdout, closed after it
        for log, (level, handlers) in zip(loggers, before):
            log.setLevel(level)
            log.handlers[:] = handlers


def test_kit_source_is_one_placeholder_everywhere():
    """Fails while a notebook, a badge or the README names another source than kit_source.py."""
    root = Path(__file__).resolve().parents[1]
    expected_pip = kit_source.pip_source()
    for name in kit_source.NOTEBOOKS:
        text = "".join(c.source for c in nbformat.read(root / "notebooks" / f"{name}.ipynb", as_version=4).cells)
        assert f'KIT_SOURCE = "{expected_pip}"' in text, name
        assert kit_source.colab_url(name) in text, name
        assert kit_source.rewrite(text) == text, f"{name} names another source"
    readme = (root / "README.md").read_text()
    assert expected_pip in readme and kit_source.colab_url("00_quickstart") in readme
    assert kit_source.rewrite(readme) == readme
    assert "YOUR-NAME" not in readme and "github.com/OWNER" not in readme


def test_set_source_rewrites_every_file(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    copy = tmp_path / "kit"
    (copy / "notebooks").mkdir(parents=True)
    for path in kit_source.files(root):
        (copy / path.relative_to(root)).write_text(path.read_text())
    module = tmp_path / "kit_source.py"
    module.write_text(Path(kit_source.__file__).read_text())
    monkeypatch.setattr(kit_source, "__file__", str(module))
    changed = kit_source.set_source(copy, "someone/maskrcnn-finetune", "v0.2")
    assert len(changed) == 6
    assert 'REPOSITORY = "someone/maskrcnn-finetune"' in module.read_text() and 'REF = "v0.2"' in module.read_text()
    book = nbformat.read(copy / "notebooks" / "03_serve.ipynb", as_version=4)
    assert 'KIT_SOURCE = "git+https://github.com/someone/maskrcnn-finetune.git@v0.2"' in book.cells[1].source
    assert "github/someone/maskrcnn-finetune/blob/v0.2/notebooks/03_serve.ipynb" in book.cells[0].source
    readme = (copy / "README.md").read_text()
    assert "__OWNER__/__REPO__" not in readme and "git clone https://github.com/someone/maskrcnn-finetune.git" in readme
    with pytest.raises(ValueError, match="OWNER/REPO"):
        kit_source.set_source(copy, "not a repo", "main")


@pytest.mark.parametrize("kit, expect", [(None, "set KIT_SOURCE to your repository"),
                                         ("git+https://github.com/someone/maskrcnn-finetune.git@v0.2", "Google Colab")])
def test_install_cell_checks_the_placeholder_before_pip(tmp_path, kit, expect):
    """The notebooks' first cell, run as Colab runs it (google.colab imported), in a fresh Python."""
    root = Path(__file__).resolve().parents[1]
    cell = nbformat.read(root / "notebooks" / "00_quickstart.ipynb", as_version=4).cells[1].source
    if kit:
        cell = cell.replace(kit_source.pip_source(), kit)
    # pip must not run: a "pip" that records its call stands first on the path of the child
    script = "import google.colab, subprocess\nsubprocess.run = lambda *a, **k: open('pip_ran', 'w')\n" + cell
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKE_COLAB), str(root)])}
    env.pop(forms.SMOKE_ENV, None)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert expect in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert (proc.returncode != 0) == (kit is None)
    assert not (tmp_path / "pip_ran").exists()  # the kit is installed here: pip never runs; the placeholder stops first
@pytest.mark.slow
def test_demo_model_is_trained_once(monkeypatch, tmp_path):
    from maskrcnn_finetune.predictor import Predictor

    monkeypatch.setenv(forms.SMOKE_ENV, "1")
    model_dir = forms.demo_model(tmp_path / "demo")
    assert model_dir == tmp_path / "demo" / "model"
    predictor = Predictor.from_dir(model_dir)
    assert predictor.class_names == ["circle", "square", "triangle"]
    assert predictor.info["training"]["max_iter"] == forms.SMOKE_TRAINING["max_iter"]
    weights = (model_dir / "model_final.pth").stat().st_mtime_ns
    assert forms.demo_model(tmp_path / "demo") == model_dir  # a finished model is reused, not retrained
    assert (model_dir / "model_final.pth").stat().st_mtime_ns == weights


def _as_detectron2_folder(model_dir, tmp_path):
    """A copy of a model folder whose model.json names the detectron2 engine (what prepare_engine reads)."""
    import shutil

    folder = tmp_path / "d2_model"
    shutil.copytree(model_dir, folder)
    info = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**info, "engine": "detectron2"}))
    return folder


def test_prepare_engine_reads_the_folder(tiny_model_dir, tmp_path):
    assert colab.prepare_engine(tiny_model_dir) == "torchvision"
    # detectron2 (its Python-only code) is installed in the test environment: nothing to do
    assert colab.prepare_engine(_as_detectron2_folder(tiny_model_dir, tmp_path)) == "detectron2"


def test_prepare_engine_without_detectron2_names_the_install(tiny_model_dir, tmp_path):
    folder = _as_detectron2_folder(tiny_model_dir, tmp_path)
    # sys.modules[name] = None makes `import detectron2` fail as if it were not installed (outside Colab)
    code = ("import sys; sys.modules['detectron2'] = None\n"
            "from maskrcnn_finetune import colab\n"
            "from maskrcnn_finetune.errors import KitError\n"
            "try:\n    colab.prepare_engine(sys.argv[1])\nexcept KitError as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "was trained with detectron2, which is not installed" in proc.stdout
    assert "python -m maskrcnn_finetune.modeling.detectron2.install" in proc.stdout
