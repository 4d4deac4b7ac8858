"""A stand-in for Cloudflare's ``cloudflared`` program, put where pycloudflared looks for it.

TryCloudflare cannot be reached from the tests, and the program cannot be downloaded here. So a copy
of the installed pycloudflared package goes into a folder of the test session (first on
``sys.path`` / ``PYTHONPATH``), with this script as the program it finds: pycloudflared's code and
``rest_api_flask.tunnel`` run unchanged, and the installed package is never touched.

The script prints what cloudflared 2026.x prints on stderr (its log lines, taken from
cloudflare/cloudflared: the disclaimer, the ``+---+`` banner with ``https://<words>.trycloudflare.com``,
``Registered tunnel connection``), and ``$FAKE_CLOUDFLARED`` picks what happens:

* ``ok`` (default): the tunnel opens. A name under trycloudflare.com cannot resolve here, so the
  stand-in forwards from a local port to the ``--url`` it was given; the log names that port.
* ``refused``: asking for a quick tunnel fails (connection refused) and it exits with 1, as
  cloudflared does offline.
* ``silent``: the request for a quick tunnel never returns (cloudflared gives up after 15 s).
* ``noedge``: the address is printed but no connection to Cloudflare ever registers.

``$FAKE_CLOUDFLARED_LOG``: a file where it notes its arguments, its address and its forwarding port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

STAND_IN = r'''#!{python}
# stand-in cloudflared (tests/cloudflared_stand_in.py)
import http.client, json, os, random, signal, sys, threading, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MODE, LOG = os.environ.get("FAKE_CLOUDFLARED", "ok"), os.environ.get("FAKE_CLOUDFLARED_LOG")
args = sys.argv[1:]

def note(**entry):
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")

def log(level, message):
    print(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), level, message, file=sys.stderr, flush=True)

note(argv=args, pid=os.getpid())
if "version" in args or "--version" in args:
    print("cloudflared version 2026.5.0 (built 2026-05-12-1200 UTC)")
    sys.exit(0)
if args[:1] != ["tunnel"] or "--url" not in args:
    print("Use `cloudflared tunnel run` to start tunnel", file=sys.stderr)
    sys.exit(1)
target = urlsplit(args[args.index("--url") + 1])
signal.signal(signal.SIGTERM, lambda *a: (log("INF", "Initiating graceful shutdown due to signal terminated ..."),
                                          sys.exit(0)))
log("INF", "Thank you for trying Cloudflare Tunnel. Doing so, without a Cloudflare account, is a quick way to "
    "experiment and try it out. However, be aware that these account-less Tunnels have no uptime guarantee, are "
    "subject to the Cloudflare Online Services Terms of Use (https://www.cloudflare.com/website-terms/), and "
    "Cloudflare reserves the right to investigate your use of Tunnels for violations of such terms. If you intend "
    "to use Tunnels in production you should use a pre-created named tunnel by following: "
    "https://developers.cloudflare.com/cloudflare-one/connections/connect-apps")
log("INF", "Requesting new quick Tunnel on trycloudflare.com...")
if MODE == "refused":
    time.sleep(0.2)
    print('failed to request quick Tunnel: Post "https://api.trycloudflare.com/tunnel": dial tcp '
          '104.16.230.132:443: connect: connection refused', file=sys.stderr, flush=True)
    sys.exit(1)
if MODE == "silent":
    time.sleep(3600)
words = ["mask", "region", "quick", "label", "serve", "tiny", "shape", "model", "batch", "pixel"]
url = "https://" + "-".join(random.sample(words, 4)) + ".trycloudflare.com"
text = "Your quick Tunnel has been created! Visit it at (it may take some time to be reachable):"
width = max(len(text), len(url))
log("INF", "+" + "-" * (width + 4) + "+")
for line in (text, url):
    log("INF", "|  " + line + " " * (width - len(line)) + "  |")
log("INF", "+" + "-" * (width + 4) + "+")
log("INF", "Cannot determine default configuration path. No file [config.yml config.yaml] in [~/.cloudflared "
    "~/.cloudflare-warp ~/cloudflare-warp /etc/cloudflared /usr/local/etc/cloudflared]")
log("INF", "Version 2026.5.0 (Checksum 0000)")
log("INF", "Generated Connector ID: " + str(uuid.uuid4()))
log("INF", "Initial protocol quic")


class Forward(BaseHTTPRequestHandler):
    """What the edge would do with a request to the public name: hand it to the --url service."""

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {{k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}}
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=300)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
        except OSError:  # the service does not answer: Cloudflare's own 502
            answer, data = None, b"Bad gateway"
        self.send_response(answer.status if answer else 502)
        for key, value in (answer.getheaders() if answer else []):
            if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

    def log_message(self, *a):
        pass


forward = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
threading.Thread(target=forward.serve_forever, daemon=True).start()
log("INF", "Starting metrics server on 127.0.0.1:20241/metrics")
note(url=url, forward=f"http://127.0.0.1:{{forward.server_address[1]}}")
if MODE == "noedge":
    while True:
        log("ERR", 'Failed to dial a quic connection error="failed to dial to edge with quic: timeout: no recent '
            'network activity" connIndex=0 event=0 ip=198.41.192.227')
        log("INF", "Retrying connection in up to 2s connIndex=0 event=0 ip=198.41.192.227")
        time.sleep(1)
time.sleep(0.2)
log("INF", "Registered tunnel connection connIndex=0 connection=" + str(uuid.uuid4()) +
    " event=0 ip=198.41.200.193 location=ams16 protocol=quic")
while True:
    time.sleep(3600)
'''


def install(folder: Path, program: bool = True, download_url: str | None = None) -> Path:
    """A copy of pycloudflared with the stand-in as its program, in ``folder/site``; returns that folder
    (put it first on ``sys.path`` / ``PYTHONPATH``).

    ``program=False`` leaves the program out, so that pycloudflared downloads it on first use, from
    ``download_url`` (which must end with the program's file name) instead of GitHub.
    """
    import pycloudflared
    from pycloudflared.util import get_info

    site = Path(folder) / "site"
    package = site / "pycloudflared"
    shutil.copytree(Path(pycloudflared.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__", "cloudflared*"))
    name = Path(get_info().executable).name  # where pycloudflared looks for its program
    if program:
        (package / name).write_text(stand_in_program())
        (package / name).chmod(0o755)
    if download_url:
        assert download_url.endswith("/" + name), download_url
        table = package / "download_url.toml"
        table.write_text(re.sub(r'url = ".*"', f'url = "{download_url}"', table.read_text()))
    return site


def stand_in_program() -> str:
    """The stand-in program's text (a Python script run by this Python)."""
    return STAND_IN.format(python=sys.executable)


def program_path(site: Path) -> Path:
    """The stand-in program inside ``site``."""
    return next(p for p in (Path(site) / "pycloudflared").iterdir() if p.name.startswith("cloudflared"))


def notes(log: Path) -> list[dict]:
    """What the stand-in noted: its arguments, and per start its public address and its forwarding URL."""
    log = Path(log)
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def environment(site: Path, log: Path, mode: str = "ok") -> dict:
    """Environment variables for a process (a server, a notebook kernel) that should find the stand-in."""
    path = os.pathsep.join([str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return {"PYTHONPATH": path, "FAKE_CLOUDFLARED": mode, "FAKE_CLOUDFLARED_LOG": str(log)}


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not count; Linux /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False
