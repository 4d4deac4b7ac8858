"""Fine-tune Mask R-CNN on your own labelme data and serve it behind a URL.

The pipeline, stage by stage:

- :mod:`maskrcnn_finetune.data`: labelme / VIA / synthetic data -> COCO json.
"""

__version__ = "0.1.0"
