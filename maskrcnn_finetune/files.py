"""Files written so that a reader, or a run killed half-way, never sees half a file.

Every file the kit writes for others to read (model folders, checkpoints, COCO json, exports,
served results) goes through :func:`atomic_path`: the content is written to a temporary file
beside the target and renamed over it in one step, so the target is either the old file or
the whole new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` when the block succeeds.

    The temporary file is a hidden ``.NAME.*.tmp`` in the same folder (a rename within one file
    system is atomic). When the block raises, it is removed and ``path`` is left as it was.

        with atomic_path(out / "model_final.pth") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path, text: str) -> None:
    """Writes UTF-8 ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path, data) -> None:
    """Writes ``data`` as json to ``path`` through :func:`atomic_path`."""
    write_text_atomic(path, json.dumps(data))
