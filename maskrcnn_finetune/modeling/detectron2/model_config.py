"""The kit's options as a detectron2 config: one :class:`ModelSpec` (and a :class:`TrainConfig`
for training) in, a detectron2 ``CfgNode`` out.

How each backbone is built is in the one list of backbones (``Backbone.detectron2`` in
:mod:`maskrcnn_finetune.modeling.backbones`): ResNet-50 and -101 come from the model-zoo configs
``COCO-InstanceSegmentation/mask_rcnn_R_{50,101}_FPN_3x.yaml`` (with their COCO weights for
``--pretrained default``); the others are the timm backbones of :mod:`.timm_backbones`, which start
from ImageNet weights or from scratch.
"""

from __future__ import annotations

from pathlib import Path

from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg

from maskrcnn_finetune.config import TrainConfig
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.modeling.backbones import BACKBONES, ZOO_R50, Backbone, Detectron2Build
from maskrcnn_finetune.modeling.detectron2.legacy import translate_config
from maskrcnn_finetune.modeling.detectron2.timm_backbones import ADD_CONFIG
from maskrcnn_finetune.modeling.maskrcnn import ModelSpec

# timm networks expect RGB scaled like ImageNet; detectron2 wants the statistics in 0-255
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]
RPN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
"""The FPN levels detectron2's RPN can propose from; a spec's ``rpn_levels`` takes the coarsest."""


def detectron2_names() -> list[str]:
    """The backbone names the detectron2 engine can build."""
    return [name for name, backbone in BACKBONES.items() if backbone.detectron2]


def detectron2_backbone(name: str) -> tuple[Backbone, Detectron2Build]:
    """The backbone ``name`` and how detectron2 builds it.

    Raises:
        ConfigError: an unknown name, or a backbone of the torchvision engine only.
    """
    backbone = BACKBONES.lookup(name)
    if backbone.detectron2 is None:
        raise ConfigError(f"backbone '{name}' is built by the torchvision engine only; use --engine torchvision, or "
                          f"one of these with --engine detectron2: {', '.join(detectron2_names())}")
    return backbone, backbone.detectron2


def empty_config() -> CfgNode:
    """detectron2's defaults plus the config keys of this kit's registered backbones."""
    cfg = get_cfg()
    for add_config in ADD_CONFIG.values():
        add_config(cfg)
    return cfg


def load_config(path_or_zoo_name) -> CfgNode:
    """A config from a yaml file (e.g. the ``config.yaml`` of a detectron2 run) or a model-zoo name.

    Raises:
        ConfigError: see :func:`load_config_and_kind`.
    """
    return load_config_and_kind(path_or_zoo_name)[0]


def load_config_and_kind(path_or_zoo_name) -> tuple[CfgNode, str | None]:
    """:func:`load_config`, and which older project's config it was (``legacy.legacy_kind``; None: a
    detectron2 config as it is). An older project's keys are translated to the kit's.

    Raises:
        ConfigError: neither a file nor a model-zoo name, or keys detectron2 does not know
            (often a config of a detectron2 project whose ``add_*_config`` this kit lacks).
    """
    path = Path(path_or_zoo_name)
    if not path.is_file():
        if path.is_absolute() or not path.suffix == ".yaml":
            raise ConfigError(f"config '{path_or_zoo_name}' does not exist; pass the config.yaml the weights were "
                              f"trained with, or a model-zoo name such as {ZOO_R50}")
        try:
            path = Path(model_zoo.get_config_file(str(path_or_zoo_name)))
        except RuntimeError as exc:
            raise ConfigError(f"config '{path_or_zoo_name}' is neither an existing yaml file nor a detectron2 "
                              f"model-zoo name (e.g. {ZOO_R50}); pass the config.yaml the weights were "
                              "trained with") from exc
    data, kind = translate_config(path)  # the older VoVNet / MobileNetV2 projects' keys, as the kit's
    cfg = empty_config()
    try:
        if kind:
            cfg.merge_from_other_cfg(CfgNode(data))
        else:  # detectron2's own loader, which also upgrades configs of older detectron2 versions
            cfg.merge_from_file(str(path))
    except KeyError as exc:
        besides = " besides the older projects' keys the kit translates" if kind else ""
        raise ConfigError(f"config '{path}' has a key detectron2 does not know ({exc}){besides}; it belongs to a "
                          "detectron2 project this kit cannot build (such as centermask2's CenterMask). Only "
                          "standard Mask R-CNN configs (and this kit's MobileNetV2 / VoVNet backbones) can be "
                          "served") from exc
    return cfg, kind


