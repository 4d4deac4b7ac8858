"""Checkpoints of the older detectron2 VoVNet / MobileNetV2 projects, read into the kit's timm backbones.

The older balloon REST API kit trained Mask R-CNN with the VoVNet and MobileNetV2 backbones of
the public detectron2 projects (youngwanLEE's vovnet-detectron2, whose modules centermask2 shares):
their configs carry their own keys (``MODEL.VOVNET.CONV_BODY``, ``NORM``, ``OUT_CHANNELS``, ...,
``stage2..5`` feature names; the MobileNetV2 takes ``MODEL.RESNETS.OUT_FEATURES``) and their
checkpoints their own weight names (``backbone.bottom_up.stem.stem_1/conv.weight``,
``backbone.bottom_up.features.1.conv.0.weight``, ...). Where the network is one timm builds (the
kit's backbones are timm's), the config is translated to the kit's keys and each weight renamed to
the kit's name for it, every name and shape checked; where it is not, the refusal says what differs.

The architectures were checked against the projects' own modules (random weights, the same input):
the kit's FPN features equal theirs to float rounding (see tests/modeling/test_legacy_d2.py).
"""

from __future__ import annotations

import re

import torch
from detectron2.config import CfgNode

from maskrcnn_finetune.errors import CheckpointError, ConfigError

VOVNET_TWINS = {
    "V-19-slim-dw-eSE": "ese_vovnet19b_slim_dw",
    "V-19-dw-eSE": "ese_vovnet19b_dw",
    "V-19-slim-eSE": "ese_vovnet19b_slim",
    "V-19-eSE": "ese_vovnet19b",  # described by timm (vovnet.model_cfgs), not registered: see timm_backbones
}
"""The older projects' VoVNet names (``MODEL.VOVNET.CONV_BODY``) and the timm networks that compute the same."""

VOVNET_DIFFERENT = {
    "V-39-eSE": "its stages of several blocks put an eSE attention in every block; timm's ese_vovnet39b only in "
                "the last block of each stage, so the checkpoint has attention weights the kit's network has no "
                "place for",
    "V-57-eSE": "the same as V-39-eSE: eSE in every block, timm's ese_vovnet57b only in the last of each stage",
    "V-99-eSE": "the same as V-39-eSE: eSE in every block, timm's ese_vovnet99b only in the last of each stage",
}
"""Older VoVNets with no timm twin, and what differs."""

VOVNET_BUILDERS = ("build_vovnet_fpn_backbone",)
MOBILENET_BUILDERS = ("build_mobilenetv2_fpn_backbone", "build_mobilenet_fpn_backbone")
NOT_MASK_RCNN_FPN = {
    "build_vovnet_backbone": "is the older VoVNet without an FPN",
    "build_mnv2_backbone": "is the older MobileNetV2 without an FPN",
    "build_fcos_vovnet_fpn_backbone": "is centermask2's FPN for CenterMask (FCOS), not Mask R-CNN's",
    "build_fcos_mobilenetv2_fpn_backbone": "is centermask2's FPN for CenterMask (FCOS), not Mask R-CNN's",
}
"""The projects' other backbone builders, and why the kit cannot serve what they built."""

_VOVNET_OWN_KEYS = ("CONV_BODY", "NORM", "OUT_CHANNELS", "BACKBONE_OUT_CHANNELS", "STAGE_WITH_DCN",
                    "WITH_MODULATED_DCN", "DEFORMABLE_GROUPS")
"""Keys of the projects' ``MODEL.VOVNET`` the kit's has not; their FPN reads ``MODEL.FPN.OUT_CHANNELS``,
never ``OUT_CHANNELS`` / ``BACKBONE_OUT_CHANNELS``, so those are dropped unread."""
_NORMS = {"FrozenBN": True, "BN": False, "SyncBN": False, "nnSyncBN": False, "naiveSyncBN": False}
"""The projects' ``MODEL.VOVNET.NORM`` values the kit's BatchNorm reproduces -> ``FREEZE_BN`` (in inference
a BatchNorm computes what a frozen one does; their weights have the same names)."""
_STAGES = ("stage2", "stage3", "stage4", "stage5")
_RETRAIN = ("serve a ResNet checkpoint of that kit instead, or retrain this backbone with "
            "scripts/train.py --engine detectron2 --backbone vovnet19_fpn (or mobilenetv2_fpn)")


