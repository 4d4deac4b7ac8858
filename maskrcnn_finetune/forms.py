"""The notebook forms' values as the kit's options, and the smoke mode that shrinks them.

``MRCNN_SMOKE=1`` (set by ``tests/test_notebooks.py``, which runs every notebook as Run all runs
it) shrinks the data, the model and the schedule to the ``tiny`` preset so that each notebook runs
on a CPU in about a minute, and makes the notebooks write into ``$MRCNN_WORKDIR``.

In a notebook the kit's errors name the form's fields, not the command line's flags
(:func:`errors_name_fields`).
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from maskrcnn_finetune.cli import is_true
from maskrcnn_finetune.config import PRESETS, TrainConfig, option_flag
from maskrcnn_finetune.errors import ConfigError, KitError

logger = logging.getLogger(__name__)

SMOKE_ENV = "MRCNN_SMOKE"
WORK_DIR_ENV = "MRCNN_WORKDIR"  # where smoke runs write (a fresh temporary folder when unset)

# Smoke mode trains the tiny preset (tests/training_options.py too), on the CPU, whatever the form chose
# (the light backbone too: smoke mode tests the notebook's flow, not the backbone a form chose).
SMOKE_TRAINING = {**PRESETS["tiny"], "device": "cpu"}
SMOKE_SYNTHETIC = dict(n_images=8, image_size=(96, 80))


def smoke_mode() -> bool:
    """True when ``MRCNN_SMOKE`` is set to 1/true/yes: the notebooks' tiny test run."""
    return is_true(os.environ.get(SMOKE_ENV))


def training_options(**options) -> dict:
    """The notebook form's training options, shrunk to :data:`SMOKE_TRAINING` in smoke mode.

    Pass the result to :func:`maskrcnn_finetune.config.resolve_config` with a preset.
    """
    return {**options, **SMOKE_TRAINING} if smoke_mode() else options


def synthetic_options(n_images: int, image_size: tuple[int, int] = (320, 256)) -> dict:
    """``n_images`` and ``image_size`` for :func:`~maskrcnn_finetune.data.synthetic.make_synthetic`
    (8 tiny images in smoke mode)."""
    return dict(SMOKE_SYNTHETIC) if smoke_mode() else dict(n_images=n_images, image_size=tuple(image_size))


SMOKE_BACKBONES = ["mobilenetv2_fpnlite", "mobilenetv2_fpn"]

# 02_finetune_and_compare's form fields, by the training option each one sets (its errors name them)
TRAINING_FIELDS = {"train_json": "TRAIN_JSON", "val_json": "VAL_JSON", "output_dir": "RUN_NAME", "engine": "ENGINE",
                   "backbone": "BACKBONE", "preset": "PRESET", "max_iter": "MAX_ITER", "batch_size": "BATCH_SIZE",
                   "lr": "LR"}
RESUME_IN_NOTEBOOK = "running this cell again"  # every notebook trains with resume=True
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def notebook_wording(message: str, fields_by_option: dict[str, str]) -> str:
    """``message`` with the command line's training flags replaced by what a notebook calls them.

    A flag whose option is a form field becomes the field (``--output-dir`` -> ``RUN_NAME``),
    ``--resume`` becomes "running this cell again", and another training flag becomes the option's
    name, as the notebook's call to ``resolve_config`` spells it (``--clip-grad`` -> ``clip_grad``).
    Other flags are left as they are.
    """
    names = {option_flag(f.name): f.name for f in fields(TrainConfig)}
    names["--preset"] = "preset"
    words = {flag: fields_by_option.get(option, option) for flag, option in names.items()}
    words["--resume"] = fields_by_option.get("resume", RESUME_IN_NOTEBOOK)
    return _FLAG.sub(lambda m: words.get(m.group(0), m.group(0)), message)


