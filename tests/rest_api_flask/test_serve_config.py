"""The server's options in one place (rest_api_flask/config.py): the flags, the checks, the app's config
and the launcher's command line all come from ServeConfig and agree; a threshold left unset is the
model folder's."""

from __future__ import annotations

import io
import json
import shutil
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.model_spec import DEFAULT_SCORE_THRESHOLD
from rest_api_flask import create_app, flask_app
from rest_api_flask.config import (APP_ONLY_DEFAULTS, DEFAULTS, ServeConfig, build_parser, check_config, option_flag,
                                   to_argv)
from rest_api_flask.launcher import server_command

from server_helpers import start_server, stop_server

REST_API = Path(__file__).resolve().parents[2] / "rest_api_flask"

# a value other than the default for every option: parsing their flags must give each of them back
NOT_DEFAULT = {
    "model_dir": "models/m", "weights": "w.pth", "d2_config": "c.yaml", "classes": "a,b", "trust_checkpoint": True,
    "upload_folder": "up", "output_folder": "out", "tunnel": "colab", "ngrok_authtoken": "tok", "device": "cpu",
    "fast": False, "runtime": "openvino", "calibration_images": "calib", "val_json": "val.json", "threshold": 0.25, "remove_colors": True,
    "host": "0.0.0.0", "port": 5123, "debug": True, "auth": "demo:s3cret-pw", "api_key": "k3y",
    "cors_origins": ["https://a.example", "https://b.example"], "max_upload_mb": 3.5, "max_pixels": 1234,
    "retention_minutes": 0.0, "threads": 3, "workers": 2, "micro_batch": 4, "micro_batch_wait_ms": 0.0,
    "worker_start_timeout": 30.0, "worker_fd": 7, "worker_model_dir": "resolved/m", "ready_file": "r.json",
    "max_batch": 2, "legacy_base64_folder": "strings", "legacy_output_scale": 0.7,
}


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


@pytest.fixture
def plain_env(monkeypatch):
    """No HOST, PORT, WORKERS or MRCNN_RUNTIME in the environment (they change the flags' defaults)."""
    for name in ("HOST", "PORT", "WORKERS", "MRCNN_RUNTIME"):
        monkeypatch.delenv(name, raising=False)


def test_every_option_has_a_flag_and_its_flags_give_it_back(plain_env):
    parser = build_parser()
    dests = {action.dest for action in parser._actions}
    assert {f.name for f in fields(ServeConfig)} <= dests
    assert set(NOT_DEFAULT) == {f.name for f in fields(ServeConfig)}  # the table above covers every option
    cfg = ServeConfig(**NOT_DEFAULT)
    assert all(getattr(cfg, f.name) != _default(f) for f in fields(cfg))
    argv = cfg.to_argv()
    assert ServeConfig.from_argv(argv) == cfg
    assert "--no-fast" in argv and argv.count("--cors-origin") == 2 and "--config-file" not in argv
    # the parser's defaults are the fields'
    assert ServeConfig.from_argv([]) == ServeConfig()
    # the short forms and the other spellings set the same options
    short = ServeConfig.from_argv(["--use-ngrok", "--infer-with-cpu", "--config-file", "c.yaml"])
    assert (short.tunnel, short.device, short.d2_config) == ("ngrok", "cpu", "c.yaml")
    assert to_argv({"tunnel": "ngrok", "device": "cpu"}) == ["--use-ngrok", "--infer-with-cpu"]


def test_the_launchers_command_parses_back_to_what_it_was_given(plain_env):
    cmd = server_command("m", "u", "o", port=5001, tunnel="ngrok", infer_with_cpu=True, threshold=0.3,
                         ready_file="o/r.json", extra_args=["--api-key", "k"])
    assert cmd[:4] == [sys.executable, "-u", "-m", "rest_api_flask"]
    cfg = ServeConfig.from_argv(cmd[4:])
    assert cfg == ServeConfig(model_dir="m", upload_folder="u", output_folder="o", host="127.0.0.1", port=5001,
                              tunnel="ngrok", device="cpu", threshold=0.3, ready_file="o/r.json", api_key="k")
    # nothing asked: the server's own defaults, the model folder's threshold among them
    plain = ServeConfig.from_argv(server_command("m", "u", "o")[4:])
    assert plain.threshold is None and plain.device == "auto" and plain.tunnel == "none"


