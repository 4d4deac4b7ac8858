"""The detectron2 engine: training to the same model folder, reloading, prediction, evaluation,
resume, importing detectron2's own checkpoints, the install script, and the message without detectron2."""

from __future__ import annotations

import argparse
import json
import runpy
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn_finetune.config import resolve_config
from maskrcnn_finetune.engines import train
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.evaluate import evaluate_predictor
from maskrcnn_finetune.model_dir import ModelDirError
from maskrcnn_finetune.modeling.backbones import BACKBONES, Backbone
from maskrcnn_finetune.errors import CheckpointError
from maskrcnn_finetune.modeling.detectron2.importing import import_checkpoint
from maskrcnn_finetune.modeling.detectron2.inference import from_detectron2
from maskrcnn_finetune.modeling.maskrcnn import WeightsUnavailableError
from maskrcnn_finetune.predictor import Predictor

from detections import assert_same_detections
from training_options import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]
D2_TINY = {**TINY_MODEL, "engine": "detectron2", "detections_per_image": 20}


def _script(name: str):
    """A script's ``main``, loaded without running it (in-process: no second torch import)."""
    return runpy.run_path(str(ROOT / "scripts" / name), run_name="script_under_test")["main"]


def _val_image(tiny_coco) -> Path:
    data = json.loads(tiny_coco["val"].read_text())
    return tiny_coco["val"].parent / data["images"][0]["file_name"]


def _flags(options: dict) -> list[str]:
    """Command-line flags of scripts/train.py for training options."""
    flags = []
    for key, value in options.items():
        values = value if isinstance(value, list) else [value]
        if values:
            flags += ["--" + key.replace("_", "-"), *map(str, values)]
    return flags


@pytest.fixture(scope="module")
def r50_dir(tiny_coco, tmp_path_factory):
    """resnet50_fpn (the model-zoo R-50-FPN config, from scratch) trained 2 iterations with a val set,
    through scripts/train.py --engine detectron2."""
    out = tmp_path_factory.mktemp("d2") / "r50"
    argv = ["--train-json", str(tiny_coco["train"]), "--val-json", str(tiny_coco["val"]), "--output-dir", str(out),
            "--backbone", "resnet50_fpn", *_flags(D2_TINY)]
    assert _script("train.py")(argv) == 0
    return out


