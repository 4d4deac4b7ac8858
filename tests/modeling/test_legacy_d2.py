"""The older balloon REST API kit's MobileNetV2 and VoVNet checkpoints, imported as they are.

Its backbones came from youngwanLEE's detectron2 VoVNet / MobileNetV2 project (vovnet-detectron2;
centermask2 has the same modules), with their own config keys and weight names. The fixtures in
tests/fixtures/legacy_d2/ are the weight names and shapes of that project's own modules,
instantiated once from its source (each file says which commit), and the kit's name each weight is
imported as. With the same random weights and input, the project's modules and the kit's timm
networks after the translation computed the same FPN features p2..p6 to a relative 5.3e-7
(V-19-eSE 4.0e-7, V-19-slim-dw-eSE 4.5e-7, V-19-dw-eSE 5.3e-7, V-19-slim-eSE 4.2e-7, MobileNetV2
3.5e-7 with FrozenBN; exactly equal with NORM BN); the V-39-eSE weights put onto timm's
ese_vovnet39b left exactly the four eSE weights of the stages' first blocks without a place. The
fixtures' "verified" entries give the figures. Here a checkpoint with those names and shapes (random
values) goes through the import of ``flask_app.py --weights FILE --config-file CONFIG.yaml``.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from maskrcnn_finetune.errors import CheckpointError, ConfigError
from maskrcnn_finetune.modeling import ModelSpec
from maskrcnn_finetune.modeling.detectron2.checkpoints import build_for_inference
from maskrcnn_finetune.modeling.detectron2.importing import import_checkpoint
from maskrcnn_finetune.modeling.detectron2.model_config import build_config, load_config
from maskrcnn_finetune.predictor import Predictor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_d2"
RETRAIN = ("serve a ResNet checkpoint of that kit instead, or retrain this backbone with scripts/train.py "
           "--engine detectron2 --backbone vovnet19_fpn (or mobilenetv2_fpn)")

# vovnet-detectron2's Base-RCNN-VoVNet-FPN.yaml / Base-RCNN-MobileNet-FPN.yaml, smaller test sizes
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
STAGES = ["stage2", "stage3", "stage4", "stage5"]


def _vovnet(body: str, **vovnet) -> dict:
    """The MODEL keys of the project's VoVNet configs (mask_rcnn_V_19_FPNLite_3x.yaml for V-19-eSE)."""
    return {"BACKBONE": {"NAME": "build_vovnet_fpn_backbone", "FREEZE_AT": 0},
            "VOVNET": {"CONV_BODY": body, "NORM": "FrozenBN", "OUT_CHANNELS": 256, "BACKBONE_OUT_CHANNELS": 256,
                       "OUT_FEATURES": STAGES, **vovnet},
            "FPN": {"IN_FEATURES": STAGES, "OUT_CHANNELS": 128}}


# the project's MobileNetV2 config has no key of its own: its builder's name is the kit's, and it reads RESNETS
MOBILENET = {"BACKBONE": {"NAME": "build_mobilenetv2_fpn_backbone", "FREEZE_AT": 0},
             "RESNETS": {"OUT_FEATURES": ["res2", "res3", "res4", "res5"]},
             "FPN": {"IN_FEATURES": ["res2", "res3", "res4", "res5"], "OUT_CHANNELS": 128}}
CASES = {"vovnet19_ese_backbone.json": _vovnet("V-19-eSE"),
         "vovnet19_slim_dw_ese_backbone.json": _vovnet("V-19-slim-dw-eSE"),
         "mobilenetv2_fpn_backbone.json": MOBILENET}


def _config(tmp_path: Path, backbone: dict, name: str = "config.yaml") -> Path:
    data = copy.deepcopy(RCNN)
    data["MODEL"].update(copy.deepcopy(backbone))
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _fixture(name: str) -> dict:
    fixture = json.loads((FIXTURES / name).read_text())
    model = CASES[name]  # the test's config is the one the fixture was made with
    for key, value in fixture["config"].items():
        node = model
        for part in key.split(".")[1:]:
            node = node[part]
        assert node == value, key
    return fixture


def _old_checkpoint(config: Path, fixture: dict, out: Path) -> dict[str, torch.Tensor]:
    """A checkpoint as the older kit saved it: the project's backbone and FPN names from the fixture,
    detectron2's RPN and head names (random values); returns all its tensors."""
    model, _ = build_for_inference(load_config(config), "cpu")
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=generator) * 0.05 if v.is_floating_point() else v
             for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    for name, shape, *_ in fixture["fpn"] + fixture["backbone"]:
        state[name] = (torch.rand(shape, generator=generator) + 0.5 if name.endswith("running_var")
                       else torch.randn(shape, generator=generator) * 0.1)
    torch.save({"model": state, "iteration": 3000}, out)
    return state


