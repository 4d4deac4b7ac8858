"""The notebooks' surroundings: smoke mode, work folders, backbone choices, and the Colab-only paths.

``google.colab`` cannot exist outside Colab, so the tests that take the Colab paths import the
stand-in package of tests/fake_colab (the ``fake_colab`` fixture of conftest.py), which behaves as
colabtools does today. Everything else runs for real.
"""

from __future__ import annotations

import json
import logging
import os
import re
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


def test_synthetic_and_balloon_sources_are_named_not_fetched(no_smoke, tmp_path):
    assert handover.dataset_source("synthetic", "", tmp_path) == "synthetic"
    assert handover.dataset_source("balloon", "ignored", tmp_path) == "balloon"


def _touch(path: Path, mtime: float, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return path


def test_an_empty_train_json_takes_the_newest_converted_data_set(no_smoke, tmp_path, caplog):
    work = tmp_path / "work"
    assert handover.pick_training_data("", "", "", work) is None  # nothing converted: the notebook makes shapes
    for split in ("train", "val", "test"):
        _touch(work / "coco" / "older" / f"{split}.json", 1_000_000)
    for split in ("train", "val"):
        _touch(work / "coco" / "newer" / f"{split}.json", 2_000_000)
    _touch(work / "synthetic" / "coco" / "train.json", 3_000_000)  # 02's own shapes are not 01's work
    with caplog.at_level(logging.INFO, logger="maskrcnn_finetune.handover"):
        picked = handover.pick_training_data("", "", "", work)
    newer = work / "coco" / "newer"
    assert picked == (str(newer / "train.json"), str(newer / "val.json"), "")
    assert "TRAIN_JSON is empty: training on the newest data set 01_prepare_dataset converted, coco/newer" \
        in caplog.text
    assert "train.json, val.json" in caplog.text and "give TRAIN_JSON to choose another" in caplog.text
    # the fields that are filled in win; each is checked
    older = work / "coco" / "older"
    assert handover.pick_training_data("", "", "coco/older/test.json", work)[2] == str(older / "test.json")
    assert handover.pick_training_data("", "coco/older/val.json", "", work)[1] == str(older / "val.json")
    assert handover.pick_training_data("coco/older/train.json", "", "", work) == (str(older / "train.json"), "", "")
    with pytest.raises(ConfigError, match="VAL_JSON .* does not exist"):
        handover.pick_training_data("", "coco/none/val.json", "", work)
    _touch(work / "coco" / "older" / "train.json", 4_000_000)  # converted again: now the newest
    assert handover.pick_training_data("", "", "", work)[2] == str(older / "test.json")


def _model_folder(folder: Path, mtime: float) -> Path:
    _touch(folder / "model.json", mtime)
    return folder


def test_an_empty_model_dir_takes_the_newest_trained_model(no_smoke, tmp_path, caplog):
    work = tmp_path / "work"
    with caplog.at_level(logging.INFO, logger="maskrcnn_finetune.handover"):
        assert handover.pick_model("", work) is None
    assert "no finished model was trained" in caplog.text and "demo model" in caplog.text
    run1 = _model_folder(work / "runs" / "run1", 1_000_000)
    (work / "runs" / "run2").mkdir()  # unfinished: no model.json
    _model_folder(work / "compare" / "resnet50_fpn", 5_000_000)  # the comparison's, not a run
    _model_folder(work / "demo" / "model", 5_000_000)  # the notebooks' own demo model
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="maskrcnn_finetune.handover"):
        assert handover.pick_model("  ", work) == run1
    assert "MODEL_DIR is empty: using the newest model trained in the work folder, runs/run1" in caplog.text
    round2 = _model_folder(work / "rounds" / "round2" / "model", 2_000_000)  # 04's next round
    assert handover.pick_model("", work) == round2
    assert handover.pick_model("", work, exclude=round2) == run1  # 04 never starts a round from itself
    assert handover.pick_model("runs/run1", work) == run1  # a given folder is checked, as before
    with pytest.raises(ConfigError, match="has no model.json"):
        handover.pick_model("runs/run2", work)