def build_config(spec: ModelSpec, train: TrainConfig | None = None) -> CfgNode:
    """The detectron2 config of the model ``spec`` describes (and of its training, when given).

    Args:
        spec: the model description (backbone name, classes, sizes, heads).
        train: training options (schedule, optimiser, augmentation, device, pretrained).

    Returns:
        A frozen ``CfgNode``.

    Raises:
        ConfigError: a backbone this engine cannot build, or options detectron2 cannot express.
    """
    backbone, choice = detectron2_backbone(spec.backbone)
    layers = list(spec.mask_head_layers)
    if len(set(layers)) != 1:
        raise ConfigError(f"detectron2's mask head has convolutions of one width; --mask-head-layers {layers} "
                          "mixes widths: repeat one value, e.g. 128 128")
    if len(spec.anchor_sizes) != spec.rpn_levels:
        raise ConfigError(f"--anchor-sizes needs {spec.rpn_levels} values (one per RPN level, --rpn-levels), got "
                          f"{spec.anchor_sizes}")
    pretrained = train is not None and train.pretrained == "default"
    if pretrained and choice.zoo_config and spec.fpn_norm != "none":
        raise ConfigError(f"the COCO weights of {spec.backbone} come with an FPN without norms; keep --fpn-norm none, "
                          "or use --pretrained none")
    cfg = empty_config()
    if choice.zoo_config:
        cfg.merge_from_file(model_zoo.get_config_file(choice.zoo_config))
        if pretrained:
            cfg.MODEL.WEIGHTS = model_zoo.get_checkpoint_url(choice.zoo_config)
        else:
            # random frozen statistics would make the network untrainable: plain BatchNorm, all stages trained
            cfg.MODEL.WEIGHTS = ""
            cfg.MODEL.RESNETS.NORM = "BN"
            cfg.MODEL.BACKBONE.FREEZE_AT = 0
    else:
        cfg.merge_from_file(model_zoo.get_config_file("Base-RCNN-FPN.yaml"))  # the FPN heads of the zoo configs
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.BACKBONE.NAME = choice.builder
        node = cfg.MODEL[choice.family]
        node.TIMM_NAME = backbone.detectron2_timm_name
        node.PRETRAINED = pretrained
        node.FREEZE_BN = pretrained
        cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
        cfg.MODEL.FPN.OUT_CHANNELS = backbone.fpn_channels
        cfg.MODEL.PIXEL_MEAN = list(IMAGENET_MEAN)
        cfg.MODEL.PIXEL_STD = list(IMAGENET_STD)
        cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(spec.class_names)
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[int(s)] for s in spec.anchor_sizes]
    cfg.MODEL.RPN.IN_FEATURES = RPN_FEATURES[len(RPN_FEATURES) - spec.rpn_levels:]
    cfg.MODEL.FPN.NORM = {"none": "", "bn": "BN"}[spec.fpn_norm]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = spec.rpn_pre_nms_top_n_train
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = spec.rpn_post_nms_top_n_train
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = spec.rpn_pre_nms_top_n_test
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = spec.rpn_post_nms_top_n_test
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = spec.box_batch_size_per_image
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = spec.box_head_dim
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = len(layers)
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = layers[0]
    cfg.TEST.DETECTIONS_PER_IMAGE = spec.detections_per_image
    cfg.INPUT.MIN_SIZE_TEST = spec.min_size
    cfg.INPUT.MAX_SIZE_TEST = spec.max_size
    cfg.INPUT.MIN_SIZE_TRAIN = (spec.min_size,)
    cfg.INPUT.MAX_SIZE_TRAIN = spec.max_size
    cfg.MODEL.DEVICE = "cpu"
    if train is not None:
        _apply_training(cfg, train)
    cfg.freeze()
    return cfg


def _apply_training(cfg: CfgNode, train: TrainConfig) -> None:
    """Schedule, optimiser, augmentation and bookkeeping of ``train`` (iterations are set by the engine)."""
    cfg.INPUT.MIN_SIZE_TRAIN = tuple(train.train_sizes or [train.image_size])
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.RANDOM_FLIP = "horizontal" if train.hflip > 0 else "none"
    cfg.SOLVER.IMS_PER_BATCH = train.batch_size
    cfg.SOLVER.BASE_LR = train.lr
    cfg.SOLVER.MOMENTUM = train.momentum
    cfg.SOLVER.WEIGHT_DECAY = train.weight_decay
    cfg.SOLVER.WARMUP_ITERS = train.warmup_iters
    cfg.SOLVER.WARMUP_FACTOR = 0.001
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR" if train.schedule == "cosine" else "WarmupMultiStepLR"
    cfg.SOLVER.GAMMA = train.gamma
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = train.clip_grad > 0
    # detectron2 clips each parameter's gradient by norm (the torchvision engine clips the whole model's)
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = float(train.clip_grad or 1.0)
    cfg.SOLVER.CHECKPOINT_PERIOD = train.eval_period
    cfg.TEST.EVAL_PERIOD = 0  # the engine evaluates with the kit's evaluator (same metrics as torchvision)
    cfg.DATALOADER.NUM_WORKERS = train.num_workers
    cfg.SEED = train.seed