@pytest.mark.parametrize("fixture_name", list(CASES))
def test_the_older_kits_checkpoint_is_imported_and_predicts(tmp_path, fixture_name):
    fixture = _fixture(fixture_name)
    config = _config(tmp_path, CASES[fixture_name])
    old = _old_checkpoint(config, fixture, tmp_path / "model_final.pth")
    folder = import_checkpoint(tmp_path / "model_final.pth", config, ["balloon"], tmp_path / "imported")
    saved = torch.load(folder / "model_final.pth", weights_only=True)
    # every weight landed unchanged under the kit's name for it; the FPN and heads keep theirs
    for name, _, kit_name in fixture["backbone"]:
        assert torch.equal(saved[kit_name], old[name]), (name, kit_name)
    for name, value in old.items():
        if not name.startswith("backbone.bottom_up."):
            assert torch.equal(saved[name], value), name
    backbone = [k for k in saved if k.startswith("backbone.bottom_up.") and not k.endswith("num_batches_tracked")]
    assert sorted(backbone) == sorted(kit_name for *_, kit_name in fixture["backbone"])
    info = json.loads((folder / "model.json").read_text())
    assert info["engine"] == "detectron2" and info["class_names"] == ["balloon"]
    predictor = Predictor.from_dir(folder)  # the folder's own config (timm's names) rebuilds the network
    image = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    result = predictor(image, threshold=0.0)
    assert len(result.scores) > 0 and result.masks.shape[1:] == (120, 160) and result.class_names == ["balloon"]


def test_translated_config_keys(tmp_path):
    cfg = load_config(_config(tmp_path, _vovnet("V-19-eSE", NORM="BN", OUT_FEATURES=["stem"] + STAGES)))
    assert cfg.MODEL.BACKBONE.NAME == "build_vovnet_fpn_backbone"
    assert (cfg.MODEL.VOVNET.TIMM_NAME, cfg.MODEL.VOVNET.FREEZE_BN, cfg.MODEL.VOVNET.PRETRAINED) == (
        "ese_vovnet19b", False, False)
    assert cfg.MODEL.VOVNET.OUT_FEATURES == ["res2", "res3", "res4", "res5"]
    assert cfg.MODEL.FPN.IN_FEATURES == ["res2", "res3", "res4", "res5"] and cfg.MODEL.FPN.OUT_CHANNELS == 128
    assert cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0] and cfg.INPUT.FORMAT == "BGR"  # what the project trained with
    mobilenet = load_config(_config(tmp_path, MOBILENET, "mnv2.yaml"))
    assert (mobilenet.MODEL.MOBILENETV2.TIMM_NAME, mobilenet.MODEL.MOBILENETV2.FREEZE_BN) == ("mobilenetv2_100", True)
    # a ResNet run's config dumped with the project's default keys: those are dropped, the rest kept
    resnet = {"BACKBONE": {"NAME": "build_resnet_fpn_backbone"}, "RESNETS": {"DEPTH": 101},
              "VOVNET": {"CONV_BODY": "V-39-eSE", "NORM": "FrozenBN", "OUT_CHANNELS": 256}}
    cfg = load_config(_config(tmp_path, resnet, "r101.yaml"))
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone" and cfg.MODEL.RESNETS.DEPTH == 101
    # the kit's own MobileNetV2 config is not mistaken for the project's
    own = tmp_path / "own.yaml"
    own.write_text(build_config(ModelSpec("mobilenetv2_fpn", ["a"])).dump())
    assert load_config(own).MODEL.MOBILENETV2.FREEZE_BN is False


@pytest.mark.parametrize("model, message", [
    (_vovnet("V-39-eSE"), "MODEL.VOVNET.CONV_BODY 'V-39-eSE' cannot be imported: its stages of several blocks put an "
                          "eSE attention in every block; timm's ese_vovnet39b only in the last block of each stage, so "
                          "the checkpoint has attention weights the kit's network has no place for; " + RETRAIN),
    (_vovnet("V-27-eSE"), "MODEL.VOVNET.CONV_BODY 'V-27-eSE' cannot be imported: 'V-27-eSE' is not one of the VoVNets "
                          "the kit knows (V-19-slim-dw-eSE, V-19-dw-eSE, V-19-slim-eSE, V-19-eSE); " + RETRAIN),
    (_vovnet("V-19-eSE", NORM="GN"), "MODEL.VOVNET.NORM 'GN' cannot be imported: the kit's VoVNet (timm's "
                                     "ese_vovnet19b) has BatchNorm layers, not GN (it reads FrozenBN, BN, SyncBN, "
                                     "nnSyncBN, naiveSyncBN); " + RETRAIN),
    (_vovnet("V-19-eSE", STAGE_WITH_DCN=[False, False, True, True]),
     "MODEL.VOVNET.STAGE_WITH_DCN has deformable convolutions, which the kit's VoVNet (timm's ese_vovnet19b) does "
     "not have; " + RETRAIN),
    ({**_vovnet("V-19-eSE"), "BACKBONE": {"NAME": "build_fcos_vovnet_fpn_backbone"}},
     "MODEL.BACKBONE.NAME 'build_fcos_vovnet_fpn_backbone' is centermask2's FPN for CenterMask (FCOS), not Mask "
     "R-CNN's; the kit serves Mask R-CNN with an FPN (build_vovnet_fpn_backbone, build_mobilenetv2_fpn_backbone or "
     "detectron2's own); " + RETRAIN),
])
def test_configs_the_kit_cannot_reproduce_say_what_differs(tmp_path, model, message):
    config = _config(tmp_path, model)
    with pytest.raises(ConfigError, match=re.escape(f"config '{config}': {message}")):
        load_config(config)


