"""The runtime a program gets unless told otherwise (``auto``), its choice cached per model folder and
machine, and int8 judged by the val AP users read.

OpenVINO and NNCF are installed by `make test`; the tests that need them are skipped without them,
with the reason. The first tests hold either way: without OpenVINO the default serves torch and says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maskrcnn_finetune.devices import RUNTIME_ENV, default_runtime
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.runtime_cache import CACHE_ENV, CACHE_FOLDER, CACHE_ROOT_ENV

ROOT = Path(__file__).resolve().parents[1]


def _needs_openvino(int8: bool = False) -> None:
    from maskrcnn_finetune.modeling.openvino_backbone import openvino_missing

    why = openvino_missing(int8)
    if why:
        pytest.skip(why + " (make test installs it)")


@pytest.fixture
def own_model(tiny_model_dir, tmp_path) -> Path:
    """A copy of the tiny model folder: its cache entries are this test's own."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "m"))


@pytest.fixture
def images(tiny_coco) -> list:
    from maskrcnn_finetune.data.images import load_rgb

    data = json.loads(tiny_coco["train"].read_text())
    return [load_rgb(tiny_coco["train"].parent / image["file_name"]) for image in data["images"][:3]]


def test_auto_is_the_default_of_the_server_and_batch_prediction(monkeypatch):
    from maskrcnn_finetune.commands import evaluate, predict
    from rest_api_flask.config import DEFAULTS, ServeConfig

    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    predict_args = ["photos", "--model-dir", "m", "--output-dir", "out"]
    assert default_runtime() == "auto"
    assert ServeConfig.from_argv([]).runtime == DEFAULTS["RUNTIME"] == "auto"
    assert predict.build_parser().parse_args(predict_args).runtime == "auto"
    # evaluation reports the model's own AP unless another runtime is asked for
    assert evaluate.build_parser().parse_args(["--model-dir", "m", "--json", "v.json"]).runtime == "torch"
    monkeypatch.setenv(RUNTIME_ENV, "openvino")
    assert ServeConfig.from_argv([]).runtime == "openvino"
    assert predict.build_parser().parse_args(predict_args).runtime == "openvino"
    monkeypatch.setenv(RUNTIME_ENV, "fastest")
    with pytest.raises(ConfigError, match=f"{RUNTIME_ENV}=fastest is not a runtime; set it to one of torch, "
                                          "openvino, openvino-int8, auto or unset it"):
        default_runtime()


# OpenVINO and NNCF made absent in this process (sys.modules entries of None: find_spec answers None and
# import fails, as on a machine without them): this environment has them installed.
WITHOUT_OPENVINO = """
import json, logging, sys
sys.modules["openvino"] = None
sys.modules["nncf"] = None
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from rest_api_flask import create_app
from maskrcnn_finetune.predict import predict_images
model_dir, images, out = sys.argv[1:4]
app = create_app({"MODEL_DIR": model_dir, "DEVICE": "cpu", "WARMUP": False, "UPLOAD_FOLDER": out + "/up",
                  "OUTPUT_FOLDER": out + "/served"})
model = app.test_client().get("/api/v1/model").get_json()
summary = predict_images(images, out + "/predicted", model_dir=model_dir, device="cpu", formats=["coco"],
                         progress=False)
print(json.dumps({"server": model["inference"], "batch": summary["inference"], "predicted": summary["predicted"]}))
"""


