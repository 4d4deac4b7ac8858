"""What every engine does the same way: prepare a run, keep its record, finish it into a model folder.

- :func:`refuse_to_overwrite`, :func:`load_train_val`, :func:`iterations_of`: a run's start.
- :class:`RunLog`: the run's record, written by the main process only: ``metrics.jsonl`` (losses,
  learning rate, AP), TensorBoard when installed, the tqdm bar and ``training_curves.png``.
- :func:`diverged`: the error when the loss stops being finite, naming the fixes.
- :func:`finish_run`: the model folder (``model.json`` + ``model_final.pth``), ``metrics.json``
  and the final curves, from the final evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from tqdm.auto import tqdm

from maskrcnn_finetune.config import TrainConfig
from maskrcnn_finetune.data.coco import load_coco
from maskrcnn_finetune.errors import ConfigError, TrainingError
from maskrcnn_finetune.files import write_text_atomic
from maskrcnn_finetune.model_dir import MODEL_JSON, write_model_dir
from maskrcnn_finetune.visualize import plot_training_curves

logger = logging.getLogger(__name__)

METRICS_LOG = "metrics.jsonl"
CURVES = "training_curves.png"
SUMMARY_KEYS = [(t, k) for t in ("bbox", "segm") for k in ("AP", "AP50", "AP75")]


def refuse_to_overwrite(out: Path, resume: bool, holds_checkpoint: bool) -> None:
    """Raises :class:`ConfigError` when ``out`` holds a run and ``--resume`` was not given."""
    if not resume and ((out / MODEL_JSON).exists() or holds_checkpoint):
        raise ConfigError(f"'{out}' already holds a training run; pass --resume to continue it, "
                          "or choose another --output-dir (nothing was overwritten)")


def load_train_val(cfg: TrainConfig):
    """The validated train and val :class:`CocoData` (val None when not given), with the same classes."""
    train_data = load_coco(cfg.train_json)
    val_data = load_coco(cfg.val_json) if cfg.val_json else None
    if val_data is not None and val_data.class_names != train_data.class_names:
        raise ConfigError(f"train and val json have different categories ({train_data.class_names} vs "
                          f"{val_data.class_names}); convert both with the same --labels")
    return train_data, val_data


def iterations_of(cfg: TrainConfig, n_images: int, world: int = 1) -> int:
    """``--max-iter``, else ``--epochs`` over ``n_images`` in batches of ``batch_size`` per process."""
    return cfg.max_iter or max(1, math.ceil(cfg.epochs * n_images / (cfg.batch_size * world)))


def summary_of(metrics: dict) -> dict:
    """``{"bbox_AP": ..., "segm_AP50": ...}`` from COCOeval's metrics (empty without them)."""
    return {f"{t}_{k}": metrics[t][k] for t, k in SUMMARY_KEYS} if metrics else {}


def diverged(cfg: TrainConfig, out: Path, what: str) -> TrainingError:
    """The error for a loss that became infinite or NaN; ``what`` says which value and where."""
    return TrainingError(f"the loss became {what}. Lower --lr (now {cfg.lr}), keep --clip-grad on, or check the "
                         f"annotations for tiny or broken objects. The last checkpoint in {out} is kept; "
                         "--resume continues from it")


def open_tensorboard(out: Path):
    """A TensorBoard writer when the tensorboard package is installed (Colab has it), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed: curves go to %s and %s only", METRICS_LOG, CURVES)
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


class RunLog:
    """The record of one run: progress bar, ``metrics.jsonl``, TensorBoard and the curves picture.

    Only the main process writes (``enabled=False`` elsewhere: every method does nothing but keep
    the bar's count). Rows are appended, so a resumed run continues the same file; the rows logged
    after ``initial`` (a run resumed from a checkpoint there logs them again) are dropped first.

    Args:
        out: the model folder.
        total: the run's number of iterations; ``initial``: the iteration it starts at.
        log_period: write a training row every this many iterations (and at the last one).
    """

    def __init__(self, out: Path, total: int, initial: int, log_period: int, enabled: bool = True) -> None:
        self.out, self.total, self.log_period, self.enabled = Path(out), total, log_period, enabled
        self.path = self.out / METRICS_LOG
        if enabled and initial:
            _drop_rows_after(self.path, initial)
        self.file = self.path.open("a") if enabled else None
        self.writer = open_tensorboard(self.out) if enabled else None
        self.bar = tqdm(total=total, initial=initial, desc="Training", unit="it", disable=not enabled,
                        dynamic_ncols=True)
        self.smoothed: float | None = None

    def step(self, iteration: int, loss: float, lr: float, losses: dict[str, float]) -> None:
        """After an iteration: the bar (smoothed loss, learning rate), and a row every ``log_period``."""
        self.smoothed = loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * loss
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.smoothed:.3f}", lr=f"{lr:.2e}")
        if self.enabled and (iteration % self.log_period == 0 or iteration == self.total):
            record = {"iter": iteration, "loss": loss, "lr": lr, "time": time.time(), **losses}
            self._write(record)
            if self.writer is not None:
                for key in ("loss", *losses):
                    self.writer.add_scalar(f"train/{key}", record[key], iteration)

    def evaluation(self, iteration: int, metrics: dict, plot: bool = True) -> dict:
        """Logs an evaluation's AP (a row, TensorBoard, a log line) and redraws the curves; returns the row."""
        record = {"iter": iteration, **summary_of(metrics)}
        if not self.enabled:
            return record
        self._write(record)
        if self.writer is not None:
            for key, value in record.items():
                if key != "iter":
                    self.writer.add_scalar(f"val/{key}", value, iteration)
        logger.info("iteration %d: box AP50 %.3f, mask AP50 %.3f", iteration, record["bbox_AP50"], record["segm_AP50"])
        if plot:
            self.plot()
        return record

    def plot(self) -> None:
        plot_training_curves(self.path, self.out / CURVES)

    def close(self) -> None:
        """Closes the bar, the file and TensorBoard (a stopped run keeps what it logged)."""
        self.bar.close()
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()


def _drop_rows_after(path: Path, iteration: int) -> None:
    """Removes the rows of ``metrics.jsonl`` logged after ``iteration``."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if _logged_iteration(line) <= iteration]
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))
        logger.info("%s: dropped %d rows logged after iteration %d", METRICS_LOG, len(lines) - len(kept), iteration)


def _logged_iteration(line: str) -> float:
    """The iteration of a ``metrics.jsonl`` row; infinity for a row a killed run left cut off (dropped)."""
    try:
        return json.loads(line)["iter"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def finish_run(out: Path, model, spec, *, engine: str, cfg: TrainConfig, metrics: dict, iterations: int,
               run_log: RunLog) -> Path:
    """Writes the model folder of a finished run (weights, ``spec``, the final ``metrics``) and closes its log.

    ``metrics`` are the final evaluation's (COCOeval's, empty without a val set): their AP goes to
    ``model.json`` and, in full, to ``metrics.json``.
    """
    summary = summary_of(metrics)
    write_model_dir(out, model, spec, engine=engine, score_threshold=cfg.score_threshold, training=cfg.to_dict(),
                    metrics=summary)
    (out / "metrics.json").write_text(json.dumps({"val": metrics, "iterations": iterations}, indent=2))
    run_log.close()
    run_log.plot()
    if summary:
        logger.info("val: box AP50 %.3f, mask AP50 %.3f", summary["bbox_AP50"], summary["segm_AP50"])
    logger.info("model folder written: %s", out)
    return out
