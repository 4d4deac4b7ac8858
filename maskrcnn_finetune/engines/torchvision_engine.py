"""The torchvision engine: a training loop you can read top to bottom.

``train(cfg)`` builds the model, runs ``max_iter`` iterations with warm-up and a step or cosine
schedule, evaluates and checkpoints every ``eval_period`` iterations, and writes the model
folder. A checkpoint holds the model, optimiser, scheduler, AMP scaler, iteration and random
state, and the data order depends only on the seed and the iteration, so ``--resume`` continues
exactly where an interrupted run stopped. Under ``torchrun`` it trains with DDP (gloo on CPU,
NCCL on GPUs); rank 0 evaluates and writes the files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import time
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from maskrcnn_finetune.config import TrainConfig, check_config
from maskrcnn_finetune.data.augment import augment_batch
from maskrcnn_finetune.data.coco import load_coco
from maskrcnn_finetune.data.dataset import CocoInstanceDataset
from maskrcnn_finetune.errors import ConfigError, TrainingError, first_line
from maskrcnn_finetune.evaluate import evaluate_predictor
from maskrcnn_finetune.files import atomic_path, write_text_atomic
from maskrcnn_finetune.model_dir import MODEL_JSON, rebuild_model, write_model_dir
from maskrcnn_finetune.modeling import ModelSpec, build_model
from maskrcnn_finetune.modeling.pooling import use_parallel_roi_align
from maskrcnn_finetune.engines.init_from import init_from_model_dir
from maskrcnn_finetune.predictor import Predictor, native_bf16, resolve_device
from maskrcnn_finetune.visualize import plot_training_curves

logger = logging.getLogger(__name__)

CHECKPOINT = "last_checkpoint.pth"
PREVIOUS_CHECKPOINT = "previous_checkpoint.pth"  # kept when a new one is written: a cut-off file is not the end
METRICS_LOG = "metrics.jsonl"


class BatchIndexSampler(Sampler):
    """Batches of dataset indices that depend only on (seed, iteration): resumable exactly.

    Epoch ``e`` is a permutation drawn from ``seed`` and ``e``; iteration ``i`` takes the
    ``i``-th run of ``batch_size * world_size`` indices of the concatenated epochs, and each
    rank takes its own ``batch_size`` of them.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_iter: int, max_iter: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_iter, self.max_iter = start_iter, max_iter
        self.rank, self.world_size = rank, world_size

    def _epoch(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=gen).tolist()

    def __iter__(self):
        global_batch = self.batch_size * self.world_size
        position = self.start_iter * global_batch
        epoch, offset = divmod(position, self.n)
        order = self._epoch(epoch)
        for _ in range(self.start_iter, self.max_iter):
            chunk = []
            while len(chunk) < global_batch:
                if offset == self.n:
                    epoch, offset = epoch + 1, 0
                    order = self._epoch(epoch)
                take = min(global_batch - len(chunk), self.n - offset)
                chunk += order[offset:offset + take]
                offset += take
            yield chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        return max(0, self.max_iter - self.start_iter)


def _collate(batch):
    return tuple(zip(*batch))


