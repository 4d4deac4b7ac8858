"""Public URLs for a local server: an ngrok tunnel (pyngrok), a TryCloudflare quick tunnel (cloudflared, no
account), or Colab's own port proxy.

Every known failure becomes a :class:`TunnelError` whose message says what to do; the caller
(``flask_app.py``) prints it and keeps serving locally.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from maskrcnn_finetune import colab
from maskrcnn_finetune.errors import TunnelError, first_line

logger = logging.getLogger(__name__)

TUNNELS = ("none", "ngrok", "cloudflared", "colab", "auto")
"""``--tunnel``'s choices; ``auto``: ngrok when an authtoken is set, else (or when ngrok fails) cloudflared."""
TOKEN_NAME = colab.NGROK_TOKEN_NAME
_TOKEN_PAGE = "https://dashboard.ngrok.com/get-started/your-authtoken"
# ngrok's error codes (https://ngrok.com/docs/errors/) that users meet, and what to do about each
NGROK_HINTS = {
    "ERR_NGROK_4018": "ngrok refused to start without an authtoken: {token_help}",
    "ERR_NGROK_105": "ngrok does not know this authtoken: copy it again from the dashboard; {token_help}",
    "ERR_NGROK_107": "ngrok does not know this authtoken: copy it again from the dashboard; {token_help}",
    "ERR_NGROK_108": ("this ngrok account already runs an agent session elsewhere (a free account allows one). "
                      "In a notebook, run the start cell again: it stops the server (and agent) that an earlier run "
                      "of this runtime left. An agent in another Colab runtime or terminal: Runtime > Disconnect and "
                      "delete runtime there, or stop that process; or end the session at "
                      "https://dashboard.ngrok.com/agents. Then start the server again"),
    "ERR_NGROK_334": ("this ngrok endpoint is already online from another agent (an earlier server of this account "
                      "still runs): run the notebook's start cell again (it stops this runtime's earlier server), "
                      "or end the other session at https://dashboard.ngrok.com/agents"),
}
CLOUDFLARED_TIMEOUT_S = 45  # cloudflared gives up asking for a quick tunnel after 15 s; then one connection registers
CLOUDFLARED_DOWNLOAD_TIMEOUT_S = 180
# the quick tunnel's address as cloudflared prints it (in its +---+ banner), and the line that says it works
_QUICK_URL = re.compile(r"https://[-a-z0-9]+\.trycloudflare\.com")
_REGISTERED = "Registered tunnel connection"
NO_ACCOUNT_NOTE = ("a TryCloudflare quick tunnel: no account, no uptime promise (Cloudflare's terms for "
                   "account-less tunnels); anyone who has the link can use the model")


@dataclass
class Tunnel:
    """An open public URL (``kind``: ngrok, cloudflared or colab) and how to close it."""

    kind: str
    public_url: str
    _close: Callable[[], None] = field(default=lambda: None, repr=False)

    def close(self) -> None:
        """Closes the tunnel (errors while closing are logged, never raised: this runs at exit)."""
        try:
            self._close()
        except Exception as exc:  # noqa: BLE001 - shutting down; a failed close must not hide the exit
            logger.warning("could not close the %s tunnel cleanly: %s", self.kind, exc)


def resolve_authtoken(flag: str | None = None) -> str | None:
    """The ngrok authtoken from ``--ngrok-authtoken``, else ``NGROK_AUTHTOKEN``, else Colab's secret.

    The secret can only be read in the notebook's kernel; a server the notebook started (``!python``,
    the launcher) gets the token through the environment, which ``colab.request_ngrok_token()`` fills.
    """
    return flag or os.environ.get(TOKEN_NAME, "").strip() or colab.colab_secret(TOKEN_NAME)


def token_help() -> str:
    """How to give ngrok its authtoken, for where this process runs (one sentence, no line breaks)."""
    if colab.in_colab() and not colab.in_notebook_kernel():
        return (f"a server started from a notebook cell cannot read Colab secrets: add the secret {TOKEN_NAME} "
                f"(key icon on the left, notebook access on; the token is at {_TOKEN_PAGE}), run the notebook's "
                f"settings cell again (it hands the token to the processes the notebook starts), then start the "
                f"server again; or start it as {TOKEN_NAME}=... python rest_api_flask/flask_app.py ...")
    return (f"get an authtoken at {_TOKEN_PAGE} and pass it with --ngrok-authtoken, the {TOKEN_NAME} environment "
            f"variable ({TOKEN_NAME}=... python rest_api_flask/flask_app.py ...), or in Colab the secret {TOKEN_NAME}")


def _explain(exc: Exception) -> str:
    text = f"{exc} {getattr(exc, 'ngrok_error', '') or ''}"
    for code, hint in NGROK_HINTS.items():
        if code in text:
            return f"{hint.format(token_help=token_help())} ({code})"
    return " ".join(str(exc).split()) or type(exc).__name__


