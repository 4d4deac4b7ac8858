"""Evaluate a model folder on a COCO json with pycocotools (bbox and segm AP, AP50, AP75, per class).

An example entry point: the code is :mod:`maskrcnn_finetune.commands.evaluate`, also installed as the
``mrcnn-evaluate`` command. ``python scripts/evaluate.py --help`` lists the options.
"""

import sys

from maskrcnn_finetune.commands.evaluate import cli, main  # noqa: F401 - main: for callers that run it in-process

if __name__ == "__main__":
    sys.exit(cli())
