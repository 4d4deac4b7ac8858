"""What every script in ``scripts/`` shares: logging set-up, turning user errors into messages, and
reading yes/no switches from text (environment variables, form fields)."""

from __future__ import annotations

import logging
import sys
from typing import Callable

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