def basic_auth_policy(auth: str) -> str:
    """ngrok's traffic policy (a JSON document, which is YAML too) that asks for ``user:password``.

    ngrok's v3 endpoints have no ``basic_auth`` field: basic auth is the ``basic-auth`` action of a
    traffic policy (https://ngrok.com/docs/traffic-policy/actions/basic-auth/), and the agent API
    takes the policy as a string.
    """
    action = {"type": "basic-auth", "config": {"credentials": [auth]}}
    return json.dumps({"on_http_request": [{"actions": [action]}]})


def open_ngrok(port: int, authtoken: str | None, auth: str | None = None, pyngrok_config=None) -> Tunnel:
    """Opens an ngrok HTTP tunnel to ``localhost:port``.

    Args:
        port: the local port the server listens on.
        authtoken: the ngrok authtoken (see :func:`resolve_authtoken`).
        auth: ``"user:password"`` for ngrok's basic auth in front of the tunnel, or None.
        pyngrok_config: a ``pyngrok.conf.PyngrokConfig`` (tests point it at another binary).

    Returns:
        The open :class:`Tunnel`.

    Raises:
        TunnelError: no token, the ngrok binary cannot be installed (offline), or ngrok refused.
    """
    if not authtoken:
        raise TunnelError("no ngrok authtoken: " + token_help())
    from pyngrok import conf, ngrok
    from pyngrok.exception import PyngrokError, PyngrokNgrokInstallError

    config = pyngrok_config or conf.PyngrokConfig()
    config.auth_token = authtoken
    options = {}
    if auth:
        # pyngrok 9 speaks ngrok's v3 endpoint API by default, where its own auth= becomes a field the API
        # does not have (basic_auth); pyngrok 7 and 8 speak the v2 tunnel API, where auth= is right
        v3 = str(getattr(config, "config_version", "2")) == "3"
        options = {"traffic_policy": basic_auth_policy(auth)} if v3 else {"auth": auth}
    try:
        tunnel = ngrok.connect(str(port), "http", pyngrok_config=config, **options)
    except PyngrokNgrokInstallError as exc:
        raise TunnelError(f"the ngrok program cannot be downloaded ({first_line(exc)}); "
                          "connect to the internet, or install ngrok yourself and set PYNGROK_NGROK_PATH to it, "
                          "or use --tunnel cloudflared (no account)") from exc
    except (PyngrokError, OSError) as exc:
        raise TunnelError(_explain(exc)) from exc
    url = tunnel.public_url.replace("http://", "https://", 1)

    def _close() -> None:
        ngrok.disconnect(tunnel.public_url, pyngrok_config=config)
        ngrok.kill(pyngrok_config=config)

    return Tunnel("ngrok", url, _close)


def cloudflared_path() -> Path:
    """Where pycloudflared keeps the cloudflared program (downloaded there on first use)."""
    from pycloudflared.util import get_info

    try:
        return Path(get_info().executable)
    except RuntimeError as exc:  # no official build for this system
        raise TunnelError(f"cloudflared has no build for this machine ({first_line(exc)}); use --tunnel ngrok") from exc


