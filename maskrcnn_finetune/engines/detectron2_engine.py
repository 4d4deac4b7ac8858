"""The detectron2 engine: ``train(cfg)`` with detectron2's ``DefaultTrainer``, same outputs as torchvision's.

The :class:`~maskrcnn_finetune.config.TrainConfig` becomes a detectron2 config
(:mod:`maskrcnn_finetune.modeling.detectron2.model_config`); the COCO json is registered in
detectron2's ``DatasetCatalog`` after the kit's own validation. Hooks write what the torchvision
engine writes: ``metrics.jsonl`` (losses, learning rate, AP), a tqdm progress bar, evaluation
every ``eval_period`` iterations with the kit's COCO evaluator (so AP means the same for both
engines), ``training_curves.png``, and at the end the model folder (``model.json``,
``model_final.pth`` with the weights only, ``detectron2_config.yaml``, ``metrics.json``).

``--resume`` continues from ``checkpoint.pth`` (model, optimiser, scheduler, iteration) through
detectron2's checkpointer. Unlike the torchvision engine the data order after a resume is a new
draw from detectron2's sampler, so a resumed run is equivalent, not bit-identical. One process:
detectron2's own ``launch`` is the way to several GPUs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import torch

from maskrcnn_finetune.config import TrainConfig, check_config
from maskrcnn_finetune.data.coco import CocoData
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.modeling.detectron2 import require_detectron2

require_detectron2()  # before the detectron2 imports below: a message with the install command

from detectron2.config import CfgNode  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_train_loader  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.engine import DefaultTrainer, HookBase, hooks  # noqa: E402
from detectron2.modeling import build_model as build_d2_model  # noqa: E402
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

from maskrcnn_finetune.engines.common import (RunLog, diverged, finish_run, iterations_of,  # noqa: E402
                                              load_train_val, refuse_to_overwrite)
from maskrcnn_finetune.evaluate import evaluate_predictor  # noqa: E402
from maskrcnn_finetune.model_format import CONFIG_YAML  # noqa: E402
from maskrcnn_finetune.modeling.detectron2.checkpoints import TrustedCheckpointer  # noqa: E402
from maskrcnn_finetune.modeling.detectron2.inference import Detectron2Model  # noqa: E402
from maskrcnn_finetune.modeling.detectron2.model_config import (build_config, detectron2_backbone,  # noqa: E402
                                                                 load_config)
from maskrcnn_finetune.errors import WeightsUnavailableError  # noqa: E402
from maskrcnn_finetune.devices import resolve_device  # noqa: E402
from maskrcnn_finetune.predictor import Predictor  # noqa: E402

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"  # detectron2 adds .pth and tags it in the file "last_checkpoint"


class _StopRequested(BaseException):
    """Ends the loop after ``stop_after`` iterations (a BaseException: detectron2 logs Exceptions as crashes)."""


def dataset_dicts(coco: CocoData) -> list[dict]:
    """The images and annotations of a validated COCO dataset in detectron2's format.

    Category ids become contiguous 0..K-1 in category order, as the torchvision engine numbers them.
    """
    label_of = coco.label_of_category
    records = []
    for image in coco.images:
        annotations = []
        for ann in coco.annotations[image["id"]]:
            segm = ann["segmentation"]
            if isinstance(segm, dict) and isinstance(segm.get("counts"), list):  # uncompressed RLE
                segm = mask_utils.frPyObjects(segm, image["height"], image["width"])
            annotations.append({"bbox": list(ann["bbox"]), "bbox_mode": BoxMode.XYWH_ABS, "segmentation": segm,
                                "category_id": label_of[ann["category_id"]] - 1, "iscrowd": 0})
        records.append({"file_name": str(coco.image_path(image)), "image_id": image["id"], "height": image["height"],
                        "width": image["width"], "annotations": annotations})
    return records


def register_dataset(coco: CocoData) -> str:
    """Registers ``coco`` in detectron2's catalogs under a name derived from its path; returns the name."""
    name = "maskrcnn_finetune_" + hashlib.sha1(str(coco.json_path.resolve()).encode()).hexdigest()[:12]
    if name in DatasetCatalog.list():  # re-registered so a changed file is read again
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    records = dataset_dicts(coco)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=list(coco.class_names), json_file=str(coco.json_path))
    return name