def _stage_to_res(names) -> list[str]:
    """The older ``stage2..stage5`` feature names as the kit's ``res2..res5``."""
    return [f"res{name[len('stage'):]}" if str(name) in _STAGES else name for name in names]


def legacy_kind(data: dict) -> str | None:
    """What a config (a dict, its bases merged) of the older projects needs, else None:
    ``"vovnet"`` / ``"mobilenet"`` (their backbones), ``"plain"`` (a backbone of detectron2's own, such as
    the ResNets, in a config that also carries the projects' keys) or ``"refused"`` (their other builders).
    """
    model = data.get("MODEL") or {}
    name = (model.get("BACKBONE") or {}).get("NAME")
    vovnet = model.get("VOVNET") or {}
    has_vovnet_keys = any(key in vovnet for key in _VOVNET_OWN_KEYS)
    if name in NOT_MASK_RCNN_FPN:
        return "refused"
    if name in VOVNET_BUILDERS and has_vovnet_keys:
        return "vovnet"
    if name in MOBILENET_BUILDERS and "MOBILENETV2" not in model:  # the kit's own configs have MOBILENETV2
        return "mobilenet"
    if has_vovnet_keys or "MOBILENET" in model:  # e.g. a ResNet config dumped with the projects' defaults
        return "plain"
    return None


def _vovnet_config(path, old: dict, fpn_in: list[str]) -> dict:
    """The kit's ``MODEL.VOVNET`` for the projects' one.

    Raises:
        ConfigError: a CONV_BODY, NORM, deformable convolution or feature the kit cannot reproduce.
    """
    body = old.get("CONV_BODY", "V-39-eSE")  # the projects' default
    if body not in VOVNET_TWINS:
        known = f"'{body}' is not one of the VoVNets the kit knows ({', '.join(VOVNET_TWINS)})"
        why = VOVNET_DIFFERENT.get(body, known)
        raise ConfigError(f"config '{path}': MODEL.VOVNET.CONV_BODY '{body}' cannot be imported: {why}; {_RETRAIN}")
    norm = old.get("NORM", "FrozenBN")
    if norm not in _NORMS:
        raise ConfigError(f"config '{path}': MODEL.VOVNET.NORM '{norm}' cannot be imported: the kit's VoVNet "
                          f"(timm's {VOVNET_TWINS[body]}) has BatchNorm layers, not {norm} (it reads "
                          f"{', '.join(_NORMS)}); {_RETRAIN}")
    if any(old.get("STAGE_WITH_DCN") or ()):
        raise ConfigError(f"config '{path}': MODEL.VOVNET.STAGE_WITH_DCN has deformable convolutions, which the "
                          f"kit's VoVNet (timm's {VOVNET_TWINS[body]}) does not have; {_RETRAIN}")
    # "stem" (stride 4, as stage2) can be an output of theirs but never an FPN input: not needed
    features = _stage_to_res(f for f in old.get("OUT_FEATURES", _STAGES) if f != "stem")
    unknown = [f for f in features if f not in ("res2", "res3", "res4", "res5")]
    unfed = [f for f in fpn_in if f not in features]
    if unknown or unfed:
        raise ConfigError(f"config '{path}': MODEL.VOVNET.OUT_FEATURES {old.get('OUT_FEATURES')} with "
                          f"MODEL.FPN.IN_FEATURES {fpn_in} cannot be imported: the FPN takes stage2..stage5 "
                          "and each must be an output; pass the config the weights were trained with")
    kept = {k: v for k, v in old.items() if k not in _VOVNET_OWN_KEYS}
    return {**kept, "TIMM_NAME": VOVNET_TWINS[body], "FREEZE_BN": _NORMS[norm], "PRETRAINED": False,
            "OUT_FEATURES": features}