def _download_cloudflared(path: Path, timeout: float) -> None:
    """Downloads cloudflared's official release with pycloudflared, giving up after ``timeout`` s."""
    from pycloudflared.util import download, get_info

    errors: list[BaseException] = []

    def _fetch() -> None:
        try:
            download(get_info())
        except Exception as exc:  # noqa: BLE001 - reported below, with the file it may have left
            errors.append(exc)

    logger.info("downloading cloudflared (Cloudflare's official release) to %s", path)
    worker = threading.Thread(target=_fetch, name="cloudflared-download", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive() or errors:
        if errors:
            path.unlink(missing_ok=True)  # half a program would fail the next start in a stranger way
        why = first_line(errors[0]) if errors else f"no answer within {timeout:.0f} s"
        raise TunnelError(f"the cloudflared program cannot be downloaded ({why}); connect to the internet, or put "
                          f"cloudflared (https://github.com/cloudflare/cloudflared/releases) at {path}, or use "
                          "--tunnel ngrok")


def open_cloudflared(port: int, timeout: float | None = None) -> Tunnel:
    """Opens a TryCloudflare quick tunnel to ``127.0.0.1:port``: a public https URL without an account.

    pycloudflared finds (or downloads once) Cloudflare's official ``cloudflared`` program; this
    function runs it, reads the address it prints and returns once it says a connection to Cloudflare
    is registered (the URL works from then on). Its log keeps being read, so it never blocks on a
    full pipe.

    Raises:
        TunnelError: the program cannot be downloaded or started, it stopped (e.g. offline: it cannot
            ask for a quick tunnel), or no registered connection within ``timeout`` seconds.
    """
    timeout = CLOUDFLARED_TIMEOUT_S if timeout is None else timeout
    path = cloudflared_path()
    if not path.exists():
        _download_cloudflared(path, CLOUDFLARED_DOWNLOAD_TIMEOUT_S)
    # no auto-update: cloudflared would replace itself and restart, and a restarted quick tunnel has a new URL
    cmd = [str(path), "tunnel", "--no-autoupdate", "--url", f"http://127.0.0.1:{int(port)}"]
    try:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True, errors="replace")
    except OSError as exc:  # not executable, or a broken download
        raise TunnelError(f"cannot run {path} ({first_line(exc)}); delete it so that it is downloaded again, "
                          "or use --tunnel ngrok") from exc
    lines: deque = deque(maxlen=20)
    found = {"url": None}
    registered, ended = threading.Event(), threading.Event()

    def _read() -> None:  # for the process's whole life: a full pipe would block cloudflared's logging
        for line in process.stderr:
            line = line.rstrip()
            lines.append(line)
            logger.debug("cloudflared: %s", line)
            match = _QUICK_URL.search(line)
            if match and not found["url"]:
                found["url"] = match.group(0)
            if _REGISTERED in line and found["url"]:
                registered.set()
        ended.set()

    threading.Thread(target=_read, name="cloudflared-log", daemon=True).start()
    deadline = time.monotonic() + timeout
    while not (registered.is_set() or ended.is_set()) and time.monotonic() < deadline:
        time.sleep(0.05)

    def _close() -> None:
        atexit.unregister(_close)
        if process.poll() is None:
            process.terminate()  # cloudflared then waits for requests in flight (its --grace-period)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    if registered.is_set():
        atexit.register(_close)  # a process that ends without closing it (a notebook kernel shut down) stops it too
        return Tunnel("cloudflared", found["url"], _close)
    # cloudflared ends with the error that stopped it; while it retries, its last ERR line says why
    last = next((line for line in reversed(lines) if " ERR " in line), None) or \
        next((line for line in reversed(lines) if line.strip()), "nothing")
    if ended.is_set():
        try:
            code = process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # it closed its output but lives on: treat it as stopped
            _close()
            code = process.returncode
        raise TunnelError(f"cloudflared stopped (exit code {code}) before the tunnel opened; its last line: {last}. "
                          "Is this machine online? TryCloudflare may also refuse new quick tunnels for a while: "
                          "try again later, or use --tunnel ngrok")
    _close()
    state = f"its address {found['url']} never connected" if found["url"] else "it printed no address"
    raise TunnelError(f"cloudflared gave no working URL within {timeout:.0f} s ({state}; its last line: {last}); "
                      "try again, or use --tunnel ngrok")


def open_colab_proxy(port: int) -> Tunnel:
    """Colab's own proxy to a port of the runtime (no account; the URL works for the notebook's user).

    Raises:
        TunnelError: when not running inside Colab.
    """
    if not colab.in_colab():
        raise TunnelError("--tunnel colab works only inside Google Colab; elsewhere use --tunnel cloudflared or "
                          "ngrok (or none, and open the local URL)")
    try:
        url = colab.proxy_url(port)
    except Exception as exc:  # noqa: BLE001 - eval_js fails in many ways outside the notebook's kernel
        raise TunnelError(f"Colab's proxy can only be asked for from the notebook's kernel ({type(exc).__name__}: "
                          f"{exc}); a server started with !python or in the background cannot. In a notebook cell, "
                          f"run maskrcnn_finetune.colab.proxy_url({int(port)}) (03_serve does), or use --tunnel "
                          "cloudflared") from exc
    if not url:  # eval_js returns None when the browser did not answer in time
        raise TunnelError(f"Colab's browser tab did not give a proxy URL for the port within {colab.PROXY_TIMEOUT_S} s "
                          "(is the notebook open in a browser?); use --tunnel cloudflared instead")
    return Tunnel("colab", url)


def open_tunnel(kind: str, port: int, authtoken: str | None = None, auth: str | None = None) -> Tunnel | None:
    """Opens the tunnel ``kind`` (one of :data:`TUNNELS`) to ``port``; None for ``"none"``.

    ``"auto"`` opens ngrok when ``authtoken`` is set and cloudflared otherwise, or when ngrok fails
    (the error then names both reasons).
    """
    if kind == "none":
        return None
    if kind == "ngrok":
        return open_ngrok(port, authtoken, auth)
    if kind == "cloudflared":
        return open_cloudflared(port)
    if kind == "colab":
        return open_colab_proxy(port)
    if kind == "auto":
        if not authtoken:
            return open_cloudflared(port)
        try:
            return open_ngrok(port, authtoken, auth)
        except TunnelError as ngrok_error:
            logger.warning("ngrok did not open (%s); trying a cloudflared quick tunnel instead", ngrok_error)
            try:
                return open_cloudflared(port)
            except TunnelError as exc:
                raise TunnelError(f"ngrok: {ngrok_error}; cloudflared: {exc}") from exc
    raise TunnelError(f"unknown tunnel {kind!r}; use one of {', '.join(TUNNELS)}")