def test_without_openvino_the_default_serves_torch_and_says_why(own_model, tiny_coco, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != RUNTIME_ENV}  # the real default: auto
    run = subprocess.run([sys.executable, "-c", WITHOUT_OPENVINO, str(own_model), str(tiny_coco["val"]),
                          str(tmp_path)], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for inference in (result["server"], result["batch"]):
        assert inference["runtime"] == "torch" and inference["choice"]["asked"] == "auto"
        assert inference["choice"]["why"].startswith("OpenVINO is not installed (pip install openvino")
    assert result["predicted"] == len(json.loads(tiny_coco["val"].read_text())["images"])
    # the log says it too, without a warning (a machine without OpenVINO is an ordinary one)
    assert "runtime torch (asked: auto): OpenVINO is not installed" in run.stderr
    assert "WARNING" not in run.stderr


def test_the_server_chooses_by_default_reports_it_and_caches_it(own_model, images, tmp_path, monkeypatch):
    _needs_openvino()
    from maskrcnn_finetune.predict import predict_images
    from rest_api_flask import create_app

    monkeypatch.setenv(CACHE_ENV, "1")
    monkeypatch.delenv(RUNTIME_ENV, raising=False)

    def served_choice(name: str) -> dict:
        app = create_app({"MODEL_DIR": str(own_model), "DEVICE": "cpu", "WARMUP": False,  # no RUNTIME: the default
                          "UPLOAD_FOLDER": str(tmp_path / name / "up"), "OUTPUT_FOLDER": str(tmp_path / name / "out")})
        inference = app.test_client().get("/api/v1/model").get_json()["inference"]
        assert inference["runtime"] == inference["choice"]["runtime"]
        return inference["choice"]

    first = served_choice("first")
    entry_path = own_model / CACHE_FOLDER / "auto.json"
    assert first["asked"] == "auto" and "cached" not in first and first["decision_s"] > 0
    # timed in turn; the runtime chosen is one of those timed, and torch unless another passed its check
    assert {"torch", "openvino"} <= set(first["ms_per_image"]) and first["runtime"] in first["ms_per_image"]
    assert all(ms > 0 for ms in first["ms_per_image"].values())
    if first["runtime"] != "torch":
        assert first["parity_ok"] is True and first["why"].startswith("the fastest that passes its check")
    # the decision is written with what it was made for
    entry = json.loads(entry_path.read_text())
    assert entry["choice"] == first
    assert entry["key"]["asked"] == "auto" and len(entry["key"]["weights_sha256"]) == 64
    assert entry["key"]["versions"]["openvino"]
    # the next start, the server's or batch prediction's, takes it without deciding again
    second = served_choice("second")
    assert second["cached"]["file"] == str(entry_path) and second["cached"]["decided"] == entry["decided"]
    assert {k: v for k, v in second.items() if k != "cached"} == first
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for k, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{k}.png")
    summary = predict_images(folder, tmp_path / "predicted", model_dir=own_model, device="cpu", formats=["coco"],
                             progress=False)
    assert summary["predicted"] == len(images)
    assert summary["inference"]["runtime"] == first["runtime"]
    assert summary["inference"]["choice"]["cached"]["file"] == str(entry_path)


def test_a_cached_decision_is_made_again_when_what_it_depends_on_changes(own_model, images, tmp_path, monkeypatch,
                                                                         caplog):
    _needs_openvino()
    from maskrcnn_finetune.loading import load_predictor

    monkeypatch.setenv(CACHE_ENV, "1")
    monkeypatch.setenv(CACHE_ROOT_ENV, str(tmp_path / "user_cache"))

    def load(gate_images=images) -> dict:
        return load_predictor(own_model, "openvino", device="cpu", gate_images=gate_images, gate_threshold=0.0).choice

    first = load()
    assert first["runtime"] == "openvino" and first["parity_ok"] is True and "cached" not in first
    entry_path = own_model / CACHE_FOLDER / "openvino.json"
    assert load()["cached"]["file"] == str(entry_path)
    # other check images, another model.json: decided again, and the entry replaced
    caplog.set_level("INFO", logger="maskrcnn_finetune.runtime_cache")
    assert "cached" not in load(gate_images=images[:2])
    assert "was made for another gate_images: ignored, deciding again" in caplog.text
    info = json.loads((own_model / "model.json").read_text())
    (own_model / "model.json").write_text(json.dumps({**info, "score_threshold": 0.3}))
    assert "cached" not in load()
    assert "model_json_sha256" in caplog.text
    assert load()["cached"]["file"] == str(entry_path)
    # turned off: nothing read, nothing written
    entry_path.unlink()
    monkeypatch.setenv(CACHE_ENV, "0")
    assert "cached" not in load() and not entry_path.exists()
    # a model folder that cannot hold the cache: the user's cache folder does
    monkeypatch.setenv(CACHE_ENV, "1")
    shutil.rmtree(own_model / CACHE_FOLDER)
    (own_model / CACHE_FOLDER).write_text("not a folder")
    assert "cached" not in load()
    again = load()["cached"]["file"]
    assert again.startswith(str(tmp_path / "user_cache" / "runtime")) and again.endswith("openvino.json")


def test_a_broken_cache_entry_is_decided_again(own_model, images, monkeypatch, caplog):
    _needs_openvino()
    from maskrcnn_finetune.loading import load_predictor

    monkeypatch.setenv(CACHE_ENV, "1")
    entry_path = own_model / CACHE_FOLDER / "openvino.json"
    entry_path.parent.mkdir()
    entry_path.write_text("{not json")
    predictor = load_predictor(own_model, "openvino", device="cpu", gate_images=images, gate_threshold=0.0)
    assert "cached" not in predictor.choice and predictor.runtime == "openvino"
    assert "cannot be read" in caplog.text
    assert json.loads(entry_path.read_text())["choice"]["runtime"] == "openvino"  # replaced by a good one


DECIDE = """
import json, sys
from maskrcnn_finetune.data.images import load_rgb
from maskrcnn_finetune.loading import load_predictor
images = [load_rgb(path) for path in sys.argv[2:]]
predictor = load_predictor(sys.argv[1], "openvino", device="cpu", gate_images=images, gate_threshold=0.0)
print(json.dumps(predictor.choice))
"""


def test_processes_that_start_together_decide_once(own_model, tiny_coco):
    """As --workers' processes do: one decides, the other waits for its entry and takes it."""
    _needs_openvino()
    data = json.loads(tiny_coco["train"].read_text())
    paths = [str(tiny_coco["train"].parent / image["file_name"]) for image in data["images"][:2]]
    env = {**os.environ, CACHE_ENV: "1", "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "-c", DECIDE, str(own_model), *paths], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    choices = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sorted("cached" in choice for choice in choices) == [False, True]
    assert [choice["runtime"] for choice in choices] == ["openvino", "openvino"]
    assert len(list((own_model / CACHE_FOLDER).glob("*.json"))) == 1


AP_FIGURES = re.compile(r"int8: mask AP (\d\.\d{3}) vs fp32 (\d\.\d{3}), box AP (\d\.\d{3}) vs fp32 (\d\.\d{3}) "
                        r"on (\d+) val images \((each within 0\.01|more than 0\.01 lower)\); instance by instance: ")


@pytest.fixture
def own_val(tiny_model_dir, tiny_coco, tmp_path) -> Path:
    """A val json whose objects are the tiny model's own detections above 0.3 on the tiny data set's training
    images (written by batch prediction): the fp32 model finds them again, so its AP is high, and a runtime
    that moves its masks or boxes loses AP."""
    from maskrcnn_finetune.predict import predict_images

    folder = Path(shutil.copytree(tiny_coco["train"].parent, tmp_path / "coco"))
    out = tmp_path / "own_val"
    predict_images(folder / tiny_coco["train"].name, out, model_dir=tiny_model_dir, threshold=0.3, device="cpu",
                   formats=["coco"], runtime="torch", progress=False)
    val = folder / "own_val.json"
    shutil.copy(out / "coco_dataset.json", val)
    assert json.loads(val.read_text())["annotations"]
    return val


def _evaluate_int8(model_dir, val_json, calibration, out, **env) -> tuple[dict, str, str]:
    """``scripts/evaluate.py --runtime openvino-int8`` in a process of its own (NNCF's quantisation, then a
    DataLoader that forks in the same process, crashed a test session): its metrics, stdout and log."""
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--model-dir", str(model_dir),
                          "--json", str(val_json), "--device", "cpu", "--runtime", "openvino-int8", "--val-json",
                          str(val_json), "--calibration-images", str(calibration), "--output", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, **env})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return json.loads(out.read_text())[Path(val_json).stem], run.stdout, run.stderr