@pytest.mark.slow
def test_r50_writes_the_same_model_folder_and_predicts(r50_dir, tiny_coco):
    for name in ("model.json", "model_final.pth", "metrics.json", "metrics.jsonl", "training_curves.png",
                 "config.json", "detectron2_config.yaml"):
        assert (r50_dir / name).is_file(), name
    info = json.loads((r50_dir / "model.json").read_text())
    assert info["engine"] == "detectron2" and info["backbone"] == "resnet50_fpn"
    assert info["class_names"] == ["circle", "square", "triangle"]
    assert json.loads((r50_dir / "config.json").read_text())["engine"] == "detectron2"
    assert set(info["metrics"]) == {f"{t}_{k}" for t in ("bbox", "segm") for k in ("AP", "AP50", "AP75")}
    records = [json.loads(line) for line in (r50_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert [r["iter"] for r in losses] == [1, 2]
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses[0])
    assert losses[0]["loss"] == pytest.approx(sum(v for k, v in losses[0].items() if k.startswith("loss_")))
    assert any("bbox_AP50" in r for r in records)
    # the model folder holds the weights only: torch's safe loader reads it
    assert all(torch.is_tensor(v) for v in torch.load(r50_dir / "model_final.pth", weights_only=True).values())

    predictor = Predictor.from_dir(r50_dir, score_threshold=0.0)
    assert predictor.class_names == ["circle", "square", "triangle"] and predictor.info["engine"] == "detectron2"
    path = _val_image(tiny_coco)
    rgb = np.array(Image.open(path).convert("RGB"))
    result = predictor(path)
    assert 0 < len(result) <= 20
    assert result.masks.shape == (len(result), *rgb.shape[:2]) and result.masks.dtype == bool
    assert result.boxes.shape == (len(result), 4) and np.all(np.diff(result.scores) <= 0)
    assert set(result.class_ids.tolist()) <= {0, 1, 2}
    again = Predictor.from_dir(r50_dir, score_threshold=0.0)([rgb, Image.open(path)])
    for other in again:  # a batch of two may round apart from one image alone: as sets, to float rounding
        assert_same_detections(other, result, score_atol=1e-4, box_atol=0.01, mask_iou=0.99, mask_pixels=2)
    cut = float(np.median(result.scores))
    assert len(predictor(path, threshold=cut)) == int((result.scores >= cut).sum())

    metrics = evaluate_predictor(predictor, tiny_coco["val"], progress=False)
    assert metrics["images"] == 2
    for iou_type in ("bbox", "segm"):
        assert 0.0 <= metrics[iou_type]["AP50"] <= 1.0
        assert set(metrics[iou_type]["per_class_AP"]) == {"circle", "square", "triangle"}


@pytest.mark.slow
def test_evaluate_script_and_complexity_of_a_detectron2_folder(r50_dir, tiny_coco, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert _script("evaluate.py")(["--model-dir", str(r50_dir), "--json", str(tiny_coco["val"]), "--device", "cpu",
                                   "--output", str(out)]) == 0
    assert "| segm |" in capsys.readouterr().out
    assert set(json.loads(out.read_text())["val"]) >= {"bbox", "segm", "images"}

    from maskrcnn_finetune.modeling import ModelSpec, build_model
    from maskrcnn_finetune.modeling.complexity import count_gmacs, count_parameters

    predictor = Predictor.from_dir(r50_dir)
    spec = ModelSpec.from_dict(json.loads((r50_dir / "model.json").read_text())["model"])
    torchvision_model = build_model(spec, pretrained="none")
    # the same architecture in both engines: the same size and cost within a few percent
    assert count_parameters(predictor.model) == pytest.approx(count_parameters(torchvision_model), rel=0.03)
    assert predictor.model.count_gmacs(64, 85) == pytest.approx(count_gmacs(torchvision_model, 64, 85), rel=0.05)


@pytest.mark.slow
def test_timm_backbone_trains_stops_and_resumes(tiny_coco, tmp_path):
    out = tmp_path / "mnv2"
    cfg = resolve_config(None, train_json=str(tiny_coco["train"]), output_dir=str(out), backbone="mobilenetv2_fpnlite",
                         **{**D2_TINY, "max_iter": 3, "optimizer": "adamw", "lr": 1e-3, "mask_head_layers": [32, 32]})
    train(cfg, stop_after=2)
    assert (out / "checkpoint.pth").is_file() and (out / "last_checkpoint").read_text() == "checkpoint.pth"
    assert not (out / "model.json").exists()
    assert torch.load(out / "checkpoint.pth", weights_only=False)["iteration"] == 1  # detectron2 counts from 0
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(cfg)
    with pytest.raises(ConfigError, match="cannot resume: .* other model options"):
        train(replace(cfg, resume=True, box_head_dim=32))
    train(replace(cfg, resume=True))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2, 3]  # the resumed run went on at iteration 3
    info = json.loads((out / "model.json").read_text())
    assert info["engine"] == "detectron2" and info["backbone"] == "mobilenetv2_fpnlite"
    cfg_yaml = (out / "detectron2_config.yaml").read_text()
    assert "build_mobilenetv2_fpn_backbone" in cfg_yaml and "MOBILENETV2:" in cfg_yaml
    result = Predictor.from_dir(out, score_threshold=0.0)(_val_image(tiny_coco))
    assert result.masks.shape[1:] == np.array(Image.open(_val_image(tiny_coco))).shape[:2]


def test_rpn_levels_and_fpn_norm_become_detectron2s_config_and_come_back():
    from maskrcnn_finetune.modeling.detectron2.checkpoints import spec_from_config
    from maskrcnn_finetune.modeling.detectron2.model_config import build_config
    from maskrcnn_finetune.modeling.maskrcnn import ModelSpec

    for levels, anchors, features in ((5, [8, 16, 32, 64, 128], ["p2", "p3", "p4", "p5", "p6"]),
                                      (4, [16, 32, 64, 128], ["p3", "p4", "p5", "p6"])):
        spec = ModelSpec("vovnet19_fpn", ["a"], anchor_sizes=anchors, rpn_levels=levels, mask_head_layers=[32])
        cfg = build_config(spec)
        assert cfg.MODEL.RPN.IN_FEATURES == features and cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[s] for s in anchors]
        back = spec_from_config(cfg, ["a"])
        assert (back.rpn_levels, back.anchor_sizes, back.fpn_norm) == (levels, anchors, "none")
    cfg = build_config(ModelSpec("vovnet19_fpn", ["a"], mask_head_layers=[32], fpn_norm="bn"))
    assert cfg.MODEL.FPN.NORM == "BN" and spec_from_config(cfg, ["a"]).fpn_norm == "bn"
    with pytest.raises(ConfigError, match="COCO weights of resnet50_fpn come with an FPN without norms"):
        build_config(ModelSpec("resnet50_fpn", ["a"], fpn_norm="bn"),
                     resolve_config(None, train_json="t", output_dir="o", max_iter=1, engine="detectron2"))
    with pytest.raises(ConfigError, match=r"--anchor-sizes needs 4 values \(one per RPN level, --rpn-levels\)"):
        build_config(ModelSpec("vovnet19_fpn", ["a"], anchor_sizes=[8, 16, 32, 64, 128], rpn_levels=4))


