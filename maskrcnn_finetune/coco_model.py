"""torchvision's COCO-trained Mask R-CNN as a model folder: something to serve before any training.

    folder = coco_model_dir("outputs/served/models")   # downloads the weights once (170 MB)
    Predictor.from_dir(folder)("street.jpg")           # people, cars, dogs, ... (80 COCO classes)

Importing this module is cheap (no torch): the command lines check the name before loading anything.

The weights are torchvision's ``MaskRCNN_ResNet50_FPN_Weights.COCO_V1`` (box AP 37.9, mask AP 34.6
on COCO val2017, as torchvision reports them), fetched by torch's hub with a progress bar and their
SHA-256 checked (the hash is part of the file name), and cached in torch's hub folder
(``$TORCH_HOME/hub/checkpoints``). The model folder written from them is an ordinary one: the server,
batch prediction, export and ``--init-from`` take it as they take a trained folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from maskrcnn_finetune.errors import WeightsUnavailableError

logger = logging.getLogger(__name__)

COCO_MODEL = "coco"
"""The name that stands for this model where a model folder is asked for (``flask_app.py --model-dir coco``)."""
FOLDER_NAME = "coco-maskrcnn_resnet50_fpn"


def coco_class_names() -> list[str]:
    """The model's 90 class names in category order: COCO's 80, with ``N/A`` at the ids COCO left unused."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    return list(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:])  # [0] is the background


def coco_model_dir(parent) -> Path:
    """The model folder of torchvision's COCO Mask R-CNN inside ``parent``, written on first use.

    Raises:
        WeightsUnavailableError: the weights are not cached and cannot be downloaded; the message
            says what to do.
    """
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn

    from maskrcnn_finetune.model_dir import MODEL_JSON, write_model_dir
    from maskrcnn_finetune.modeling import ModelSpec

    folder = Path(parent) / FOLDER_NAME
    if (folder / MODEL_JSON).is_file():
        return folder
    weights = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    logger.info("fetching torchvision's COCO Mask R-CNN weights (%s), once", weights.url)
    try:
        model = maskrcnn_resnet50_fpn(weights=weights, progress=True)
    except (OSError, RuntimeError) as exc:  # no network (URLError is an OSError), a cut-off or damaged file
        raise WeightsUnavailableError(
            f"could not fetch torchvision's COCO Mask R-CNN weights ({type(exc).__name__}: {exc}). Connect to the "
            f"internet once (they are cached in torch's hub folder afterwards), or put {Path(weights.url).name} "
            "into $TORCH_HOME/hub/checkpoints, or pass --model-dir with a model folder of your own") from exc
    spec = ModelSpec("resnet50_fpn", coco_class_names())  # torchvision's own sizes: 800 / 1333 px, 100 detections
    write_model_dir(folder, model, spec, engine="torchvision",
                    training={"source": f"torchvision {weights}", "weights_url": weights.url},
                    metrics={"coco_val2017_box_AP": weights.meta["_metrics"]["COCO-val2017"]["box_map"] / 100,
                             "coco_val2017_mask_AP": weights.meta["_metrics"]["COCO-val2017"]["mask_map"] / 100})
    logger.info("wrote the COCO model folder %s", folder)
    return folder
