"""Seconds per training iteration of ``--preset demo`` on this CPU, lever by lever.

Usage:
    python benchmarks/train_speed.py [--work-dir outputs/bench_train] [--iters 30] [--warmup 5]
        [--results-md benchmarks/RESULTS.md]

Trains the demo preset's model on the demo data set (made and converted here) for ``--warmup``
+ ``--iters`` iterations in each configuration, from the same seed with the same batches:

- ``fp32``: torchvision's model as it is (contiguous memory, torchvision's RoIAlign, the RPN on
  every FPN level, an FPN without norms, AdamW's per-parameter loop);
- ``+ parallel RoIAlign``: :mod:`maskrcnn_finetune.modeling.pooling` (RoIAlign as a sparse product);
- ``+ channels-last``;
- ``+ bf16 autocast``: what the engine runs on a CPU with bf16 units (``--amp auto``);
- ``+ fused AdamW``: one kernel for the optimiser step (the engine's optimiser);
- ``+ RPN without P2``: ``--rpn-levels 4``, the demo preset's step;
- ``+ BatchNorm in the FPN``: ``--fpn-norm bn`` (an option, not in the preset);
- ``bf16 autocast alone``: for comparison, with torchvision's RoIAlign and contiguous memory.

Configurations are timed in rounds, one after the other (``--rounds``), so that a machine that
gets busier or quieter during the run shifts them all alike. The fp32 and bf16 matrix-multiply
rates are measured before and after. Run it with nothing else busy: it is a timing.
``--results-md`` writes the table as the section ``train-speed`` (see benchmarks/results_md.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]

from maskrcnn_finetune.config import resolve_config
from maskrcnn_finetune.data.augment import augment_batch
from maskrcnn_finetune.data.convert import convert_labelme
from maskrcnn_finetune.data.dataset import CocoInstanceDataset
from maskrcnn_finetune.data.synthetic import make_synthetic
from maskrcnn_finetune.engines.torchvision_engine import BatchIndexSampler, _collate, load_train_val
from maskrcnn_finetune.modeling import build_model
from maskrcnn_finetune.modeling.pooling import use_parallel_roi_align

sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_md, beside this file
from results_md import Machine, add_results_md_argument, check_results_file, command_line, write_sections  # noqa: E402

SECTION = "train-speed"

_OLD = dict(fused=False, rpn_levels=5, fpn_norm="none")
VARIANTS = {
    "fp32 (torchvision as it is)": dict(parallel=False, channels_last=False, bf16=False, **_OLD),
    "+ parallel RoIAlign": dict(parallel=True, channels_last=False, bf16=False, **_OLD),
    "+ channels-last": dict(parallel=True, channels_last=True, bf16=False, **_OLD),
    "+ bf16 autocast": dict(parallel=True, channels_last=True, bf16=True, **_OLD),
    "+ fused AdamW": dict(parallel=True, channels_last=True, bf16=True, **{**_OLD, "fused": True}),
    "+ RPN without P2 (the demo preset here)": dict(parallel=True, channels_last=True, bf16=True, fused=True,
                                                     rpn_levels=4, fpn_norm="none"),
    "+ BatchNorm in the FPN (not in the preset)": dict(parallel=True, channels_last=True, bf16=True, fused=True,
                                                           rpn_levels=4, fpn_norm="bn"),
    "bf16 autocast alone": dict(parallel=False, channels_last=False, bf16=True, **_OLD),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "bench_train")
    parser.add_argument("--iters", type=int, default=30, help="timed iterations per configuration and round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    add_results_md_argument(parser)
    return parser


def seconds_per_iteration(cfg, data, variant: dict, iters: int, warmup: int) -> list[float]:
    dataset = CocoInstanceDataset(data)
    torch.manual_seed(cfg.seed)
    cfg = dataclasses.replace(cfg, rpn_levels=variant["rpn_levels"], fpn_norm=variant["fpn_norm"], anchor_sizes=[])
    model = build_model(cfg.model_spec(data.class_names), "none", train_min_sizes=cfg.train_sizes)
    if variant["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    if variant["parallel"]:
        use_parallel_roi_align(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay, fused=variant["fused"])
    loader = DataLoader(dataset, batch_sampler=BatchIndexSampler(len(dataset), cfg.batch_size, cfg.seed, 0, warmup + iters),
                        collate_fn=_collate)
    times = []
    start = time.perf_counter()
    for images, targets in loader:
        images, targets = augment_batch(images, targets, cfg.hflip)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant["bf16"]):
            losses = model(list(images), list(targets))
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        now = time.perf_counter()
        times.append(now - start)
        start = now
    return times[warmup:]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.results_md:
        check_results_file(args.results_md, [SECTION])
    root = args.work_dir
    if not (root / "coco" / "train.json").is_file():
        make_synthetic(root / "labelme", 100, seed=0)  # the data set make demo makes
        convert_labelme(root / "labelme", root / "coco", val_fraction=0.2, seed=0)
    cfg = resolve_config("demo", train_json=str(root / "coco" / "train.json"), output_dir=str(root / "unused"))
    data, _ = load_train_val(cfg)
    machine = Machine.measure()
    times = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, variant in VARIANTS.items():
            times[name] += seconds_per_iteration(cfg, data, variant, args.iters, args.warmup)
            print(f"{name}: {statistics.mean(times[name]):.3f} s/it so far", flush=True)
    machine.finish()
    base = statistics.mean(times[next(iter(VARIANTS))])
    lines = [f"Demo preset from random weights, {args.rounds} round(s) of {args.warmup} + {args.iters} iterations per "
             "configuration.", "",
             "| configuration | s / iteration (mean) | median | speed-up over fp32 |", "|---|---|---|---|"]
    for name, values in times.items():
        lines.append(f"| {name} | {statistics.mean(values):.3f} | {statistics.median(values):.3f} | "
                     f"{base / statistics.mean(values):.2f}x |")
    table = "\n".join(lines)
    print(machine.line())
    print(table)
    root.mkdir(parents=True, exist_ok=True)
    (root / "train_speed.md").write_text(table + "\n")
    (root / "train_speed.json").write_text(json.dumps({"machine": machine.to_dict(), "seconds": times}))
    if args.results_md:
        write_sections(args.results_md, {SECTION: table}, command_line(__file__, argv), machine)
        print(f"wrote the section {SECTION} of {args.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
