"""Where :func:`choose_runtime` was: the runtime choice is :mod:`maskrcnn_finetune.loading`'s now (the layer
that uses a model), and this name stays for code that imports it from here."""

from maskrcnn_finetune.loading import CALIBRATION_IMAGES, calibration_images, choose_runtime, time_alternately

__all__ = ["CALIBRATION_IMAGES", "calibration_images", "choose_runtime", "time_alternately"]
