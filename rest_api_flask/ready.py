"""The server's machine-readable ready signal: a small JSON file (``flask_app.py --ready-file PATH``).

The server writes it once it accepts connections, rewrites it when a tunnel opens or fails, and
removes it when it stops; each write replaces the whole file in one step, so a reader never sees
half of it. The launcher (:mod:`rest_api_flask.launcher`), notebooks and tests read it instead of
the lines the server prints for people::

    {"url": "http://127.0.0.1:5000", "port": 5000, "pid": 4242, "device": "cpu",
     "model": "fp32, channels-last", "tunnel": "ngrok", "tunnel_state": "open",
     "public_url": "https://....ngrok-free.app", "tunnel_error": null}

``tunnel_state`` is ``"none"`` (no tunnel asked for), ``"opening"``, ``"open"`` or ``"failed"``
(then ``tunnel_error`` says why, and the server keeps serving locally).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from maskrcnn_finetune.files import write_json_atomic

TUNNEL_STATES = ("none", "opening", "open", "failed")


class ReadyFile:
    """The server's side: writes and updates the signal (thread-safe: the tunnel opens in a thread)."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        self._state: dict = {}
        self._lock = threading.Lock()

    def write(self, **fields) -> None:
        """Sets ``fields`` (keeping the others) and replaces the file with the whole state."""
        with self._lock:
            self._state.update(fields)
            write_json_atomic(self.path, self._state)

    def remove(self) -> None:
        with self._lock:
            self.path.unlink(missing_ok=True)


def read_ready(path) -> dict | None:
    """The signal's fields, or None while the server has not written it (or has removed it)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def connectable_url(host: str, port: int) -> str:
    """The URL a client on this machine uses: a wildcard address (every interface) becomes loopback."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
