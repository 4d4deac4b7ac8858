"""The notebooks' surroundings: smoke mode, work folders, backbone choices, and the Colab-only paths.

``google.colab`` cannot exist outside Colab, so the tests that take the Colab paths put a small
stand-in module in ``sys.modules`` (only what the kit calls: ``userdata.get``, ``output.eval_js``,
``files.upload``). Everything else runs for real.
"""

from __future__ import annotations

import logging
import sys
import types

import pytest

from maskrcnn_finetune import colab
from maskrcnn_finetune.config import resolve_config
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.modeling.backbones import BACKBONES


class SecretNotFoundError(Exception):
    """Stands in for google.colab.userdata.SecretNotFoundError."""


@pytest.fixture
def fake_colab(monkeypatch):
    """A stand-in ``google.colab`` (mocked: it only exists inside Colab). Returns its pieces to configure."""
    google = sys.modules.get("google") or types.ModuleType("google")
    package = types.ModuleType("google.colab")
    state = types.SimpleNamespace(secrets={}, asked=[], uploads={}, eval_js=[])

    def get(key):
        if key not in state.secrets:
            raise SecretNotFoundError(key)
        return state.secrets[key]

    package.userdata = types.SimpleNamespace(get=get, SecretNotFoundError=SecretNotFoundError)
    package.output = types.SimpleNamespace(eval_js=lambda js: state.eval_js.append(js) or "https://8000-abc.colab.dev/")
    package.files = types.SimpleNamespace(upload=lambda: dict(state.uploads))
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setattr(google, "colab", package, raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", package)
    monkeypatch.setitem(sys.modules, "google.colab.output", package.output)
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    return state


@pytest.fixture
def no_smoke(monkeypatch):
    monkeypatch.delenv(colab.SMOKE_ENV, raising=False)
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("0", False), ("", False)])
def test_smoke_mode_reads_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(colab.SMOKE_ENV, value)
    assert colab.smoke_mode() is expected


def test_smoke_mode_shrinks_training_and_data(monkeypatch, no_smoke, tmp_path):
    form = dict(train_json="t.json", output_dir=str(tmp_path / "m"), backbone="resnet101_fpn", max_iter=1500)
    assert colab.training_options(**form) == form
    assert colab.synthetic_options(60) == {"n_images": 60, "image_size": (320, 256)}
    monkeypatch.setenv(colab.SMOKE_ENV, "1")
    shrunk = colab.training_options(**form)
    assert shrunk["max_iter"] == 3 and shrunk["backbone"] == "mobilenetv2_fpnlite" and shrunk["device"] == "cpu"
    assert shrunk["train_json"] == "t.json"
    # the smoke options are valid on top of either preset
    for preset in ("demo", "finetune"):
        cfg = resolve_config(preset, **shrunk)
        assert (cfg.max_iter, cfg.image_size, cfg.pretrained) == (3, 64, "none")
    assert colab.synthetic_options(60) == {"n_images": 8, "image_size": (96, 80)}


def test_work_dir(monkeypatch, no_smoke, tmp_path, caplog):
    monkeypatch.chdir(tmp_path)
    assert colab.work_dir() == tmp_path / "outputs" and (tmp_path / "outputs").is_dir()
    with caplog.at_level(logging.WARNING):
        assert colab.work_dir(use_drive=True, local="elsewhere") == tmp_path / "elsewhere"
    assert "only for Colab" in caplog.text
    monkeypatch.setenv(colab.SMOKE_ENV, "1")
    monkeypatch.setenv(colab.WORK_DIR_ENV, str(tmp_path / "smoke"))
    assert colab.work_dir(use_drive=True) == tmp_path / "smoke"
    monkeypatch.delenv(colab.WORK_DIR_ENV)
    first, second = colab.work_dir(), colab.work_dir()
    assert first != second and first.name.startswith("mrcnn_smoke_")  # a fresh temporary folder each time
    with pytest.raises(ConfigError, match="only be mounted in Colab"):
        colab.mount_drive()


