"""load_predictor: the one way a program gets a ready model, the one list of runtime names, and its callers.

The runtimes other than torch need OpenVINO (installed by `make test`); where it is not installed
the loader must refuse them with the install line, and these tests check that instead.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import pytest

from maskrcnn_finetune import cli, predictor as predictor_module
from maskrcnn_finetune.devices import RUNTIME_CHOICES, RUNTIMES
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.loading import choose_runtime, load_predictor
from maskrcnn_finetune.modeling.openvino_backbone import openvino_missing
from maskrcnn_finetune.predictor import InferenceOptions, Predictor


@pytest.fixture(scope="module")
def images(tiny_coco):
    from maskrcnn_finetune.data.images import load_rgb

    data = json.loads(tiny_coco["train"].read_text())
    return [load_rgb(tiny_coco["train"].parent / image["file_name"]) for image in data["images"][:3]]


def test_one_list_of_runtime_names():
    parser = argparse.ArgumentParser()
    cli.add_runtime_arguments(parser)
    flag = next(action for action in parser._actions if action.dest == "runtime")
    assert tuple(flag.choices) == RUNTIME_CHOICES == (*RUNTIMES, "auto")
    assert predictor_module.RUNTIMES is RUNTIMES and cli.RUNTIME_CHOICES is RUNTIME_CHOICES
    from maskrcnn_finetune.export.runtime_choice import choose_runtime as old_place
    from rest_api_flask.openapi import openapi_spec

    assert old_place is choose_runtime  # code that imported it from export/ still finds it
    inference = openapi_spec()["components"]["schemas"]["Model"]["properties"]["inference"]["properties"]
    assert inference["runtime"]["enum"] == list(RUNTIMES)


# Each name loaded in a process of its own: after NNCF's int8 quantisation and another OpenVINO
# compilation, a DataLoader that forks workers later in the same process crashed the test session
# (with the code before load_predictor too); a server or a command loads one runtime once.
LOAD_EVERY_RUNTIME = """
import json, sys
from maskrcnn_finetune.data.images import load_rgb
from maskrcnn_finetune.devices import RUNTIME_CHOICES
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.loading import load_predictor
model_dir, val_json, images = sys.argv[1], sys.argv[2], [load_rgb(path) for path in sys.argv[3:]]
loaded = {}
for name in RUNTIME_CHOICES:
    try:
        predictor = load_predictor(model_dir, name, device="cpu", calibration=images, gate_images=images,
                                   val_json=val_json)
    except ConfigError as exc:
        loaded[name] = {"error": str(exc)}
        continue
    loaded[name] = {"choice": predictor.choice, "mode": predictor.mode, "threshold": predictor.score_threshold,
                    "instances": len(predictor(images[0], threshold=0.0))}
