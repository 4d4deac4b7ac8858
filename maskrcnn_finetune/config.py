"""The one training configuration: CLI flags or a notebook form -> :class:`TrainConfig` -> engines.

Presets are named recipes; explicit options override them. The resolved config is written
next to the outputs it produced (``config.json`` in the model folder).
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from maskrcnn_finetune.cli import add_device_argument, add_with_aliases
from maskrcnn_finetune.devices import check_device
from maskrcnn_finetune.engine_names import ENGINES
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.model_spec import DEFAULT_SCORE_THRESHOLD, ModelSpec, default_anchor_sizes


def _option(default, help: str | None = None, choices: tuple | None = None, spec: str | None = None,
            flag: str | None = None, aliases: tuple[str, ...] | None = None):
    """A :class:`TrainConfig` field with its help text, its allowed values and, for a model option,
    the :class:`ModelSpec` field it sets (whose default it takes when ``default`` is ``SPEC_DEFAULT``).

    ``flag`` is its command-line flag when that is not the field's name (``--threshold`` for
    ``score_threshold``: the name stays, since config.json files and :meth:`TrainConfig.from_dict`
    use it), ``aliases`` older spellings of the flag that still work (left out of ``--help``).
    """
    metadata = {k: v for k, v in (("help", help), ("choices", choices), ("spec", spec), ("flag", flag),
                                  ("aliases", aliases)) if v is not None}
    if default is SPEC_DEFAULT:
        source = ModelSpec.__dataclass_fields__[spec]
        if source.default_factory is not MISSING:
            return field(default_factory=source.default_factory, metadata=metadata)
        default = source.default
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


SPEC_DEFAULT = object()
"""A model option's default is :class:`ModelSpec`'s (one source of truth)."""


@dataclass
class TrainConfig:
    """Every training option. Paths are strings so the config serialises as it is.

    Each field carries its help text and allowed values (the CLI flags are generated from them,
    see :func:`add_config_arguments`); the model options name the :class:`ModelSpec` field they
    set, and :meth:`model_spec` builds the spec from them.
    """

    train_json: str = _option("", "COCO json to train on (from scripts/labelme_to_coco.py)")
    val_json: str = _option("", "COCO json to evaluate on every --eval-period iterations")
    output_dir: str = _option("", "the model folder to write")
    engine: str = _option(ENGINES[0], "the training engine", choices=ENGINES)
    backbone: str = _option("resnet50_fpn", spec="backbone")
    pretrained: str = _option("default", "default: COCO weights for resnet50_fpn, ImageNet for the others; "
                              "none: from scratch", choices=("default", "none"))
    # schedule: give max_iter, or epochs (converted to iterations over the train set)
    max_iter: int = _option(0, "iterations to train (or give --epochs)")
    epochs: float = _option(0.0, "passes over the training set (converted to iterations)")
    batch_size: int = _option(2)
    optimizer: str = _option("sgd", choices=("sgd", "adamw"))
    lr: float = _option(0.01)
    momentum: float = _option(0.9)
    weight_decay: float = _option(1e-4)
    warmup_iters: int = _option(100)
    schedule: str = _option("step", choices=("step", "cosine"))
    steps: list[float] = _option([0.7, 0.9], "step schedule: the fractions of --max-iter where the lr drops")
    gamma: float = _option(0.1)
    clip_grad: float = _option(10.0, "max gradient norm (0: no clipping)")
    amp: str = _option("auto", "mixed precision: auto (fp16 on CUDA, bf16 on CPUs with bf16 units), on, off (fp32)",
                       choices=("auto", "on", "off"))
    device: str = _option("auto", "what trains: auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N "
                          "(the N-th GPU, from 0)")
    # images and augmentation
    image_size: int = _option(SPEC_DEFAULT, "short side of the images at test time (and training, unless "
                              "--train-sizes)", spec="min_size")
    max_size: int = _option(SPEC_DEFAULT, spec="max_size")
    train_sizes: list[int] = _option([], "several short sides to pick from at random while training (multi-scale)")
    choose_test_size: bool = _option(False, "after training, evaluate at --image-size and each --train-sizes and "
                                     "write the size with the best val mask AP50 into model.json (torchvision engine)")
    hflip: float = _option(0.5, "probability of a horizontal flip while training")
    # model details (ModelSpec's fields)
    anchor_sizes: list[int] = _option([], "one anchor size per level the RPN proposes from, finest first (empty: "
                                      "scaled from --image-size)", spec="anchor_sizes")
    rpn_levels: int = _option(SPEC_DEFAULT, "FPN levels the RPN proposes from, counted from the coarsest: 5 is P2-P6, "
                              "4 leaves out P2 (faster; its anchors are smaller than most objects in small images)",
                              choices=(4, 5), spec="rpn_levels")
    fpn_norm: str = _option(SPEC_DEFAULT, "bn: BatchNorm after each of the FPN's convolutions (batches of 4 and "
                            "more); none: the usual FPN", choices=("none", "bn"), spec="fpn_norm")
    box_batch_size_per_image: int = _option(SPEC_DEFAULT, spec="box_batch_size_per_image")
    detections_per_image: int = _option(SPEC_DEFAULT, spec="detections_per_image")
    rpn_pre_nms_top_n_train: int = _option(SPEC_DEFAULT, spec="rpn_pre_nms_top_n_train")
    rpn_post_nms_top_n_train: int = _option(SPEC_DEFAULT, spec="rpn_post_nms_top_n_train")
    rpn_pre_nms_top_n_test: int = _option(SPEC_DEFAULT, "proposals per RPN level before NMS at test time",
                                          spec="rpn_pre_nms_top_n_test")
    rpn_post_nms_top_n_test: int = _option(SPEC_DEFAULT, "proposals the box head scores at test time (fewer: faster "
                                           "inference; images with few objects need few)",
                                           spec="rpn_post_nms_top_n_test")
    box_head_dim: int = _option(SPEC_DEFAULT, spec="box_head_dim")
    mask_head_layers: list[int] = _option(SPEC_DEFAULT, spec="mask_head_layers")
    score_threshold: float = _option(DEFAULT_SCORE_THRESHOLD, "the score threshold the model folder keeps: the default "
                                     "of the Predictor, batch prediction and the server (default: "
                                     f"{DEFAULT_SCORE_THRESHOLD})", flag="--threshold",
                                     aliases=("--score-threshold",))
    init_from: str = _option("", "start from a trained model folder (the next round of labelling): every weight "
                             "reused, new classes added (torchvision engine)")
    # bookkeeping
    eval_period: int = _option(500, "evaluate and checkpoint every N iterations")
    log_period: int = _option(20)
    seed: int = _option(0)
    num_workers: int = _option(0)
    resume: bool = _option(False, "continue the interrupted run in --output-dir exactly where it stopped")
    preset: str = _option("")

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data)

    def model_spec(self, class_names: list[str]) -> ModelSpec:
        """The :class:`ModelSpec` of this run's model, from its model options."""
        values = {f.metadata["spec"]: copy.copy(getattr(self, f.name)) for f in fields(self) if "spec" in f.metadata}
        values["anchor_sizes"] = values["anchor_sizes"] or default_anchor_sizes(self.image_size, self.rpn_levels)
        return ModelSpec(class_names=list(class_names), **values)