def test_the_environment_sets_the_defaults_of_host_port_and_workers(monkeypatch):
    monkeypatch.setenv("PORT", "6001")
    monkeypatch.setenv("WORKERS", "3")
    monkeypatch.setenv("HOST", "0.0.0.0")
    cfg = ServeConfig.from_argv([])
    assert (cfg.host, cfg.port, cfg.workers) == ("0.0.0.0", 6001, 3)
    # the launcher says where to listen, whatever the child's environment holds
    assert to_argv({"host": "127.0.0.1", "port": 5000}) == ["--host", "127.0.0.1", "--port", "5000"]


def test_the_app_config_is_the_options_keys_and_the_app_only_settings(predictor, tmp_path):
    keys = {f.name: f.metadata["key"] for f in fields(ServeConfig) if "key" in f.metadata}
    assert len(set(keys.values())) == len(keys)  # one option per key
    assert set(DEFAULTS) == set(keys.values()) | set(APP_ONLY_DEFAULTS)
    assert not set(keys.values()) & set(APP_ONLY_DEFAULTS)
    assert DEFAULTS["OUTPUT_FOLDER"] == ServeConfig().output_folder == "outputs/served"
    assert DEFAULTS["MICRO_BATCH_WAIT_MS"] == ServeConfig().micro_batch_wait_ms
    assert DEFAULTS["THRESHOLD"] is None  # the model folder's
    # every key is read by the app (a key nothing reads would be an option that does nothing)
    sources = "\n".join(path.read_text() for path in REST_API.glob("*.py") if path.name != "config.py")
    assert [key for key in DEFAULTS if f'"{key}"' not in sources] == []
    # the options' values reach the app as they are
    cfg = ServeConfig.from_argv(["--model-dir", "m", "--threshold", "0.4", "--max-pixels", "999", "--micro-batch", "2",
                                 "--cors-origin", "https://a.example", "--legacy-output-scale", "0.7"])
    app = create_app({**cfg.app_config(), "MODEL_DIR": None, "PREDICTOR": predictor, "WARMUP": False,
                      "UPLOAD_FOLDER": str(tmp_path / "u"), "OUTPUT_FOLDER": str(tmp_path / "o")})
    for name, key in keys.items():
        if key not in ("MODEL_DIR", "UPLOAD_FOLDER", "OUTPUT_FOLDER"):
            assert app.config[key] == getattr(cfg, name), key
    model = app.test_client().get("/api/v1/model").get_json()
    assert model["default_threshold"] == 0.4 and model["micro_batch"]["max_images"] == 2


def test_check_config_names_every_problem_at_once(model_dir):
    cfg = ServeConfig(model_dir=str(model_dir), threshold=1.5, workers=0, port=70000, auth="nopassword",
                      legacy_output_scale=0.0, micro_batch_wait_ms=-1.0, runtime="tensorrt")
    with pytest.raises(ConfigError) as refused:
        check_config(cfg)
    message = str(refused.value)
    for words in ("--threshold must be between 0 and 1, got 1.5", "--workers must be positive, got 0",
                  "--port must be between 0 and 65535, got 70000", "--auth must be USER:PASSWORD",
                  "--legacy-output-scale must be above 0 and at most 1", "--micro-batch-wait-ms must be 0 or more",
                  "--runtime must be one of torch, openvino"):
        assert words in message, words
    with pytest.raises(ConfigError, match="ngrok's basic auth needs a password of 8 to 128 characters"):
        check_config(ServeConfig(model_dir=str(model_dir), tunnel="ngrok", auth="demo:short"))
    with pytest.raises(ConfigError, match="no model given: pass --model-dir"):
        check_config(ServeConfig())
    with pytest.raises(ConfigError, match="--use-ngrok is --tunnel ngrok, and --tunnel colab was given too"):
        ServeConfig.from_argv(["--tunnel", "colab", "--use-ngrok"])
    with pytest.raises(ConfigError, match="unknown server option 'thresh'"):
        to_argv({"thresh": 0.3})
    assert option_flag("cors_origins") == "--cors-origin" and option_flag("d2_config") == "--d2-config"
    check_config(ServeConfig(model_dir=str(model_dir)))  # the defaults pass


