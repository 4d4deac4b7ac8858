"""Example: download Matterport's balloon dataset and convert it to COCO json.

An example entry point: the code is :mod:`maskrcnn_finetune.commands.download_balloon`, also installed as the
``mrcnn-download-balloon`` command. ``python scripts/download_balloon.py --help`` lists the options.
"""

import sys

from maskrcnn_finetune.commands.download_balloon import cli, main  # noqa: F401 - main: for callers that run it in-process

if __name__ == "__main__":
    sys.exit(cli())
