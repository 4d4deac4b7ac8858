"""Train and evaluate several backbones on the same data with the same schedule; write a table and a chart.

Usage:
    python scripts/compare_backbones.py --train-json T --val-json V [--test-json X] --output-dir DIR
        [--backbones resnet50_fpn mobilenetv2_fpn vovnet19_fpn] [--preset demo] [any scripts/train.py flag]

DIR gets one model folder per backbone, comparison.md (params, GMACs, ms per image, box and
mask AP50 on val and test), comparison.json and comparison.png. Finished folders are reused, an
interrupted one resumes.
"""

from __future__ import annotations

import argparse
import sys

from maskrcnn_finetune.cli import run_cli
from maskrcnn_finetune.compare import compare_backbones, format_comparison
from maskrcnn_finetune.config import add_config_arguments, resolve_config
from maskrcnn_finetune.modeling import BACKBONES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, backbones=BACKBONES)
    parser.add_argument("--backbones", nargs="+", default=["resnet50_fpn", "mobilenetv2_fpn", "vovnet19_fpn"],
                        choices=sorted(BACKBONES), help="backbones to compare")
    parser.add_argument("--test-json", default=None, help="an optional held-out COCO json reported beside val")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    backbones, test_json = args.pop("backbones"), args.pop("test_json")
    args.pop("backbone", None)
    base = resolve_config(args.pop("preset"), **args)
    rows = compare_backbones(base, backbones, base.output_dir, test_json=test_json)
    print(format_comparison(rows, base))
    return 0


def cli() -> int:
    """The console command (see ``[project.scripts]`` in pyproject.toml)."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
