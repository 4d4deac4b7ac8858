"""--init-from: a trained model folder's weights in a new run's model, classes matched by name."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.model_dir import WEIGHTS
from maskrcnn_finetune.modeling import ModelSpec, build_model
from maskrcnn_finetune.engines.init_from import CLASS_LAYERS, init_from_model_dir
from maskrcnn_finetune.predictor import Predictor


def _spec(model_dir) -> ModelSpec:
    return ModelSpec.from_dict(json.loads((model_dir / "model.json").read_text())["model"])


def test_the_same_classes_reuse_every_weight_and_predict_the_same(tiny_model_dir, tiny_coco):
    from maskrcnn_finetune.data.coco import load_coco

    spec = _spec(tiny_model_dir)
    torch.manual_seed(1)
    model = build_model(spec)
    message = init_from_model_dir(model, spec, tiny_model_dir)
    assert "every weight reused" in message
    trained = torch.load(tiny_model_dir / WEIGHTS, weights_only=True)
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    val = load_coco(tiny_coco["val"])
    images = [val.image_path(i) for i in val.images]
    ours = Predictor(model, spec, "cpu")(images, threshold=0.0)
    theirs = Predictor.from_dir(tiny_model_dir, device="cpu")(images, threshold=0.0)
    assert sum(len(o) for o in ours) > 0
    for a, b in zip(ours, theirs):  # the same path and weights on the same images: row for row
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.masks, b.masks)


def test_new_classes_start_fresh_and_kept_classes_keep_their_rows(tiny_model_dir):
    old = _spec(tiny_model_dir)
    kept = list(reversed(old.class_names))[:2]  # another order, one class dropped when there are three
    spec = dataclasses.replace(old, class_names=[kept[0], "balloon", *kept[1:]])
    torch.manual_seed(1)
    model = build_model(spec)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    message = init_from_model_dir(model, spec, tiny_model_dir)
    assert "new classes start untrained: balloon" in message
    trained = torch.load(tiny_model_dir / WEIGHTS, weights_only=True)
    state = model.state_dict()
    for key, value in state.items():
        if key not in CLASS_LAYERS:
            assert torch.equal(value, trained[key]), key
    for key, rows in CLASS_LAYERS.items():
        block = lambda t, c: t[c * rows:(c + 1) * rows]  # noqa: E731
        assert torch.equal(block(state[key], 0), block(trained[key], 0))  # background
        for c, name in enumerate(spec.class_names, start=1):
            if name == "balloon":
                assert torch.equal(block(state[key], c), block(fresh[key], c))
            else:
                assert torch.equal(block(state[key], c), block(trained[key], old.class_names.index(name) + 1))


def test_another_architecture_is_refused_with_what_differs(tiny_model_dir):
    spec = dataclasses.replace(_spec(tiny_model_dir), mask_head_layers=[16])
    with pytest.raises(ConfigError, match=r"another architecture \(mask_head_layers \[32\] there, \[16\] here\)"):
        init_from_model_dir(build_model(spec), spec, tiny_model_dir)
    spec = dataclasses.replace(_spec(tiny_model_dir), backbone="resnet18_fpn")
    with pytest.raises(ConfigError, match="backbone 'mobilenetv2_fpnlite' there, 'resnet18_fpn' here"):
        init_from_model_dir(build_model(spec), spec, tiny_model_dir)
