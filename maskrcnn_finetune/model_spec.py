"""The description of a model that rebuilds it exactly (``model.json``'s ``model`` entry).

Plain data, no torch: the training config (:mod:`maskrcnn_finetune.config`) derives its model
options from these fields, and :func:`maskrcnn_finetune.modeling.build_model` builds from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from maskrcnn_finetune.errors import ModelDirError


DEFAULT_SCORE_THRESHOLD = 0.5
"""The score threshold a model folder records (``model.json``'s ``score_threshold``) when its training,
import or writer gives none: the default of the Predictor, batch prediction and the server."""

TEST_TIME_OPTIONS = ("rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "detections_per_image")
"""ModelSpec fields that only inference reads: a training run may resume with other values."""


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model exactly; stored in a model folder's ``model.json``.

    Attributes:
        backbone: a name from :data:`~maskrcnn_finetune.modeling.backbones.BACKBONES`.
        class_names: the object classes (the background is implicit, class 0).
        min_size / max_size: images are resized so the short side is ``min_size`` (a list
            while training means multi-scale) and the long side at most ``max_size``.
        anchor_sizes: one anchor size per level the RPN proposes from (``rpn_levels`` of them,
            finest first), in pixels of the resized image.
        rpn_levels: how many FPN levels the RPN proposes from, counted from the coarsest: 5 is all
            of P2-P6; 4 leaves out P2 (stride 4), whose anchors in small images are smaller than
            most objects, and with it the RPN's most expensive level. The box and mask heads pool
            from P2-P5 either way.
        fpn_norm: ``"bn"`` puts BatchNorm after each of the FPN's convolutions (torchvision's
            ``norm_layer``, detectron2's ``MODEL.FPN.NORM``), ``"none"`` is the usual FPN.
        rpn_pre_nms_top_n_test / rpn_post_nms_top_n_test: proposals kept at test time.
        rpn_*_nms_top_n_*: proposals kept before / after NMS, while training and at test time.
        box_batch_size_per_image: sampled RoIs per image while training.
        detections_per_image: the most instances one image can return.
        box_head_dim: width of the box head's two fully connected layers.
        mask_head_layers: channels of the mask head's 3x3 convolutions. The mask head runs on
            every positive RoI, so on a CPU it weighs on training time: the demo preset uses two
            64-channel layers instead of four 256-channel ones.
    """

    backbone: str
    class_names: list[str]
    min_size: int = 800
    max_size: int = 1333
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    rpn_levels: int = 5
    fpn_norm: str = "none"
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512
    detections_per_image: int = 100
    box_head_dim: int = 1024
    mask_head_layers: list[int] = field(default_factory=lambda: [256, 256, 256, 256])

    def to_dict(self) -> dict:
        return asdict(self)

    def training_differences(self, other: dict) -> dict[str, tuple]:
        """The options, other than :data:`TEST_TIME_OPTIONS`, whose value in ``other`` (a spec's dict)
        differs from this spec's: ``{name: (other's value, this value)}``."""
        mine = self.to_dict()
        return {name: (other.get(name), value) for name, value in mine.items()
                if name not in TEST_TIME_OPTIONS and other.get(name) != value}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        """The spec of a ``model.json`` ``model`` entry.

        Raises:
            ModelDirError: the entry has options this version of the kit does not know (a model
                folder written by a newer version), or lacks required ones.
        """
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ModelDirError(f"the model description has option(s) this version of the kit does not know: "
                                f"{', '.join(unknown)}; the folder was written by a newer version: update the kit "
                                "(pip install -U), or train again with this one")
        return cls(**data)


def default_anchor_sizes(min_size: int, rpn_levels: int = 5) -> list[int]:
    """Anchors that scale with the image size: torchvision's 32..512 at 800 px, the coarsest ``rpn_levels`` of them."""
    scale = min_size / 800.0
    return [max(8, int(round(s * scale))) for s in (32, 64, 128, 256, 512)][5 - rpn_levels:]