def test_served_files_stay_in_the_runtime_in_colab(fake_colab, no_smoke, monkeypatch, tmp_path):
    monkeypatch.chdir(fake_colab)
    work = handover.work_dir()  # on Drive
    assert handover.serve_dir(work) == fake_colab / "outputs"  # the runtime's, gone with it
    assert handover.serve_dir(work, keep_on_drive=True) == work


def test_served_files_stay_in_the_work_folder_elsewhere(no_smoke, tmp_path):
    assert handover.serve_dir(tmp_path / "work") == tmp_path / "work" and (tmp_path / "work").is_dir()


def test_in_colab_smoke_runs_meet_the_drive_dialog_too(fake_colab, monkeypatch):
    """The settings cell's questions come where a real run meets them, even when smoke mode picks the folder."""
    calls = fake_colab / "calls.txt"
    monkeypatch.setenv("FAKE_COLAB_CALLS", str(calls))
    monkeypatch.setenv(forms.SMOKE_ENV, "1")
    monkeypatch.setenv(forms.WORK_DIR_ENV, str(fake_colab / "smoke"))
    assert handover.work_dir() == fake_colab / "smoke"
    assert calls.read_text().splitlines() == ["drive.mount"]
    assert handover.work_dir() == fake_colab / "smoke"  # mounted: no second dialog
    assert handover.work_dir(use_drive=False) == fake_colab / "smoke"
    assert calls.read_text().splitlines() == ["drive.mount"]


def test_request_ngrok_token_puts_it_into_the_environment_only(monkeypatch, fake_colab, capsys):
    monkeypatch.setenv("NGROK_AUTHTOKEN", "restored-after-the-test")
    monkeypatch.delenv("NGROK_AUTHTOKEN")
    monkeypatch.setenv("FAKE_COLAB_SECRETS", json.dumps({"NGROK_AUTHTOKEN": " secret-token "}))
    assert colab.request_ngrok_token() is True
    assert os.environ["NGROK_AUTHTOKEN"] == "secret-token"  # what a server started by the notebook inherits
    assert "secret-token" not in capsys.readouterr().out
    monkeypatch.delenv("NGROK_AUTHTOKEN")
    monkeypatch.setenv("FAKE_COLAB_SECRETS", "{}")
    prompts = []
    monkeypatch.setattr(colab.getpass, "getpass", lambda prompt: prompts.append(prompt) or "")  # Enter skips
    assert colab.request_ngrok_token() is False
    assert len(prompts) == 1 and "NGROK_AUTHTOKEN" not in os.environ


def test_request_ngrok_token_outside_colab_asks_nobody(no_smoke, monkeypatch):
    monkeypatch.setattr(colab.getpass, "getpass", lambda prompt: pytest.fail("nobody is there to answer"))
    assert colab.request_ngrok_token() is False
    monkeypatch.setenv("NGROK_AUTHTOKEN", "from-env")
    assert colab.request_ngrok_token() is True


def test_errors_in_a_notebook_name_its_fields():
    with pytest.raises(ConfigError) as caught, forms.errors_name_fields(forms.TRAINING_FIELDS):
        resolve_config("finetune", train_json="", output_dir="", lr=-1.0, batch_size=0, hflip=2.0)
    message = str(caught.value)
    assert "TRAIN_JSON is required" in message and "RUN_NAME is required" in message
    assert "LR must be positive, got -1.0" in message and "BATCH_SIZE must be at least 1" in message
    assert "hflip is a probability" in message  # no field: the option's name, as resolve_config takes it
    assert "--" not in message
    assert isinstance(caught.value, ConfigError)  # its class (and traceback) kept: only the wording changes


