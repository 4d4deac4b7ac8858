"""Predict every image of a folder, zip, glob, list or COCO json with a model folder.

An example entry point: the code is :mod:`maskrcnn_finetune.commands.predict`, also installed as the
``mrcnn-predict`` command. ``python scripts/predict.py --help`` lists the options.
"""

import sys

from maskrcnn_finetune.commands.predict import cli, main  # noqa: F401 - main: for callers that run it in-process

if __name__ == "__main__":
    sys.exit(cli())