def translate_config(path) -> tuple[dict | None, str | None]:
    """The yaml ``path`` read once: its data with the older projects' keys as the kit's, and its kind
    (see :func:`legacy_kind`); ``(None, None)`` for any other config, or one that is not readable
    yaml (detectron2's own loader then says why).

    Raises:
        ConfigError: the network has no twin among the kit's (the message says what differs and what to do).
    """
    try:
        data = CfgNode.load_yaml_with_base(str(path), allow_unsafe=False)
    except Exception:  # noqa: BLE001 - not a readable yaml: the ordinary loader says why
        return None, None
    kind = legacy_kind(data)
    if kind is None:
        return None, None
    model = data["MODEL"]
    if kind == "refused":
        name = model["BACKBONE"]["NAME"]
        raise ConfigError(f"config '{path}': MODEL.BACKBONE.NAME '{name}' {NOT_MASK_RCNN_FPN[name]}; the kit "
                          f"serves Mask R-CNN with an FPN ({', '.join(VOVNET_BUILDERS + MOBILENET_BUILDERS[:1])} "
                          f"or detectron2's own); {_RETRAIN}")
    model.pop("MOBILENET", None)
    old_vovnet = model.pop("VOVNET", None) or {}
    fpn = model.setdefault("FPN", {})
    if "IN_FEATURES" in fpn:
        fpn["IN_FEATURES"] = _stage_to_res(fpn["IN_FEATURES"])
    if kind == "vovnet":
        model["VOVNET"] = _vovnet_config(path, old_vovnet, fpn.get("IN_FEATURES", []))
    elif kind == "mobilenet":
        model.setdefault("BACKBONE", {})["NAME"] = "build_mobilenetv2_fpn_backbone"
        # theirs returns res2..res5 whatever RESNETS.OUT_FEATURES says, with frozen norms everywhere
        model["MOBILENETV2"] = {"TIMM_NAME": "mobilenetv2_100", "FREEZE_BN": True, "PRETRAINED": False,
                                "OUT_FEATURES": ["res2", "res3", "res4", "res5"]}
    return data, kind


_VOVNET_UNITS = {"conv": "conv", "norm": "bn", "dw_conv3x3": "conv_dw", "pw_conv1x1": "conv_pw", "pw_norm": "bn"}
_OSA_PARTS = {"concat": "conv_concat", "conv_reduction": "conv_reduction"}


def _vovnet_name(old: str, kit: dict) -> str | None:
    """The kit's (timm's) name of an older VoVNet weight, without the ``backbone.bottom_up.`` prefix."""
    stem = re.fullmatch(r"stem\.stem_(\d+)/(\w+)\.(\w+)", old)
    if stem and stem.group(2) in _VOVNET_UNITS:
        return f"body.stem_{int(stem.group(1)) - 1}.{_VOVNET_UNITS[stem.group(2)]}.{stem.group(3)}"
    block = re.fullmatch(r"stage(\d)\.OSA\1_(\d+)\.(.+)", old)
    if not block:
        return None
    where, rest = f"body.stages_{int(block.group(1)) - 2}.blocks.{int(block.group(2)) - 1}", block.group(3)
    ese = re.fullmatch(r"ese\.fc\.(\w+)", rest)
    if ese:
        return f"{where}.attn.fc.{ese.group(1)}"
    unit = re.fullmatch(r"(layers\.(\d+)|concat|conv_reduction)\.OSA\d_\d+_\w+/(\w+)\.(\w+)", rest)
    if not unit or unit.group(3) not in _VOVNET_UNITS:
        return None
    part = f"conv_mid.{unit.group(2)}" if unit.group(2) is not None else _OSA_PARTS[unit.group(1)]
    return f"{where}.{part}.{_VOVNET_UNITS[unit.group(3)]}.{unit.group(4)}"


# torchvision-style MobileNetV2 (theirs) -> timm's: the stem, then the inverted residual blocks in order;
# inside a block, its Sequential's index -> timm's layer (the first block has no expansion)
_MOBILENET_FIRST = {"0": "conv_dw", "1": "bn1", "3": "conv_pw", "4": "bn2"}
_MOBILENET_BLOCK = {"0": "conv_pw", "1": "bn1", "3": "conv_dw", "4": "bn2", "6": "conv_pwl", "7": "bn3"}