print(json.dumps(loaded))
"""


def test_every_runtime_name_is_accepted(tiny_model_dir, tiny_coco):
    data = json.loads(tiny_coco["train"].read_text())
    paths = [str(tiny_coco["train"].parent / image["file_name"]) for image in data["images"][:3]]
    run = subprocess.run([sys.executable, "-c", LOAD_EVERY_RUNTIME, str(tiny_model_dir), str(tiny_coco["val"]), *paths],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert list(loaded) == list(RUNTIME_CHOICES)
    threshold = json.loads((tiny_model_dir / "model.json").read_text())["score_threshold"]
    for name, result in loaded.items():
        if name.startswith("openvino") and openvino_missing(name == "openvino-int8"):
            # refused with the way to install it, never silently served by torch
            assert "pip install" in result["error"], result
            continue
        choice = result["choice"]
        assert choice["asked"] == name and choice["why"], choice
        assert result["mode"]["runtime"] == choice["runtime"] in RUNTIMES
        if name == "auto":  # every runtime timed (int8 too: its val json and calibration images are given)
            assert set(choice["ms_per_image"]) == set(RUNTIMES) and choice["runtime"] in RUNTIMES
        else:
            assert choice["runtime"] in ("torch", name)  # what was asked, or torch saying why not
        if name == "openvino":
            assert choice["parity"] and "parity_ok" in choice  # the gate ran
        if name == "openvino-int8":  # judged by the val APs, both printed
            assert choice["ap"]["fp32"].keys() == choice["ap"]["int8"].keys() == {"mask", "box"} and "ap_ok" in choice
            assert re.search(r"mask AP \d\.\d{3} vs fp32 \d\.\d{3}, box AP \d\.\d{3} vs fp32 \d\.\d{3}", choice["why"])
        assert result["instances"] > 0 and result["threshold"] == threshold


def test_an_unknown_runtime_is_refused_with_the_list(tiny_model_dir):
    with pytest.raises(ConfigError, match="--runtime must be one of torch, openvino, openvino-int8, auto, got 'tensorrt'"):
        load_predictor(tiny_model_dir, "tensorrt")
    # the Predictor runs a runtime; choosing one ("auto") is the loader's
    with pytest.raises(ConfigError, match="runtime must be one of torch, openvino, openvino-int8, got 'auto'.*load_predictor"):
        Predictor.from_dir(tiny_model_dir, runtime="auto")
    with pytest.raises(ConfigError, match="got 'OpenVINO'"):
        InferenceOptions(runtime="OpenVINO")


def test_auto_off_the_fast_path_keeps_torch_and_says_why(tiny_model_dir):
    predictor = load_predictor(tiny_model_dir, "auto", device="cpu", fast=False)
    assert predictor.runtime == predictor.choice["runtime"] == "torch" and not predictor.fast
    assert "fast path only" in predictor.choice["why"] or "not installed" in predictor.choice["why"]
    with pytest.raises(ConfigError, match="use --runtime torch"):
        load_predictor(tiny_model_dir, "openvino", device="cpu", fast=False)


def test_the_server_loads_through_it(tiny_model_dir, tmp_path):
    from rest_api_flask import create_app

    app = create_app({"MODEL_DIR": str(tiny_model_dir), "DEVICE": "cpu", "RUNTIME": "auto", "FAST": False,
                      "UPLOAD_FOLDER": str(tmp_path / "u"), "OUTPUT_FOLDER": str(tmp_path / "o"), "WARMUP": False,
                      "TESTING": True})
    answer = app.test_client().get("/api/v1/model")
    assert answer.status_code == 200
    inference = answer.get_json()["inference"]
    # "auto" is the loader's word (Predictor.from_dir refuses it): the server chose, and says why
    assert inference["runtime"] == inference["choice"]["runtime"] == "torch" and inference["fast"] is False
    assert inference["choice"]["asked"] == "auto" and inference["choice"]["why"]


def test_batch_prediction_loads_through_it(tiny_model_dir, images, tmp_path):
    from PIL import Image

    from maskrcnn_finetune.predict import predict_images

    folder = tmp_path / "images"
    folder.mkdir()
    for k, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{k}.png")
    summary = predict_images(folder, tmp_path / "out", model_dir=tiny_model_dir, threshold=0.0, device="cpu",
                             formats=["coco"], runtime="auto", progress=False)
    assert summary["predicted"] == len(images) and summary["errors"] == 0
    inference = summary["inference"]
    assert inference["choice"]["asked"] == "auto" and inference["runtime"] == inference["choice"]["runtime"]
    assert inference["fast"] is True  # the CPU default
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["inference"] == inference
    with pytest.raises(ConfigError, match="--runtime must be one of"):
        predict_images(folder, tmp_path / "out2", model_dir=tiny_model_dir, runtime="tensorrt", progress=False)


def test_evaluate_loads_through_it(tiny_model_dir, tiny_coco, tmp_path, capsys):
    from maskrcnn_finetune.commands.evaluate import main

    out = tmp_path / "metrics.json"
    assert main(["--model-dir", str(tiny_model_dir), "--json", str(tiny_coco["val"]), "--device", "cpu",
                 "--runtime", "auto", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    # "auto" is the loader's word: the runtime it chose, and why (torch, or OpenVINO, faster, that passed the gate)
    assert re.search(r"evaluated on cpu: fast path.*; runtime (torch \(\d+ ms an image, the fastest that needs no "
                     r"check|openvino \(the fastest that passes its check: \d+ ms an image against torch's \d+ ms)",
                     printed), printed
    assert set(json.loads(out.read_text())[tiny_coco["val"].stem]) >= {"bbox", "segm"}
    with pytest.raises(SystemExit):
        main(["--model-dir", str(tiny_model_dir), "--json", str(tiny_coco["val"]), "--runtime", "tensorrt"])
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err
