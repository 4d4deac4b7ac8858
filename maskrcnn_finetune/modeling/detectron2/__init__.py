"""detectron2 pieces of the kit: timm backbones in detectron2's ``BACKBONE_REGISTRY``, the
mapping from the kit's options to a detectron2 config, checkpoints, and the adapter that gives a
detectron2 model the kit's inference interface.

Everything here imports detectron2; :func:`require_detectron2` says how to install it.
"""

from __future__ import annotations

import importlib.util

from maskrcnn_finetune.errors import ConfigError

INSTALL_HINT = ("python -m maskrcnn_finetune.modeling.detectron2.install  (upstream from GitHub, compiled; "
                "--source wheel installs the Python-only build the tests use)")


def detectron2_available() -> bool:
    """Whether ``import detectron2`` can work in this environment."""
    return importlib.util.find_spec("detectron2") is not None


def require_detectron2() -> None:
    """Raises :class:`ConfigError` with the install command when detectron2 cannot be imported."""
    if not detectron2_available():
        raise ConfigError(f"the detectron2 engine needs detectron2, which is not installed in this Python. "
                          f"Install it with: {INSTALL_HINT}; or use --engine torchvision")
    try:
        import detectron2.modeling  # noqa: F401
    except ImportError as exc:  # installed but broken (e.g. a _C built for another torch)
        raise ConfigError(f"detectron2 is installed but does not import ({exc}). Reinstall it with: "
                          f"{INSTALL_HINT} --force") from exc
