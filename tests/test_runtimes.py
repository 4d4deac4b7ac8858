"""The openvino runtime: the backbone compiled by OpenVINO, kept only where it passes the parity gate.

OpenVINO is installed by `make test` (requirements-dev.txt); where it is not, these tests are
skipped with that reason, and the kit runs torch (the last test checks what it says then).
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark_scripts import results_block
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.loading import choose_runtime
from maskrcnn_finetune.predictor import Predictor

from detections import assert_same_detections

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino; make test installs it)")


@pytest.fixture(scope="module")
def images(tiny_coco) -> list[np.ndarray]:
    """The tiny data set's images (the gate's check images here: the tiny model was trained without val)."""
    from maskrcnn_finetune.data.images import load_rgb

    paths = []
    for split in ("val", "train"):
        data = json.loads(Path(tiny_coco[split]).read_text())
        paths += [Path(tiny_coco[split]).parent / image["file_name"] for image in data["images"]]
    return [load_rgb(path) for path in paths[:4]]


def _deprecations(caught) -> list[str]:
    """The deprecation warnings among ``caught`` (torch.jit's are FutureWarnings): the kit's own calls raise none."""
    return [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
            if issubclass(w.category, (DeprecationWarning, FutureWarning)) or "torch.jit" in str(w.message)]


def test_the_compiled_backbone_computes_what_torch_computes(tiny_model_dir):
    from maskrcnn_finetune.modeling.openvino_backbone import compile_backbone
    from maskrcnn_finetune.modeling.programs import ProgramPart, export_program

    model = Predictor.from_dir(tiny_model_dir, fast=False).model
    # OpenVINO converts from torch.export: the module's program made here, or an exported model's own
    program = ProgramPart(export_program(model.backbone, (torch.rand(1, 3, 96, 128),)), model.backbone.out_channels)
    for source in (model.backbone, program):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled = compile_backbone(source)
        assert not _deprecations(caught), _deprecations(caught)  # no torch.jit.trace underneath any more
        assert compiled.out_channels == model.backbone.out_channels
        torch.manual_seed(0)
        for shape in [(1, 3, 64, 96), (2, 3, 96, 64), (1, 3, 128, 160)]:  # any batch and size, one compiled graph
            x = torch.rand(shape)
            with torch.no_grad():
                want = model.backbone(x)
            got = compiled(x)
            assert list(got) == list(want) == ["0", "1", "2", "3", "pool"]
            for name in want:
                assert got[name].shape == want[name].shape
                scale = want[name].abs().max()
                assert float((got[name] - want[name]).abs().max()) <= 1e-4 * float(scale), (shape, name)


def test_an_exported_folder_runs_openvino_at_parity(tiny_model_dir, images, tmp_path):
    """The --runtime openvino path on a .pt2 folder: OpenVINO converts the exported backbone's own program."""
    from maskrcnn_finetune.model_dir import read_model_info
    from maskrcnn_finetune.modeling.openvino_backbone import OpenVINOPart
    from maskrcnn_finetune.modeling.parts import python_settings
    from maskrcnn_finetune.modeling.programs import export_parts, write_pt2

    model = Predictor.from_dir(tiny_model_dir, fast=False).model
    folder = tmp_path / "exported"
    folder.mkdir()
    write_pt2(folder / "model.pt2", export_parts(model), python_settings(model), read_model_info(tiny_model_dir))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor, choice = choose_runtime(folder, "openvino", threshold=0.0, images=images)
    assert not _deprecations(caught), _deprecations(caught)
    assert choice["runtime"] == predictor.runtime == "openvino" and choice["parity_ok"] is True
    assert isinstance(predictor.model.backbone, OpenVINOPart)
    reference = Predictor.from_dir(tiny_model_dir)
    for k, image in enumerate(images):
        want, got = reference(image, threshold=0.0), predictor(image, threshold=0.0)
        assert len(want) > 0
        assert_same_detections(got, want, score_atol=1e-3, box_atol=0.05, what=f"image {k}")


def test_openvino_passes_the_gate_and_answers_as_torch_does(tiny_model_dir, images):
    predictor, choice = choose_runtime(tiny_model_dir, "openvino", threshold=0.0, images=images)
    assert choice["runtime"] == predictor.runtime == "openvino" and choice["parity_ok"] is True
    assert "match" in choice["parity"] and predictor.mode["runtime"] == "openvino"
    assert "OpenVINO" in predictor.describe_mode()
    reference = Predictor.from_dir(tiny_model_dir)
    for k, image in enumerate(images):
        want, got = reference(image, threshold=0.0), predictor(image, threshold=0.0)
        assert len(want) > 0  # threshold 0: every detection of the untrained model, many of them tied
        # as sets: OpenVINO and torch round differently, so tied scores come out in either order
        assert_same_detections(got, want, score_atol=1e-3, box_atol=0.05, what=f"image {k}")


def test_auto_times_both_and_returns_the_one_it_names(tiny_model_dir, images):
    predictor, choice = choose_runtime(tiny_model_dir, "auto", threshold=0.0, images=images)
    assert set(choice["ms_per_image"]) == {"torch", "openvino"} and all(v > 0 for v in choice["ms_per_image"].values())
    assert predictor.runtime == choice["runtime"] == min(choice["ms_per_image"], key=choice["ms_per_image"].get)


def test_a_runtime_that_answers_differently_is_refused(tiny_model_dir, images, monkeypatch):
    """A backbone compiled from other weights (a real OpenVINO graph, wrong numbers) fails the gate: torch is kept."""
    import copy

    from maskrcnn_finetune.modeling import openvino_backbone

    real = openvino_backbone.compile_backbone

    def off_by_a_little(backbone, precision="f32", threads=None):
        other = copy.deepcopy(backbone)
        with torch.no_grad():
            for parameter in other.fpn.parameters():
                parameter.mul_(1.5)
        return real(other, precision, threads)

    monkeypatch.setattr(openvino_backbone, "compile_backbone", off_by_a_little)
    predictor, choice = choose_runtime(tiny_model_dir, "openvino", threshold=0.0, images=images)
    assert predictor.runtime == choice["runtime"] == "torch" and choice["parity_ok"] is False
    assert choice["why"].startswith("OpenVINO failed the parity check")


def test_openvino_runs_only_on_the_cpu_fast_path(tiny_model_dir):
    with pytest.raises(ConfigError, match="fast path only"):
        choose_runtime(tiny_model_dir, "openvino", fast=False)
    predictor, choice = choose_runtime(tiny_model_dir, "auto", fast=False)
    assert predictor.runtime == "torch" and "fast path only" in choice["why"]
    with pytest.raises(ConfigError, match="--runtime must be one of torch, openvino, openvino-int8, auto"):
        choose_runtime(tiny_model_dir, "tensorrt")


def test_the_server_and_batch_prediction_take_runtime_openvino(tiny_model_dir, images, tmp_path):
    import requests

    from maskrcnn_finetune.predict import predict_images
    from rest_api_flask.launcher import start_server

    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for k, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{k}.png")
    summary = predict_images(folder, tmp_path / "out", model_dir=tiny_model_dir, threshold=0.0, device="cpu",
                             formats=["coco"], runtime="openvino", progress=False)
    assert summary["predicted"] == summary["images"] == len(images) and summary["errors"] == 0
    with start_server(tiny_model_dir, tmp_path / "up", tmp_path / "served", infer_with_cpu=True,
                      extra_args=["--runtime", "openvino"], env={"OMP_NUM_THREADS": "1"}, cwd=tmp_path,
                      stop_previous=False) as server:
        model = requests.get(server.url + "/api/v1/model", timeout=10).json()
        assert model["inference"]["runtime"] == "openvino"
        answer = requests.post(server.url + "/api/v1/predict?threshold=0",
                               files={"image": ("0.png", (folder / "0.png").read_bytes())}, timeout=60)
        assert answer.status_code == 200 and answer.json()["num_instances"] > 0


# the quantisation runs in a process of its own (a crash of native code fails this test, not the whole suite), which
# prints each feature map's cosine
INT8_FEATURES = """
import json, sys
import numpy as np, torch
from maskrcnn_finetune.modeling.openvino_backbone import compile_backbone
from maskrcnn_finetune.predictor import Predictor
model = Predictor.from_dir(sys.argv[1], fast=False).model
images = list(np.load(sys.argv[2]).values())
inputs = [model.transform([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0].tensors for image in images]
quantised = compile_backbone(model.backbone, "int8", calibration=[x.numpy() for x in inputs])
rows = []
for x in inputs:
    with torch.no_grad():
        want = model.backbone(x)
    got = quantised(x)
    for name in want:
        cosine = torch.nn.functional.cosine_similarity(got[name].flatten(), want[name].flatten(), dim=0)
        rows.append([name, list(got[name].shape) == list(want[name].shape), float(cosine)])
print(json.dumps(rows))
"""


def test_int8_follows_torch_with_real_calibration(tiny_model_dir, images, tmp_path):
    """The quantised backbone's features; whether int8 is kept is judged by val AP (tests/test_runtime_choice.py)."""
    import subprocess
    import sys

    pytest.importorskip("nncf", reason="NNCF is not installed (pip install nncf; make test installs it)")
    np.savez(tmp_path / "images.npz", *images)  # sizes differ
    run = subprocess.run([sys.executable, "-c", INT8_FEATURES, str(tiny_model_dir), str(tmp_path / "images.npz")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(rows) >= len(images)
    for name, same_shape, cosine in rows:  # int8 values: close to the float features, not equal
        assert same_shape, name
        assert cosine > 0.98, (name, cosine)


# runtimes made and dropped in the order they were made, as auto drops the candidates it did not choose, then a signal
# handled in Python on the main thread (as Ctrl-C, the server's SIGTERM or a DataLoader worker's SIGCHLD are)
SIGNAL_AFTER_RUNTIMES = """
import gc, os, signal, sys, time
import numpy as np
from maskrcnn_finetune.predictor import Predictor
images = list(np.load(sys.argv[2]).values())
first = Predictor.from_dir(sys.argv[1], runtime="openvino")
quantised = Predictor.from_dir(sys.argv[1], runtime="openvino-int8", calibration=images)
second = Predictor.from_dir(sys.argv[1], runtime="openvino")
print(second(images[0], threshold=0.0).scores.shape[0] > 0, flush=True)
for name in ("first", "quantised", "second"):
    del globals()[name]
    gc.collect()
signal.signal(signal.SIGUSR1, lambda *_: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
time.sleep(0.5)
"""


def test_a_signal_after_runtimes_dropped_out_of_order_is_handled(tiny_model_dir, images, tmp_path):
    """OpenVINO's CPU plugin swaps the loading thread's alternate signal stack and unmaps its own when unloaded: with a
    plugin per runtime, dropping them out of order left the main thread's stack unmapped and the next signal killed the
    process (SIGSEGV). The kit's one OpenVINO Core keeps its plugin for the life of the process."""
    import signal
    import subprocess
    import sys

    pytest.importorskip("nncf", reason="NNCF is not installed (pip install nncf; make test installs it)")
    np.savez(tmp_path / "images.npz", *images)
    run = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_RUNTIMES, str(tiny_model_dir), str(tmp_path / "images.npz")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode != -signal.SIGSEGV, "the process died of a segmentation fault: " + run.stderr[-2000:]
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-2:] == ["True", "handled"], run.stdout[-2000:]


def test_int8_without_calibration_images_names_the_flag(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    info = json.loads((folder / "model.json").read_text())
    info["training"]["train_json"] = str(tmp_path / "gone" / "train.json")  # trained elsewhere
    (folder / "model.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="--calibration-images DIR"):
        choose_runtime(folder, "openvino-int8")


def test_the_peer_benchmark_runs_end_to_end(tiny_model, tiny_coco, tmp_path):
    """benchmarks/runtime_peers.py on the tiny model: every path timed, each with its parity against eager."""
    import subprocess
    import sys

    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (make test installs it)")
    tiny_model_dir = tiny_model(val_json=str(tiny_coco["val"]))  # model.json names its val images

    def copy_with_threshold(name: str, threshold: float) -> Path:
        folder = shutil.copytree(tiny_model_dir, tmp_path / name)
        info = json.loads((folder / "model.json").read_text())
        (folder / "model.json").write_text(json.dumps({**info, "score_threshold": threshold}))
        return folder

    # threshold 0: the tiny model's 20 detections per image are all compared; 1.0: none reach it
    everything, nothing = copy_with_threshold("everything", 0.0), copy_with_threshold("nothing", 1.0)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "runtime_peers.py"
    out, results = tmp_path / "peers.json", tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## Other\n\n<!-- results:model-cost -->\nkept\n<!-- /results:model-cost -->\n")
    # the trained case: the folder run at another input size, on its val images scaled with it
    run = subprocess.run([sys.executable, str(script), "--cases", "demo", "trained", "--demo-dir", str(everything),
                          "--trained-dir", str(nothing), "--trained-size", "96", "--trained-images", "1",
                          "--rounds", "2", "--work-dir", str(tmp_path / "work"), "--out", str(out),
                          "--results-md", str(results)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [case["case"] for case in report["cases"]] == ["demo", "trained"]
    assert report["cases"][1]["label"] == "trained mobilenetv2_fpnlite at 96 px"
    for case in report["cases"]:
        rows = {row["path"]: row for row in case["rows"]}
        assert {"eager fp32", "kit (torch)", "kit (openvino)", "kit (openvino int8)", "kit (.pt2)", "onnxruntime",
                "openvino on the onnx"} <= set(rows)
        assert rows["eager fp32"]["parity_ok"] is None
        assert all(len(row["all_ms"]) == 2 and row["median_ms"] > 0 for row in rows.values())
        assert case["floor"]["fp32_ms"] > case["floor"]["bf16_ms"] > 0
    demo, trained = ({row["path"]: row for row in case["rows"]} for case in report["cases"])
    # at the tiny model's size the kit runs exact fp32: a judged match on every detection
    assert demo["eager fp32"]["instances"] == demo["kit (torch)"]["instances"] == 20 * report["cases"][0]["images"]
    assert demo["kit (torch)"]["parity_ok"] is True and "predictions match" in demo["kit (torch)"]["parity"]
    # the exports on the same programs: the .pt2 runs torch's kernels, the ONNX paths round differently but match
    assert demo["kit (.pt2)"]["instances"] == demo["eager fp32"]["instances"] and demo["kit (.pt2)"]["parity_ok"] is True
    assert demo["onnxruntime"]["parity_ok"] is True and demo["openvino on the onnx"]["parity_ok"] is True
    # nothing at the threshold: empty answers agree whatever the runtime, so parity is not claimed
    assert all(row["instances"] == 0 for row in trained.values())
    assert trained["kit (torch)"]["parity_ok"] is None and trained["kit (torch)"]["parity"].startswith("not judged")
    # each case in its own section of the results file, the file's other sections kept
    args = ("--cases demo trained", "--rounds 2")
    demo_table = results_block(results, "runtime-peers-demo", "runtime_peers.py", *args)
    trained_table = results_block(results, "runtime-peers-trained", "runtime_peers.py", *args)
    assert "not judged: no instance" in trained_table and "| match |" not in trained_table
    assert trained_table.startswith("trained mobilenetv2_fpnlite at 96 px: 1 image(s)")
    assert "| path | ms / image | x eager | parity with eager fp32 | val AP vs eager fp32 |" in demo_table
    assert f"| eager fp32 | {demo['eager fp32']['median_ms']:.0f} | 1.00 | - | - |" in demo_table
    # the default path (auto), as a server starts it: its choice, start-up with and without a cached decision, and
    # int8's and its val APs against eager's on the model's own val json (the tiny model's val images)
    val_images = len(json.loads(Path(tiny_coco["val"]).read_text())["images"])
    for case in report["cases"]:
        rows = {row["path"]: row for row in case["rows"]}
        default = rows[case["default"]]
        assert case["default"] == f"default (auto: {case['startup']['choice']['runtime']})"
        assert case["startup"]["cached_runtime"] == case["startup"]["choice"]["runtime"]
        assert set(case["startup"]["seconds"]) == {"torch", "auto, first start", "auto, cached"}
        assert all(s > 0 for s in case["startup"]["seconds"].values())
        assert case["startup"]["choice"]["asked"] == "auto" and case["startup"]["choice"]["why"]
        for path in ("kit (openvino int8)", case["default"]):
            ap = rows[path]["ap"]
            assert ap["images"] == val_images and ap["val_json"] == str(tiny_coco["val"])
            assert 0 <= ap[path]["mask"] <= 1 and 0 <= ap["fp32"]["box"] <= 1
            assert ap["ok"] == all(ap["fp32"][k] - ap[path][k] <= 0.01 + 1e-6 for k in ("mask", "box"))
        assert rows["kit (torch)"]["ap"] is None and default["median_ms"] > 0
    start = report["cases"][0]["startup"]["seconds"]
    assert (f"Default path: {report['cases'][0]['default']}, {demo[report['cases'][0]['default']]['x_eager']:.2f}x "
            f"eager; start-up (load and choose, in the process): torch {start['torch']:.1f} s") in demo_table
    assert re.search(r"\| kit \(openvino int8\) \([^|]*\) \| \d+ \| [\d.]+ \| [^|]+ \| mask \d\.\d{3} vs \d\.\d{3}, "
                     r"box \d\.\d{3} vs \d\.\d{3} \((within|more than) 1 pt\) \|", demo_table), demo_table
    assert "| kit (torch) (" in demo_table and "| match |" in demo_table
    assert results.read_text().startswith("# Results\n\n## Other\n\n<!-- results:model-cost -->\nkept\n"
                                          "<!-- /results:model-cost -->\n\n## ")
    trained = report["cases"][1]
    assert trained["images"] == 1 and min(trained["image_size"]) == 96  # the val image scaled to the size asked
    resized = json.loads((Path(trained["model_dir"]) / "model.json").read_text())["model"]
    own = json.loads((tiny_model_dir / "model.json").read_text())["model"]
    assert resized["min_size"] == 96 and resized["anchor_sizes"] == [round(s * 96 / own["min_size"]) for s in own["anchor_sizes"]]
    assert report["machine"]["fp32_start"] > 0 and report["machine"]["fp32_end"] > 0
