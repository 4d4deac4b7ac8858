"""TorchScript export: the file and its report, parity with eager, the loader, and the CLI."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn_finetune.cli import run_cli
from maskrcnn_finetune.export import (
    ExportError,
    ExportParityError,
    check_export,
    check_images,
    export_onnx,
    export_torchscript,
    load_exported_predictor,
    load_torchscript,
    read_export_info,
    script_model,
)
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


@pytest.fixture(scope="module")
def exported(model_dir, same_size_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "exp"
    record = export_torchscript(model_dir, out, images=same_size_images, threshold=THRESHOLD)
    return Path(record["path"]), record


def test_export_writes_the_file_its_report_and_model_json(exported, model_dir, same_size_images):
    path, record = exported
    assert path.name == "model.torchscript.pt" and path.is_file() and path.stat().st_size > 100_000
    assert sorted(p.name for p in path.parent.iterdir()) == ["export.json", "model.json", "model.torchscript.pt"]
    saved = json.loads((path.parent / "export.json").read_text())
    assert saved["source_model_dir"] == str(model_dir.resolve())
    assert saved["torch"] == torch.__version__ and saved["torchvision"].startswith("0.")
    assert saved["threshold"] == THRESHOLD
    assert saved["check_images"] == [f"array {k}" for k in range(len(same_size_images))]
    parity = saved["parity"]
    assert parity["ok"] and parity["matched"] >= 2 and parity["missing"] == 0 and parity["extra"] == 0
    assert parity["min_mask_iou"] == 1.0 and parity["max_score_diff"] < 1e-4
    assert saved["exported_as"] == "torchscript" and saved["file"] == "model.torchscript.pt"
    for run in ("eager", "exported"):
        latency = saved["latency_ms"][run]
        assert latency["median_ms"] > 0 and latency["runs"] == len(saved["check_images"])
    assert (path.parent / "model.json").read_text() == (model_dir / "model.json").read_text()


def test_reloaded_torchscript_predicts_what_eager_predicts(exported, eager, same_size_images):
    path, _ = exported
    # what the adapter is for: the scripted model answers (losses, detections) even in eval mode
    raw = torch.jit.load(str(path))([torch.from_numpy(same_size_images[0]).permute(2, 0, 1).float() / 255])
    assert isinstance(raw, tuple) and raw[0] == {} and sorted(raw[1][0]) == ["boxes", "labels", "masks", "scores"]
    spec, info = read_export_info(path)
    assert spec == eager.spec
    scripted = Predictor(load_torchscript(path), spec, options=InferenceOptions(fast=False))
    via_helper = load_exported_predictor(path, score_threshold=THRESHOLD)
    assert via_helper.score_threshold == THRESHOLD and not via_helper.fast
    total = 0
    for image in same_size_images:
        ref = eager(image, threshold=THRESHOLD)
        for candidate in (scripted(image, threshold=THRESHOLD), via_helper(image)):
            # as sets: the scripted graph may round a tied pair of scores into the other order
            assert_same_detections(candidate, ref, score_atol=1e-5, box_atol=1e-3, mask_iou=1.0)
        total += len(ref)
    assert total >= 2  # the comparison saw real instances


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
    # the kit's export resizes as eager does: the same image passes, and through the CLI too
    assert _resized_sizes(script_model(eager.model), [odd]) == [(57, 96)]
    grid = [np.zeros((h, w, 3), np.uint8) for h in range(40, 101, 3) for w in range(40, 141, 7)]
    assert _resized_sizes(script_model(eager.model), grid) == _resized_sizes(eager.model, grid)
    existing = tmp_path / "existing"
    existing.mkdir()
    np_path = existing / "odd.png"
    Image.fromarray(odd).save(np_path)
    assert run_export_cli("--model-dir", model_dir, "--output", existing, "--images", np_path,
                          "--threshold", THRESHOLD) == 0
    record = json.loads((existing / "export.json").read_text())
    assert record["parity"]["ok"] and record["parity"]["matched"] >= 1 and record["parity"]["min_mask_iou"] >= 0.99
    assert sorted(p.name for p in existing.iterdir()) == ["export.json", "model.json", "model.torchscript.pt", "odd.png"]


@pytest.mark.slow
def test_cli_exports_then_refuses_to_overwrite(model_dir, same_size_images, tmp_path, capsys, caplog):
    out = tmp_path / "cli" / "model.torchscript.pt"
    assert run_export_cli("--model-dir", model_dir, "--output", out) == 0  # default images and threshold
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
    record = json.loads((out.parent / "export.json").read_text())
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
    path, _ = exported
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


def test_unusable_inputs_are_explained(model_dir, exported, tmp_path, capsys):
    assert run_export_cli("--model-dir", model_dir, "--output", tmp_path / "x", "--images", tmp_path / "nope.jpg") == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_export_cli("--model-dir", model_dir, "--output", tmp_path / "x", "--images", empty) == 2
    assert "holds no images" in capsys.readouterr().err
    assert run_export_cli("--model-dir", model_dir, "--output", tmp_path / "x", "--threshold", 1.5) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    lone = tmp_path / "lone.pt"
    shutil.copyfile(exported[0], lone)
    with pytest.raises(ExportError, match="model.json"):
        load_exported_predictor(lone)
    (tmp_path / "model.json").write_text("{")
    with pytest.raises(ExportError, match="damaged"):
        load_exported_predictor(lone)
    junk = tmp_path / "junk" / "model.torchscript.pt"
    junk.parent.mkdir()
    junk.write_bytes(b"not torchscript")
    with pytest.raises(ExportError, match="not a TorchScript file"):
        load_torchscript(junk)


@pytest.mark.slow
def test_onnx_export_predicts_what_eager_predicts(model_dir, eager, same_size_images, tmp_path, capsys):
    out = tmp_path / "onnx"
    record = export_onnx(model_dir, out, images=same_size_images, threshold=THRESHOLD)
    path = Path(record["path"])
    assert path == out / "model.onnx"
    assert sorted(p.name for p in out.iterdir()) == ["export_onnx.json", "model.json", "model.onnx"]
    saved = json.loads((out / "export_onnx.json").read_text())
    assert saved["exported_as"] == "onnx" and saved["onnx"]["opset"] == 17
    assert saved["parity"]["ok"] and saved["parity"]["matched"] >= 2 and saved["parity"]["min_mask_iou"] >= 0.95
    predictor = load_exported_predictor(path, score_threshold=THRESHOLD)
    for image in same_size_images:  # other sizes than the traced one: height and width are dynamic
        ref, got = eager(image, threshold=THRESHOLD), predictor(image)
        assert len(got) == len(ref) > 0 and got.masks.shape == ref.masks.shape
        # ONNX Runtime and torch sum in other orders, so two near-equal scores may swap places:
        # instances are paired by the parity rule, not by position
        report = compare_runs([ref], [got], THRESHOLD, score_tolerance=1e-3)
        assert report.ok and report.matched == len(ref), report.describe()
    assert run_export_cli("--model-dir", model_dir, "--format", "onnx", "--output", out) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_onnx_resizes_as_eager_and_pastes_masks_outside_the_graph(model_dir, eager, tmp_path):
    import onnxruntime

    # the 56x93 image that torchvision's traced resize makes 57x95 (float32 scale); eager makes 57x96
    arrays, _ = check_images(None, eager.spec)
    odd = arrays[1]
    grid = [np.full((h, w, 3), 90, np.uint8) for h, w in ((56, 93), (300, 400), (307, 361), (61, 140))]
    record = export_onnx(model_dir, tmp_path / "onnx", images=[odd, *grid], threshold=THRESHOLD)
    assert record["parity"]["ok"] and record["parity"]["min_mask_iou"] == 1.0 and record["parity"]["max_score_diff"] < 1e-3
    session = onnxruntime.InferenceSession(record["path"], providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["maskrcnn_finetune.masks"] == "mask_head"
    x = torch.from_numpy(odd).permute(2, 0, 1).float().numpy() / 255
    boxes, _, scores, masks = session.run(None, {session.get_inputs()[0].name: x})
    assert masks.shape[1:] == (1, 28, 28) and len(masks) == len(scores) > 0  # the mask head's, unpasted
    predictor = load_exported_predictor(record["path"], score_threshold=THRESHOLD)
    ref, got = eager(odd, threshold=THRESHOLD), predictor(odd)
    assert len(got) == len(ref) > 0 and got.masks.shape == ref.masks.shape == (len(ref), 56, 93)
    report = compare_runs([ref], [got], THRESHOLD, score_tolerance=1e-3)
    assert report.ok and report.min_mask_iou == 1.0, report.describe()


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
    for kind, export in (("torchscript", export_torchscript), ("onnx", export_onnx)):
        record = export(model_dir, tmp_path / kind, images=arrays, threshold=THRESHOLD)  # raises unless at parity
        assert record["parity"]["ok"] and record["parity"]["matched"] > 0, kind
