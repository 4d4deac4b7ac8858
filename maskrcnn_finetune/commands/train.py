"""Fine-tune (or train from scratch) Mask R-CNN on COCO json and write a model folder.

Usage:
    python scripts/train.py --train-json T --val-json V --backbone NAME --output-dir DIR
        [--preset demo|finetune] [--max-iter N | --epochs E] [--batch-size 2] [--lr 0.01]
        [--schedule step|cosine] [--device cpu|cuda] [--image-size 800] [--eval-period 500]
        [--pretrained default|none] [--seed 0] [--resume]

    torchrun --nproc_per_node 2 scripts/train.py ...    # several GPUs (or CPU processes)

Every option of maskrcnn_finetune.config.TrainConfig is a flag here; a --preset fills in a
recipe and the flags you give override it. DIR gets model.json, model_final.pth, metrics.json,
metrics.jsonl, training_curves.png, config.json and last_checkpoint.pth.
"""

from __future__ import annotations

import argparse
import sys

from maskrcnn_finetune.cli import run_cli
from maskrcnn_finetune.config import add_config_arguments, resolve_config
from maskrcnn_finetune.modeling.backbones import BACKBONES
from maskrcnn_finetune.engines import train

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_config_arguments(parser, backbones=BACKBONES)


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    cfg = resolve_config(args.pop("preset"), **args)
    out = train(cfg)
    print(f"model folder: {out}")
    return 0


def cli() -> int:
    """The console command (see ``[project.scripts]`` in pyproject.toml)."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
