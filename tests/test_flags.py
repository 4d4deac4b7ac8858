"""One spelling per idea across the commands: ``--threshold``, ``--device``, ``--output-dir`` (and
``--output`` for a single file), ``--no-...`` for every switch a preset turns on; the older spellings
still work and stay out of ``--help``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil

import pytest
import torch

from maskrcnn_finetune.commands import (compare_backbones, evaluate, export, import_detectron2, labelme_to_coco,
                                        predict, train)
from maskrcnn_finetune.config import PRESETS, TrainConfig, option_flag, resolve_config
from maskrcnn_finetune.devices import resolve_device
from maskrcnn_finetune.errors import ConfigError
from rest_api_flask import flask_app
from rest_api_flask.config import ServeConfig, check_config
from training_options import TINY_MODEL

REQUIRED = {  # the least each command's parser takes
    "train": (train, []),
    "compare_backbones": (compare_backbones, []),
    "evaluate": (evaluate, ["--model-dir", "m", "--json", "v.json"]),
    "predict": (predict, ["in", "--model-dir", "m", "--output-dir", "o"]),
    "export": (export, ["--model-dir", "m"]),
    "import_detectron2": (import_detectron2, ["--weights", "w.pth", "--config", "c.yaml", "--classes", "a",
                                              "--output-dir", "o"]),
    "labelme_to_coco": (labelme_to_coco, ["src", "out"]),
    "server": (flask_app, ["--model-dir", "m"]),
}
RUNS_A_MODEL = ("train", "compare_backbones", "evaluate", "predict", "server")


def _parse(command: str, *extra: str) -> argparse.Namespace:
    module, required = REQUIRED[command]
    return module.build_parser().parse_args([*required, *extra])


def _shown(command: str) -> set[str]:
    """The flags ``--help`` lists (older spellings are hidden)."""
    parser = REQUIRED[command][0].build_parser()
    return {flag for action in parser._actions if action.help != argparse.SUPPRESS for flag in action.option_strings}


def _config(*flags: str) -> TrainConfig:
    """The config scripts/train.py resolves from these flags."""
    args = vars(_parse("train", "--train-json", "t.json", "--output-dir", "o", *flags))
    return resolve_config(args.pop("preset"), **args)


def _refused(command: str, capsys, *extra: str) -> str:
    with pytest.raises(SystemExit) as stop:
        _parse(command, *extra)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_the_help_of_every_command_shows_one_spelling_per_idea():
    for command in REQUIRED:
        assert not _shown(command) & {"--score-threshold", "--out"}, command
        if command in RUNS_A_MODEL:
            assert "--device {auto,cpu,cuda,cuda:N}" in REQUIRED[command][0].build_parser().format_help(), command
    for command in ("train", "compare_backbones", "predict", "export", "import_detectron2"):
        assert "--threshold" in _shown(command), command
    for command in ("train", "compare_backbones", "predict", "import_detectron2"):  # they write a folder
        assert "--output-dir" in _shown(command) and "--output" not in _shown(command), command
    for command in ("evaluate", "export"):  # they write one file (export: a file, or a folder to put it in)
        assert "--output" in _shown(command) and "--output-dir" not in _shown(command), command
    for command in ("labelme_to_coco", "server"):
        assert not _shown(command) & {"--output", "--out"}, command


def test_the_older_spellings_still_work_and_two_at_once_are_refused(capsys):
    assert _parse("train", "--score-threshold", "0.3").score_threshold == 0.3
    assert _parse("train", "--threshold", "0.3").score_threshold == 0.3
    assert _parse("compare_backbones", "--score-threshold", "0.2").score_threshold == 0.2
    assert _parse("import_detectron2", "--score-threshold", "0.3").threshold == 0.3
    assert _parse("import_detectron2").threshold == 0.5
    module, _ = REQUIRED["predict"]
    assert module.build_parser().parse_args(["in", "--model-dir", "m", "--output", "old"]).output_dir == "old"
    assert str(_parse("evaluate", "--out", "m.json").output) == "m.json"
    assert str(_parse("evaluate", "--output", "m.json").output) == "m.json"
    server = _parse("server", "--infer-with-cpu")
    assert ServeConfig.from_args(server).app_config()["DEVICE"] == "cpu"
    assert "not allowed with argument" in _refused("train", capsys, "--threshold", "0.3", "--score-threshold", "0.4")
    assert "not allowed with argument" in _refused("evaluate", capsys, "--out", "a.json", "--output", "b.json")
    with pytest.raises(SystemExit):
        module.build_parser().parse_args(["in", "--model-dir", "m"])
    assert "--output-dir is required" in capsys.readouterr().err


def test_the_threshold_of_a_run_is_its_field_under_its_flag_name(tmp_path):
    """config.json files keep the field's name: a folder written before the flag's rename reads back."""
    assert option_flag("score_threshold") == "--threshold" and option_flag("max_iter") == "--max-iter"
    cfg = _config("--max-iter", "1", "--threshold", "0.3")
    assert cfg.score_threshold == 0.3 and cfg.to_dict()["score_threshold"] == 0.3
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="--threshold must be between 0 and 1, got 1.5"):
        resolve_config(None, train_json="t.json", output_dir="o", max_iter=1, score_threshold=1.5)


@pytest.mark.parametrize("command", RUNS_A_MODEL)
def test_device_takes_the_same_forms_on_every_command(command, capsys, monkeypatch):
    assert _parse(command).device in ("auto", None)  # train's None: the preset or the config decides
    assert _parse(command, "--device", "CPU").device == "cpu"
    error = _refused(command, capsys, "--device", "gpu")
    assert "unknown device 'gpu'; use one of auto, cpu, cuda, cuda:N" in error
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    error = _refused(command, capsys, "--device", "cuda")
    assert "--device cuda asks for a GPU but none is visible; use --device cpu" in error
    # as on a machine with two GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _parse(command, "--device", "cuda:1").device == "cuda:1"
    assert "has 2 GPU(s), cuda:0 to cuda:1" in _refused(command, capsys, "--device", "cuda:2")


def test_one_resolver_turns_every_form_into_a_torch_device(monkeypatch):
    from maskrcnn_finetune import predictor

    assert predictor.resolve_device is resolve_device  # the Predictor, the engines and the flags share it
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device cuda:0 asks for a GPU but none is visible; use --device cpu"):
        resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="unknown device 'cuda1'"):
        resolve_device("cuda1")


def test_the_training_config_takes_a_gpu_by_its_number():
    cfg = resolve_config(None, train_json="t.json", output_dir="o", max_iter=1, device="cuda:1")
    assert cfg.device == "cuda:1" and TrainConfig.from_dict(cfg.to_dict()).device == "cuda:1"
    with pytest.raises(ConfigError, match="unknown device 'tpu'; use one of auto, cpu, cuda, cuda:N"):
        resolve_config(None, train_json="t.json", output_dir="o", max_iter=1, device="tpu")


def test_the_server_takes_device_and_keeps_infer_with_cpu_as_its_short_form(tiny_model_dir):
    def served(*flags: str) -> ServeConfig:
        return ServeConfig.from_args(_parse("server", *flags))

    assert served().app_config()["DEVICE"] == "auto"
    assert served("--device", "cpu").app_config()["DEVICE"] == "cpu"
    both = _parse("server", "--device", "cpu", "--infer-with-cpu")
    check_config(ServeConfig.from_args(argparse.Namespace(**{**vars(both), "model_dir": str(tiny_model_dir)})))
    clash = argparse.Namespace(**{**vars(both), "device": "cuda", "model_dir": str(tiny_model_dir)})
    with pytest.raises(ConfigError, match="--infer-with-cpu is --device cpu, and --device cuda was given too"):
        ServeConfig.from_args(clash)
    app = flask_app._create_app(served("--device", "cpu"), tiny_model_dir, WARMUP=False)
    assert app.extensions["inference"].predictor.device == torch.device("cpu")


def test_every_switch_of_the_training_config_can_be_turned_off():
    switches = [f.name for f in dataclasses.fields(TrainConfig) if isinstance(f.default, bool)]
    assert "choose_test_size" in switches and "resume" in switches
    for name in switches:
        assert getattr(_parse("train", option_flag(name)), name) is True
        assert getattr(_parse("train", "--no-" + option_flag(name)[2:]), name) is False
        assert getattr(_parse("train"), name) is None  # not given: the preset or the config's default
    assert PRESETS["demo"]["choose_test_size"] is True
    cfg = _config("--preset", "demo", "--no-choose-test-size")
    assert cfg.choose_test_size is False and cfg.backbone == PRESETS["demo"]["backbone"]
    assert _config("--preset", "demo").choose_test_size is True


def _tiny_flags() -> list[str]:
    flags = []
    for key, value in {**TINY_MODEL, "max_iter": 1, "detections_per_image": 20}.items():
        values = value if isinstance(value, list) else [value]
        if values:
            flags += [option_flag(key), *map(str, values)]
    return flags


def test_a_trained_threshold_is_the_default_of_predict(tiny_coco, tmp_path):
    """scripts/train.py --threshold is what the model folder keeps; predict uses it when no --threshold
    is given (export's check too: tests/test_export.py), and predict's --output-dir takes its older
    spelling --output."""
    out = tmp_path / "model"
    assert train.main(["--train-json", str(tiny_coco["train"]), "--output-dir", str(out), "--backbone",
                       "mobilenetv2_fpnlite", "--threshold", "0.07", "--no-choose-test-size", *_tiny_flags()]) == 0
    info = json.loads((out / "model.json").read_text())
    assert info["score_threshold"] == 0.07 and info["training"]["score_threshold"] == 0.07
    assert info["training"]["choose_test_size"] is False
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((tiny_coco["val"].parent / "images").rglob("*.jpg"))[:2]:
        shutil.copy(path, images / path.name)
    assert predict.main([str(images), "--model-dir", str(out), "--output-dir", str(tmp_path / "p"), "--device", "cpu",
                         "--formats", "coco"]) == 0
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["threshold"] == 0.07
    assert predict.main([str(images), "--model-dir", str(out), "--output", str(tmp_path / "q"), "--device", "cpu",
                         "--formats", "coco", "--threshold", "0.2"]) == 0
    assert json.loads((tmp_path / "q" / "summary.json").read_text())["threshold"] == 0.2