@contextmanager
def errors_name_fields(fields_by_option: dict[str, str] | None = None, **more: str):
    """Inside it, the kit's errors name the notebook's form fields rather than command-line flags.

    A notebook cell wraps its training in it: ``with forms.errors_name_fields(forms.TRAINING_FIELDS):``.
    The error keeps its class and traceback; only its message changes (:func:`notebook_wording`).

    Args:
        fields_by_option: ``{option: FIELD}``, e.g. :data:`TRAINING_FIELDS`.
        more: more ``option="FIELD"`` pairs (they win), e.g. ``output_dir="ROUND"``.
    """
    names = {**(fields_by_option or {}), **more}
    try:
        yield
    except KitError as exc:
        if exc.args and isinstance(exc.args[0], str):
            exc.args = (notebook_wording(exc.args[0], names), *exc.args[1:])
        raise


def comparison_backbones(names: str | list[str]) -> list[str]:
    """Backbone names from a form field (``"resnet50_fpn, vovnet19_fpn"``), checked; two light ones in smoke mode.

    Raises:
        ConfigError: a name is not registered (the message lists the registered ones).
    """
    from maskrcnn_finetune.modeling.backbones import BACKBONES

    if smoke_mode():
        return list(SMOKE_BACKBONES)
    chosen = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in chosen if n not in BACKBONES]
    if unknown or not chosen:
        raise ConfigError(f"unknown backbone(s) {', '.join(unknown) or '(none given)'}; choose from: "
                          f"{', '.join(sorted(BACKBONES))}")
    return chosen


def demo_data(folder, n_images: int = 100) -> tuple[str, str, str]:
    """Synthetic shapes made in ``folder/labelme`` and converted to ``folder/coco`` (8 tiny images in smoke mode).

    Returns:
        ``(train_json, val_json, "")`` as strings (no test split), as
        :func:`~maskrcnn_finetune.handover.pick_training_data` returns them.
    """
    from maskrcnn_finetune.data.convert import convert_labelme
    from maskrcnn_finetune.data.synthetic import make_synthetic

    folder = Path(folder)
    make_synthetic(folder / "labelme", seed=0, **synthetic_options(n_images))
    data = convert_labelme(folder / "labelme", folder / "coco", val_fraction=0.2, seed=0)
    return str(data.json_paths["train"]), str(data.json_paths["val"]), ""


def demo_model(folder, max_iter: int | None = None) -> Path:
    """A model folder to try things with when you have none: synthetic shapes and ``--preset demo``.

    Minutes on a 2-core CPU (benchmarks/RESULTS.md, "The demo recipe"), seconds in smoke mode. An existing run in
    ``folder/model`` is resumed (or reused when finished).

    Returns:
        The model folder (``folder/model``).
    """
    from maskrcnn_finetune.config import resolve_config
    from maskrcnn_finetune.engines import train
    from maskrcnn_finetune.model_dir import MODEL_JSON

    folder = Path(folder)
    model_dir = folder / "model"
    if (model_dir / MODEL_JSON).is_file():
        logger.info("reusing the demo model in %s", model_dir)
        return model_dir
    train_json, val_json, _ = demo_data(folder, 60)
    cfg = resolve_config("demo", **training_options(
        train_json=train_json, val_json=val_json, output_dir=str(model_dir), max_iter=max_iter, device="auto",
        resume=True))
    return train(cfg)


def next_round_options(model_dir, **options) -> dict:
    """The training options of the run that made ``model_dir``, to train the next round of the
    labelling loop from it (``init_from``): the same recipe and architecture, new data.

    ``options`` (the new ``train_json``, ``val_json``, ``output_dir``, a ``max_iter``...) replace
    the earlier run's; ``None`` values are ignored. Shrunk in smoke mode as :func:`training_options`.
    Pass the result to :func:`maskrcnn_finetune.config.resolve_config` without a preset.
    """
    from maskrcnn_finetune.engines.init_from import run_options

    given = {k: v for k, v in options.items() if v is not None}
    return training_options(**{**run_options(model_dir), **given, "init_from": str(model_dir)})
