"""The torchvision engine: a training loop you can read top to bottom.

``train(cfg)`` builds the model, runs ``max_iter`` iterations with warm-up and a step or cosine
schedule, evaluates and checkpoints every ``eval_period`` iterations, and writes the model
folder. A checkpoint holds the model, optimiser, scheduler, AMP scaler, iteration and random
state, and the data order depends only on the seed and the iteration, so ``--resume`` continues
exactly where an interrupted run stopped. Under ``torchrun`` it trains with DDP (gloo on CPU,
NCCL on GPUs); rank 0 evaluates and writes the files.

The steps, in order: :func:`_prepare` (options, data, device, DDP), :func:`_build` (model and
optimiser: a :class:`TrainState`), :func:`_restore` (``--resume``), then per batch
:func:`train_one_iteration`, with :func:`_evaluate` and :meth:`TrainState.save` every
``eval_period``, and :func:`_finish` (test size, last checkpoint, model folder). What the
detectron2 engine does the same way lives in :mod:`maskrcnn_finetune.engines.common`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from maskrcnn_finetune.config import TrainConfig, check_config
from maskrcnn_finetune.data.augment import augment_batch
from maskrcnn_finetune.data.dataset import CocoInstanceDataset
from maskrcnn_finetune.engines.common import (RunLog, diverged, finish_run, iterations_of, load_train_val,
                                              refuse_to_overwrite)
from maskrcnn_finetune.engines.init_from import init_from_model_dir
from maskrcnn_finetune.errors import ConfigError, TrainingError, first_line
from maskrcnn_finetune.evaluate import evaluate_predictor
from maskrcnn_finetune.files import atomic_path
from maskrcnn_finetune.model_dir import rebuild_model
from maskrcnn_finetune.model_spec import TEST_TIME_OPTIONS
from maskrcnn_finetune.modeling import ModelSpec, build_model
from maskrcnn_finetune.modeling.pooling import use_parallel_roi_align
from maskrcnn_finetune.devices import resolve_device
from maskrcnn_finetune.predictor import Predictor, native_bf16

logger = logging.getLogger(__name__)

CHECKPOINT = "last_checkpoint.pth"
PREVIOUS_CHECKPOINT = "previous_checkpoint.pth"  # kept when a new one is written: a cut-off file is not the end


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
    """AdamW or SGD, fused: one kernel updates every parameter, where the per-parameter loop launches a
    dozen small operations for each (benchmarks/RESULTS.md, "Training speed")."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=True)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; starts the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


@dataclasses.dataclass
class TrainState:
    """What a checkpoint holds and ``--resume`` restores: model, optimiser, scheduler and AMP scaler."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_data: dict = dataclasses.field(default_factory=dict)  # the training data's fingerprint

    def save(self, path: Path, iteration: int, cfg: TrainConfig, spec: ModelSpec, history: list) -> None:
        """Writes a checkpoint (with the random state, options and eval history); the one before stays."""
        state = {
            "model": getattr(self.model, "module", self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": iteration,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "config": cfg.to_dict(),
            "spec": spec.to_dict(),
            "history": history,
            "train_data": self.train_data,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
            if path.exists():  # the one before stays as a fall-back (see _load_checkpoint)
                path.replace(path.with_name(PREVIOUS_CHECKPOINT))

    def restore(self, state: dict) -> None:
        """Loads a checkpoint's states and random state (before DDP wraps the model)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])


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