def test_notebook_wording_of_the_engines_messages():
    from maskrcnn_finetune.engines.common import diverged

    cfg = resolve_config("demo", train_json="t.json", output_dir="runs/r", lr=0.5)
    text = forms.notebook_wording(str(diverged(cfg, Path("runs/r"), "nan")), {"lr": "LR"})
    assert "Lower LR (now 0.5), keep clip_grad on" in text and "running this cell again continues from it" in text
    assert forms.notebook_wording("choose another --output-dir", {"output_dir": "ROUND"}) == "choose another ROUND"
    assert forms.notebook_wording("pass --overwrite, --threshold 0.5", {}) == "pass --overwrite, score_threshold 0.5"
    with pytest.raises(ValueError, match="--lr") as caught, forms.errors_name_fields(forms.TRAINING_FIELDS):
        raise ValueError("--lr")  # not the kit's: a bug, left as it is
    assert str(caught.value) == "--lr"


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
    monkeypatch.setattr(colab, "_token_requested", False)


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


def _labelme_zip_with_folder(path: Path, *names: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(f"labels/{name}", "{}")
    return path


def test_each_upload_lands_in_a_fresh_folder(monkeypatch, fake_colab):
    """Corrected labels uploaded again are read alone, never with an earlier upload's files."""
    picked = fake_colab / "browser"
    picked.mkdir()
    calls = fake_colab / "calls.txt"
    monkeypatch.setenv("FAKE_COLAB_UPLOAD", str(picked))
    monkeypatch.setenv("FAKE_COLAB_CALLS", str(calls))
    parent = fake_colab / "label_uploads"
    with pytest.raises(ConfigError, match="nothing was uploaded.*Google Drive"):  # cancelled: Colab returns {}
        handover.upload_files(parent)
    assert list(parent.iterdir()) == []  # a cancelled upload leaves no folder behind
    _labelme_zip_with_folder(picked / "labels.zip", "a.json", "b.json")
    first = handover.upload_files(parent)  # one zip: unpacked beside itself, its single folder returned
    assert first.name == "labels" and sorted(p.name for p in first.iterdir()) == ["a.json", "b.json"]
    _labelme_zip_with_folder(picked / "labels.zip", "a.json")  # corrected: b.json deleted
    second = handover.upload_files(parent)
    assert second != first and second.name == "labels"
    assert sorted(p.name for p in second.iterdir()) == ["a.json"]  # no b.json from the first upload
    assert sorted(p.name for p in first.iterdir()) == ["a.json", "b.json"]  # the first one is as it was
    (picked / "labels.zip").unlink()
    (picked / "a.json").write_text("{}")
    (picked / "a.jpg").write_bytes(b"\xff\xd8")
    loose = handover.upload_files(parent)  # several files: all kept, their folder is the source
    assert sorted(p.name for p in loose.iterdir()) == ["a.jpg", "a.json"]
    again = handover.upload_files(parent)  # the same files again: no "a (1).json" beside the first ones
    assert again != loose and sorted(p.name for p in again.iterdir()) == ["a.jpg", "a.json"]
    folders = sorted(p for p in parent.iterdir())
    assert len(folders) == 4 and all(p.name.startswith(handover.UPLOAD_PREFIX) for p in folders)
    assert calls.read_text().splitlines() == ["files.upload"] * 5  # each upload asked the browser once
    source = handover.dataset_source("upload", "", fake_colab / "w")
    assert source.parent == fake_colab / "w" / "label_uploads"  # 01's uploads: the work folder's label_uploads/
    assert handover.dataset_name(source) == source.name and source.name.startswith(handover.UPLOAD_PREFIX)


def test_a_zip_and_other_files_together_are_refused(monkeypatch, fake_colab):
    picked = fake_colab / "browser"
    picked.mkdir()
    _labelme_zip_with_folder(picked / "labels.zip", "a.json")
    (picked / "b.json").write_text("{}")
    monkeypatch.setenv("FAKE_COLAB_UPLOAD", str(picked))
    with pytest.raises(ConfigError, match="2 files were uploaded, 1 of them .zip"):
        handover.upload_files(fake_colab / "up")


@pytest.mark.parametrize("data, name", [
    ("synthetic", "synthetic"), ("balloon", "balloon"), ("/content/drive/MyDrive/my_labels", "my_labels"),
    ("/content/drive/MyDrive/my_labels/", "my_labels"), (Path("/data/Shop floor.zip"), "Shop-floor"),
    ("https://example.org/files/parts%20v2.zip?dl=1", "parts-v2"), ("https://example.org/", "dataset")])
def test_converted_data_sets_are_named_after_their_source(data, name):
    assert handover.dataset_name(data) == name


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
    books = kit_source.notebooks(root)
    assert {p.name for p in books} == {p.name for p in (root / "notebooks").iterdir() if p.suffix == ".ipynb"}
    assert len(books) >= 5  # the folder decides, not a list that forgets one
    for path in books:
        text = "".join(c.source for c in nbformat.read(path, as_version=4).cells)
        assert f'KIT_SOURCE = "{expected_pip}"' in text, path.name
        assert kit_source.colab_url(path.stem) in text, path.name
        assert kit_source.rewrite(text) == text, f"{path.name} names another source"
    readme = (root / "README.md").read_text()
    assert expected_pip in readme and kit_source.colab_url("00_quickstart") in readme
    assert kit_source.rewrite(readme) == readme
    assert "YOUR-NAME" not in readme and "github.com/OWNER" not in readme


def test_set_source_leaves_no_placeholder(tmp_path, monkeypatch):
    """`python -m maskrcnn_finetune.kit_source OWNER/REPO` on a copy of the checkout: every notebook the folder
    holds, its badge, its install cell and the README's `git clone` line name the repository, none the placeholder."""
    root = Path(__file__).resolve().parents[1]
    copy = tmp_path / "kit"
    (copy / "notebooks").mkdir(parents=True)
    for path in kit_source.files(root):
        (copy / path.relative_to(root)).write_text(path.read_text())
    module = tmp_path / "kit_source.py"
    module.write_text(Path(kit_source.__file__).read_text())
    monkeypatch.setattr(kit_source, "__file__", str(module))
    books = sorted((copy / "notebooks").glob("*.ipynb"))
    assert [p.name for p in books] == [p.name for p in kit_source.notebooks(root)]
    changed = kit_source.set_source(copy, "someone/maskrcnn-finetune", "v0.2")
    assert sorted(changed) == sorted([module, copy / "README.md", *books])
    assert 'REPOSITORY = "someone/maskrcnn-finetune"' in module.read_text() and 'REF = "v0.2"' in module.read_text()
    for path in books:
        raw = path.read_text()
        assert kit_source.PLACEHOLDER not in raw and "github.com/__OWNER__" not in raw, path.name
        book = nbformat.read(path, as_version=4)
        assert f"github/someone/maskrcnn-finetune/blob/v0.2/notebooks/{path.name}" in book.cells[0].source, path.name
        assert 'KIT_SOURCE = "git+https://github.com/someone/maskrcnn-finetune.git@v0.2"' in book.cells[1].source
        assert "`git+https://github.com/someone/maskrcnn-finetune.git@v0.2`" in book.cells[1].source
    readme = (copy / "README.md").read_text()
    assert kit_source.PLACEHOLDER not in readme and "__OWNER__" not in readme
    assert "git clone https://github.com/someone/maskrcnn-finetune.git" in readme
    assert "git+https://github.com/someone/maskrcnn-finetune.git@v0.2" in readme
    assert kit_source.set_source(copy, "someone/maskrcnn-finetune", "v0.2") == []  # a second run changes nothing
    with pytest.raises(ValueError, match="OWNER/REPO"):
        kit_source.set_source(copy, "not a repo", "main")


def test_install_cell_suggests_only_refs_that_exist():
    """The placeholder's message names `@main` or a commit, never a tag the repository does not have."""
    root = Path(__file__).resolve().parents[1]
    for path in kit_source.notebooks(root):
        cell = nbformat.read(path, as_version=4).cells[1].source
        assert "@main" in cell and "commit" in cell, path.name
        assert not re.search(r"@v\d", cell), path.name


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
