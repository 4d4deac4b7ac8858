"""Checkpoints of the older detectron2 VoVNet / MobileNetV2 projects, read into the kit's timm backbones.

The older balloon REST API kit trained Mask R-CNN with the VoVNet and MobileNetV2 backbones of
the public detectron2 projects (vovnet-detectron2, centermask2): their configs carry their own
keys (``MODEL.VOVNET.CONV_BODY``, ``NORM``, ``OUT_CHANNELS``, ..., ``MODEL.MOBILENET``) and their
checkpoints their own weight names (``backbone.bottom_up.stem.stem_1/conv.weight``, ...). Where
the network is one timm builds (the kit's backbones are timm's), the config is translated to the
kit's keys and the weights are renamed onto the kit's model, layer by layer in the order both
define them, every shape checked; where it is not, the refusal says what differs.

The architectures were checked against the projects' own modules (random weights, the same
input): the kit's features equal theirs to float rounding (see tests/modeling/test_legacy_d2.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from detectron2.config import CfgNode

from maskrcnn_finetune.errors import CheckpointError, ConfigError

VOVNET_TWINS = {
    "V-19-slim-dw-eSE": "ese_vovnet19b_slim_dw",
    "V-19-dw-eSE": "ese_vovnet19b_dw",
    "V-19-slim-eSE": "ese_vovnet19b_slim",
}
"""The older projects' VoVNet names (``MODEL.VOVNET.CONV_BODY``) and the timm networks that compute the same."""

VOVNET_DIFFERENT = {
    "V-19-eSE": "timm has no full-width VoVNet-19 with eSE (only ese_vovnet19b_slim, _dw and _slim_dw)",
    "V-39-eSE": "its stages of several blocks put an eSE attention in every block; timm's ese_vovnet39b only in "
                "the last block of each stage, so the checkpoint has attention weights the kit's network has no "
                "place for",
    "V-57-eSE": "the same as V-39-eSE: eSE in every block, timm's ese_vovnet57b only in the last of each stage",
    "V-99-eSE": "the same as V-39-eSE: eSE in every block, timm's ese_vovnet99b only in the last of each stage",
}
"""Older VoVNets with no timm twin, and what differs."""

MOBILENET_BUILDERS = ("build_mobilenetv2_fpn_backbone", "build_mobilenet_fpn_backbone")
_DROPPED_VOVNET_KEYS = ("CONV_BODY", "NORM", "OUT_CHANNELS", "BACKBONE_OUT_CHANNELS", "STAGE_WITH_DCN",
                        "WITH_MODULATED_DCN", "DEFORMABLE_GROUPS")
_NORMS = {"FrozenBN": True, "BN": False, "SyncBN": False, "": False}  # -> FREEZE_BN
_RETRAIN = ("serve a ResNet checkpoint of that kit instead, or retrain this backbone with scripts/train.py "
            "(--backbone vovnet19_fpn or mobilenetv2_fpn)")


def _stage_to_res(names) -> list[str]:
    """The older ``stage2..stage5`` feature names as the kit's ``res2..res5``."""
    return [f"res{name[len('stage'):]}" if str(name).startswith("stage") else name for name in names]


def legacy_kind(data: dict) -> str | None:
    """``"vovnet"`` or ``"mobilenet"`` for a config (a dict, its bases merged) of the older projects, else None."""
    model = data.get("MODEL") or {}
    if "CONV_BODY" in (model.get("VOVNET") or {}):
        return "vovnet"
    if "MOBILENET" in model or (model.get("BACKBONE") or {}).get("NAME") == "build_mobilenet_fpn_backbone":
        return "mobilenet"
    return None