def test_unsupported_options_are_refused_before_training(tiny_coco, tmp_path, monkeypatch):
    base = dict(train_json=str(tiny_coco["train"]), output_dir=str(tmp_path / "x"))
    only = Backbone("only_torchvision_fpn", builder=lambda backbone, pretrained: None)
    monkeypatch.setitem(BACKBONES._entries, only.name, only)  # a torchvision-only entry, for this test only
    with pytest.raises(ConfigError, match="'only_torchvision_fpn' is built by the torchvision engine only; use "
                                          "--engine torchvision, or one of these with --engine detectron2: .*vovnet19_fpn"):
        train(resolve_config(None, **base, **{**D2_TINY, "backbone": "only_torchvision_fpn"}))
    with pytest.raises(ConfigError, match="one width"):
        train(resolve_config(None, **base, **{**D2_TINY, "backbone": "vovnet19_fpn", "mask_head_layers": [32, 16]}))
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_the_demo_backbone_trains_with_detectron2(tiny_coco, tmp_path):
    """resnet18_fpn (the demo preset's) is timm's ResNet-18 under detectron2's FPN of 128 channels."""
    out = train(resolve_config(None, train_json=str(tiny_coco["train"]), output_dir=str(tmp_path / "r18"),
                               **{**D2_TINY, "backbone": "resnet18_fpn"}))
    info = json.loads((out / "model.json").read_text())
    assert info["engine"] == "detectron2" and info["backbone"] == "resnet18_fpn"
    cfg_yaml = (out / "detectron2_config.yaml").read_text()
    assert "build_timm_fpn_backbone" in cfg_yaml and "TIMM_NAME: resnet18" in cfg_yaml
    result = Predictor.from_dir(out, score_threshold=0.0)(_val_image(tiny_coco))
    assert 0 < len(result) <= 20 and result.masks.dtype == bool


