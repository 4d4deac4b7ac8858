"""Make a model folder from a detectron2 checkpoint, so the Predictor, evaluate.py and the server use it.

Usage:
    python scripts/import_detectron2.py --weights output/model_final.pth --config output/config.yaml \
        --classes balloon --output-dir models/balloon [--threshold 0.5] [--trust-checkpoint]

    # a run that used a model-zoo config unchanged (apart from the number of classes, which
    # --classes gives) can name it instead of a yaml:
    python scripts/import_detectron2.py --weights model_final.pth \
        --config COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml --classes balloon --output-dir DIR

--classes lists the class names in the order of the training set's categories (comma-separated
or space-separated). The weights are checked against the config: a config of another backbone,
other heads or another number of classes is refused with what differs. --trust-checkpoint reads a
checkpoint holding Python objects besides the weights (torch >= 2.6 refuses those by default);
the folder then gets a copy with the weights only. --threshold is the score threshold the folder
keeps, the default of everything that runs it (older spelling: --score-threshold). Needs
detectron2 (scripts/install_detectron2.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maskrcnn_finetune.cli import add_with_aliases, run_cli
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.model_spec import DEFAULT_SCORE_THRESHOLD
from maskrcnn_finetune.modeling.detectron2 import require_detectron2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="model_final.pth of a detectron2 run")
    parser.add_argument("--config", required=True, help="the run's config yaml, or a model-zoo config name")
    parser.add_argument("--classes", nargs="+", required=True, help="class names in category order")
    parser.add_argument("--output-dir", type=Path, required=True, help="the model folder to write")
    add_with_aliases(parser, "--threshold", ["--score-threshold"], type=float, default=DEFAULT_SCORE_THRESHOLD,
                     help="the score threshold the model folder keeps: the default of the Predictor, batch "
                          f"prediction and the server (default: {DEFAULT_SCORE_THRESHOLD})")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="read a checkpoint that holds Python objects (only for files you trust)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1, got {args.threshold}")
    require_detectron2()
    from maskrcnn_finetune.modeling.detectron2.importing import import_checkpoint

    classes = [name for item in args.classes for name in item.split(",")]
    out = import_checkpoint(args.weights, args.config, classes, args.output_dir,
                            score_threshold=args.threshold, trusted=args.trust_checkpoint)
    print(f"model folder: {out}")
    return 0


def cli() -> int:
    """The console command (see ``[project.scripts]`` in pyproject.toml)."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
