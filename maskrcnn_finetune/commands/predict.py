"""Predict every image of a folder, zip, glob, list or COCO json with a model folder.

Usage:
    python scripts/predict.py INPUT --model-dir DIR --output-dir OUT [--threshold 0.5]
        [--device auto|cpu|cuda|cuda:N]
        [--formats coco,labelme,masks,overlay,csv] [--workers N] [--batch-size B] [--overwrite]
        [--review-below S] [--order name|uncertainty] [--min-iou 0.95]

    torchrun --nproc_per_node 2 scripts/predict.py INPUT --model-dir DIR --output-dir OUT   # several processes / GPUs

OUT gets coco_results.json (COCO results: image ids are the json's own for a COCO json input, else
the images' positions 1..N) with coco_dataset.json beside it (the same instances as a COCO dataset,
whose images say which file each id is: import it in CVAT, FiftyOne or pycocotools' COCO),
labelme/*.json (open them in labelme, correct, then convert with scripts/labelme_to_coco.py),
masks/, overlays/, summary.csv, errors.csv and summary.json. An interrupted run continues where it
stopped when run again.
"""

from __future__ import annotations

import argparse
import sys

from maskrcnn_finetune.cli import add_device_argument, add_runtime_arguments, add_with_aliases, run_cli
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.predict import FORMATS, ORDERS, format_class_counts, predict_images


def _formats(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown format(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {','.join(FORMATS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="a folder (recursive), a .zip, a glob pattern, a .txt list of paths, or a COCO json")
    parser.add_argument("--model-dir", required=True, help="a model folder written by scripts/train.py")
    add_with_aliases(parser, "--output-dir", ["--output"], required=True, metavar="OUT",
                     help="the output folder (outside the input)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="leave out instances scoring below it (default: the model folder's)")
    add_device_argument(parser)
    parser.add_argument("--formats", type=_formats, default=list(FORMATS),
                        help=f"comma-separated, any of {','.join(FORMATS)} (default: all)")
    add_runtime_arguments(parser)
    parser.add_argument("--workers", type=int, default=0, help="processes decoding images while the model runs")
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call (more than 1 on a GPU)")
    parser.add_argument("--overwrite", action="store_true", help="predict again the images an earlier run finished")
    parser.add_argument("--review-below", type=float, default=None,
                        help="mark labelme shapes scoring below this with the flag 'review'")
    parser.add_argument("--order", choices=ORDERS, default="name",
                        help="uncertainty: also write review_order.txt, the images the model is least sure of first")
    parser.add_argument("--min-iou", type=float, default=None,
                        help="how closely the labelme polygons keep each mask (default 0.95)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.min_iou is not None and not 0.0 < args.min_iou <= 1.0:
        raise ConfigError(f"--min-iou must be in (0, 1], got {args.min_iou}")
    summary = predict_images(args.input, args.output_dir, model_dir=args.model_dir, threshold=args.threshold,
                             device=args.device, formats=args.formats, workers=args.workers,
                             batch_size=args.batch_size, overwrite=args.overwrite, review_below=args.review_below,
                             order=args.order, min_iou=args.min_iou, runtime=args.runtime,
                             calibration=args.calibration_images, val_json=args.val_json)
    if "images_done" in summary:  # the process that merged the outputs
        print(format_class_counts(summary))
        print(f"{summary['images_done']} of {summary['images']} images done ({summary['predicted']} now, "
              f"{summary['images_per_second']} images/s), {summary['errors']} unreadable (errors.csv); "
              f"outputs in {args.output_dir}")
    return 0


def cli() -> int:
    """The console command (see ``[project.scripts]`` in pyproject.toml)."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
