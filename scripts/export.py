"""Export a model folder to a .pt2 file (torch.export) or ONNX, kept only when it predicts like the eager fp32 model.

An example entry point: the code is :mod:`maskrcnn_finetune.commands.export`, also installed as the
``mrcnn-export`` command. ``python scripts/export.py --help`` lists the options.
"""

import sys

from maskrcnn_finetune.commands.export import cli, main  # noqa: F401 - main: for callers that run it in-process

if __name__ == "__main__":
    sys.exit(cli())