def _mobilenet_name(old: str, kit: dict) -> str | None:
    """The kit's (timm's) name of an older MobileNetV2 weight, without the ``backbone.bottom_up.`` prefix."""
    stem = re.fullmatch(r"features\.0\.([01])\.(\w+)", old)
    if stem:
        return f"body.{'conv_stem' if stem.group(1) == '0' else 'bn1'}.{stem.group(2)}"
    layer = re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.(\w+)", old)
    blocks = kit["blocks"]  # timm's block names in network order, e.g. body.blocks.1.0
    if not layer or not 0 < int(layer.group(1)) <= len(blocks):
        return None
    block = blocks[int(layer.group(1)) - 1]
    parts = _MOBILENET_BLOCK if f"{block}.conv_pwl.weight" in kit["names"] else _MOBILENET_FIRST
    return f"{block}.{parts[layer.group(2)]}.{layer.group(3)}" if layer.group(2) in parts else None


_RENAMERS = {"vovnet": _vovnet_name, "mobilenet": _mobilenet_name}


def _listed(items: list[str], limit: int = 6) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def rename_weights(state: dict, model: torch.nn.Module, kind: str, prefix: str = "backbone.bottom_up.") -> dict:
    """The older checkpoint's weights under the kit's names: each backbone weight renamed to the kit's
    name for it (its shape checked); the FPN and heads keep their names (detectron2's on both sides).
    A checkpoint whose backbone already has the kit's names is returned as it is.

    Raises:
        CheckpointError: weights with no place in the kit's network, weights it needs that are missing, or
            weights of another shape, all named with their shapes.
    """
    if kind not in _RENAMERS:
        return state
    target = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    needed = {k: v for k, v in target.items() if not k.endswith("num_batches_tracked")}
    old = {k: v for k, v in state.items() if k.startswith(prefix) and not k.endswith("num_batches_tracked")}
    if not old:
        raise CheckpointError(f"the checkpoint has no '{prefix}*' weights: it is not a {kind} checkpoint of the "
                              "older detectron2 projects; pass the config it was trained with")
    if set(old) == set(needed):  # already the kit's names (e.g. a folder's weights)
        return state
    names = [k[len(prefix):] for k in needed]
    blocks = [m.group(1) for m in (re.match(r"(body\.blocks\.\d+\.\d+)\.", n) for n in names) if m]
    kit = {"names": set(names), "blocks": list(dict.fromkeys(blocks))}  # what the renamers look up
    renamed, placed, nowhere, wrong = {}, set(), [], []
    for name, value in old.items():
        new = _RENAMERS[kind](name[len(prefix):], kit)
        new = prefix + new if new else None
        if new not in needed or new in placed:
            nowhere.append(f"'{name}' {tuple(value.shape)}")
            continue
        placed.add(new)
        if value.shape != needed[new].shape:
            wrong.append(f"'{name}' {tuple(value.shape)} where the kit's '{new}' is {tuple(needed[new].shape)}")
        else:
            renamed[new] = value
    missing = [f"'{k}' {tuple(v.shape)}" for k, v in needed.items() if k not in placed]
    if nowhere or missing or wrong:
        parts = [f"{len(items)} {what}: {_listed(items)}" for what, items in (
            ("of its weights have no place in the kit's network", nowhere),
            ("weights the kit's network needs are not in it", missing),
            ("of another shape", wrong)) if items]
        raise CheckpointError(f"the {kind} checkpoint does not fit the kit's network: {'; '.join(parts)}; {_RETRAIN}")
    kept = {k: v for k, v in state.items() if not k.startswith(prefix)}
    counters = {k: torch.zeros_like(v) for k, v in target.items() if k.endswith("num_batches_tracked")}
    return {**kept, **renamed, **counters}  # counters: trainable BatchNorm's, which frozen norms do not have


