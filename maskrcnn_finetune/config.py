"""The one training configuration: CLI flags or a notebook form -> :class:`TrainConfig` -> engines.

Presets are named recipes; explicit options override them. The resolved config is written
next to the outputs it produced (``config.json`` in the model folder).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from maskrcnn_finetune.errors import ConfigError


@dataclass
class TrainConfig:
    """Every training option. Paths are strings so the config serialises as it is."""

    train_json: str = ""
    val_json: str = ""
    output_dir: str = ""
    engine: str = "torchvision"
    backbone: str = "resnet50_fpn"
    pretrained: str = "default"  # "default" (COCO / ImageNet weights) or "none" (from scratch)
    # schedule: give max_iter, or epochs (converted to iterations over the train set)
    max_iter: int = 0
    epochs: float = 0.0
    batch_size: int = 2
    optimizer: str = "sgd"  # "sgd" or "adamw"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    schedule: str = "step"  # "step" or "cosine"
    steps: list[float] = field(default_factory=lambda: [0.7, 0.9])  # step schedule: fractions of max_iter
    gamma: float = 0.1
    clip_grad: float = 10.0  # max gradient norm; 0 turns clipping off
    amp: str = "auto"  # "auto" (fp16 on CUDA, bf16 on CPUs with bf16 units), "on", "off"
    device: str = "auto"  # "auto", "cpu", "cuda"
    # images and augmentation
    image_size: int = 800  # short side at test time
    max_size: int = 1333
    train_sizes: list[int] = field(default_factory=list)  # multi-scale short sides; empty = image_size only
    choose_test_size: bool = False  # after training, keep the best of image_size and train_sizes on val
    hflip: float = 0.5
    # model details
    anchor_sizes: list[int] = field(default_factory=list)  # empty = scaled from image_size
    box_batch_size_per_image: int = 512
    detections_per_image: int = 100
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    box_head_dim: int = 1024
    mask_head_layers: list[int] = field(default_factory=lambda: [256, 256, 256, 256])
    score_threshold: float = 0.5  # what the Predictor and server show by default
    # bookkeeping
    eval_period: int = 500  # evaluate and checkpoint every N iterations (and at the end)
    log_period: int = 20
    seed: int = 0
    num_workers: int = 0
    resume: bool = False
    preset: str = ""

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


PRESETS: dict[str, dict] = {
    # A CPU without pretrained weights: small images, a light backbone, a schedule of 7 minutes on
    # two cores of 180 GFLOP/s (about 15 at 110). Measured in benchmarks/RESULTS.md.
    "demo": dict(
        # plain 3x3 convolutions (ResNet-18, 128-channel FPN) learn faster from scratch per CPU
        # second than MobileNetV2's depthwise ones: 0.84 against 0.55 mask AP50 on the demo data
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
        # the test size is chosen on val after training: with 49 val instances the best of 192 and
        # 224 px moved by 0.04 mask AP50 between runs that differed only in float rounding
        choose_test_size=True,
        box_batch_size_per_image=128,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        box_head_dim=256,
        mask_head_layers=[64, 64],  # the mask head ran on every positive RoI: [128, 128] cost a fifth of the time
        eval_period=200,
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
    for name, allowed in (("optimizer", ("sgd", "adamw")), ("schedule", ("step", "cosine")),
                          ("amp", ("auto", "on", "off")), ("device", ("auto", "cpu", "cuda")),
                          ("pretrained", ("default", "none")), ("engine", ("torchvision", "detectron2"))):
        if getattr(cfg, name) not in allowed:
            problems.append(f"--{name} must be one of {', '.join(allowed)}, got '{getattr(cfg, name)}'")
    if cfg.image_size < 32 or any(s < 32 for s in cfg.train_sizes):
        problems.append("image sizes must be at least 32 px")
    if not 0 <= cfg.hflip <= 1:
        problems.append(f"--hflip is a probability between 0 and 1, got {cfg.hflip}")
    if not 0 <= cfg.score_threshold <= 1:
        problems.append(f"--score-threshold must be between 0 and 1, got {cfg.score_threshold}")
    if cfg.eval_period < 1:
        problems.append(f"--eval-period must be at least 1, got {cfg.eval_period}")
    if problems:
        raise ConfigError("; ".join(problems))


CONFIG_HELP = {
    "train_json": "COCO json to train on (from scripts/labelme_to_coco.py)",
    "val_json": "COCO json to evaluate on every --eval-period iterations",
    "output_dir": "the model folder to write",
    "pretrained": "default: COCO weights for resnet50_fpn, ImageNet for the others; none: from scratch",
    "max_iter": "iterations to train (or give --epochs)",
    "epochs": "passes over the training set (converted to iterations)",
    "device": "auto, cpu or cuda",
    "image_size": "short side of the images at test time (and training, unless --train-sizes)",
    "train_sizes": "several short sides to pick from at random while training (multi-scale)",
    "choose_test_size": "after training, evaluate at --image-size and each --train-sizes and write the size with "
                        "the best val mask AP50 into model.json (torchvision engine)",
    "resume": "continue the interrupted run in --output-dir exactly where it stopped",
    "eval_period": "evaluate and checkpoint every N iterations",
    "amp": "mixed precision: auto (fp16 on CUDA, bf16 on CPUs with bf16 units), on, off (fp32)",
    "clip_grad": "max gradient norm (0: no clipping)",
    "score_threshold": "default threshold of the Predictor and the server",
}


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds ``--preset`` and one flag per :class:`TrainConfig` option (default None: the preset or config decides)."""
    from maskrcnn_finetune.modeling.backbones import BACKBONES  # imports torch: only for training scripts

    helps = {**CONFIG_HELP, "backbone": f"one of: {', '.join(sorted(BACKBONES))}"}
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe; explicit flags override it")
    for f in fields(TrainConfig):
        if f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=None, help=helps.get(f.name))
        elif isinstance(default, list):
            item = float if f.name == "steps" else int
            parser.add_argument(flag, type=item, nargs="+", default=None, help=helps.get(f.name, f"(default: {default})"))
        else:
            parser.add_argument(flag, type=type(default), default=None, help=helps.get(f.name, f"(default: {default})"))
    return parser
