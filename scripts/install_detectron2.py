"""Install detectron2 into the active Python environment: an example; the code is the kit's.

Usage:
    python scripts/install_detectron2.py [--source auto|git|wheel] [--force] [--wheel-dir DIR]

The same as ``python -m maskrcnn_finetune.modeling.detectron2.install`` (which a pip-installed kit,
e.g. in Colab, has); see that module for the two ways in.
"""

from __future__ import annotations

import sys

from maskrcnn_finetune.modeling.detectron2.install import main, retag_wheel  # noqa: F401 - used by the tests

if __name__ == "__main__":
    sys.exit(main())
