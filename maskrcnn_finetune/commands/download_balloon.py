"""Example: download Matterport's balloon dataset and convert it to COCO json.

Usage:
    python scripts/download_balloon.py OUT_DIR [--url URL] [--sha256 HEX] [--no-size-check]

Writes OUT_DIR/train.json and OUT_DIR/val.json, with their images under OUT_DIR/images/.
A second run reuses the downloaded zip.
"""

from __future__ import annotations

import argparse
import re
import sys

from maskrcnn_finetune.cli import run_cli
from maskrcnn_finetune.data.balloon import BALLOON_SIZE, BALLOON_URL, prepare_balloon


def _sha256_hex(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
        raise argparse.ArgumentTypeError(f"'{text}' is not a sha256 (64 hex digits)")
    return text.strip().lower()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for the download, the raw data and the COCO json")
    parser.add_argument("--url", default=BALLOON_URL, help="where to download the zip (default: the GitHub release)")
    parser.add_argument("--sha256", type=_sha256_hex, help="expected sha256 of the zip (printed in the log of a download)")
    parser.add_argument("--test-split", action="store_true",
                        help="the older REST API kit's protocol: train/val from the original train images "
                             "(--val-fraction to val), the original val images as test.json")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="with --test-split (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="with --test-split: the split's random seed (default 0)")
    parser.add_argument(
        "--no-size-check",
        action="store_true",
        help=f"do not require the zip to be {BALLOON_SIZE} bytes (for a --url serving another build of it)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = prepare_balloon(
        args.out_dir,
        url=args.url,
        expected_size=None if args.no_size_check else BALLOON_SIZE,
        sha256=args.sha256,
        test_split=args.test_split,
        val_fraction=args.val_fraction,
        seed=args.seed,
    )
    print(result.table)
    for split, path in result.json_paths.items():
        print(f"{split}: {path}")
    return 0


def cli() -> int:
    """The console command (see ``[project.scripts]`` in pyproject.toml)."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