# ---------------------------------------------------------------- the threshold: the model folder's unless given
@pytest.fixture(scope="module")
def model_at_08(model_dir, tmp_path_factory) -> Path:
    """The tiny model folder, its model.json recording a score threshold of 0.8."""
    folder = tmp_path_factory.mktemp("threshold") / "m"
    shutil.copytree(model_dir, folder)
    info = json.loads((folder / "model.json").read_text())
    assert info["score_threshold"] == DEFAULT_SCORE_THRESHOLD != 0.8
    info["score_threshold"] = 0.8
    (folder / "model.json").write_text(json.dumps(info))
    return folder


def _predict(client, sample_png, **form):
    answer = client.post("/api/v1/predict", data={"image": (io.BytesIO(sample_png), "a.png"), **form},
                         content_type="multipart/form-data")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_json()


@pytest.mark.slow
def test_the_served_model_folders_threshold_applies_when_no_threshold_is_given(model_at_08, tmp_path, sample_png):
    import requests

    server = start_server(model_at_08, tmp_path)  # no --threshold
    try:
        model = requests.get(server.url + "/api/v1/model", timeout=30).json()
        assert model["default_threshold"] == 0.8
        answer = requests.post(server.url + "/api/v1/predict", files={"image": ("a.png", sample_png)}, timeout=60)
        assert answer.status_code == 200 and answer.json()["threshold"] == 0.8
        assert all(inst["score"] >= 0.8 for inst in answer.json()["instances"])
        everything = requests.post(server.url + "/api/v1/predict", files={"image": ("a.png", sample_png)},
                                   data={"threshold": "0"}, timeout=60).json()
        assert everything["threshold"] == 0.0 and everything["num_instances"] > answer.json()["num_instances"]
        page = requests.get(server.url + "/", timeout=30).text
        assert 'data-server-default="0.80"' in page  # the slider starts at it
    finally:
        stop_server(server)


def test_threshold_flag_overrides_the_model_folders(model_at_08, sample_png, tmp_path):
    """The server program's path (flags -> ServeConfig -> create_app) with and without --threshold."""
    def app_of(*flags: str):
        cfg = ServeConfig.from_argv(["--model-dir", str(model_at_08), "--upload-folder", str(tmp_path / "u"),
                                     "--output-folder", str(tmp_path / "o"), "--infer-with-cpu", *flags])
        check_config(cfg)
        return flask_app._create_app(cfg, model_at_08, WARMUP=False)

    given = app_of("--threshold", "0.3").test_client()
    assert given.get("/api/v1/model").get_json()["default_threshold"] == 0.3
    answer = _predict(given, sample_png)
    assert answer["threshold"] == 0.3 and all(inst["score"] >= 0.3 for inst in answer["instances"])
    assert b'data-server-default="0.30"' in given.get("/").data

    unset = app_of().test_client()
    assert _predict(unset, sample_png)["threshold"] == 0.8
    # the older kits' routes take it too when a request gives none (their answers hold each instance's score)
    (tmp_path / "u").mkdir(exist_ok=True)
    (tmp_path / "u" / "a.png").write_bytes(sample_png)
    for client, floor in ((unset, 0.8), (given, 0.3)):
        (item,) = client.post("/api/detect-area-by-name", json={"image_names": ["a.png"]}).get_json()["data"]
        scores = [value for box in item["detected_bounding_boxes"] for entry in box
                  for key, value in entry.items() if key.startswith("score_")]
        assert len(scores) == len(item["detected_bounding_boxes"]) and all(score >= floor for score in scores)
    (everything,) = unset.post("/api/detect-area-by-name", json={"image_names": ["a.png"],
                                                                  "threshold_value": 0}).get_json()["data"]
    assert everything["detected_bounding_boxes"]  # the model does find something below 0.8