@pytest.mark.slow
def test_unreachable_coco_weights_say_what_to_do(tiny_coco, tmp_path, monkeypatch):
    from urllib.error import URLError

    import iopath.common.download

    def offline(url, filename=None, reporthook=None):  # the download itself: no internet in CI
        raise URLError("offline (test)")

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))  # nothing cached from an earlier download
    monkeypatch.setattr(iopath.common.download.request, "urlretrieve", offline)
    cfg = resolve_config(None, train_json=str(tiny_coco["train"]), output_dir=str(tmp_path / "m"),
                         backbone="resnet50_fpn", **{**D2_TINY, "pretrained": "default", "box_head_dim": 1024,
                                                     "mask_head_layers": [256] * 4})
    with pytest.raises(WeightsUnavailableError, match="resnet50_fpn.*pass --pretrained none"):
        train(cfg)
    assert not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def detectron2_run(tiny_coco, tmp_path_factory):
    """A run of detectron2's own DefaultTrainer (model-zoo R-50-FPN config, tiny): its output folder and config."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import DefaultTrainer
    from detectron2.utils.events import JSONWriter

    out = tmp_path_factory.mktemp("d2run")
    register_coco_instances("d2run_train", {}, str(tiny_coco["train"]), str(tiny_coco["train"].parent))
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"))
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("d2run_train",), ()
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    # from scratch: frozen random statistics would blow up through 50 layers and leave no detections
    cfg.MODEL.RESNETS.NORM, cfg.MODEL.BACKBONE.FREEZE_AT = "BN", 0
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV, cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 1, 32
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, cfg.TEST.DETECTIONS_PER_IMAGE = 0.0, 20
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 96
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 2, 0.001, 2, ()
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(out)
    class Trainer(DefaultTrainer):
        def build_writers(self):  # DefaultTrainer's list adds TensorBoard, which is not installed here
            return [JSONWriter(str(out / "metrics.json"))]

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    (out / "config.yaml").write_text(cfg.dump())
    return out, cfg


@pytest.mark.slow
def test_imported_detectron2_checkpoint_predicts_identically(detectron2_run, tiny_coco, tmp_path):
    from detectron2.engine import DefaultPredictor

    run, cfg = detectron2_run
    weights = run / "model_final.pth"
    assert set(torch.load(weights, weights_only=False)) >= {"model", "iteration"}  # a full training checkpoint
    folder = tmp_path / "imported"
    assert _script("import_detectron2.py")(["--weights", str(weights), "--config", str(run / "config.yaml"),
                                            "--classes", "circle,square,triangle", "--output-dir", str(folder),
                                            "--threshold", "0.3"]) == 0
    info = json.loads((folder / "model.json").read_text())
    assert info["engine"] == "detectron2" and info["backbone"] == "resnet50_fpn" and info["score_threshold"] == 0.3

    reference_cfg = cfg.clone()
    reference_cfg.MODEL.WEIGHTS = str(weights)
    path = _val_image(tiny_coco)
    bgr = np.array(Image.open(path).convert("RGB"))[:, :, ::-1]
    expected = from_detectron2(DefaultPredictor(reference_cfg)(bgr)["instances"], ["circle", "square", "triangle"])
    got = Predictor.from_dir(folder, score_threshold=0.0)(path)
    assert len(expected) > 0 and len(got) == len(expected) and got.class_names == expected.class_names
    # every value equal, compared as sets: the kit and detectron2's DefaultPredictor are two paths
    assert_same_detections(got, expected, score_atol=0.0, box_atol=0.0, mask_iou=1.0)
    assert len(Predictor.from_dir(folder)(path)) == int((expected.scores >= 0.3).sum())  # the folder's threshold


@pytest.mark.slow
def test_the_server_serves_a_bare_checkpoint_as_the_older_kits_did(detectron2_run, tiny_coco, tmp_path):
    import requests

    run, _ = detectron2_run
    out = tmp_path / "served"
    cmd = [sys.executable, str(ROOT / "rest_api_flask" / "flask_app.py"), "--model-dir", str(run / "model_final.pth"),
           "--d2-config", str(run / "config.yaml"), "--classes", "circle,square,triangle", "--upload-folder",
           str(tmp_path / "up"), "--output-folder", str(out), "--port", "0", "--threshold", "0", "--infer-with-cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**__import__("os").environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Serving on http://"):
                break
        assert lines and lines[-1].startswith("Serving on"), "".join(lines)
        url = lines[-1].split("Serving on ", 1)[1].strip()
        model = requests.get(url + "/api/v1/model", timeout=10).json()
        assert model["engine"] == "detectron2" and model["classes"] == ["circle", "square", "triangle"]
        path = _val_image(tiny_coco)
        body = requests.post(url + "/api/v1/predict", files={"image": (path.name, path.read_bytes())}, timeout=60).json()
        folders = list((out / "models").iterdir())  # imported once, inside the output folder
        assert len(folders) == 1 and (folders[0] / "model.json").exists()
        direct = Predictor.from_dir(folders[0], score_threshold=0.0)(path)
        assert body["num_instances"] == len(direct) > 0
        assert_same_detections(body, direct, score_atol=1e-5)  # the server process and this one: as sets
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_import_explains_mismatches_and_untrusted_files(detectron2_run, tmp_path):
    run, _ = detectron2_run
    weights, config = run / "model_final.pth", run / "config.yaml"
    # the run's config with a ResNet-101: the weights of the R-50 do not fit it
    r101 = tmp_path / "r101.yaml"
    r101.write_text(config.read_text().replace("DEPTH: 50", "DEPTH: 101"))
    with pytest.raises(CheckpointError, match="does not fit the model its config describes: weights .*missing"):
        import_checkpoint(weights, r101, ["circle", "square", "triangle"], tmp_path / "r101")
    assert not (tmp_path / "r101" / "model.json").exists()
    # the model-zoo config by name (its heads are larger than the tiny run's): the shapes are named
    with pytest.raises(CheckpointError, match="of another shape"):
        import_checkpoint(weights, "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
                          ["circle", "square", "triangle"], tmp_path / "zoo")
    with pytest.raises(ConfigError, match="says 3 classes .* but 2 class names"):
        import_checkpoint(weights, config, ["circle", "square"], tmp_path / "two")
    with pytest.raises(ConfigError, match="nowhere.yaml' does not exist"):
        import_checkpoint(weights, tmp_path / "nowhere.yaml", ["circle", "square", "triangle"], tmp_path / "none")
    with pytest.raises(ConfigError, match="neither an existing yaml file nor a detectron2 model-zoo name"):
        import_checkpoint(weights, "COCO-InstanceSegmentation/no_such.yaml", ["circle"], tmp_path / "none")
    # a config for 2 classes beside weights trained for 3: the class count is named
    two = tmp_path / "two.yaml"
    two.write_text(config.read_text().replace("NUM_CLASSES: 3", "NUM_CLASSES: 2"))
    with pytest.raises(CheckpointError, match="trained for 3 classes"):
        import_checkpoint(weights, two, ["circle", "square"], tmp_path / "two")

    # a checkpoint holding Python objects (as older detectron2 runs write): refused unless trusted
    odd = tmp_path / "odd.pth"
    torch.save({"model": torch.load(weights, weights_only=False)["model"], "args": argparse.Namespace(lr=0.1)}, odd)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        import_checkpoint(odd, config, ["circle", "square", "triangle"], tmp_path / "odd")
    folder = import_checkpoint(odd, config, ["circle", "square", "triangle"], tmp_path / "odd", trusted=True)
    assert all(torch.is_tensor(v) for v in torch.load(folder / "model_final.pth", weights_only=True).values())

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "detectron2_config.yaml").unlink()
    with pytest.raises(ModelDirError, match="no detectron2_config.yaml"):
        Predictor.from_dir(broken)


@pytest.mark.slow
def test_without_detectron2_the_engine_says_how_to_install(r50_dir, tiny_coco, tmp_path):
    # sys.modules[name] = None makes `import detectron2` fail as if it were not installed
    hide = "import sys, runpy; sys.modules['detectron2'] = None; sys.argv = sys.argv[1:]; " \
           "runpy.run_path(sys.argv[0], run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", hide, str(ROOT / "scripts" / "train.py"), "--engine", "detectron2",
                           "--train-json", str(tiny_coco["train"]), "--output-dir", str(tmp_path / "m"),
                           "--max-iter", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "detectron2 is not installed" in proc.stderr or "needs detectron2" in proc.stderr
    assert "maskrcnn_finetune.modeling.detectron2.install" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()
    proc = subprocess.run([sys.executable, "-c", hide, str(ROOT / "scripts" / "evaluate.py"), "--model-dir",
                           str(r50_dir), "--json", str(tiny_coco["val"])], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "maskrcnn_finetune.modeling.detectron2.install" in proc.stderr, proc.stderr


def _fake_wheel(path: Path) -> Path:
    """A wheel shaped like sal-detectron2's: cp310 tag, a _C extension, a dependency list."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("detectron2/__init__.py", "__version__ = '0.7.2'\n")
        zf.writestr("detectron2/_C.cpython-310-x86_64-linux-gnu.so", b"\x7fELF")
        zf.writestr("sal_detectron2-0.7.2.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp310-cp310-linux_x86_64\n\n")
        zf.writestr("sal_detectron2-0.7.2.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: sal-detectron2\nVersion: 0.7.2\nRequires-Dist: numpy<2\n")
        zf.writestr("sal_detectron2-0.7.2.dist-info/RECORD", "detectron2/__init__.py,,\n")
    return path