class KitTrainer(DefaultTrainer):
    """``DefaultTrainer`` with the kit's optimiser choice, flip probability, checkpointer and hooks.

    Args:
        d2_cfg: the detectron2 config (``OUTPUT_DIR`` is the model folder).
        train_cfg: the kit's options (optimiser, flip probability, periods).
        progress_hook: the hook that logs, evaluates and checkpoints (:class:`KitHook`).
    """

    def __init__(self, d2_cfg: CfgNode, train_cfg: TrainConfig, progress_hook: "KitHook") -> None:
        # read by the build_* methods, which DefaultTrainer.__init__ calls
        self.train_cfg = train_cfg
        self.progress_hook = progress_hook
        super().__init__(d2_cfg)

    @classmethod
    def build_model(cls, cfg):
        return build_d2_model(cfg)  # DefaultTrainer's version also logs the whole network

    def build_optimizer(self, cfg, model):
        if self.train_cfg.optimizer != "adamw":
            return super().build_optimizer(cfg, model)
        params = get_default_optimizer_params(model, base_lr=cfg.SOLVER.BASE_LR,
                                              weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM)
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR,
                                                                   weight_decay=cfg.SOLVER.WEIGHT_DECAY))

    def build_train_loader(self, cfg):
        augmentations = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                              cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
        if self.train_cfg.hflip > 0:
            augmentations.append(T.RandomFlip(prob=self.train_cfg.hflip, horizontal=True))
        return build_detection_train_loader(cfg, mapper=DatasetMapper(cfg, is_train=True, augmentations=augmentations))

    def build_hooks(self):
        # torch >= 2.6 reads only tensors by default; our own checkpoints also hold the scheduler's
        # and trainer's state (detectron2 issue 5456), so --resume reads them in full
        self.checkpointer = TrustedCheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        return [hooks.IterationTimer(), hooks.LRScheduler(), self.progress_hook]


class KitHook(HookBase):
    """The kit's run record (:class:`~maskrcnn_finetune.engines.common.RunLog`), evaluation and checkpoints
    every ``eval_period``, and the early stop.

    Args:
        cfg: the kit's training options.
        out: the model folder.
        evaluate: ``model -> metrics`` (None without a val set).
        stop_after: stop after this iteration, leaving a checkpoint (time-boxed sessions, tests).
    """

    def __init__(self, cfg: TrainConfig, out: Path, evaluate, stop_after: int | None) -> None:
        self.cfg, self.out, self.evaluate, self.stop_after = cfg, out, evaluate, stop_after
        self.run_log: RunLog | None = None

    def before_train(self) -> None:
        self.run_log = RunLog(self.out, self.trainer.max_iter, self.trainer.start_iter, self.cfg.log_period)

    def after_step(self) -> None:
        iteration = self.trainer.iter + 1
        latest = {k: v[0] for k, v in self.trainer.storage.latest().items()}
        losses = {k: float(v) for k, v in latest.items() if k.startswith("loss_")}
        self.run_log.step(iteration, sum(losses.values()), float(latest.get("lr", self.cfg.lr)), losses)
        periodic = iteration % self.cfg.eval_period == 0 and iteration < self.trainer.max_iter
        if periodic and self.evaluate is not None:
            self.run_log.evaluation(iteration, self.evaluate(self.trainer.model))
        if periodic or iteration == self.stop_after:
            self.trainer.checkpointer.save(CHECKPOINT, iteration=self.trainer.iter)
        if iteration == self.stop_after and iteration < self.trainer.max_iter:
            logger.info("stopped after iteration %d as asked; --resume continues", iteration)
            raise _StopRequested()


def _make_evaluator(spec, d2_cfg: CfgNode, device, val_data):
    if val_data is None:
        return None

    def evaluate(model) -> dict:
        predictor = Predictor(Detectron2Model(model, d2_cfg), spec, device, score_threshold=0.0)
        try:
            return evaluate_predictor(predictor, val_data, progress=True)
        finally:
            model.train()

    return evaluate


def _d2_config(cfg: TrainConfig, spec, device: torch.device, max_iter: int, dataset: str, out: Path) -> CfgNode:
    d2_cfg = build_config(spec, cfg).clone()
    d2_cfg.defrost()
    d2_cfg.MODEL.DEVICE = str(device)
    d2_cfg.SOLVER.MAX_ITER = max_iter
    d2_cfg.SOLVER.WARMUP_ITERS = min(cfg.warmup_iters, max_iter)
    # detectron2 wants distinct milestones inside the run (short test runs would repeat or reach the end)
    d2_cfg.SOLVER.STEPS = tuple(sorted({int(f * max_iter) for f in cfg.steps} & set(range(1, max_iter))))
    d2_cfg.SOLVER.AMP.ENABLED = device.type == "cuda" and cfg.amp != "off"
    d2_cfg.DATASETS.TRAIN = (dataset,)
    d2_cfg.DATASETS.TEST = ()
    d2_cfg.OUTPUT_DIR = str(out)
    d2_cfg.freeze()
    return d2_cfg


def _check_same_model(saved_yaml: Path, d2_cfg: CfgNode) -> None:
    """Refuses to resume with other model options: detectron2's checkpointer would skip the weights
    that no longer fit with a warning, and the run would silently start those parts anew."""
    if not saved_yaml.is_file():
        return
    saved = load_config(saved_yaml)
    saved.MODEL.DEVICE = d2_cfg.MODEL.DEVICE  # resuming on another device is fine
    # json makes tuples and lists (yaml reads back lists) compare equal
    if json.dumps(saved.MODEL, sort_keys=True) != json.dumps(d2_cfg.MODEL, sort_keys=True):
        raise ConfigError(f"cannot resume: {saved_yaml.parent} was trained with other model options (see its "
                          f"{saved_yaml.name}); use the same options, or another --output-dir")