def translate_config(path) -> tuple[CfgNode | None, str | None]:
    """The kit's config for an older VoVNet / MobileNetV2 config file, and which kind it is; ``(None, None)``
    for any other config.

    Raises:
        ConfigError: the network has no twin among the kit's (the message says what differs and what to do).
    """
    from maskrcnn_finetune.modeling.detectron2.model_config import empty_config

    data = CfgNode.load_yaml_with_base(str(path), allow_unsafe=False)
    kind = legacy_kind(data)
    if kind is None:
        return None, None
    model = data["MODEL"]
    model.pop("MOBILENET", None)
    fpn = model.setdefault("FPN", {})
    if "IN_FEATURES" in fpn:
        fpn["IN_FEATURES"] = _stage_to_res(fpn["IN_FEATURES"])
    if kind == "vovnet":
        old = model["VOVNET"]
        body = old.get("CONV_BODY")
        if body in VOVNET_DIFFERENT or body not in VOVNET_TWINS:
            why = VOVNET_DIFFERENT.get(body, f"'{body}' is not one of the VoVNets the kit knows ({', '.join(VOVNET_TWINS)})")
            raise ConfigError(f"config '{path}': MODEL.VOVNET.CONV_BODY '{body}' cannot be imported: {why}; {_RETRAIN}")
        norm = old.get("NORM", "FrozenBN")
        if norm not in _NORMS:
            raise ConfigError(f"config '{path}': MODEL.VOVNET.NORM '{norm}' cannot be imported: the kit's VoVNet "
                              f"(timm's {VOVNET_TWINS[body]}) has BatchNorm layers, not {norm}; {_RETRAIN}")
        if any(old.get("STAGE_WITH_DCN") or ()):
            raise ConfigError(f"config '{path}': MODEL.VOVNET.STAGE_WITH_DCN has deformable convolutions, which the "
                              f"kit's VoVNet (timm's {VOVNET_TWINS[body]}) does not have; {_RETRAIN}")
        new = {"TIMM_NAME": VOVNET_TWINS[body], "FREEZE_BN": _NORMS[norm], "PRETRAINED": False,
               "OUT_FEATURES": _stage_to_res(old.get("OUT_FEATURES", ["stage2", "stage3", "stage4", "stage5"]))}
        model["VOVNET"] = {**{k: v for k, v in old.items() if k not in _DROPPED_VOVNET_KEYS}, **new}
    else:
        model.setdefault("BACKBONE", {})["NAME"] = "build_mobilenetv2_fpn_backbone"
        # the older MobileNetV2 has frozen norms everywhere (detectron2's FrozenBatchNorm2d)
        model["MOBILENETV2"] = {"TIMM_NAME": "mobilenetv2_100", "FREEZE_BN": True, "PRETRAINED": False,
                                "OUT_FEATURES": _stage_to_res((model.get("RESNETS") or {}).get(
                                    "OUT_FEATURES", ["res2", "res3", "res4", "res5"]))}
    cfg = empty_config()
    try:
        cfg.merge_from_other_cfg(CfgNode(data))
    except KeyError as exc:
        raise ConfigError(f"config '{path}' has a key detectron2 does not know ({exc}) besides the older "
                          f"{kind} keys the kit translates; it belongs to a project this kit cannot build") from exc
    return cfg, kind


def _tensors(state: dict, prefix: str) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in state.items() if k.startswith(prefix) and not k.endswith("num_batches_tracked")]


_OSA_PARTS = {"conv_reduction": 0, "layers": 1, "concat": 2, "ese": 3}


def _in_network_order(items: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """The older VoVNet's tensors in the order its blocks compute them (timm's order).

    The older OSA block registers its (then empty) ``layers`` list before its ``conv_reduction``,
    so its state dict lists the reduction after the layers it feeds; timm's lists it first.
    """
    first: dict[str, int] = {}
    keys = []
    for index, (name, _) in enumerate(items):
        match = re.search(r"^(.*\.OSA\d+_\d+)\.(conv_reduction|layers|concat|ese)\.", name)
        block, part = (match.group(1), _OSA_PARTS[match.group(2)]) if match else (name, 0)
        keys.append((first.setdefault(block, index), part, index))
    return [item for _, item in sorted(zip(keys, items), key=lambda pair: pair[0])]


def rename_weights(state: dict, model: torch.nn.Module, kind: str, prefix: str = "backbone.bottom_up.") -> dict:
    """The older checkpoint's weights under the kit's names: the backbone's tensors in the order both
    networks define them, paired one to one (every shape checked); the FPN and heads keep their names.

    Raises:
        CheckpointError: a different number of tensors, or the first pair whose shapes differ, named.
    """
    target = model.state_dict()
    old, new = _tensors(state, prefix), _tensors(target, prefix)
    if kind == "vovnet":
        old = _in_network_order(old)
    if not old:
        raise CheckpointError(f"the checkpoint has no '{prefix}*' weights: it is not a {kind} checkpoint of the "
                              "older detectron2 projects; pass the config it was trained with")
    for k, ((old_name, old_value), (new_name, new_value)) in enumerate(zip(old, new)):
        if old_value.shape != new_value.shape:
            raise CheckpointError(
                f"the {kind} checkpoint differs from the kit's network at its tensor {k}: '{old_name}' "
                f"{tuple(old_value.shape)} where the kit's has '{new_name}' {tuple(new_value.shape)}; {_RETRAIN}")
    if len(old) != len(new):
        extra = old[len(new):] or new[len(old):]
        whose = "the checkpoint" if len(old) > len(new) else "the kit's network"
        raise CheckpointError(f"the {kind} checkpoint has {len(old)} backbone tensors and the kit's network "
                              f"{len(new)}: {whose} also has '{extra[0][0]}' {tuple(extra[0][1].shape)}; {_RETRAIN}")
    renamed = {k: v for k, v in state.items() if not k.startswith(prefix)}
    renamed.update({new_name: old_value for (_, old_value), (new_name, _) in zip(old, new)})
    for name, value in target.items():  # trainable BatchNorm's counters, which frozen norms do not have
        if name.startswith(prefix) and name.endswith("num_batches_tracked"):
            renamed[name] = torch.zeros_like(value)
    return renamed


def legacy_kind_of_file(path) -> str | None:
    """``"vovnet"`` / ``"mobilenet"`` for a yaml file of the older projects, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return legacy_kind(CfgNode.load_yaml_with_base(str(path), allow_unsafe=False))
    except Exception:  # noqa: BLE001 - not a readable yaml: the ordinary loader says why
        return None