@dataclasses.dataclass
class _Run:
    """One training run's fixed facts, decided before the model is built."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    rank: int
    world: int
    train_data: object
    val_data: object
    spec: ModelSpec
    max_iter: int
    precision: torch.dtype | None

    @property
    def main(self) -> bool:
        return self.rank == 0


def _prepare(cfg: TrainConfig) -> _Run:
    """Checks options and data, starts DDP under torchrun, picks the device; refuses to overwrite a run."""
    check_config(cfg)
    rank, world, local_rank = _distributed()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    out = Path(cfg.output_dir)
    refuse_to_overwrite(out, cfg.resume, (out / CHECKPOINT).exists() or (out / PREVIOUS_CHECKPOINT).exists())
    train_data, val_data = load_train_val(cfg)
    return _Run(cfg, out, device, rank, world, train_data, val_data, cfg.model_spec(train_data.class_names),
                iterations_of(cfg, len(train_data.images), world), training_precision(cfg, device))


def _build(run: _Run) -> TrainState:
    """The model (pretrained, from scratch, or from ``--init-from``) on its device, and its optimiser."""
    cfg, spec = run.cfg, run.spec
    torch.manual_seed(cfg.seed)
    # --init-from: the trained folder's weights replace the pretrained ones, which are not fetched
    model = build_model(spec, "none" if cfg.init_from else cfg.pretrained, train_min_sizes=cfg.train_sizes or None)
    if cfg.init_from:
        started = init_from_model_dir(model, spec, cfg.init_from)
        if run.main:
            logger.info("%s", started)
    elif cfg.pretrained == "none" and run.main:
        logger.info("%s starts from random weights (--pretrained none): training from scratch", spec.backbone)
    model = model.to(run.device)
    if run.device.type == "cpu":
        # benchmarks/RESULTS.md, "Training speed": oneDNN's convolutions are faster channels-last, and
        # torchvision's RoIAlign backward runs in one thread (see modeling/pooling.py)
        model = use_parallel_roi_align(model.to(memory_format=torch.channels_last))
    model.train()
    optimizer = _build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg, run.max_iter))
    scaler = torch.amp.GradScaler("cuda", enabled=run.precision == torch.float16)
    return TrainState(model, optimizer, scheduler, scaler, run.train_data.fingerprint())


def _restore(run: _Run, state: TrainState) -> tuple[int, list]:
    """With ``--resume``: the newest checkpoint's states; returns (start iteration, eval history)."""
    saved = _load_checkpoint(run.out) if run.cfg.resume else None
    if saved is None:
        if run.cfg.resume and run.main:
            logger.info("--resume: no checkpoint in %s yet, starting from the beginning", run.out)
        return 0, []
    differences = run.spec.training_differences(saved["spec"])
    if differences:
        listed = "; ".join(f"{name}: {was!r} there, {now!r} now" for name, (was, now) in differences.items())
        raise ConfigError(f"cannot resume: {run.out / CHECKPOINT} was made with other model options ({listed}); "
                          "use the same options, or another --output-dir (or delete that folder to start over)")
    was, now = saved.get("train_data"), state.train_data
    if not was and run.main:  # checkpoints of older versions
        logger.warning("--resume: %s does not record its training data (an older version of the kit wrote it); "
                       "it is taken to be %s. If the data changed, delete %s to start over", run.out / CHECKPOINT,
                       run.cfg.train_json, run.out)
    if was and was != now:
        counts = [(data["images"], data["annotations"]) for data in (was, now)]
        what = ("the same counts, other contents" if counts[0] == counts[1] else
                f"{was['images']} images and {was['annotations']} annotations then, {now['images']} and "
                f"{now['annotations']} now")
        raise ConfigError(f"cannot resume: {run.out / CHECKPOINT} was trained on other data than {run.cfg.train_json} "
                          f"({what}); train into another --output-dir, or delete that folder to start over")
    changed = [name for name in TEST_TIME_OPTIONS if saved["spec"].get(name) != getattr(run.spec, name)]
    if changed and run.main:
        logger.info("--resume: test-time option(s) %s differ from the checkpoint's; the new values are used "
                    "(training does not read them)", ", ".join(changed))
    state.restore(saved)
    if run.main:
        logger.info("resuming from iteration %d of %d (%s)", saved["iteration"], run.max_iter, run.out)
    return saved["iteration"], saved["history"]


def _loader(run: _Run, start_iter: int) -> DataLoader:
    """The batches from ``start_iter`` on, in the order that depends only on the seed (exact resume)."""
    dataset = CocoInstanceDataset(run.train_data)
    sampler = BatchIndexSampler(len(dataset), run.cfg.batch_size, run.cfg.seed, start_iter, run.max_iter, run.rank,
                                run.world)
    # its own generator: otherwise starting the loader draws from the global random state, and a
    # resumed run would see other augmentations than an uninterrupted one
    return DataLoader(dataset, batch_sampler=sampler, num_workers=run.cfg.num_workers, collate_fn=_collate,
                      generator=torch.Generator().manual_seed(run.cfg.seed))


