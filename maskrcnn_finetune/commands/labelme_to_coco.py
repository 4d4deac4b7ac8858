"""Convert labelme annotations (a folder, a .zip, or a zip URL) to COCO train/val json.

Usage:
    python scripts/labelme_to_coco.py LABELME_DIR_OR_ZIP_OR_URL OUT_DIR [--val-fraction 0.2]
        [--seed 0] [--labels labels.txt | --labels a,b,...] [--skip-invalid] [--preview OUT_DIR/samples.png]

Writes OUT_DIR/train.json and OUT_DIR/val.json (only OUT_DIR/dataset.json with
--val-fraction 0) and copies the images to OUT_DIR/images/, so the folder can be moved.

--labels gives the classes in id order (ids from 1): a labels file as labelme's examples and
labelme2coco use it (one class per line; its __ignore__ and _background_ lines are not classes),
or the names separated by commas. A label in the data that is not one of them is reported as a
problem (--skip-invalid leaves its shapes out). Without --labels: every label found, sorted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from maskrcnn_finetune.cli import run_cli
from maskrcnn_finetune.data.download import fetch_source
from maskrcnn_finetune.data.convert import convert_labelme, read_labels
from maskrcnn_finetune.visualize import draw_coco_samples

logger = logging.getLogger("labelme_to_coco")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="folder of labelme .json files and images, a .zip of one, or an http(s) URL to a zip")
    parser.add_argument("out_dir", type=Path, help="output folder for the COCO json files and images")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of images held out for validation (0 = no split)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random train/val split")
    parser.add_argument("--labels", default=None, metavar="FILE_OR_LIST",
                        help="the classes in id order (ids start at 1): a labels.txt (one per line, as labelme's "
                             "examples; __ignore__ and _background_ lines skipped) or comma-separated names; "
                             "default: every label, sorted")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="leave out shapes and files with problems instead of stopping")
    parser.add_argument("--preview", type=Path, default=None, help="also draw a grid of annotated samples to this PNG")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where a zip or URL source is unpacked (default: OUT_DIR/source)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    labels = read_labels(args.labels)
    source = fetch_source(args.source, args.work_dir or args.out_dir / "source")
    result = convert_labelme(source, args.out_dir, args.val_fraction, args.seed, labels, args.skip_invalid)
    print(result.table)
    for split, path in result.json_paths.items():
        print(f"{split}: {path}")
    if args.preview:
        first = result.json_paths.get("train") or next(iter(result.json_paths.values()))
        draw_coco_samples(first, args.preview)
        print(f"preview: {args.preview}")
    return 0


def cli() -> int:
    """The console command (see ``[project.scripts]`` in pyproject.toml)."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