PRESETS: dict[str, dict] = {
    # A CPU without pretrained weights: small images, a light backbone, a schedule of minutes on two
    # cores. What it scores and how long it takes: benchmarks/RESULTS.md, "The demo recipe".
    "demo": dict(
        # plain 3x3 convolutions (ResNet-18, 128-channel FPN) learn faster from scratch per CPU
        # second than MobileNetV2's depthwise ones
        backbone="resnet18_fpn",
        pretrained="none",
        max_iter=800,
        batch_size=4,
        optimizer="adamw",
        lr=1.5e-3,
        weight_decay=1e-4,
        warmup_iters=50,
        schedule="cosine",
        image_size=192,
        max_size=320,
        train_sizes=[160, 192, 224],
        # the test size is chosen on val after training: on a small val split the best of 192 and
        # 224 px changed between runs that differed only in float rounding
        choose_test_size=True,
        # at 192 px P2's anchors are smaller than any object, and its RPN head is the step's largest convolution
        rpn_levels=4,
        box_batch_size_per_image=128,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        # at test time too: torchvision's 1000 proposals make inference slower for the same AP, and the
        # ones past the 300th are near-tied background boxes whose order float rounding decides (so an
        # ONNX Runtime export, whose convolutions round otherwise, proposed others and failed parity)
        rpn_post_nms_top_n_test=300,
        box_head_dim=256,
        mask_head_layers=[64, 64],  # the mask head runs on every positive RoI: wider layers cost training time
        eval_period=200,
    ),
    # The smallest model that trains and serves end to end in seconds: the notebooks' smoke mode and
    # the tests. Its predictions mean nothing.
    "tiny": dict(
        backbone="mobilenetv2_fpnlite",
        pretrained="none",
        max_iter=3,
        batch_size=2,
        lr=0.01,
        warmup_iters=1,
        image_size=64,
        max_size=96,
        train_sizes=[],
        box_batch_size_per_image=32,
        rpn_pre_nms_top_n_train=100,
        rpn_post_nms_top_n_train=50,
        box_head_dim=64,
        mask_head_layers=[32],
        detections_per_image=20,
        eval_period=100,
        log_period=1,
    ),
    # Fine-tuning pretrained weights on a GPU (Colab): the usual detectron2-style recipe.
    "finetune": dict(
        backbone="resnet50_fpn",
        pretrained="default",
        max_iter=1500,
        batch_size=2,
        optimizer="sgd",
        lr=0.0025,
        warmup_iters=100,
        schedule="step",
        image_size=800,
        train_sizes=[640, 672, 704, 736, 768, 800],
        eval_period=500,
    ),
}


