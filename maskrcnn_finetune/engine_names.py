"""The one list of training engines, which every other list of engines reads.

``TrainConfig.engine``'s choices (and so ``--engine``), the trainers of :mod:`maskrcnn_finetune.engines`
(``engines.TRAINERS``), the model-folder loaders of :mod:`maskrcnn_finetune.model_dir` (``LOADERS``)
and the server's OpenAPI document take their names from here; the two registries refuse a name
missing here. Plain data, no torch: the config and its flags read it.
"""

from __future__ import annotations

ENGINES = ("torchvision", "detectron2")
"""The engines that train a model folder (``model.json``'s ``engine``); the first is the default."""
