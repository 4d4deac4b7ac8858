"""Make a model folder from a detectron2 checkpoint, so the Predictor, evaluate.py and the server use it.

An example entry point: the code is :mod:`maskrcnn_finetune.commands.import_detectron2`, also installed as the
``mrcnn-import-detectron2`` command. ``python scripts/import_detectron2.py --help`` lists the options.
"""

import sys

from maskrcnn_finetune.commands.import_detectron2 import cli, main  # noqa: F401 - main: for callers that run it in-process

if __name__ == "__main__":
    sys.exit(cli())
