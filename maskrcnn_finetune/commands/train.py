"""Fine-tune (or train from scratch) Mask R-CNN on COCO json and write a model folder.

Usage:
    python scripts/train.py --train-json T --val-json V --backbone NAME --output-dir DIR
        [--preset demo|finetune] [--max-iter N | --epochs E] [--batch-size 2] [--lr 0.01]
        [--schedule step|cosine] [--device auto|cpu|cuda|cuda:N] [--image-size 800] [--eval-period 500]
        [--pretrained default|none] [--threshold 0.5] [--seed 0] [--resume]

    torchrun --nproc_per_node 2 scripts/train.py ...    # several GPUs (or CPU processes)
    python scripts/train.py --init-from runs/r1 --train-json T2 --val-json V2 --output-dir runs/r2
        # the next round of a labelling loop: r1's recipe, starting from r1's weights

Every option of maskrcnn_finetune.config.TrainConfig is a flag here; a --preset fills in a
recipe and the flags you give override it (with --init-from and no --preset, the recipe is the
one of the run that made that folder); a switch the preset turns on has a --no-... form that turns
it off (--no-choose-test-size). --threshold is the score threshold the model folder keeps, the
default of everything that runs it (older spelling: --score-threshold).

DIR gets model.json, model_final.pth, metrics.json, metrics.jsonl, training_curves.png,
config.json and last_checkpoint.pth.
"""

from __future__ import annotations

import argparse
import sys

from maskrcnn_finetune.cli import run_cli
from maskrcnn_finetune.config import add_config_arguments, resolve_config
from maskrcnn_finetune.modeling.backbones import BACKBONES
from maskrcnn_finetune.engines import train
from maskrcnn_finetune.engines.init_from import run_options

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_config_arguments(parser, backbones=BACKBONES)


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    preset = args.pop("preset")
    if args.get("init_from") and not preset:
        # the next round of a labelling loop: the recipe of the run it starts from, then the flags given
        args = {**run_options(args["init_from"]), **{k: v for k, v in args.items() if v is not None}}
    cfg = resolve_config(preset, **args)
    out = train(cfg)
    print(f"model folder: {out}")
    return 0


def cli() -> int:
    """The console command (see ``[project.scripts]`` in pyproject.toml)."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
