"""The older balloon REST API kit's MobileNetV2 and VoVNet checkpoints, imported as they are.

Its backbones came from the public detectron2 VoVNet / MobileNetV2 projects, with their own config
keys and weight names. The fixtures in tests/fixtures/legacy_d2/ are the key names and shapes of
those projects' own modules (youngwanLEE/centermask2, instantiated once; the file says which),
in their order. With the same random weights and input, the projects' modules and the kit's timm
networks after the renaming computed the same FPN features to a relative 5e-7 (V-19-slim-dw-eSE,
V-19-dw-eSE, V-19-slim-eSE, MobileNetV2: 3.3e-7 to 5.8e-7 per level), and V-39-eSE was refused
at the first tensor that differs. Here a checkpoint with those names and shapes (random values)
goes through the same import as ``flask_app.py --weights FILE --config-file CONFIG.yaml``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from maskrcnn_finetune.errors import CheckpointError, ConfigError
from maskrcnn_finetune.modeling.detectron2.checkpoints import build_for_inference, import_checkpoint
from maskrcnn_finetune.modeling.detectron2.model_config import load_config
from maskrcnn_finetune.predictor import Predictor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_d2"

# the Mask R-CNN config of the older kit's VoVNet-lite / MobileNetV2 runs, with the projects' own keys
RCNN = {
    "MODEL": {
        "META_ARCHITECTURE": "GeneralizedRCNN", "MASK_ON": True,
        "ANCHOR_GENERATOR": {"SIZES": [[32], [64], [128], [256], [512]]},
        "RPN": {"IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"], "POST_NMS_TOPK_TEST": 100},
        "ROI_HEADS": {"NAME": "StandardROIHeads", "IN_FEATURES": ["p2", "p3", "p4", "p5"], "NUM_CLASSES": 1},
        "ROI_BOX_HEAD": {"NAME": "FastRCNNConvFCHead", "NUM_FC": 2, "POOLER_RESOLUTION": 7},
        "ROI_MASK_HEAD": {"NAME": "MaskRCNNConvUpsampleHead", "NUM_CONV": 4, "POOLER_RESOLUTION": 14},
    },
    "INPUT": {"MIN_SIZE_TEST": 128, "MAX_SIZE_TEST": 192},
}
VOVNET = {"BACKBONE": {"NAME": "build_vovnet_fpn_backbone", "FREEZE_AT": 0},
          "VOVNET": {"CONV_BODY": "V-19-slim-dw-eSE", "NORM": "FrozenBN", "OUT_CHANNELS": 256,
                     "BACKBONE_OUT_CHANNELS": 256, "OUT_FEATURES": ["stage2", "stage3", "stage4", "stage5"]},
          "FPN": {"IN_FEATURES": ["stage2", "stage3", "stage4", "stage5"], "OUT_CHANNELS": 256}}
MOBILENET = {"MOBILENET": True, "BACKBONE": {"NAME": "build_mobilenetv2_fpn_backbone", "FREEZE_AT": 0},
             "RESNETS": {"OUT_FEATURES": ["res2", "res3", "res4", "res5"]},
             "FPN": {"IN_FEATURES": ["res2", "res3", "res4", "res5"], "OUT_CHANNELS": 256}}


def _config(tmp_path: Path, backbone: dict, name: str = "config.yaml") -> Path:
    data = json.loads(json.dumps(RCNN))
    data["MODEL"].update(json.loads(json.dumps(backbone)))
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _old_checkpoint(config: Path, fixture: str, out: Path) -> dict[str, torch.Tensor]:
    """A checkpoint as the older kit saved it: the projects' backbone names (random values) and
    detectron2's standard FPN and head names; returns the backbone's tensors."""
    model, _ = build_for_inference(load_config(config), "cpu")
    heads = {k: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in model.state_dict().items() if not k.startswith("backbone.bottom_up.")}
    generator = torch.Generator().manual_seed(0)
    backbone = {name: torch.rand(shape, generator=generator) + 0.5 if name.endswith("running_var")
                else torch.randn(shape, generator=generator) * 0.1
                for name, shape in json.loads((FIXTURES / fixture).read_text())["keys"]
                if name.startswith("backbone.bottom_up.")}
    torch.save({"model": {**backbone, **heads}, "iteration": 3000}, out)
    return backbone


@pytest.mark.parametrize("backbone, fixture", [(VOVNET, "vovnet19_slim_dw_ese_backbone.json"),
                                               (MOBILENET, "mobilenetv2_fpn_backbone.json")])
def test_the_older_kits_checkpoint_is_imported_and_predicts(tmp_path, backbone, fixture):
    config = _config(tmp_path, backbone)
    old = _old_checkpoint(config, fixture, tmp_path / "model_final.pth")
    folder = import_checkpoint(tmp_path / "model_final.pth", config, ["balloon"], tmp_path / "imported")
    saved = torch.load(folder / "model_final.pth", weights_only=True)
    imported = [v for k, v in saved.items() if k.startswith("backbone.bottom_up.") and "num_batches_tracked" not in k]
    assert len(imported) == len(old)
    # every tensor of the old backbone landed, unchanged, exactly once
    fingerprints = {(tuple(v.shape), float(v.double().sum()), float(v.double().abs().max())) for v in imported}
    assert len(fingerprints) == len(imported)
    for name, value in old.items():
        assert (tuple(value.shape), float(value.double().sum()), float(value.double().abs().max())) in fingerprints, name
    info = json.loads((folder / "model.json").read_text())
    assert info["engine"] == "detectron2" and info["class_names"] == ["balloon"]
    predictor = Predictor.from_dir(folder)
    image = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    result = predictor(image, threshold=0.0)
    assert result.masks.shape[1:] == (120, 160) and result.class_names == ["balloon"]


def test_networks_without_a_twin_and_damaged_checkpoints_say_what_differs(tmp_path):
    v39 = {**VOVNET, "VOVNET": {**VOVNET["VOVNET"], "CONV_BODY": "V-39-eSE"}}
    with pytest.raises(ConfigError, match="V-39-eSE' cannot be imported: its stages of several blocks put an eSE"):
        load_config(_config(tmp_path, v39, "v39.yaml"))
    gn = {**VOVNET, "VOVNET": {**VOVNET["VOVNET"], "NORM": "GN"}}
    with pytest.raises(ConfigError, match="NORM 'GN' cannot be imported"):
        load_config(_config(tmp_path, gn, "gn.yaml"))
    # one of the old tensors with another shape: named, with the kit's tensor at that place
    config = _config(tmp_path, VOVNET)
    _old_checkpoint(config, "vovnet19_slim_dw_ese_backbone.json", tmp_path / "model_final.pth")
    checkpoint = torch.load(tmp_path / "model_final.pth", weights_only=False)
    checkpoint["model"]["backbone.bottom_up.stem.stem_1/conv.weight"] = torch.zeros(32, 3, 3, 3)
    torch.save(checkpoint, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"'backbone.bottom_up.stem.stem_1/conv.weight' \(32, 3, 3, 3\) where the "
                                              r"kit's has .* \(64, 3, 3, 3\)"):
        import_checkpoint(tmp_path / "other.pth", config, ["balloon"], tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_the_older_kits_serve_command_takes_the_vovnet_checkpoint(tmp_path):
    """``flask_app.py --weights model_final.pth --config-file config.yaml``, as the older kit served it."""
    import requests

    from rest_api_flask.launcher import start_server

    config = _config(tmp_path, VOVNET)
    _old_checkpoint(config, "vovnet19_slim_dw_ese_backbone.json", tmp_path / "VoVNet_lite_FPN_model_final.pth")
    with start_server(None, tmp_path / "up", tmp_path / "out", infer_with_cpu=True, cwd=tmp_path, stop_previous=False,
                      extra_args=["--weights", str(tmp_path / "VoVNet_lite_FPN_model_final.pth"),
                                  "--config-file", str(config)], env={"OMP_NUM_THREADS": "1"}) as server:
        assert server.health()["classes"] == ["class_1"]  # no --classes: named after the config's one class
        model = requests.get(server.url + "/api/v1/model", timeout=10).json()
        assert model["engine"] == "detectron2"
