"""Export: the .pt2 file (torch.export) and its report, parity with eager, the loaders (a fresh process, the
server), ONNX through torch's exporter, TorchScript only when asked, and the CLI."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn_finetune.cli import run_cli
from maskrcnn_finetune.export import (
    TORCHSCRIPT_DEPRECATED,
    ExportError,
    ExportParityError,
    check_export,
    check_images,
    export_onnx,
    export_pt2,
    export_torchscript,
    load_exported,
    load_exported_predictor,
    load_pt2,
    load_torchscript,
    read_export_info,
    script_model,
)
from maskrcnn_finetune.modeling.parts import PARTS
from maskrcnn_finetune.modeling.programs import ProgramPart
from maskrcnn_finetune.parity import compare_runs
from maskrcnn_finetune.predictor import InferenceOptions, Predictor

from detections import assert_same_detections

ROOT = Path(__file__).resolve().parents[1]
# the tiny model's detections score about 0.30 after 3 iterations: a threshold below that
# makes the check compare real instances instead of two empty answers
THRESHOLD = 0.25


def _load_script():
    spec = importlib.util.spec_from_file_location("export_script", ROOT / "scripts" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_script = _load_script()


def run_export_cli(*args) -> int:
    return run_cli(export_script.main, [str(a) for a in args])


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(scope="module")
def eager(model_dir):
    return Predictor.from_dir(model_dir, fast=False)


def _resized_sizes(model, arrays):
    tensors = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays]
    return model.transform(tensors)[0].image_sizes


@pytest.fixture(scope="module")
def same_size_images(eager):
    """The default check images, which the scripted and the eager model resize to the same sizes."""
    arrays, _ = check_images(None, eager.spec)
    assert _resized_sizes(script_model(eager.model), arrays) == _resized_sizes(eager.model, arrays)
    return arrays


def _deprecations(caught) -> list[str]:
    """The deprecation warnings among ``caught`` (torch.jit's are FutureWarnings): the kit's own calls raise none."""
    return [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
            if issubclass(w.category, (DeprecationWarning, FutureWarning)) or "torch.jit" in str(w.message)]


@pytest.fixture(scope="module")
def exported(model_dir, same_size_images, tmp_path_factory):
    """The tiny model exported to .pt2: ``(path, record, the warnings the export raised)``."""
    out = tmp_path_factory.mktemp("export") / "exp"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = export_pt2(model_dir, out, images=same_size_images, threshold=THRESHOLD)
    return Path(record["path"]), record, caught


@pytest.fixture(scope="module")
def scripted(model_dir, same_size_images, tmp_path_factory):
    """The tiny model exported to TorchScript (deprecated, written only when asked): ``(path, record)``."""
    out = tmp_path_factory.mktemp("export") / "ts"
    record = export_torchscript(model_dir, out, images=same_size_images, threshold=THRESHOLD)
    return Path(record["path"]), record


def _odd_images() -> list[np.ndarray]:
    """Sizes that torchvision's scripted or traced resize rounds differently from eager's (56x93: a column less)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((56, 93), (300, 400), (307, 361), (61, 140))]


def test_export_writes_the_file_its_report_and_model_json(exported, model_dir, same_size_images):
    path, record, caught = exported
    assert path.name == "model.pt2" and path.is_file() and path.stat().st_size > 100_000
    assert sorted(p.name for p in path.parent.iterdir()) == ["export_pt2.json", "model.json", "model.pt2"]
    saved = json.loads((path.parent / "export_pt2.json").read_text())
    assert saved["source_model_dir"] == str(model_dir.resolve())
    assert saved["torch"] == torch.__version__ and saved["torchvision"].startswith("0.")
    assert saved["threshold"] == THRESHOLD
    assert saved["check_images"] == [f"array {k}" for k in range(len(same_size_images))]
    parity = saved["parity"]
    assert parity["ok"] and parity["matched"] >= 2 and parity["missing"] == 0 and parity["extra"] == 0
    assert parity["min_mask_iou"] == 1.0 and parity["max_score_diff"] < 1e-4
    assert saved["exported_as"] == "pt2" and saved["file"] == "model.pt2" and saved["parts"] == list(PARTS)
    for run in ("eager", "exported"):
        latency = saved["latency_ms"][run]
        assert latency["median_ms"] > 0 and latency["runs"] == len(saved["check_images"])
    assert (path.parent / "model.json").read_text() == (model_dir / "model.json").read_text()
    # torch.export underneath: exporting, loading back and the check called nothing deprecated
    assert not _deprecations(caught), _deprecations(caught)


