"""Train and evaluate several backbones on the same data with the same schedule; write a table and a chart.

An example entry point: the code is :mod:`maskrcnn_finetune.commands.compare_backbones`, also installed as the
``mrcnn-compare-backbones`` command. ``python scripts/compare_backbones.py --help`` lists the options.
"""

import sys

from maskrcnn_finetune.commands.compare_backbones import cli, main  # noqa: F401 - main: for callers that run it in-process

if __name__ == "__main__":
    sys.exit(cli())
