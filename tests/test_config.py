"""The one training config: model options derived from ModelSpec, choices next to each field."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from maskrcnn_finetune.config import PRESETS, TrainConfig, add_config_arguments, resolve_config
from maskrcnn_finetune.errors import ConfigError, ModelDirError
from maskrcnn_finetune.model_dir import read_model_info
from maskrcnn_finetune.model_spec import ModelSpec


def test_model_options_default_to_the_spec_and_build_it():
    cfg = TrainConfig()
    spec = ModelSpec("resnet50_fpn", ["a"])
    model_fields = [f for f in dataclasses.fields(TrainConfig) if "spec" in f.metadata]
    assert {f.metadata["spec"] for f in model_fields} >= {"min_size", "max_size", "box_head_dim", "mask_head_layers",
                                                          "detections_per_image", "anchor_sizes", "backbone"}
    assert cfg.model_spec(["a"]) == spec  # the same defaults: one source of truth
    demo = resolve_config("demo", train_json="t.json", output_dir="o")
    built = demo.model_spec(["a", "b"])
    assert (built.min_size, built.box_head_dim, built.mask_head_layers) == (192, 256, [64, 64])
    assert (built.rpn_pre_nms_top_n_test, built.rpn_post_nms_top_n_test) == (1000, 300)
    assert built.anchor_sizes == [8, 15, 31, 61, 123][5 - built.rpn_levels:]  # scaled from the image size
    # one anchor size per level the RPN proposes from
    assert resolve_config(None, train_json="t", output_dir="o", max_iter=1, image_size=192,
                          rpn_levels=4).model_spec(["a"]).anchor_sizes == [15, 31, 61, 123]
    with pytest.raises(ConfigError, match=r"--anchor-sizes needs one size per RPN level \(4, --rpn-levels\), got 5"):
        resolve_config(None, train_json="t", output_dir="o", max_iter=1, rpn_levels=4, anchor_sizes=[8, 16, 32, 64, 128])
    with pytest.raises(ConfigError, match="--rpn-levels must be one of 4, 5, got '3'"):
        resolve_config(None, train_json="t", output_dir="o", max_iter=1, rpn_levels=3)


def test_test_time_proposal_counts_reach_the_built_model():
    from maskrcnn_finetune.modeling import build_model

    parser = add_config_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--rpn-pre-nms-top-n-test", "200", "--rpn-post-nms-top-n-test", "50"])
    cfg = resolve_config(None, train_json="t", output_dir="o", max_iter=1, backbone="mobilenetv2_fpnlite",
                         rpn_pre_nms_top_n_test=args.rpn_pre_nms_top_n_test,
                         rpn_post_nms_top_n_test=args.rpn_post_nms_top_n_test)
    model = build_model(cfg.model_spec(["a"]), "none").eval()
    assert (model.rpn.pre_nms_top_n(), model.rpn.post_nms_top_n()) == (200, 50)
    model.train()
    assert (model.rpn.pre_nms_top_n(), model.rpn.post_nms_top_n()) == (2000, 2000)  # training's own counts


def test_choices_live_with_their_field_in_the_checks_and_the_flags():
    with pytest.raises(ConfigError, match="--optimizer must be one of sgd, adamw, got 'adam'"):
        resolve_config(None, train_json="t.json", output_dir="o", max_iter=1, optimizer="adam")
    parser = add_config_arguments(argparse.ArgumentParser())
    with pytest.raises(SystemExit):
        parser.parse_args(["--schedule", "linear"])
    assert "--amp {auto,on,off}" in parser.format_help()


def test_every_list_of_engines_reads_the_one_list():
    from maskrcnn_finetune.engine_names import ENGINES
    from maskrcnn_finetune.engines import TRAINERS, train
    from maskrcnn_finetune.model_dir import LOADERS
    from rest_api_flask.openapi import openapi_spec

    assert ENGINES == ("torchvision", "detectron2")
    assert TrainConfig.__dataclass_fields__["engine"].metadata["choices"] == ENGINES
    assert tuple(TRAINERS) == tuple(LOADERS) == ENGINES  # each engine trains, and its folders load
    assert openapi_spec()["components"]["schemas"]["Model"]["properties"]["engine"]["enum"] == list(ENGINES)
    help_text = add_config_arguments(argparse.ArgumentParser()).format_help()
    assert "--engine {torchvision,detectron2}" in help_text
    with pytest.raises(ConfigError, match="--engine must be one of torchvision, detectron2, got 'mmdet'"):
        resolve_config(None, train_json="t.json", output_dir="o", max_iter=1, engine="mmdet")
    with pytest.raises(ConfigError, match=r"unknown engine 'mmdet'; choose one of: detectron2, torchvision \(--engine\)"):
        train(dataclasses.replace(TrainConfig(), engine="mmdet"))


def test_the_tiny_preset_is_what_smoke_mode_trains():
    from maskrcnn_finetune.forms import SMOKE_TRAINING

    assert SMOKE_TRAINING == {**PRESETS["tiny"], "device": "cpu"}
    assert resolve_config("tiny", train_json="t.json", output_dir="o").backbone == "mobilenetv2_fpnlite"


def test_a_model_description_with_unknown_options_names_them(tmp_path):
    with pytest.raises(ModelDirError, match="does not know: head_kind; the folder was written by a newer version"):
        ModelSpec.from_dict({"backbone": "resnet18_fpn", "class_names": ["a"], "head_kind": "cascade"})
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({
        "format": "maskrcnn-finetune/model-dir", "model": {"backbone": "resnet18_fpn", "class_names": ["a"],
                                                            "head_kind": "cascade"}}))
    (folder / "model_final.pth").write_bytes(b"")
    with pytest.raises(ModelDirError, match="head_kind"):
        read_model_info(folder)