def test_the_pt2_model_is_torchvisions_python_around_the_programs(exported, eager, same_size_images):
    from torchvision.models.detection.mask_rcnn import MaskRCNN
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.ops import MultiScaleRoIAlign

    path, _, _ = exported
    model = load_pt2(path)
    assert type(model) is MaskRCNN and all(isinstance(model.get_submodule(name), ProgramPart) for name in PARTS)
    # the data-dependent parts stay torchvision's eager Python: the resize rounds and masks paste as eager's
    assert type(model.transform) is GeneralizedRCNNTransform and type(model.roi_heads.box_roi_pool) is MultiScaleRoIAlign
    spec, info = read_export_info(path)
    assert spec == eager.spec and info["class_names"] == eager.info["class_names"]
    plain = Predictor(model, spec, options=InferenceOptions(fast=False))
    via_helper = load_exported_predictor(path, score_threshold=THRESHOLD)
    folder = Predictor.from_dir(path.parent, score_threshold=THRESHOLD)  # an exported folder is a model folder
    assert not via_helper.fast and folder.fast  # the folder runs on the kit's fast CPU path, as any model folder
    total = 0
    for image in [*same_size_images, *_odd_images()]:
        ref = eager(image, threshold=THRESHOLD)
        for candidate in (plain(image, threshold=THRESHOLD), via_helper(image), folder(image)):
            # as sets: the programs may round a tied pair of scores into the other order
            assert_same_detections(candidate, ref, score_atol=1e-5, box_atol=1e-3, mask_iou=1.0)
        total += len(ref)
    assert total >= 2  # the comparison saw real instances