def train(cfg: TrainConfig, stop_after: int | None = None) -> Path:
    """Trains Mask R-CNN with detectron2 as ``cfg`` says and writes the model folder ``cfg.output_dir``.

    Args:
        cfg: the resolved training configuration (``cfg.engine`` is ``"detectron2"``).
        stop_after: stop after this iteration as an interrupted run would; ``resume`` continues.

    Returns:
        The model folder.

    Raises:
        ConfigError / DatasetError: bad options or data, before any training.
        WeightsUnavailableError: pretrained weights asked for but not downloadable.
        TrainingError: the loss diverged; the last checkpoint is kept.
    """
    check_config(cfg)
    detectron2_backbone(cfg.backbone)  # a backbone of the torchvision engine only: refused before anything runs
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("the detectron2 engine trains in one process; use --engine torchvision with torchrun, "
                          "or detectron2's own launch() for several GPUs")
    device = resolve_device(cfg.device)
    if cfg.amp == "on" and device.type != "cuda":
        raise ConfigError("--amp on needs a GPU; use --amp auto on the CPU")
    out = Path(cfg.output_dir)
    has_checkpoint = (out / "last_checkpoint").exists()
    refuse_to_overwrite(out, cfg.resume, has_checkpoint)
    train_data, val_data = load_train_val(cfg)
    max_iter = iterations_of(cfg, len(train_data.images))
    spec = cfg.model_spec(train_data.class_names)
    d2_cfg = _d2_config(cfg, spec, device, max_iter, register_dataset(train_data), out)

    # INFO on detectron2's logger stops DefaultTrainer from installing its own stdout handler:
    # its messages go through the application's logging like the kit's
    logging.getLogger("detectron2").setLevel(logging.INFO)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    hook = KitHook(cfg, out, _make_evaluator(spec, d2_cfg, device, val_data), stop_after)
    resuming = cfg.resume and has_checkpoint
    if resuming:
        _check_same_model(out / CONFIG_YAML, d2_cfg)
    pretrained = cfg.pretrained == "default" and not resuming
    try:
        trainer = KitTrainer(d2_cfg, cfg, hook)
        if not resuming:
            trainer.resume_or_load(resume=False)  # the pretrained weights of cfg.MODEL.WEIGHTS, if any
    except (OSError, RuntimeError) as exc:  # urllib/iopath/timm download errors
        if not pretrained:
            raise
        raise WeightsUnavailableError(
            f"could not fetch the pretrained weights for {cfg.backbone} ({type(exc).__name__}: {exc}). Connect to "
            "the internet once (they are cached afterwards), or pass --pretrained none to train from scratch") from exc
    out.mkdir(parents=True, exist_ok=True)  # only now: a failed start leaves no folder behind
    cfg.save(out / "config.json")
    (out / CONFIG_YAML).write_text(d2_cfg.dump())
    if resuming:
        trainer.resume_or_load(resume=True)  # model, optimiser, scheduler and iteration of checkpoint.pth
        logger.info("resuming from iteration %d of %d (%s)", trainer.start_iter, max_iter, out / "last_checkpoint")
    elif cfg.resume:
        logger.info("--resume: no checkpoint in %s yet, starting from the beginning", out)
    logger.info("training %s (detectron2) on %d images (%d classes) for %d iterations on %s", spec.backbone,
                len(train_data.images), len(spec.class_names), max_iter, device)

    finished = False
    try:
        trainer.train()
        finished = True
    except _StopRequested:
        return out
    except FloatingPointError as exc:
        raise diverged(cfg, out, f"infinite or NaN ({exc})") from exc
    except KeyboardInterrupt:
        if trainer.iter > trainer.start_iter:
            trainer.checkpointer.save(CHECKPOINT, iteration=trainer.iter - 1)
            logger.warning("interrupted at iteration %d; checkpoint saved, --resume continues", trainer.iter)
        raise
    finally:
        if not finished and hook.run_log is not None:  # a stopped run keeps what it logged
            hook.run_log.close()
    return _finish(cfg, trainer, spec, out, hook)


def _finish(cfg, trainer, spec, out: Path, hook: KitHook) -> Path:
    """Final evaluation, checkpoint and the model folder."""
    metrics = hook.evaluate(trainer.model) if hook.evaluate is not None else {}
    if metrics:
        hook.run_log.evaluation(trainer.max_iter, metrics, plot=False)
    trainer.checkpointer.save(CHECKPOINT, iteration=trainer.max_iter - 1)
    return finish_run(out, trainer.model, spec, engine="detectron2", cfg=cfg, metrics=metrics,
                      iterations=trainer.max_iter, run_log=hook.run_log)
