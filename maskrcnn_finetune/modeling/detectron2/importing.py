"""A model folder from a detectron2 checkpoint, as older detectron2 kits served them.

:func:`import_checkpoint` takes a bare ``model_final.pth``, its config yaml (or a model-zoo name)
and the class names, and writes a model folder that the Predictor and the server load (through
:func:`~maskrcnn_finetune.modeling.detectron2.checkpoints.load_detectron2_dir`, like the
detectron2 engine's own folders).
"""

from __future__ import annotations

import logging
from pathlib import Path

from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.model_dir import write_model_dir
from maskrcnn_finetune.model_format import CONFIG_YAML, MODEL_JSON
from maskrcnn_finetune.model_spec import DEFAULT_SCORE_THRESHOLD
from maskrcnn_finetune.modeling.detectron2.checkpoints import (build_for_inference, fit_weights, load_weights_file,
                                                                model_state, spec_from_config)
from maskrcnn_finetune.modeling.detectron2.legacy import rename_weights
from maskrcnn_finetune.modeling.detectron2.model_config import load_config_and_kind

logger = logging.getLogger(__name__)


def import_checkpoint(weights, config, class_names: list[str], out_dir,
                      score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                      trusted: bool = False) -> Path:
    """Makes a model folder from a detectron2 checkpoint, so the Predictor and the server load it.

    Args:
        weights: ``model_final.pth`` of a detectron2 run (a training checkpoint or a state dict).
        config: the run's config yaml, or the model-zoo name it was trained from unchanged
            (apart from the number of classes, taken from ``class_names``).
        class_names: the class names, in the order of the training set's categories.
        out_dir: the model folder to write (must not hold one already).
        score_threshold: the default threshold of the Predictor and the server.
        trusted: read a checkpoint that holds Python objects besides weights (see :func:`load_weights_file`).

    Returns:
        The model folder.

    Raises:
        ConfigError: bad class names, config, or an existing folder.
        CheckpointError: weights that cannot be read or do not fit the config.
    """
    out_dir = Path(out_dir)
    if (out_dir / MODEL_JSON).exists():
        raise ConfigError(f"'{out_dir}' already holds a model folder; choose another output folder")
    class_names = [c.strip() for c in class_names if c.strip()]
    if not class_names:
        raise ConfigError("give the class names, in the order of the training set's categories (e.g. --classes balloon)")
    if len(set(class_names)) != len(class_names):
        raise ConfigError(f"class names must be distinct, got {class_names}")
    cfg, kind = load_config_and_kind(config)
    if not Path(config).is_file():
        # a model-zoo name: runs take it unchanged apart from the number of classes
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(class_names)
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES != len(class_names):
        raise ConfigError(f"the config says {cfg.MODEL.ROI_HEADS.NUM_CLASSES} classes (MODEL.ROI_HEADS.NUM_CLASSES) "
                          f"but {len(class_names)} class names were given ({', '.join(class_names)})")
    if not cfg.MODEL.MASK_ON:
        raise ConfigError("the config has MODEL.MASK_ON False: it is a box-only model, and this kit serves masks")
    model, cfg = build_for_inference(cfg, "cpu")
    state = model_state(load_weights_file(weights, trusted=trusted))
    if kind:  # an older VoVNet / MobileNetV2 project's weight names, onto the kit's network
        state = rename_weights(state, model, kind)
    fit_weights(model, state, str(weights), class_names)
    spec = spec_from_config(cfg, class_names)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_YAML).write_text(cfg.dump())
    write_model_dir(out_dir, model, spec, engine="detectron2", score_threshold=score_threshold,
                    training={"imported_from": str(Path(weights).resolve()), "config": str(config)})
    logger.info("model folder written: %s", out_dir)
    return out_dir
