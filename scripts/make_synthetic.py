"""Writes the embedded demo dataset: labelme-annotated images of circles, squares and triangles.

An example entry point: the code is :mod:`maskrcnn_finetune.commands.make_synthetic`, also installed as the
``mrcnn-make-synthetic`` command. ``python scripts/make_synthetic.py --help`` lists the options.
"""

import sys

from maskrcnn_finetune.commands.make_synthetic import cli, main  # noqa: F401 - main: for callers that run it in-process

if __name__ == "__main__":
    sys.exit(cli())