def test_int8_that_costs_ap_is_refused_with_both_figures(own_model, own_val, images, tmp_path):
    """Calibrated on blank images, int8's value ranges are wrong: its APs fall and torch serves, saying both."""
    _needs_openvino(int8=True)
    from PIL import Image

    blank = tmp_path / "blank"
    blank.mkdir()
    for k, image in enumerate(images):
        Image.fromarray(image * 0).save(blank / f"{k}.png")
    metrics, printed, log = _evaluate_int8(own_model, own_val, blank, tmp_path / "metrics.json")
    assert "runtime torch (int8: mask AP" in printed and "more than 0.01 lower" in printed, printed
    mask, fp32_mask, box, fp32_box, count, verdict = AP_FIGURES.search(printed).groups()
    assert max(float(fp32_mask) - float(mask), float(fp32_box) - float(box)) > 0.01
    assert int(count) == len(json.loads(own_val.read_text())["images"])
    # fp32's figures are what scripts/evaluate.py measures for the model torch runs (the one it then evaluated)
    assert float(fp32_mask) == round(metrics["segm"]["AP"], 3) and float(fp32_box) == round(metrics["bbox"]["AP"], 3)
    assert float(fp32_mask) > 0.3 and float(fp32_box) > 0.3  # the val objects are the model's own detections
    assert "int8: mask AP" in log  # the log has the figures too


