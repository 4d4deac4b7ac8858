"""Writes the embedded demo dataset: labelme-annotated images of circles, squares and triangles.

Usage:
    python scripts/make_synthetic.py OUT_DIR --images 100 [--seed 0] [--width 320 --height 256]

An example entry point: the work is done by :func:`maskrcnn_finetune.data.synthetic.make_synthetic`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from maskrcnn_finetune.cli import run_cli
from maskrcnn_finetune.data.synthetic import make_synthetic

logger = logging.getLogger("make_synthetic")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="folder for the .jpg + .json pairs (created if missing)")
    parser.add_argument("--images", type=int, required=True, help="number of images to write")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files (default: 0)")
    parser.add_argument("--width", type=int, default=320, help="typical width; varies +-25%% (default: 320)")
    parser.add_argument("--height", type=int, default=256, help="typical height; varies +-25%% (default: 256)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be at least 1, got {args.images}; pass e.g. --images 100")
    json_paths = make_synthetic(args.out_dir, args.images, seed=args.seed, image_size=(args.width, args.height))
    # an instance is a shape without group_id, or all shapes sharing one group_id
    n_instances = 0
    for path in json_paths:
        shapes = json.loads(path.read_text(encoding="utf-8"))["shapes"]
        groups = {s["group_id"] for s in shapes if s["group_id"] is not None}
        n_instances += len(groups) + sum(s["group_id"] is None for s in shapes)
    logger.info("wrote %d images with %d instances to %s", len(json_paths), n_instances, args.out_dir)
    return 0


def cli() -> int:
    """The console command (see ``[project.scripts]`` in pyproject.toml)."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
