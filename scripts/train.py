"""Fine-tune (or train from scratch) Mask R-CNN on COCO json and write a model folder.

An example entry point: the code is :mod:`maskrcnn_finetune.commands.train`, also installed as the
``mrcnn-train`` command. ``python scripts/train.py --help`` lists the options.
"""

import sys

from maskrcnn_finetune.commands.train import cli, main  # noqa: F401 - main: for callers that run it in-process

if __name__ == "__main__":
    sys.exit(cli())
