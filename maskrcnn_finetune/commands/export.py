"""Export a model folder to TorchScript (or ONNX), kept only when it predicts like the eager fp32 model.

The exported model is loaded back and run next to the eager model on check images (a few
synthetic ones by default): the same instances above the threshold, mask IoU >= 0.95, scores
within 0.05. The file, export.json (parity report, versions, latency) and a copy of model.json
are written only when that holds. --format onnx writes model.onnx and export_onnx.json instead
(needs `pip install onnx onnxruntime`). --check checks an existing exported file against a model
folder instead (e.g. before deploying it), and writes nothing.

Usage:
    python scripts/export.py --model-dir DIR [--format torchscript|onnx] [--output FILE_OR_DIR]
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
    EXPORT_DIR,
    FORMATS,
    ExportParityError,
    check_export,
    export_onnx,
    export_torchscript,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a model folder written by scripts/train.py")
    parser.add_argument("--format", choices=sorted(FORMATS), default="torchscript",
                        help="torchscript (default) or onnx (ONNX Runtime)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"the file to write, or a folder (default: MODEL_DIR/{EXPORT_DIR}/model.torchscript.pt "
                             "or model.onnx)")
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
            export = export_onnx if args.format == "onnx" else export_torchscript
            result = export(args.model_dir, args.output, args.images, args.threshold, args.overwrite)
            report = Path(result["path"]).parent / FORMATS[args.format][1]
            where = f"exported to {result['path']} (report: {report})"
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