def test_int8_that_keeps_the_ap_is_kept_and_cached(own_model, tiny_coco, tmp_path):
    """int8 whose APs stay within a point is kept, and the quantised backbone is cached with the decision, so
    the next start neither quantises nor judges again. (The 3-iteration tiny model finds hardly any of the
    data set's real objects, whatever the runtime: its APs on them stay where fp32's are.)"""
    own_val = tiny_coco["train"]
    _needs_openvino(int8=True)
    from maskrcnn_finetune.loading import calibration_images

    calibration = tiny_coco["train"].parent / "images"
    with pytest.raises(ConfigError, match=r"the int8 calibration images cannot be read \('.*coco' holds no images "
                                          r"\(.jpg.*\)\); pass a folder of a few dozen of your images with "
                                          "--calibration-images DIR"):
        calibration_images({}, [tiny_coco["train"].parent])
    first, printed, _ = _evaluate_int8(own_model, own_val, calibration, tmp_path / "first.json",
                                       **{CACHE_ENV: "1"})
    assert "runtime openvino-int8 (asked for, and kept: int8: mask AP" in printed, printed
    mask, fp32_mask, box, fp32_box, _, verdict = AP_FIGURES.search(printed).groups()
    assert verdict == "each within 0.01"
    assert float(fp32_mask) - float(mask) <= 0.01 and float(fp32_box) - float(box) <= 0.01
    assert round(first["segm"]["AP"], 3) == float(mask)  # evaluated on the int8 runtime it kept
    entry = own_model / CACHE_FOLDER / "openvino-int8.json"
    assert json.loads(entry.read_text())["files"] == ["openvino-int8.int8.xml", "openvino-int8.int8.bin"]
    assert (own_model / CACHE_FOLDER / "openvino-int8.int8.bin").stat().st_size > 0
    second, printed, log = _evaluate_int8(own_model, own_val, calibration, tmp_path / "second.json",
                                          **{CACHE_ENV: "1"})
    assert f"(decided before, cached in {entry})" in log and "runtime openvino-int8" in printed
    assert "Statistics collection" not in printed + log  # NNCF's calibration did not run again
    assert second["segm"]["AP"] == first["segm"]["AP"] and second["bbox"]["AP"] == first["bbox"]["AP"]