def test_comparison_backbones(monkeypatch, no_smoke):
    assert colab.comparison_backbones(" resnet50_fpn,vovnet19_fpn ,") == ["resnet50_fpn", "vovnet19_fpn"]
    with pytest.raises(ConfigError, match="unknown backbone.*resnet5_fpn.*choose from:.*mobilenetv2_fpn"):
        colab.comparison_backbones("resnet5_fpn, mobilenetv2_fpn")
    with pytest.raises(ConfigError, match="none given"):
        colab.comparison_backbones(" , ")
    monkeypatch.setenv(colab.SMOKE_ENV, "1")
    assert colab.comparison_backbones("resnet101_fpn") == colab.SMOKE_BACKBONES
    assert set(colab.SMOKE_BACKBONES) <= set(BACKBONES)


def test_outside_colab_nothing_colab_only_happens(no_smoke, tmp_path):
    assert not colab.in_colab()
    assert colab.read_ngrok_token() is None  # no prompt: there is nobody to answer it
    assert colab.proxy_url(5000) is None
    assert colab.upload_files(tmp_path / "up") == [] and not (tmp_path / "up").exists()
    text = colab.describe_runtime()
    assert "torch" in text and "local Python" in text


def test_token_from_the_environment_first(monkeypatch, fake_colab):
    fake_colab.secrets["NGROK_AUTHTOKEN"] = "from-secret"
    monkeypatch.setenv("NGROK_AUTHTOKEN", " from-env ")
    assert colab.read_ngrok_token() == "from-env"


def test_token_from_the_colab_secret_then_a_prompt(monkeypatch, fake_colab):
    assert colab.in_colab()
    fake_colab.secrets["NGROK_AUTHTOKEN"] = "secret-token"
    assert colab.read_ngrok_token() == "secret-token"
    del fake_colab.secrets["NGROK_AUTHTOKEN"]
    # getpass needs a terminal, which a test does not have: answer for the user
    prompts = []
    monkeypatch.setattr(colab.getpass, "getpass", lambda prompt: prompts.append(prompt) or "typed-token\n")
    assert colab.read_ngrok_token() == "typed-token"
    assert "dashboard.ngrok.com" in prompts[0]
    assert colab.read_ngrok_token(ask=False) is None
    monkeypatch.setattr(colab.getpass, "getpass", lambda prompt: "")
    assert colab.read_ngrok_token() is None  # Enter skips: Colab's proxy is used instead


def test_colab_proxy_and_upload(fake_colab, tmp_path):
    assert colab.proxy_url(8000) == "https://8000-abc.colab.dev/"
    assert fake_colab.eval_js == ["google.colab.kernel.proxyPort(8000)"]
    fake_colab.uploads = {"../../labels.zip": b"PK\x05\x06" + bytes(18)}
    saved = colab.upload_files(tmp_path / "uploads")
    assert saved == [tmp_path / "uploads" / "labels.zip"]  # the browser's path is not followed
    assert saved[0].read_bytes().startswith(b"PK")
    assert "Google Colab" in colab.describe_runtime()
    assert "Runtime > Change runtime type" in colab.describe_runtime()  # no GPU here, and how to get one


@pytest.mark.slow
def test_demo_model_is_trained_once(monkeypatch, tmp_path):
    from maskrcnn_finetune.predictor import Predictor

    monkeypatch.setenv(colab.SMOKE_ENV, "1")
    model_dir = colab.demo_model(tmp_path / "demo")
    assert model_dir == tmp_path / "demo" / "model"
    predictor = Predictor.from_dir(model_dir)
    assert predictor.class_names == ["circle", "square", "triangle"]
    assert predictor.info["training"]["max_iter"] == colab.SMOKE_TRAINING["max_iter"]
    weights = (model_dir / "model_final.pth").stat().st_mtime_ns
    assert colab.demo_model(tmp_path / "demo") == model_dir  # a finished model is reused, not retrained
    assert (model_dir / "model_final.pth").stat().st_mtime_ns == weights
