"""Which device runs a model and what runs it there: the forms ``--device`` takes on every command, the
one resolver that turns them into a :class:`torch.device` (training, prediction, evaluation, the
server), and the names of the CPU runtimes (``--runtime``)."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from maskrcnn_finetune.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:N")
"""What ``--device`` accepts: ``auto`` is the first GPU when there is one, else the CPU."""

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

RUNTIMES = ("torch", "openvino", "openvino-int8")
"""What runs a model on the CPU's fast path: torch, or its backbone compiled by OpenVINO (f32 or bf16),
or quantised to int8 by NNCF (see :class:`~maskrcnn_finetune.predictor.InferenceOptions`)."""

RUNTIME_CHOICES = (*RUNTIMES, "auto")
"""What ``--runtime`` and :func:`~maskrcnn_finetune.loading.load_predictor` take: one of :data:`RUNTIMES`,
or ``auto``, the fastest of them among those that pass their check."""

DEFAULT_RUNTIME = "auto"
"""What the server and batch prediction run unless told otherwise: the fastest runtime that passes its check,
which is torch where OpenVINO is not installed or the model runs on a GPU."""

RUNTIME_ENV = "MRCNN_RUNTIME"
"""The environment variable that replaces :data:`DEFAULT_RUNTIME` as the default of ``--runtime`` (e.g.
``MRCNN_RUNTIME=torch`` in a container that should never pay for the choice)."""


def default_runtime() -> str:
    """The default of ``--runtime``: ``$MRCNN_RUNTIME`` where it is set, else :data:`DEFAULT_RUNTIME`.

    Raises:
        ConfigError: ``$MRCNN_RUNTIME`` names no runtime (the message lists them).
    """
    value = os.environ.get(RUNTIME_ENV, "").strip()
    if value and value not in RUNTIME_CHOICES:
        raise ConfigError(f"{RUNTIME_ENV}={value} is not a runtime; set it to one of {', '.join(RUNTIME_CHOICES)} "
                          "or unset it")
    return value or DEFAULT_RUNTIME


def check_device(device) -> str:
    """The device as text (``"cuda:1"``), when it is one of :data:`DEVICE_FORMS`.

    Raises:
        ConfigError: another text (``"gpu"``, ``"cuda1"``); the message lists the forms.
    """
    text = str(device).strip().lower()
    if not _DEVICE.fullmatch(text):
        raise ConfigError(f"unknown device '{device}'; use one of {', '.join(DEVICE_FORMS)} (N: the GPU's "
                          "number, from 0), e.g. --device cpu")
    return text


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; asking for a GPU that is not there is an error.

    (torch is imported here, not with the module: the training config checks ``--device``'s form
    without it.)

    Raises:
        ConfigError: a text that is none of :data:`DEVICE_FORMS`, CUDA without a visible GPU, or
            ``cuda:N`` past the last GPU; each message names ``--device cpu``.
    """
    import torch

    if isinstance(device, torch.device):
        resolved = device
    else:
        text = check_device(device)
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        resolved = torch.device(text)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {resolved} asks for a GPU but none is visible; use --device cpu (or "
                              "--device auto, or a GPU runtime in Colab)")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(f"--device {resolved}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}; "
                              "pick one of those, or use --device cpu")
    return resolved