def train_one_iteration(run: _Run, state: TrainState, images, targets, iteration: int) -> tuple[float, dict]:
    """One optimiser step on a batch (augmented here); returns the loss and its parts as floats.

    Raises:
        TrainingError: the loss is not finite (nothing was updated).
    """
    cfg, device = run.cfg, run.device
    images, targets = augment_batch(images, targets, cfg.hflip)
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    with torch.autocast(device_type=device.type, dtype=run.precision, enabled=run.precision is not None):
        losses = state.model(images, targets)
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        parts = ", ".join(f"{k}={float(v.detach()):.3g}" for k, v in losses.items())
        raise diverged(cfg, run.out, f"{float(loss.detach())} at iteration {iteration + 1} ({parts})")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if cfg.clip_grad > 0:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    return float(loss.detach()), {k: float(v.detach()) for k, v in losses.items()}


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
    run = _prepare(cfg)
    state = _build(run)
    start_iter, history = _restore(run, state)
    out, spec, main = run.out, run.spec, run.main
    if main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.json")
        logger.info("training %s on %d images (%d classes) for %d iterations on %s%s, %s", spec.backbone,
                    len(run.train_data.images), len(spec.class_names), run.max_iter, run.device,
                    f" x{run.world}" if run.world > 1 else "",
                    {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[run.precision])
    if run.world > 1:
        state.model = torch.nn.parallel.DistributedDataParallel(
            state.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)

    run_log = RunLog(out, run.max_iter, start_iter, cfg.log_period, enabled=main)
    ckpt_path = out / CHECKPOINT
    iteration = start_iter
    try:
        for images, targets in _loader(run, start_iter):
            loss, losses = train_one_iteration(run, state, images, targets, iteration)
            iteration += 1
            run_log.step(iteration, loss, state.scheduler.get_last_lr()[0], losses)
            periodic = iteration % cfg.eval_period == 0 and iteration < run.max_iter
            if periodic or iteration == stop_after:
                if main:
                    if periodic and run.val_data is not None:
                        metrics = _evaluate(state.model, spec, run.device, run.val_data)
                        history.append(run_log.evaluation(iteration, metrics))
                    state.save(ckpt_path, iteration, cfg, spec, history)
                if run.world > 1:
                    dist.barrier()
            if iteration == stop_after:
                if main:
                    logger.info("stopped after iteration %d as asked; --resume continues", iteration)
                run_log.close()
                return out
    except KeyboardInterrupt:
        if main and iteration > start_iter:
            state.save(ckpt_path, iteration, cfg, spec, history)
            logger.warning("interrupted at iteration %d; checkpoint saved, --resume continues", iteration)
        run_log.close()
        raise
    except BaseException:
        run_log.close()
        raise
    if main:
        _finish(run, state, history, iteration, run_log)
    else:
        run_log.close()
    if run.world > 1:
        dist.barrier()
    return out


def _finish(run: _Run, state: TrainState, history: list, iteration: int, run_log: RunLog) -> None:
    """The final evaluation (choosing the test size), the last checkpoint and the model folder."""
    cfg, spec = run.cfg, run.spec
    metrics, test_spec = {}, spec
    if run.val_data is not None:
        others = [s for s in cfg.train_sizes if s != cfg.image_size] if cfg.choose_test_size else []
        test_spec, metrics = choose_test_size(state.model, spec, run.device, run.val_data, [cfg.image_size, *others])
        history.append(run_log.evaluation(iteration, metrics, plot=False))
    # the checkpoint keeps the training spec (a --resume compares it); the folder gets the test size
    state.save(run.out / CHECKPOINT, iteration, cfg, spec, history)
    finish_run(run.out, state.model, test_spec, engine="torchvision", cfg=cfg, metrics=metrics, iterations=iteration,
               run_log=run_log)