def resolve_config(preset: str | None = None, **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a preset plus explicit options (``None`` values are ignored).

    Raises:
        ConfigError: unknown preset or option, or values that cannot work together.
    """
    values: dict = {}
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
        values["preset"] = preset
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig.from_dict(values)
    check_config(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> None:
    """Raises :class:`ConfigError` naming the option to change when values cannot work."""
    problems = []
    if not cfg.train_json:
        problems.append("--train-json is required (a COCO json, e.g. from scripts/labelme_to_coco.py)")
    if not cfg.output_dir:
        problems.append("--output-dir is required (where the model folder is written)")
    if cfg.max_iter <= 0 and cfg.epochs <= 0:
        problems.append("give --max-iter or --epochs (a positive number)")
    if cfg.batch_size < 1:
        problems.append(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.lr <= 0:
        problems.append(f"--lr must be positive, got {cfg.lr}")
    for f in fields(cfg):
        allowed = f.metadata.get("choices")
        if allowed and getattr(cfg, f.name) not in allowed:
            problems.append(f"{option_flag(f.name)} must be one of {', '.join(map(str, allowed))}, "
                            f"got '{getattr(cfg, f.name)}'")
    if cfg.image_size < 32 or any(s < 32 for s in cfg.train_sizes):
        problems.append("image sizes must be at least 32 px")
    if cfg.anchor_sizes and len(cfg.anchor_sizes) != cfg.rpn_levels:
        problems.append(f"--anchor-sizes needs one size per RPN level ({cfg.rpn_levels}, --rpn-levels), got "
                        f"{len(cfg.anchor_sizes)}: {cfg.anchor_sizes}")
    if not 0 <= cfg.hflip <= 1:
        problems.append(f"--hflip is a probability between 0 and 1, got {cfg.hflip}")
    if not 0 <= cfg.score_threshold <= 1:
        problems.append(f"--threshold must be between 0 and 1, got {cfg.score_threshold}")
    try:
        check_device(cfg.device)
    except ConfigError as exc:
        problems.append(str(exc))
    if cfg.init_from and cfg.engine != "torchvision":
        problems.append("--init-from starts a torchvision run from a torchvision model folder; the detectron2 engine "
                        "takes its starting weights from its config (MODEL.WEIGHTS)")
    if cfg.eval_period < 1:
        problems.append(f"--eval-period must be at least 1, got {cfg.eval_period}")
    if problems:
        raise ConfigError("; ".join(problems))


def option_flag(name: str) -> str:
    """The command-line flag of the :class:`TrainConfig` option ``name`` (``--threshold`` for ``score_threshold``)."""
    field_ = TrainConfig.__dataclass_fields__[name]
    return field_.metadata.get("flag") or "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, backbones=()) -> argparse.ArgumentParser:
    """Adds ``--preset`` and one flag per :class:`TrainConfig` option (default None: the preset or config decides).

    A yes/no option gets ``--NAME`` and ``--no-NAME``, so a switch a preset turns on can be turned off.

    Args:
        backbones: the backbone names to list in ``--backbone``'s help (the registry's, which needs torch).
    """
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe; explicit flags override it")
    for f in fields(TrainConfig):
        if f.name == "preset":
            continue
        flag = option_flag(f.name)
        default = f.default if f.default is not MISSING else f.default_factory()
        help_text = f.metadata.get("help", f"(default: {default})")
        if f.name == "backbone" and backbones:
            help_text = f"one of: {', '.join(sorted(backbones))} (default: {default})"
        if f.name == "device":
            add_device_argument(parser, default=None, help=help_text)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default: {'on' if default else 'off'}, or the preset's)")
        elif isinstance(default, list):
            item = float if f.name == "steps" else int
            parser.add_argument(flag, type=item, nargs="+", default=None, help=help_text)
        else:
            metavar = flag.lstrip("-").replace("-", "_").upper() if "flag" in f.metadata else None
            add_with_aliases(parser, flag, f.metadata.get("aliases", ()), dest=f.name, type=type(default), default=None,
                             metavar=metavar, choices=f.metadata.get("choices"), help=help_text)
    return parser
