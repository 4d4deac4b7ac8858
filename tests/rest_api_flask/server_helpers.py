"""Helpers of the server tests: PNG bytes of an array, starting the real server process, a stand-in ngrok."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

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


FAKE_NGROK_AGENT = r'''#!{python}
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
MODE, LOG = {mode!r}, {log!r}

def note(entry):
    with open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")

note({{"argv": sys.argv[1:]}})
if MODE != "ok":
    err = {{"4018": "authentication failed: Usage of ngrok requires a verified account and authtoken.\\n\\nERR_NGROK_4018",
           "108": "Your account is limited to 1 simultaneous ngrok agent sessions.\\n\\nERR_NGROK_108"}}[MODE]
    print('t=2026-01-01T00:00:00+0000 lvl=eror msg="failed to reconnect session" obj=tunnels.session err=' + json.dumps(err), flush=True)
    sys.exit(1)

class Api(BaseHTTPRequestHandler):
    def _answer(self, code, body=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self._answer(200, {{"endpoints": [], "tunnels": []}})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        note({{"post": self.path, "body": body}})
        self._answer(201, {{"name": "t", "public_url": "https://fake-tunnel.ngrok-free.app", "proto": "https",
                           "uri": self.path + "/t", "config": {{"addr": "http://localhost:5000"}}}})
    def do_DELETE(self):
        note({{"delete": self.path}})
        self._answer(204)
    def log_message(self, *a):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
port = server.server_address[1]
print(f't=2026 lvl=info msg="starting web service" obj=web addr=127.0.0.1:{{port}}', flush=True)
print('t=2026 lvl=info msg="tunnel session started" obj=tunnels.session', flush=True)
print('t=2026 lvl=info msg="client session established" obj=csess', flush=True)
server.serve_forever()
'''


def fake_ngrok_binary(folder: Path, mode: str) -> tuple[Path, Path]:
    """A stand-in for the ngrok program (``mode`` ``"ok"``, ``"4018"`` or ``"108"``) and the log it keeps.

    The ngrok service cannot be reached from tests, so pyngrok starts this script instead: it prints
    the agent's log lines (or its error) and answers the agent's local API, noting each call.
    """
    binary, log = folder / f"ngrok-{mode}", folder / f"agent-{mode}.log"
    binary.write_text(FAKE_NGROK_AGENT.format(python=sys.executable, mode=mode, log=str(log)))
    binary.chmod(0o755)
    return binary, log


def agent_log(log: Path) -> list[dict]:
    """What the stand-in agent noted: its arguments, and each API call."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