def test_a_key_detectron2_does_not_know_is_named_with_the_projects_it_belongs_to(tmp_path):
    """One message for an older project's config (after its keys are translated) and for detectron2's own."""
    older = _config(tmp_path, {**_vovnet("V-19-eSE"), "FCOS": {"NUM_CLASSES": 1}}, "older.yaml")
    with pytest.raises(ConfigError, match=re.escape(
            f"config '{older}' has a key detectron2 does not know ('Non-existent config key: MODEL.FCOS') besides the "
            "older projects' keys the kit translates; it belongs to a detectron2 project this kit cannot build")):
        load_config(older)
    own = _config(tmp_path, {"FCOS": {"NUM_CLASSES": 1}}, "own.yaml")
    with pytest.raises(ConfigError, match=re.escape(
            f"config '{own}' has a key detectron2 does not know ('Non-existent config key: MODEL.FCOS'); it belongs")):
        load_config(own)


def test_a_checkpoint_that_does_not_fit_names_each_weight(tmp_path):
    fixture = _fixture("vovnet19_ese_backbone.json")
    config = _config(tmp_path, CASES["vovnet19_ese_backbone.json"])
    state = _old_checkpoint(config, fixture, tmp_path / "model_final.pth")
    p = "backbone.bottom_up."
    del state[p + "stage3.OSA3_1.ese.fc.bias"]
    state[p + "stage4.OSA4_1.layers.0.OSA4_1_0/conv_offset.weight"] = torch.zeros(18, 512, 3, 3)  # centermask2's DCN
    state[p + "stem.stem_1/conv.weight"] = torch.zeros(32, 3, 3, 3)
    torch.save({"model": state}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError) as error:
        import_checkpoint(tmp_path / "other.pth", config, ["balloon"], tmp_path / "refused")
    assert str(error.value) == (
        "the vovnet checkpoint does not fit the kit's network: "
        "1 of its weights have no place in the kit's network: "
        f"'{p}stage4.OSA4_1.layers.0.OSA4_1_0/conv_offset.weight' (18, 512, 3, 3); "
        f"1 weights the kit's network needs are not in it: '{p}body.stages_1.blocks.0.attn.fc.bias' (512,); "
        f"1 of another shape: '{p}stem.stem_1/conv.weight' (32, 3, 3, 3) where the kit's '{p}body.stem_0.conv.weight' "
        f"is (64, 3, 3, 3); {RETRAIN}")
    assert not (tmp_path / "refused").exists()


def test_the_older_kits_serve_command_takes_the_vovnet_checkpoint(tmp_path):
    """``flask_app.py --weights VoVNet_lite_FPN_model_final.pth --config-file config.yaml``, as the older kit
    served it (V-19-eSE with a 128-channel FPN: the project's only Mask R-CNN "FPNLite" VoVNet config)."""
    import requests

    from rest_api_flask.launcher import start_server

    config = _config(tmp_path, CASES["vovnet19_ese_backbone.json"])
    _old_checkpoint(config, _fixture("vovnet19_ese_backbone.json"), tmp_path / "VoVNet_lite_FPN_model_final.pth")
    with start_server(None, tmp_path / "up", tmp_path / "out", infer_with_cpu=True, cwd=tmp_path, stop_previous=False,
                      extra_args=["--weights", str(tmp_path / "VoVNet_lite_FPN_model_final.pth"),
                                  "--config-file", str(config)], env={"OMP_NUM_THREADS": "1"}) as server:
        assert server.health()["classes"] == ["class_1"]  # no --classes: named after the config's one class
        model = requests.get(server.url + "/api/v1/model", timeout=10).json()
        assert model["engine"] == "detectron2"
