"""What every script in ``scripts/`` shares: logging set-up, turning user errors into messages,
reading yes/no switches from text (environment variables, form fields), the older spellings of
flags, ``--device`` (every command that runs a model) and the flags that choose the CPU runtime
(the server and batch prediction)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from maskrcnn_finetune.devices import RUNTIME_CHOICES, RUNTIME_ENV, default_runtime
from maskrcnn_finetune.errors import KitError


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def is_true(text) -> bool:
    """Whether a switch given as text (``MRCNN_SMOKE=1``, ``polygons=true``) is on; anything else is off."""
    return str(text if text is not None else "").strip().lower() in TRUE_WORDS


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Runs a script's ``main`` with INFO logging; a :class:`KitError` becomes ``error: ...`` and exit 2.

    Bugs in the kit still raise with a traceback: only errors a user can fix are shortened.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return main(argv) or 0
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_runtime_arguments(parser, default: str | None = None) -> None:
    """``--runtime`` (:data:`~maskrcnn_finetune.devices.RUNTIME_CHOICES`, see
    :func:`maskrcnn_finetune.loading.load_predictor`), ``--calibration-images`` and ``--val-json``, as the server
    and ``scripts/predict.py`` take them (default: :func:`~maskrcnn_finetune.devices.default_runtime`, ``auto``
    unless ``$MRCNN_RUNTIME`` says otherwise)."""
    default = default or default_runtime()
    parser.add_argument("--runtime", choices=RUNTIME_CHOICES, default=default,
                        help="what runs the model on the CPU: torch; openvino, OpenVINO's compiled backbone (pip "
                             "install openvino), kept only where it passes the parity check on the model's own val "
                             "images; openvino-int8, the backbone quantised by NNCF on --calibration-images, kept only "
                             "where its val mask AP and box AP are each within a point of the plain model's; or auto, "
                             "the fastest of those that passes its check (torch where OpenVINO is not installed); "
                             "the choice is cached per model folder and machine "
                             f"(default: {default}; env {RUNTIME_ENV} sets it)")
    parser.add_argument("--calibration-images", default=None, metavar="DIR",
                        help="for int8: a folder of a few dozen of your images (default: the first 32 of the model's "
                             "training set, when it is on this machine)")
    parser.add_argument("--val-json", default=None, metavar="FILE",
                        help="for int8: the COCO json of val images its AP is measured on (default: the model's own "
                             "val json, when it is on this machine)")


def add_with_aliases(parser, flag: str, aliases=(), **kwargs) -> argparse.Action:
    """``parser.add_argument(flag, **kwargs)``, plus older spellings of the flag that set the same value.

    The older spellings are left out of ``--help``; giving two spellings at once is an error, and a
    ``required`` flag is satisfied by any of them.

        add_with_aliases(parser, "--output-dir", ["--output"], required=True, help="the output folder")
    """
    if not aliases:
        return parser.add_argument(flag, **kwargs)
    required = kwargs.pop("required", False)
    group = parser.add_mutually_exclusive_group(required=required)
    action = group.add_argument(flag, **kwargs)
    for alias in aliases:
        if action.nargs == 0:  # a switch
            group.add_argument(alias, dest=action.dest, action="store_const", const=action.const,
                               default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            group.add_argument(alias, dest=action.dest, type=action.type, nargs=action.nargs, choices=action.choices,
                               default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return action


def device_flag(text: str) -> str:
    """``--device``'s value, checked: one of :data:`~maskrcnn_finetune.devices.DEVICE_FORMS`, and a GPU
    that is there (an ``argparse`` type: a problem is one ``error: argument --device: ...`` line)."""
    from maskrcnn_finetune.devices import check_device, resolve_device

    try:
        text = check_device(text)
        resolve_device(text)
    except KitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_device_argument(parser, default: str | None = "auto", help: str | None = None) -> argparse.Action:
    """``--device auto|cpu|cuda|cuda:N``, as every command that runs a model takes it."""
    return parser.add_argument("--device", type=device_flag, default=default, metavar="{auto,cpu,cuda,cuda:N}",
                               help=help or "what runs the model: auto (the GPU when there is one, else the CPU), "
                                            "cpu, cuda or cuda:N (the N-th GPU, from 0) (default: auto)")