def test_the_programs_take_any_batch_size_and_number_of_rois(exported, eager):
    """Sizes of 0 and 1 are not fixed by the export: a batch of one, a 64 px image whose coarsest feature map is
    one pixel wide, a single RoI, none."""
    model = load_pt2(exported[0])
    torch.manual_seed(0)
    with torch.no_grad():
        for shape in [(1, 3, 64, 64), (3, 3, 96, 160), (1, 3, 320, 224)]:
            x = torch.rand(shape)
            want, got = eager.model.backbone(x), model.backbone(x)
            assert list(got) == list(want) and got["pool"].shape == want["pool"].shape
            assert all(torch.equal(got[k], want[k]) for k in want), shape
        heads, own = model.roi_heads, eager.model.roi_heads
        for rois in (0, 1, 5):
            x = torch.rand(rois, own.box_head.fc6.in_features // 49, 7, 7)
            assert torch.equal(heads.box_head(x), own.box_head(x))
            logits, deltas = heads.box_predictor(own.box_head(x))
            assert logits.shape == (rois, len(eager.spec.class_names) + 1) and deltas.shape == (rois, 4 * logits.shape[1])
            m = torch.rand(rois, eager.model.backbone.out_channels, 14, 14)
            assert torch.equal(heads.mask_predictor(heads.mask_head(m)), own.mask_predictor(own.mask_head(m)))


FRESH_PROCESS = """
import sys, warnings
import numpy as np
# torch.jit's deprecation warnings are FutureWarnings: as errors, any call of torch.jit would stop this run
warnings.filterwarnings("error", message=r"`torch\\.jit", category=FutureWarning)
from maskrcnn_finetune.predictor import Predictor
predictor = Predictor.from_dir(sys.argv[1], score_threshold=float(sys.argv[2]))
results = {}
for k, path in enumerate(sys.argv[4:]):
    found = predictor(path)
    results.update({f"{k}_boxes": found.boxes, f"{k}_scores": found.scores, f"{k}_class_ids": found.class_ids,
                    f"{k}_masks": found.masks})
np.savez(sys.argv[3], **results)
"""


def test_the_pt2_file_alone_runs_in_a_fresh_process(exported, eager, same_size_images, tmp_path):
    """A folder holding only model.pt2: no weights, no model.json beside it, no model code to rebuild it from."""
    from maskrcnn_finetune.structures import Instances

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(exported[0], alone / "model.pt2")
    paths = []
    for k, image in enumerate(same_size_images):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(image).save(paths[-1])
    out = tmp_path / "found.npz"
    run = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(alone), str(THRESHOLD), str(out), *map(str, paths)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    found = np.load(out)
    total = 0
    for k, image in enumerate(same_size_images):
        ref = eager(image, threshold=THRESHOLD)
        got = Instances(image.shape[:2], found[f"{k}_boxes"], found[f"{k}_scores"], found[f"{k}_class_ids"],
                        found[f"{k}_masks"], eager.class_names)
        assert_same_detections(got, ref, score_atol=1e-5, box_atol=1e-3, mask_iou=1.0, what=f"image {k}")
        total += len(ref)
    assert total >= 2


@pytest.mark.slow
def test_the_server_serves_an_exported_folder(exported, eager, same_size_images, tmp_path):
    import requests

    from rest_api_flask.launcher import start_server

    folder = exported[0].parent
    image = tmp_path / "0.png"
    Image.fromarray(same_size_images[0]).save(image)
    with start_server(folder, tmp_path / "up", tmp_path / "served", infer_with_cpu=True, env={"OMP_NUM_THREADS": "1"},
                      cwd=tmp_path, stop_previous=False) as server:
        model = requests.get(server.url + "/api/v1/model", timeout=10).json()
        assert model["classes"] == eager.class_names and model["inference"]["runtime"] == "torch"
        answer = requests.post(server.url + f"/api/v1/predict?threshold={THRESHOLD}",
                               files={"image": ("0.png", image.read_bytes())}, timeout=60)
    assert answer.status_code == 200, answer.text
    want = eager(same_size_images[0], threshold=THRESHOLD)
    assert answer.json()["num_instances"] == len(want) > 0
    assert_same_detections(answer.json(), want, score_atol=1e-4, box_atol=0.05, mask_iou=0.99)


def test_default_check_images_are_synthetic_and_the_same_every_time(eager):
    arrays, names = check_images(None, eager.spec)
    again, _ = check_images(None, eager.spec)
    assert names == ["synth_00000.jpg", "synth_00001.jpg", "synth_00002.jpg"]
    assert all(np.array_equal(a, b) for a, b in zip(arrays, again))
    # around the model's size: short sides near min_size (64), within the generator's +-25%
    assert all(48 <= min(a.shape[:2]) <= 100 and a.shape[2] == 3 for a in arrays)


def test_a_real_difference_fails_the_export_and_keeps_nothing(model_dir, eager, tmp_path, capsys):
    # a genuine eager/TorchScript difference: torchvision's transform, scripted as it is, computes the
    # resize scale in float32, so this 56x93 image is resized to 57x95 instead of eager's 57x96, and
    # the tiny model's thin edge detections move enough to drop below mask IoU 0.95
    arrays, _ = check_images(None, eager.spec)
    odd = arrays[1]
    assert odd.shape[:2] == (56, 93)
    assert _resized_sizes(eager.model, [odd]) == [(57, 96)]
    assert _resized_sizes(script_model(eager.model, eager_resize=False), [odd]) == [(57, 95)]
    out = tmp_path / "fails"
    with pytest.raises(ExportParityError, match="must not be used") as info:
        export_torchscript(model_dir, out, images=[odd], threshold=THRESHOLD, eager_resize=False)
    assert not info.value.report.ok and info.value.report.min_mask_iou < 0.95
    assert "IoU" in str(info.value) and "not kept" in str(info.value)
    assert not out.exists()  # the folder it created is gone with the file
    # the kit's TorchScript resizes as eager does; the .pt2 runs eager's own resize
    assert _resized_sizes(script_model(eager.model), [odd]) == [(57, 96)]
    grid = [np.zeros((h, w, 3), np.uint8) for h in range(40, 101, 3) for w in range(40, 141, 7)]
    assert _resized_sizes(script_model(eager.model), grid) == _resized_sizes(eager.model, grid)
    existing = tmp_path / "existing"
    existing.mkdir()
    np_path = existing / "odd.png"
    Image.fromarray(odd).save(np_path)
    assert run_export_cli("--model-dir", model_dir, "--output", existing, "--images", np_path,
                          "--threshold", THRESHOLD) == 0
    record = json.loads((existing / "export_pt2.json").read_text())
    assert record["parity"]["ok"] and record["parity"]["matched"] >= 1 and record["parity"]["min_mask_iou"] == 1.0
    assert sorted(p.name for p in existing.iterdir()) == ["export_pt2.json", "model.json", "model.pt2", "odd.png"]
    assert _resized_sizes(load_pt2(existing / "model.pt2"), grid) == _resized_sizes(eager.model, grid)
    assert f"--model-dir {existing}" in capsys.readouterr().out  # the CLI says the folder can be served


@pytest.mark.slow
def test_cli_exports_then_refuses_to_overwrite(model_dir, same_size_images, tmp_path, capsys, caplog):
    out = tmp_path / "cli" / "model.pt2"
    assert run_export_cli("--model-dir", model_dir, "--output", out) == 0  # default format, images and threshold
    printed = capsys.readouterr().out
    assert "parity ok at threshold 0.50 on 3 images" in printed and f"exported to {out}" in printed
    # the tiny model scores about 0.30: at its threshold 0.5 the check compares empty answers, and says so
    assert "0 instances matched" in printed and "compared empty answers" in caplog.text
    first = out.stat().st_mtime_ns
    assert run_export_cli("--model-dir", model_dir, "--output", out) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "nothing was overwritten" in err
    assert out.stat().st_mtime_ns == first
    image = tmp_path / "one.png"
    Image.fromarray(same_size_images[0]).save(image)
    assert run_export_cli("--model-dir", model_dir, "--output", out, "--overwrite", "--images", image,
                          "--threshold", THRESHOLD) == 0
    assert out.stat().st_mtime_ns != first
    record = json.loads((out.parent / "export_pt2.json").read_text())
    assert record["parity"]["ok"] and record["parity"]["matched"] >= 1 and record["check_images"] == ["one.png"]


def test_detectron2_folder_is_refused(model_dir, tmp_path, capsys):
    d2 = tmp_path / "d2"
    shutil.copytree(model_dir, d2)
    info = json.loads((d2 / "model.json").read_text())
    info["engine"] = "detectron2"
    (d2 / "model.json").write_text(json.dumps(info))
    assert run_export_cli("--model-dir", d2) == 2
    err = capsys.readouterr().err
    assert "detectron2 model" in err and "torchvision engine" in err and "detectron2.export" in err
    assert not (d2 / "exported").exists()


@pytest.mark.slow
def test_check_against_changed_weights_fails(exported, model_dir, same_size_images, tmp_path, capsys):
    path = exported[0]
    changed = tmp_path / "changed"
    shutil.copytree(model_dir, changed)
    state = torch.load(changed / "model_final.pth", weights_only=True)
    state["roi_heads.box_predictor.cls_score.bias"][0] += 4.0  # the background logit: every score drops
    torch.save(state, changed / "model_final.pth")
    with pytest.raises(ExportParityError, match="an extra triangle") as info:
        # the changed folder is the reference now: the export's instances are ones it lacks
        check_export(path, changed, images=same_size_images, threshold=THRESHOLD)
    assert info.value.report.extra >= 2 and info.value.report.matched == 0
    image = tmp_path / "check.png"
    Image.fromarray(same_size_images[0]).save(image)
    assert run_export_cli("--model-dir", changed, "--check", path, "--images", image, "--threshold", THRESHOLD) == 1
    err = capsys.readouterr().err
    assert "parity FAILED" in err and "must not be used" in err and "extra" in err
    assert path.is_file()  # --check writes and removes nothing: the file may be right for another folder


def test_unusable_inputs_are_explained(model_dir, exported, scripted, tmp_path, capsys):
    assert run_export_cli("--model-dir", model_dir, "--output", tmp_path / "x", "--images", tmp_path / "nope.jpg") == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_export_cli("--model-dir", model_dir, "--output", tmp_path / "x", "--images", empty) == 2
    assert "holds no images" in capsys.readouterr().err
    assert run_export_cli("--model-dir", model_dir, "--output", tmp_path / "x", "--threshold", 1.5) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # a .pt2 carries its model.json: alone, it still says what it is
    lone = tmp_path / "lone" / "model.pt2"
    lone.parent.mkdir()
    shutil.copyfile(exported[0], lone)
    assert read_export_info(lone)[1]["class_names"] == json.loads((model_dir / "model.json").read_text())["class_names"]
    (lone.parent / "model.json").write_text("{")  # a damaged copy beside it is reported, not skipped
    with pytest.raises(ExportError, match="damaged"):
        load_exported_predictor(lone)
    # a TorchScript file does not: alone, it needs the model folder's model.json
    lone_ts = tmp_path / "lone.pt"
    shutil.copyfile(scripted[0], lone_ts)
    with pytest.raises(ExportError, match="model.json"):
        load_exported_predictor(lone_ts)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "model.torchscript.pt").write_bytes(b"not torchscript")
    with pytest.raises(ExportError, match="not a TorchScript file"):
        load_torchscript(junk / "model.torchscript.pt")
    (junk / "model.pt2").write_bytes(b"not an archive")
    with pytest.raises(ExportError, match="not a model exported by this kit.*export the model folder again"):
        load_pt2(junk / "model.pt2")
    with pytest.raises(ExportError, match="not a model exported by this kit"):
        Predictor.from_dir(junk)  # a folder of a .pt2 and no weights is an exported folder: its file is checked
    shutil.copyfile(model_dir / "model_final.pth", junk / "other.pt2")  # a torch zip, but no program archive
    with pytest.raises(ExportError, match="not a model exported by this kit"):
        load_pt2(junk / "other.pt2")


