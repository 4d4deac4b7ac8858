"""Evaluate a model folder on a COCO json with pycocotools (bbox and segm AP, AP50, AP75, per class).

Usage:
    python scripts/evaluate.py --model-dir DIR --json V [--device auto|cpu|cuda|cuda:N]
        [--runtime torch|openvino|openvino-int8|auto] [--output DIR/metrics.json] [--percent]

The metrics are scored on every detection (AP needs the low-scoring ones too), whatever the model
folder's threshold. --output is the file they are added to, under the json's name (older
spelling: --out). The model is loaded as the server and batch prediction load it (the same
--runtime choice); the line before the table says how it ran.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from maskrcnn_finetune.cli import add_device_argument, add_runtime_arguments, add_with_aliases, run_cli
from maskrcnn_finetune.evaluate import evaluate_predictor
from maskrcnn_finetune.loading import load_predictor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a model folder written by scripts/train.py")
    parser.add_argument("--json", type=Path, required=True, help="COCO json to evaluate on")
    add_device_argument(parser)
    add_runtime_arguments(parser, default="torch")  # the model's own AP unless another runtime is asked for
    add_with_aliases(parser, "--output", ["--out"], type=Path, default=None, metavar="FILE",
                     help="the json file the metrics are added to (default: DIR/metrics.json)")
    parser.add_argument("--percent", action="store_true",
                        help="print AP on the 0-100 scale of COCO papers and the older kits' tables (files keep 0-1)")
    return parser


COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def metrics_table(metrics: dict, percent: bool = False) -> str:
    """The bbox and segm rows as a Markdown table (``-`` where the data has no object of that size)."""
    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.1f}" if percent else f"{value:.3f}"

    lines = ["| iou type | " + " | ".join(COLUMNS) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    for iou_type in ("bbox", "segm"):
        lines.append(f"| {iou_type} | " + " | ".join(cell(metrics[iou_type].get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    predictor = load_predictor(args.model_dir, args.runtime, device=args.device, calibration=args.calibration_images,
                               val_json=args.val_json)
    metrics = evaluate_predictor(predictor, args.json)
    out = args.output or args.model_dir / "metrics.json"
    existing = json.loads(out.read_text()) if out.is_file() else {}
    existing[args.json.stem] = metrics
    out.write_text(json.dumps(existing, indent=2))
    print(f"evaluated on {predictor.device}: {predictor.describe_mode()}; runtime {predictor.choice['runtime']} "
          f"({predictor.choice['why']})")
    print(metrics_table(metrics, percent=args.percent))
    print(f"metrics written to {out}")
    return 0


def cli() -> int:
    """The console command (see ``[project.scripts]`` in pyproject.toml)."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
