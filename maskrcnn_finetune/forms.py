"""The notebook forms' values as the kit's options, and the smoke mode that shrinks them.

``MRCNN_SMOKE=1`` (set by ``tests/test_notebooks.py``, which runs every notebook as Run all runs
it) shrinks the data, the model and the schedule to the ``tiny`` preset so that each notebook runs
on a CPU in about a minute, and makes the notebooks write into ``$MRCNN_WORKDIR``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from maskrcnn_finetune.cli import is_true
from maskrcnn_finetune.config import PRESETS
from maskrcnn_finetune.errors import ConfigError

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


def demo_model(folder, max_iter: int | None = None) -> Path:
    """A model folder to try things with when you have none: synthetic shapes and ``--preset demo``.

    Minutes on a 2-core CPU (benchmarks/RESULTS.md, "The demo recipe"), seconds in smoke mode. An existing run in
    ``folder/model`` is resumed (or reused when finished).

    Returns:
        The model folder (``folder/model``).
    """
    from maskrcnn_finetune.config import resolve_config
    from maskrcnn_finetune.data.convert import convert_labelme
    from maskrcnn_finetune.data.synthetic import make_synthetic
    from maskrcnn_finetune.engines import train
    from maskrcnn_finetune.model_dir import MODEL_JSON

    folder = Path(folder)
    model_dir = folder / "model"
    if (model_dir / MODEL_JSON).is_file():
        logger.info("reusing the demo model in %s", model_dir)
        return model_dir
    make_synthetic(folder / "labelme", seed=0, **synthetic_options(60))
    data = convert_labelme(folder / "labelme", folder / "coco", val_fraction=0.2, seed=0)
    cfg = resolve_config("demo", **training_options(
        train_json=str(data.json_paths["train"]), val_json=str(data.json_paths["val"]),
        output_dir=str(model_dir), max_iter=max_iter, device="auto", resume=True))
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