def lr_factor(iteration: int, cfg: TrainConfig, max_iter: int) -> float:
    """Learning-rate multiplier at ``iteration``: linear warm-up, then step or cosine decay."""
    warmup = min(cfg.warmup_iters, max_iter)
    if iteration < warmup:
        return 0.001 + (1 - 0.001) * iteration / warmup
    if cfg.schedule == "cosine":
        progress = (iteration - warmup) / max(1, max_iter - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.gamma ** sum(iteration >= int(f * max_iter) for f in cfg.steps)


def _build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; starts the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _save_checkpoint(path: Path, model, optimizer, scheduler, scaler, iteration: int, cfg, spec, history) -> None:
    state = {
        "model": getattr(model, "module", model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "iteration": iteration,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "config": cfg.to_dict(),
        "spec": spec.to_dict(),
        "history": history,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        if path.exists():  # the one before stays as a fall-back (see _load_checkpoint)
            path.replace(path.with_name(PREVIOUS_CHECKPOINT))


def _load_checkpoint(out: Path) -> dict | None:
    """The newest readable checkpoint of ``out`` (the last one, else the one before), or None when there is none.

    A runtime killed while writing to Google Drive can leave the last checkpoint cut off: then
    training goes on from the previous one, which costs one ``--eval-period`` instead of the run.
    """
    problems = []
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = out / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
            logger.warning("%s cannot be read (%s: %s); trying the checkpoint before it", path, type(exc).__name__,
                           first_line(exc))
            problems.append(f"{path} ({type(exc).__name__})")
            continue
        if problems:
            logger.warning("resuming from the previous checkpoint %s (iteration %d) instead", path, state["iteration"])
        return state
    if problems:
        raise TrainingError(f"cannot resume: no checkpoint in {out} can be read ({'; '.join(problems)}). They were "
                            "kept as they are: restore one from a copy, or train into another --output-dir")
    return None


def _drop_rolled_back_rows(log_path: Path, iteration: int) -> None:
    """Removes the rows of ``metrics.jsonl`` logged after ``iteration``: a resumed run logs them again."""
    if not log_path.exists():
        return
    lines = log_path.read_text().splitlines()
    kept = [line for line in lines if _logged_iteration(line) <= iteration]
    if len(kept) != len(lines):
        write_text_atomic(log_path, "".join(line + "\n" for line in kept))
        logger.info("%s: dropped %d rows logged after iteration %d", log_path.name, len(lines) - len(kept), iteration)


def _logged_iteration(line: str) -> float:
    """The iteration of a ``metrics.jsonl`` row; infinity for a row a killed run left cut off (dropped)."""
    try:
        return json.loads(line)["iter"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def evaluation_predictor(model, spec: ModelSpec, device) -> Predictor:
    """What ``Predictor.from_dir`` will run for the model folder of this training, now.

    The weights of the model being trained, in a model rebuilt from ``spec`` as a model folder
    is (test size ``spec.min_size``, not the training sizes; torchvision's poolers; eval mode),
    on the Predictor's default path for ``device``. The model being trained is left as it is.
    """
    state = getattr(model, "module", model).state_dict()  # detached; load_state_dict copies it
    return Predictor(rebuild_model(spec, state, "the model being trained"), spec, device, score_threshold=0.0)


def _evaluate(model, spec, device, val_data) -> dict:
    return evaluate_predictor(evaluation_predictor(model, spec, device), val_data, progress=True)


def choose_test_size(model, spec: ModelSpec, device, val_data, sizes: list[int]) -> tuple[ModelSpec, dict]:
    """The spec with the test size (short side) of ``sizes`` that scores the best val mask AP50, and its metrics.

    Each size is evaluated as :func:`evaluation_predictor` runs it; the first of equal sizes wins,
    so ``sizes[0]`` (``--image-size``) is kept unless another size does better.
    """
    best = None
    for size in sizes:
        candidate = dataclasses.replace(spec, min_size=size)
        metrics = _evaluate(model, candidate, device, val_data)
        if len(sizes) > 1:
            logger.info("test size %d px: box AP50 %.3f, mask AP50 %.3f", size, metrics["bbox"]["AP50"],
                        metrics["segm"]["AP50"])
        if best is None or metrics["segm"]["AP50"] > best[1]["segm"]["AP50"]:
            best = (candidate, metrics)
    if len(sizes) > 1:
        logger.info("test size: %d px (the best val mask AP50 of %s), written to model.json", best[0].min_size,
                    ", ".join(map(str, sizes)))
    return best


def training_precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the training forward pass, or None for fp32.

    ``--amp auto``: fp16 with loss scaling on CUDA; bf16 on a CPU that computes it in hardware
    (AVX512-BF16 or AMX, where it is about three times fp32's rate), fp32 on other CPUs.
    ``--amp on`` asks for it on any CPU (emulated bf16 is slower than fp32); ``off`` is fp32.
    Weights, gradients, optimiser state and the loss stay fp32.
    """
    if cfg.amp == "off":
        return None
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cfg.amp == "on" or native_bf16() else None


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


def train(cfg: TrainConfig, stop_after: int | None = None) -> Path:
    """Trains Mask R-CNN as ``cfg`` says and writes the model folder ``cfg.output_dir``.

    Args:
        cfg: the resolved training configuration.
        stop_after: stop after this iteration as an interrupted run would, leaving a
            checkpoint that ``resume`` continues from (time-boxed sessions, tests).

    Returns:
        The model folder.

    Raises:
        ConfigError / DatasetError: bad options or data, before any training.
        TrainingError: the loss diverged; the last checkpoint is kept.
    """
    check_config(cfg)
    rank, world, local_rank = _distributed()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    main = rank == 0
    out = Path(cfg.output_dir)
    ckpt_path = out / CHECKPOINT
    refuse_to_overwrite(out, cfg.resume, ckpt_path.exists() or (out / PREVIOUS_CHECKPOINT).exists())
    train_data, val_data = load_train_val(cfg)
    dataset = CocoInstanceDataset(train_data)
    max_iter = cfg.max_iter or max(1, math.ceil(cfg.epochs * len(dataset) / (cfg.batch_size * world)))
    spec = cfg.model_spec(train_data.class_names)

    torch.manual_seed(cfg.seed)
    # --init-from: the trained folder's weights replace the pretrained ones, which are not fetched
    model = build_model(spec, "none" if cfg.init_from else cfg.pretrained, train_min_sizes=cfg.train_sizes or None)
    if cfg.init_from:
        started = init_from_model_dir(model, spec, cfg.init_from)
        if main:
            logger.info("%s", started)
    elif cfg.pretrained == "none" and main:
        logger.info("%s starts from random weights (--pretrained none): training from scratch", spec.backbone)
    model = model.to(device)
    if device.type == "cpu":
        # measured in benchmarks/RESULTS.md: oneDNN's convolutions are faster channels-last, and
        # torchvision's RoIAlign backward runs in one thread (see modeling/pooling.py)
        model = use_parallel_roi_align(model.to(memory_format=torch.channels_last))
    model.train()
    optimizer = _build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg, max_iter))
    precision = training_precision(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)

    start_iter, history = 0, []
    state = _load_checkpoint(out) if cfg.resume else None
    if state is not None:
        if state["spec"] != spec.to_dict():
            raise ConfigError(f"cannot resume: {ckpt_path} was made with other model options "
                              f"({state['spec']}); use the same options, or another --output-dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start_iter, history = state["iteration"], state["history"]
        if main:
            logger.info("resuming from iteration %d of %d (%s)", start_iter, max_iter, out)
            _drop_rolled_back_rows(out / METRICS_LOG, start_iter)
    elif cfg.resume and main:
        logger.info("--resume: no checkpoint in %s yet, starting from the beginning", out)

    if main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.json")
        logger.info("training %s on %d images (%d classes) for %d iterations on %s%s, %s", spec.backbone, len(dataset),
                    len(spec.class_names), max_iter, device, f" x{world}" if world > 1 else "",
                    {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[precision])
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = BatchIndexSampler(len(dataset), cfg.batch_size, cfg.seed, start_iter, max_iter, rank, world)
    # its own generator: otherwise starting the loader draws from the global random state, and a
    # resumed run would see other augmentations than an uninterrupted one
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=_collate,
                        generator=torch.Generator().manual_seed(cfg.seed))
    log_file = (out / METRICS_LOG).open("a") if main else None
    writer = open_tensorboard(out) if main else None
    bar = tqdm(total=max_iter, initial=start_iter, desc="Training", unit="it", disable=not main, dynamic_ncols=True)
    smoothed = None
    iteration = start_iter
    try:
        for images, targets in loader:
            images, targets = augment_batch(images, targets, cfg.hflip)
            images = [img.to(device, non_blocking=True) for img in images]
            targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
            with torch.autocast(device_type=device.type, dtype=precision, enabled=precision is not None):
                losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                parts = ", ".join(f"{k}={float(v.detach()):.3g}" for k, v in losses.items())
                raise TrainingError(
                    f"the loss became {float(loss.detach())} at iteration {iteration + 1} ({parts}). Lower --lr "
                    f"(now {cfg.lr}), keep --clip-grad on, or check the annotations for tiny or broken objects. "
                    f"The last checkpoint in {out} is kept; --resume continues from it")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            iteration += 1

            value = float(loss.detach())
            smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
            bar.update(1)
            bar.set_postfix(loss=f"{smoothed:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if main and (iteration % cfg.log_period == 0 or iteration == max_iter):
                record = {"iter": iteration, "loss": value, "lr": scheduler.get_last_lr()[0], "time": time.time(),
                          **{k: float(v.detach()) for k, v in losses.items()}}
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                if writer is not None:
                    for key in ("loss", *losses):
                        writer.add_scalar(f"train/{key}", record[key], iteration)
            periodic = iteration % cfg.eval_period == 0 and iteration < max_iter
            if periodic or iteration == stop_after:
                if main:
                    if periodic and val_data is not None:
                        history.append(log_eval(iteration, _evaluate(model, spec, device, val_data), log_file, writer))
                        plot_training_curves(out / METRICS_LOG, out / "training_curves.png")
                    _save_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, iteration, cfg, spec, history)
                if world > 1:
                    dist.barrier()
            if iteration == stop_after:
                if main:
                    logger.info("stopped after iteration %d as asked; --resume continues", iteration)
                return out
    except KeyboardInterrupt:
        if main and iteration > start_iter:
            _save_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, iteration, cfg, spec, history)
            logger.warning("interrupted at iteration %d; checkpoint saved, --resume continues", iteration)
        raise
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()

    metrics, test_spec = {}, spec
    if main:
        if val_data is not None:
            others = [s for s in cfg.train_sizes if s != cfg.image_size] if cfg.choose_test_size else []
            test_spec, metrics = choose_test_size(model, spec, device, val_data, [cfg.image_size, *others])
            with (out / METRICS_LOG).open("a") as fh:
                history.append(log_eval(iteration, metrics, fh, writer))
        # the checkpoint keeps the training spec (a --resume compares it); the folder gets the test size
        _save_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, iteration, cfg, spec, history)
        summary = {f"{t}_{k}": metrics[t][k] for t in ("bbox", "segm") for k in ("AP", "AP50", "AP75")} if metrics else {}
        write_model_dir(out, model, test_spec, engine="torchvision", score_threshold=cfg.score_threshold,
                        training=cfg.to_dict(), metrics=summary)
        (out / "metrics.json").write_text(json.dumps({"val": metrics, "iterations": iteration}, indent=2))
        plot_training_curves(out / METRICS_LOG, out / "training_curves.png")
        if writer is not None:
            writer.close()
        if summary:
            logger.info("val: box AP50 %.3f, mask AP50 %.3f", summary["bbox_AP50"], summary["segm_AP50"])
        logger.info("model folder written: %s", out)
    if world > 1:
        dist.barrier()
    return out


def log_eval(iteration: int, metrics: dict, log_file, writer) -> dict:
    record = {"iter": iteration, **{f"{t}_{k}": metrics[t][k] for t in ("bbox", "segm") for k in ("AP", "AP50", "AP75")}}
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()
    if writer is not None:
        for key, value in record.items():
            if key != "iter":
                writer.add_scalar(f"val/{key}", value, iteration)
    logger.info("iteration %d: box AP50 %.3f, mask AP50 %.3f", iteration, record["bbox_AP50"], record["segm_AP50"])
    return record


def open_tensorboard(out: Path):
    """A TensorBoard writer when the tensorboard package is installed (Colab has it), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed: curves go to %s and training_curves.png only", METRICS_LOG)
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))
