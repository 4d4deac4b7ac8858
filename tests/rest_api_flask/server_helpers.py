"""Helpers of the server tests: PNG bytes of an array, starting the real server process, a stand-in ngrok
(tests/ngrok_stand_in.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ngrok_stand_in import agent_log, fake_ngrok_binary  # noqa: F401 - the server tests' stand-in ngrok
from rest_api_flask.launcher import ServerProcess
from rest_api_flask.launcher import start_server as launch

REPO = Path(__file__).resolve().parents[2]
FLASK_APP = REPO / "rest_api_flask" / "flask_app.py"


def png_of(array: np.ndarray, fmt: str = "PNG", **save_args) -> bytes:
    """``array`` encoded as an image file (PNG unless ``fmt`` says otherwise)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def start_server(model_dir, tmp_path: Path, *extra: str, tunnel: str = "none", env: dict | None = None,
                 timeout: float = 120) -> ServerProcess:
    """The real server as notebooks start it (:func:`rest_api_flask.launcher.start_server`): loopback, a
    free port, the CPU, folders ``srv_uploads`` and ``srv_outputs`` under ``tmp_path`` (also its working
    folder), no ngrok token unless ``env`` gives one, one CPU thread; returns once ``/health`` answers."""
    return launch(model_dir, tmp_path / "srv_uploads", tmp_path / "srv_outputs", tunnel=tunnel, infer_with_cpu=True,
                  extra_args=extra, env={"NGROK_AUTHTOKEN": "", "OMP_NUM_THREADS": "1", **(env or {})}, cwd=tmp_path,
                  timeout=timeout, stop_previous=False)


def stop_server(server: ServerProcess) -> None:
    server.stop()
