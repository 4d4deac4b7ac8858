"""Public URLs for a local server: an ngrok tunnel (pyngrok) or Colab's own port proxy.

Every known failure becomes a :class:`TunnelError` whose message says what to do; the caller
(``flask_app.py``) prints it and keeps serving locally.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

from maskrcnn_finetune import colab
from maskrcnn_finetune.errors import TunnelError, first_line

logger = logging.getLogger(__name__)

TOKEN_NAME = colab.NGROK_TOKEN_NAME
_TOKEN_HELP = ("get an authtoken at https://dashboard.ngrok.com/get-started/your-authtoken and pass it with "
               f"--ngrok-authtoken, the {TOKEN_NAME} environment variable, or a Colab secret named {TOKEN_NAME}")
# ngrok's error codes (https://ngrok.com/docs/errors/) that users meet, and what to do about each
NGROK_HINTS = {
    "ERR_NGROK_4018": "ngrok refused to start without an authtoken: " + _TOKEN_HELP,
    "ERR_NGROK_105": "ngrok does not know this authtoken: copy it again from the dashboard, " + _TOKEN_HELP,
    "ERR_NGROK_107": "ngrok does not know this authtoken: copy it again from the dashboard, " + _TOKEN_HELP,
    "ERR_NGROK_108": ("this ngrok account already runs an agent session elsewhere (a free account allows one). "
                      "In a notebook, run the start cell again: it stops the server (and agent) that an earlier run "
                      "of this runtime left. An agent in another Colab runtime or terminal: Runtime > Disconnect and "
                      "delete runtime there, or stop that process; or end the session at "
                      "https://dashboard.ngrok.com/agents. Then start the server again"),
    "ERR_NGROK_334": ("this ngrok endpoint is already online from another agent (an earlier server of this account "
                      "still runs): run the notebook's start cell again (it stops this runtime's earlier server), "
                      "or end the other session at https://dashboard.ngrok.com/agents"),
}


@dataclass
class Tunnel:
    """An open public URL and how to close it."""

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
    """The ngrok authtoken from ``--ngrok-authtoken``, else ``NGROK_AUTHTOKEN``, else Colab's secret."""
    return flag or os.environ.get(TOKEN_NAME) or colab.colab_secret(TOKEN_NAME)


def _explain(exc: Exception) -> str:
    text = f"{exc} {getattr(exc, 'ngrok_error', '') or ''}"
    for code, hint in NGROK_HINTS.items():
        if code in text:
            return f"{hint} ({code})"
    return str(exc).strip() or type(exc).__name__


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
        raise TunnelError("no ngrok authtoken: " + _TOKEN_HELP)
    from pyngrok import conf, ngrok
    from pyngrok.exception import PyngrokError, PyngrokNgrokInstallError

    config = pyngrok_config or conf.PyngrokConfig()
    config.auth_token = authtoken
    options = {"auth": auth} if auth else {}
    try:
        tunnel = ngrok.connect(str(port), "http", pyngrok_config=config, **options)
    except PyngrokNgrokInstallError as exc:
        raise TunnelError(f"the ngrok program cannot be downloaded ({first_line(exc)}); "
                          "connect to the internet, or install ngrok yourself and set PYNGROK_NGROK_PATH to it, "
                          "or use --tunnel colab inside Colab") from exc
    except (PyngrokError, OSError) as exc:
        raise TunnelError(_explain(exc)) from exc
    url = tunnel.public_url.replace("http://", "https://", 1)

    def _close() -> None:
        ngrok.disconnect(tunnel.public_url, pyngrok_config=config)
        ngrok.kill(pyngrok_config=config)

    return Tunnel("ngrok", url, _close)


def open_colab_proxy(port: int) -> Tunnel:
    """Colab's own proxy to a port of the runtime (no account; the URL works for the notebook's user).

    Raises:
        TunnelError: when not running inside Colab.
    """
    if not colab.in_colab():
        raise TunnelError("--tunnel colab works only inside Google Colab; elsewhere use --tunnel ngrok "
                          "(or none, and open the local URL)")
    try:
        url = colab.proxy_url(port)
    except Exception as exc:  # noqa: BLE001 - eval_js fails in many ways outside the notebook's kernel
        raise TunnelError(f"Colab's proxy can only be asked for from the notebook's kernel ({type(exc).__name__}: "
                          f"{exc}); a server started with !python or in the background cannot. In a notebook cell, "
                          f"run maskrcnn_finetune.colab.proxy_url({int(port)}) (03_serve does), or use --tunnel ngrok"
                          ) from exc
    if not url:  # eval_js returns None when the browser did not answer in time
        raise TunnelError(f"Colab's browser tab did not give a proxy URL for the port within {colab.PROXY_TIMEOUT_S} s "
                          "(is the notebook open in a browser?); use --tunnel ngrok instead")
    return Tunnel("colab", url)


def open_tunnel(kind: str, port: int, authtoken: str | None = None, auth: str | None = None) -> Tunnel | None:
    """Opens the tunnel ``kind`` (``"none"``, ``"ngrok"`` or ``"colab"``) to ``port``; None for ``"none"``."""
    if kind == "none":
        return None
    if kind == "ngrok":
        return open_ngrok(port, authtoken, auth)
    if kind == "colab":
        return open_colab_proxy(port)
    raise TunnelError(f"unknown tunnel {kind!r}; use none, ngrok or colab")
