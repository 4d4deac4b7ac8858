"""Export a model folder to a .pt2 file (torch.export) or ONNX, kept only when it predicts like the eager fp32 model.

The parts of the model with weights become torch.export programs; the data-dependent rest (resize,
anchors, NMS, RoIAlign, mask pasting) stays the kit's Python. The exported model is loaded back and
run next to the eager model on check images (the model's own val images when they are here, else a
few synthetic ones): the same instances above the threshold, mask IoU >= 0.95, scores within 0.05.
The file, its report (export_pt2.json: parity, versions, latency) and a copy of model.json are written
only when that holds; the folder they are in is served like a model folder (--model-dir). --format onnx
writes model.onnx and export_onnx.json instead (needs `pip install onnx onnxscript onnxruntime`).
--format torchscript still writes TorchScript, which torch deprecates. --check checks an existing
exported file against a model folder instead (e.g. before deploying it), and writes nothing.

Usage:
    python scripts/export.py --model-dir DIR [--format pt2|onnx|torchscript] [--output FILE_OR_DIR]
                             [--images DIR_OR_FILES ...] [--threshold T] [--overwrite]
    python scripts/export.py --model-dir DIR --check FILE [--images ...] [--threshold T]

Exit codes: 0 exported (or checked) and matching; 1 the predictions differ (nothing kept);
2 a user error (message says what to fix).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maskrcnn_finetune.cli import run_cli
from maskrcnn_finetune.export import (
    DEFAULT_FORMAT,
    EXPORT_DIR,
    FORMATS,
    TORCHSCRIPT_DEPRECATED,
    ExportParityError,
    check_export,
    export_onnx,
    export_pt2,
    export_torchscript,
)

EXPORTERS = {"pt2": export_pt2, "onnx": export_onnx, "torchscript": export_torchscript}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a model folder written by scripts/train.py")
    parser.add_argument("--format", choices=list(FORMATS), default=DEFAULT_FORMAT,
                        help="pt2 (default: torch.export), onnx (ONNX Runtime), or torchscript (deprecated by torch)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"the file to write, or a folder (default: MODEL_DIR/{EXPORT_DIR}/"
                             f"{FORMATS[DEFAULT_FORMAT][0]}, or the format's file name)")
    parser.add_argument("--images", nargs="+", default=None, metavar="DIR_OR_FILES",
                        help="images for the parity check (default: the first 12 of the val json the model was "
                             "trained with, when it is here; else 3 synthetic images at the model's size)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="score threshold the parity check is about (default: the model's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing exported file")
    parser.add_argument("--check", type=Path, default=None, metavar="FILE",
                        help="check this exported file against --model-dir instead of exporting")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.check is not None:
            result = check_export(args.check, args.model_dir, args.images, args.threshold)
            where = f"{args.check} predicts like {args.model_dir}"
        else:
            if args.format == "torchscript":
                print(f"warning: {TORCHSCRIPT_DEPRECATED}", file=sys.stderr)
            result = EXPORTERS[args.format](args.model_dir, args.output, args.images, args.threshold, args.overwrite)
            report = Path(result["path"]).parent / FORMATS[args.format][1]
            where = f"exported to {result['path']} (report: {report})"
            if args.format == "pt2":
                where += f"; its folder is a model folder: --model-dir {Path(result['path']).parent}"
    except ExportParityError as exc:
        print(f"parity FAILED: {exc}", file=sys.stderr)
        return 1
    parity, latency = result["parity"], result["latency_ms"]
    print(f"parity ok at threshold {result['threshold']:.2f} on {len(result['check_images'])} images: "
          f"{parity['matched']} instances matched, lowest mask IoU {parity['min_mask_iou']:.3f}, "
          f"largest score difference {parity['max_score_diff']:.3f}")
    print(f"latency (median ms/image): eager {latency['eager']['median_ms']:.1f}, "
          f"exported {latency['exported']['median_ms']:.1f}")
    print(where)
    return 0


def cli() -> int:
    """The console command (see ``[project.scripts]`` in pyproject.toml)."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
