"""Convert labelme annotations (a folder, a .zip, or a zip URL) to COCO train/val json.

An example entry point: the code is :mod:`maskrcnn_finetune.commands.labelme_to_coco`, also installed as the
``mrcnn-labelme-to-coco`` command. ``python scripts/labelme_to_coco.py --help`` lists the options.
"""

import sys

from maskrcnn_finetune.commands.labelme_to_coco import cli, main  # noqa: F401 - main: for callers that run it in-process

if __name__ == "__main__":
    sys.exit(cli())
