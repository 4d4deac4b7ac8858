"""Parameters and GMACs of every registered backbone's Mask R-CNN at a given short side.

Usage:
    python benchmarks/backbone_complexity.py [--short-side 800] [--classes 1] [--backbones resnet50_fpn ...]
        [--out benchmarks/complexity.md] [--results-md benchmarks/RESULTS.md]

Counted with torch's FlopCounterMode on one 800x1066 image, with the default heads (1024-wide
box head, 4x256 mask head) and 100 detections kept, so the mask head's share is the worst case.
``--results-md`` writes the table as the section ``model-cost`` (see benchmarks/results_md.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from maskrcnn_finetune.modeling import BACKBONES
from maskrcnn_finetune.modeling.complexity import describe_backbone

sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_md, beside this file
from results_md import Machine, add_results_md_argument, check_results_file, command_line, write_sections  # noqa: E402

SECTION = "model-cost"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short-side", type=int, default=800)
    parser.add_argument("--classes", type=int, default=1, help="object classes (the balloon data has 1)")
    parser.add_argument("--backbones", nargs="+", default=sorted(BACKBONES), choices=sorted(BACKBONES),
                        help="the backbones to count (default: every registered one)")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    add_results_md_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.results_md:
        check_results_file(args.results_md, [SECTION])
    machine = Machine.measure()
    rows = [describe_backbone(name, args.classes, args.short_side) for name in tqdm(args.backbones, desc="backbones")]
    machine.finish()
    lines = [f"| backbone | params (M) | GMACs at {rows[0]['input']} |", "|---|---|---|"]
    lines += [f"| {r['backbone']} | {r['params_M']:.1f} | {r['gmacs']:.0f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    if args.results_md:
        write_sections(args.results_md, {SECTION: table}, command_line(__file__, argv), machine)
        print(f"wrote the section {SECTION} of {args.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
