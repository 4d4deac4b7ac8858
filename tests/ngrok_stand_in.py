"""A stand-in for the ngrok agent program, for pyngrok to start (mocked: the ngrok service cannot be reached)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


FAKE_NGROK_AGENT = r'''#!{python}
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
MODE, LOG = {mode!r}, {log!r}

def note(entry):
    with open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")

# the fields of an endpoint (https://ngrok.com/docs/agent/api/, "Create Endpoint"; https://ngrok.com/docs/agent/config/v3/):
# basic auth is no field of its own but a traffic policy action. Whether the real agent refuses other fields
# (400, "malformed payload") or drops them, an unknown field means a setting that does not apply: refused here.
ENDPOINT_FIELDS = {{"name", "url", "upstream", "traffic_policy", "bindings", "metadata", "description",
                   "pooling_enabled", "inspect", "agent_tls_termination"}}
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
        if self.path == "/api/endpoints":  # v3: the endpoint fields of ngrok's agent API and v3 config
            unknown = sorted(set(body) - ENDPOINT_FIELDS)
            policy = body.get("traffic_policy", "")
            if unknown or not isinstance(body.get("upstream", {{}}).get("url"), str) or not isinstance(policy, str):
                return self._answer(400, {{"error_code": 100, "status_code": 400, "msg": "invalid endpoint "
                                          "configuration", "details": {{"err": f"unknown or invalid fields: {{unknown}}"}}}})
            return self._answer(201, {{"name": body["name"], "uri": "/api/endpoints/" + body["name"],
                                      "url": "https://fake-tunnel.ngrok-free.app", "upstream": body["upstream"],
                                      "traffic_policy": policy}})
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
    the agent's log lines (or its error) and answers the agent's local API, noting each call. It
    answers both the v2 tunnel API (``/api/tunnels``, pyngrok 7 and 8) and the v3 endpoint API
    (``/api/endpoints``, pyngrok 9's default), and refuses an endpoint with fields the v3 API does not have.
    """
    binary, log = folder / f"ngrok-{mode}", folder / f"agent-{mode}.log"
    binary.write_text(FAKE_NGROK_AGENT.format(python=sys.executable, mode=mode, log=str(log)))
    binary.chmod(0o755)
    return binary, log


def agent_log(log: Path) -> list[dict]:
    """What the stand-in agent noted: its arguments, and each API call."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
