"""Shared fixtures: a local HTTP server (download tests never touch the internet), the tiny data set
and model, and the stand-in ``google.colab``."""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from colab_stand_in import FAKE_COLAB


@dataclass
class Route:
    """What the server answers at one path."""

    body: bytes = b""
    status: int = 200
    fail_first: int = 0  # answer the first N requests with fail_status
    fail_status: int = 503
    drop_first: int = 0  # for the first N requests, send the headers and half the body, then hang up


class LocalServer:
    """Serves bytes at paths on 127.0.0.1 and counts the requests it gets.

    ``serve(path, body)`` adds a route; ``url(path)`` is its address; ``count(path)`` how many
    requests reached it. Unknown paths answer 404.
    """

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self.routes: dict[str, Route] = {}
        self.requests: Counter = Counter()
        self.lock = threading.Lock()

    def serve(self, path: str, body: bytes = b"", **kwargs) -> str:
        """Adds (or replaces) the answer at ``path``; keyword args are :class:`Route` fields. Returns its URL."""
        self.routes[path] = Route(body=body, **kwargs)
        return self.url(path)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def count(self, path: str | None = None) -> int:
        with self.lock:
            return sum(self.requests.values()) if path is None else self.requests[path]


class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # seconds a stuck client may hold a server thread

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state: LocalServer = self.server.state
        path = urlsplit(self.path).path
        with state.lock:
            state.requests[path] += 1
            n = state.requests[path]
        route = state.routes.get(path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        if n <= route.fail_first:
            self.send_error(route.fail_status)
            return
        if route.status != 200:
            self.send_error(route.status)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        if n <= route.fail_first + route.drop_first:
            self.wfile.write(route.body[: len(route.body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(route.body)

    def log_message(self, format, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def http_server():
    """A :class:`LocalServer` on 127.0.0.1 (a free port), shut down after the test."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.state = LocalServer(server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """A small synthetic dataset converted to COCO: ``{"train": json, "val": json}``."""
    from maskrcnn_finetune.data.convert import convert_labelme
    from maskrcnn_finetune.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("tiny")
    make_synthetic(root / "labelme", 8, seed=3, image_size=(96, 80))
    result = convert_labelme(root / "labelme", root / "coco", val_fraction=0.25, seed=0)
    return result.json_paths


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_coco, tmp_path_factory):
    """A model folder from a 3-iteration training of the tiny MobileNetV2-FPN-lite (at most 20 detections)."""
    from training_options import train_tiny

    return train_tiny(tiny_coco["train"], tmp_path_factory.mktemp("tiny_model") / "m", max_iter=3, detections_per_image=20)


@pytest.fixture(autouse=True, scope="session")
def _own_server_registry(tmp_path_factory):
    """Servers started by the tests are remembered in a folder of this run only, never the machine's own
    (start_server stops the servers it finds there; notebook runs inherit the variable)."""
    from rest_api_flask.registry import REGISTRY_ENV

    old = os.environ.get(REGISTRY_ENV)
    os.environ[REGISTRY_ENV] = str(tmp_path_factory.mktemp("server_registry"))
    yield
    if old is None:
        os.environ.pop(REGISTRY_ENV, None)
    else:
        os.environ[REGISTRY_ENV] = old


@pytest.fixture
def fake_colab(monkeypatch, tmp_path):
    """The stand-in ``google.colab`` of tests/fake_colab (mocked: it only exists inside Colab), importable.

    It behaves as colabtools does today (see tests/fake_colab/README.md); what the browser does is
    set with ``FAKE_COLAB_*`` variables. Drive is a temporary folder mounted at ``tmp_path/content/drive``.
    """
    monkeypatch.syspath_prepend(str(FAKE_COLAB))
    for name in [m for m in sys.modules if m == "google" or m.startswith("google.")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    for var in ("FAKE_COLAB_UPLOAD", "FAKE_COLAB_SECRETS", "FAKE_COLAB_BROWSER", "FAKE_COLAB_DOWNLOADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FAKE_COLAB_DRIVE", str(tmp_path / "google_drive"))
    from maskrcnn_finetune import handover

    monkeypatch.setattr(handover, "DRIVE_ROOT", tmp_path / "content" / "drive")
    import google.colab  # noqa: F401 - as Colab's kernel has it imported

    yield tmp_path
    for name in [m for m in sys.modules if m == "google" or m.startswith("google.")]:
        sys.modules.pop(name, None)