def test_install_script_retags_the_wheel_and_is_idempotent(tmp_path):
    install = runpy.run_path(str(ROOT / "scripts" / "install_detectron2.py"), run_name="script_under_test")
    wheel = install["retag_wheel"](_fake_wheel(tmp_path / "sal_detectron2-0.7.2-cp310-none-any.whl"), tmp_path)
    assert wheel.name == "sal_detectron2-0.7.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "detectron2/__init__.py" in names and not any("_C." in n for n in names)
        tags = zf.read("sal_detectron2-0.7.2.dist-info/WHEEL").decode()
        assert "Tag: py3-none-any" in tags and "cp310" not in tags and "Root-Is-Purelib: true" in tags
        assert "Requires-Dist" not in zf.read("sal_detectron2-0.7.2.dist-info/METADATA").decode()
        record = zf.read("sal_detectron2-0.7.2.dist-info/RECORD").decode()
        assert "detectron2/__init__.py,sha256=" in record and "_C." not in record
    # detectron2 is installed here (make test ran the script): a second run changes nothing
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_detectron2.py"), "--source", "wheel"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "nothing to do" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_flask_app_serves_a_detectron2_folder(r50_dir, tiny_coco, tmp_path):
    from rest_api_flask import create_app

    app = create_app({"MODEL_DIR": str(r50_dir), "DEVICE": "cpu", "THRESHOLD": 0.0, "UPLOAD_FOLDER": str(tmp_path / "up"),
                      "OUTPUT_FOLDER": str(tmp_path / "out"), "WARMUP": False})
    path = _val_image(tiny_coco)
    with path.open("rb") as fh:
        response = app.test_client().post("/api/v1/predict", data={"image": (fh, path.name), "threshold": "0"},
                                          content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["model"]["engine"] == "detectron2" and body["model"]["classes"] == ["circle", "square", "triangle"]
    direct = Predictor.from_dir(r50_dir, score_threshold=0.0)(path)
    assert body["num_instances"] == len(direct) > 0
    assert all(i["class_name"] == direct.class_names[i["class_id"]] for i in body["instances"])
    assert_same_detections(body, direct, score_atol=1e-5)  # the app's own Predictor and this one: as sets
    assert body["masked_fraction"] == pytest.approx(direct.masked_fraction(), abs=1e-6)


@pytest.mark.slow
def test_the_rest_api_kits_weights_url_and_config_file_flags(detectron2_run, tiny_coco, tmp_path, http_server):
    """The older REST API kit's serve command: --weights (here a URL) and --config-file, no --classes."""
    from rest_api_flask.launcher import start_server

    run, _ = detectron2_run
    url = http_server.serve("/models/ResNet_50_FPN_model_final.pth", (run / "model_final.pth").read_bytes())
    out = tmp_path / "served"
    with start_server(None, tmp_path / "up", out, infer_with_cpu=True, threshold=0.0, stop_previous=False,
                      extra_args=["--weights", url, "--config-file", str(run / "config.yaml")],
                      env={"OMP_NUM_THREADS": "1", "NGROK_AUTHTOKEN": ""}, timeout=300) as server:
        assert server.health()["classes"] == ["class_1", "class_2", "class_3"]  # named for the config's 3 classes
        path = _val_image(tiny_coco)
        import requests

        body = requests.post(server.url + "/api/v1/predict", files={"image": (path.name, path.read_bytes())},
                             timeout=60).json()
        assert "no --classes: its 3 classes are named class_1, class_2, class_3" in "\n".join(server.lines)
    [downloaded] = (out / "models" / "downloads").glob("ResNet_50_FPN_model_final-*.pth")  # the URL's hash in the name
    assert downloaded.read_bytes() == (run / "model_final.pth").read_bytes() and http_server.count() == 1
    folders = [f for f in (out / "models").iterdir() if f.name != "downloads"]
    assert len(folders) == 1
    direct = Predictor.from_dir(folders[0], score_threshold=0.0)(path)
    assert body["num_instances"] == len(direct) > 0