def test_torchscript_is_written_only_when_asked_and_old_files_load_with_a_note(scripted, eager, same_size_images,
                                                                                model_dir, tmp_path, caplog, capsys):
    path, record = scripted
    assert path.name == "model.torchscript.pt" and record["exported_as"] == "torchscript" and record["parity"]["ok"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["export.json", "model.json", "model.torchscript.pt"]
    # what the adapter is for: the scripted model answers (losses, detections) even in eval mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # this test's own call of torch.jit: the kit's calls are checked below
        raw = torch.jit.load(str(path))([torch.from_numpy(same_size_images[0]).permute(2, 0, 1).float() / 255])
    assert isinstance(raw, tuple) and raw[0] == {} and sorted(raw[1][0]) == ["boxes", "labels", "masks", "scores"]
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        old = Predictor(load_torchscript(path), eager.spec, options=InferenceOptions(fast=False))
        via_helper = load_exported_predictor(path, score_threshold=THRESHOLD)
    # torch's deprecation warnings give way to the kit's note, which says how to re-export
    assert not _deprecations(caught), _deprecations(caught)
    assert caplog.text.count(TORCHSCRIPT_DEPRECATED) == 2 and "scripts/export.py --model-dir" in TORCHSCRIPT_DEPRECATED
    total = 0
    for image in same_size_images:
        ref = eager(image, threshold=THRESHOLD)
        for candidate in (old(image, threshold=THRESHOLD), via_helper(image)):
            assert_same_detections(candidate, ref, score_atol=1e-5, box_atol=1e-3, mask_iou=1.0)
        total += len(ref)
    assert total >= 2
    # asked for on the command line: written, with the deprecation said where the user reads it
    image = tmp_path / "one.png"
    Image.fromarray(same_size_images[0]).save(image)
    assert run_export_cli("--model-dir", model_dir, "--format", "torchscript", "--output", tmp_path / "ts",
                          "--images", image, "--threshold", THRESHOLD) == 0
    assert "TorchScript is deprecated by torch" in capsys.readouterr().err
    assert (tmp_path / "ts" / "model.torchscript.pt").is_file()


@pytest.mark.slow
def test_onnx_export_predicts_what_eager_predicts(model_dir, eager, same_size_images, tmp_path, capsys):
    import onnx

    from maskrcnn_finetune.export.runtimes import OnnxPart

    out = tmp_path / "onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = export_onnx(model_dir, out, images=[*same_size_images, *_odd_images()], threshold=THRESHOLD)
        predictor = load_exported_predictor(record["path"], score_threshold=THRESHOLD)
    assert not _deprecations(caught), _deprecations(caught)  # torch's exporter on torch.export, not the tracer
    path = Path(record["path"])
    assert path == out / "model.onnx"
    assert sorted(p.name for p in out.iterdir()) == ["export_onnx.json", "model.json", "model.onnx"]
    saved = json.loads((out / "export_onnx.json").read_text())
    assert saved["exported_as"] == "onnx" and saved["onnx"]["opset"] == 18 and saved["parts"] == list(PARTS)
    assert saved["parity"]["ok"] and saved["parity"]["matched"] >= 2 and saved["parity"]["min_mask_iou"] >= 0.95
    # one file, a graph per part; ONNX Runtime runs each, the Python between them is torchvision's
    graph = onnx.load(str(path)).graph
    assert {i.name.split("/")[0] for i in graph.input} == {name.replace(".", "_") for name in PARTS}
    assert all(isinstance(predictor.model.get_submodule(name), OnnxPart) for name in PARTS)
    for image in [*same_size_images, *_odd_images()]:  # other sizes than the examples': every size is dynamic
        ref, got = eager(image, threshold=THRESHOLD), predictor(image)
        assert got.masks.shape == ref.masks.shape
        # ONNX Runtime and torch sum in other orders, so two near-equal scores may swap places: as sets
        assert_same_detections(got, ref, score_atol=1e-3, box_atol=0.05, mask_iou=0.99)
    assert run_export_cli("--model-dir", model_dir, "--format", "onnx", "--output", out) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_part_whose_graph_leaves_an_input_unused_runs_in_openvino():
    """A part's ONNX graph may take a tensor it does not use (a feature level no head reads: the demo model's RPN
    head). ONNX Runtime keeps such an input, OpenVINO drops it: the part feeds its tensors by name."""
    import onnx
    from onnx import TensorProto, helper

    from benchmark_scripts import load_benchmark
    from maskrcnn_finetune.export.runtimes import OnnxPart

    pytest.importorskip("openvino", reason="OpenVINO is not installed (make test installs it)")
    x = [helper.make_tensor_value_info(f"head/x_{k}", TensorProto.FLOAT, [1, 2, "h", "w"]) for k in range(2)]
    y = helper.make_tensor_value_info("head/y", TensorProto.FLOAT, [1, 2, "h", "w"])
    graph = helper.make_graph([helper.make_node("Relu", ["head/x_1"], ["head/y"])], "head", x, [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    session = load_benchmark("runtime_peers").OpenVINOSession(model.SerializeToString())
    assert [i.name for i in session.get_inputs()] == ["head/x_1"]  # OpenVINO dropped the unused input
    part = OnnxPart(session, "tensor", inputs=["head/x_0", "head/x_1"])
    first, second = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    assert torch.equal(part(first, second), second.clamp(min=0))
    with pytest.raises(ValueError, match="the ONNX part takes 2 tensors, got 1"):
        part(second)


@pytest.mark.slow
def test_an_onnx_file_of_earlier_versions_still_loads(model_dir, eager, same_size_images, tmp_path):
    """One traced graph of the whole model, as the kit wrote before torch.export (made here with torch's
    TorchScript-based exporter, as it was then): ONNX Runtime runs it as it did."""
    model = eager.model.eval()
    legacy = tmp_path / "model.onnx"
    image = torch.from_numpy(same_size_images[0]).permute(2, 0, 1).float() / 255
    instances = {0: "instances"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # this test's own call of the deprecated tracer
        torch.onnx.export(model, ([image],), str(legacy), opset_version=17, dynamo=False, input_names=["image"],
                          output_names=["boxes", "labels", "scores", "masks"],
                          dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": instances, "labels": instances,
                                        "scores": instances, "masks": instances})
    shutil.copyfile(model_dir / "model.json", tmp_path / "model.json")
    module = load_exported(legacy)
    assert type(module).__name__ == "OnnxMaskRCNN"
    predictor = load_exported_predictor(legacy, score_threshold=THRESHOLD)
    total = 0
    for array in same_size_images:
        ref = eager(array, threshold=THRESHOLD)
        assert_same_detections(predictor(array), ref, score_atol=1e-3, box_atol=0.05, mask_iou=0.99)
        total += len(ref)
    assert total >= 2


def test_default_check_images_are_the_models_val_images_when_they_are_here(eager, tiny_coco, tmp_path):
    val = json.loads(Path(tiny_coco["val"]).read_text())
    info = {**eager.info, "training": {"val_json": str(tiny_coco["val"])}}
    arrays, names = check_images(None, eager.spec, info)
    assert names == [image["file_name"].split("/")[-1] for image in val["images"][:12]]
    assert all(a.shape[:2] == (image["height"], image["width"]) for a, image in zip(arrays, val["images"]))
    # a val json that is not here (another machine's path): the synthetic images, as without one
    gone = {**eager.info, "training": {"val_json": str(tmp_path / "elsewhere" / "val.json")}}
    assert check_images(None, eager.spec, gone)[1] == ["synth_00000.jpg", "synth_00001.jpg", "synth_00002.jpg"]


def test_the_demo_architecture_runs_fast_and_exports_at_parity(tiny_model, tmp_path):
    """The RPN without P2 (the demo preset's) and BatchNorm in the FPN (an option) on the fast path and exported."""
    model_dir = tiny_model(rpn_levels=4, fpn_norm="bn")
    spec = json.loads((model_dir / "model.json").read_text())["model"]
    assert spec["rpn_levels"] == 4 and len(spec["anchor_sizes"]) == 4 and spec["fpn_norm"] == "bn"
    eager = Predictor.from_dir(model_dir, fast=False)
    arrays, _ = check_images(None, eager.spec)
    fast = Predictor.from_dir(model_dir, device="cpu")
    ref = eager(arrays, threshold=THRESHOLD)
    assert sum(len(r) for r in ref) > 0
    report = compare_runs(ref, fast(arrays, threshold=THRESHOLD), THRESHOLD, score_tolerance=1e-3)
    assert report.ok and report.matched == sum(len(r) for r in ref), report.describe()
    for kind, export in (("pt2", export_pt2), ("onnx", export_onnx)):
        record = export(model_dir, tmp_path / kind, images=arrays, threshold=THRESHOLD)  # raises unless at parity
        assert record["parity"]["ok"] and record["parity"]["matched"] > 0, kind
