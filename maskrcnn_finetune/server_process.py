"""The model server as a background process of a notebook: start it, wait until it answers, stop it.

The server (``python -m rest_api_flask``, the same as ``rest_api_flask/flask_app.py``) prints
``Serving on http://HOST:PORT`` once it accepts connections and ``Public URL: https://...`` when
a tunnel is open; :func:`start_server` reads those lines, then polls ``GET /health``.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import requests

from maskrcnn_finetune.errors import KitError, ServerStartError
from maskrcnn_finetune.server_registry import forget_server, remember_server, signal_group, stop_previous_servers

logger = logging.getLogger(__name__)

SERVING_LINE = re.compile(r"Serving on (http://\S+)")
PUBLIC_LINE = re.compile(r"Public URL: (https?://\S+)")
TUNNEL_FAILED_LINE = re.compile(r"no public URL: (.*)")
TUNNELS = ("none", "ngrok")


def server_command(model_dir, upload_folder, output_folder, *, host: str = "127.0.0.1", port: int = 5000,
                   tunnel: str = "none", infer_with_cpu: bool = False, threshold: float | None = None,
                   extra_args: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The command line that starts the server (the ngrok token travels in the environment, never here)."""
    if tunnel not in TUNNELS:
        raise KitError(f"tunnel must be one of {', '.join(TUNNELS)}, got '{tunnel}' "
                       "(in Colab without ngrok, use maskrcnn_finetune.colab.proxy_url)")
    cmd = [sys.executable, "-u", "-m", "rest_api_flask", "--model-dir", str(model_dir),
           "--upload-folder", str(upload_folder), "--output-folder", str(output_folder),
           "--host", host, "--port", str(port)]
    if tunnel == "ngrok":
        cmd.append("--use-ngrok")
    if infer_with_cpu:
        cmd.append("--infer-with-cpu")
    if threshold is not None:
        cmd += ["--threshold", str(threshold)]
    return cmd + [str(a) for a in extra_args]


@dataclass
class ServerProcess:
    """A running server: its local ``url``, its ``public_url`` (tunnel) if any, and its log.

    ``tunnel_error`` is the server's explanation when a tunnel was asked for and did not open.

    Use it as a context manager, or call :meth:`stop`; it is also stopped when Python exits.
    """

    process: subprocess.Popen
    log_path: Path
    url: str | None = None
    public_url: str | None = None
    tunnel_error: str | None = None
    _lines: deque = field(default_factory=lambda: deque(maxlen=400), repr=False)
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def port(self) -> int | None:
        return int(self.url.rsplit(":", 1)[1].split("/")[0]) if self.url else None

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, n: int = 25) -> str:
        """The last ``n`` lines the server printed."""
        with self._changed:
            return "\n".join(list(self._lines)[-n:])

    def health(self, timeout: float = 5.0) -> dict:
        """``GET /health`` as a dict (raises ``requests`` errors when it does not answer 200)."""
        response = requests.get(f"{self.url}/health", timeout=timeout)
        response.raise_for_status()
        return response.json()

    def stop(self, timeout: float = 10.0) -> int:
        """Stops the server and its ngrok agent (SIGTERM to its process group, SIGKILL after ``timeout`` s).

        Returns:
            The server's exit code.
        """
        if self.process.poll() is None:
            signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("the server did not stop within %.0f s; killing it", timeout)
                signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
            logger.info("server stopped (exit code %s)", self.process.returncode)
        signal_group(self.process.pid, signal.SIGKILL)  # an agent the server left behind goes with it
        forget_server(self.process.pid)
        if self._reader is not None:
            self._reader.join(timeout=5)  # its last lines into the log before returning
        atexit.unregister(self.stop)
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _read_output(self) -> None:
        """Copies the server's output to the log file and watches for the two lines that matter."""
        with self.log_path.open("a", encoding="utf-8") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                line = line.rstrip("\n")
                with self._changed:
                    self._lines.append(line)
                    if self.url is None and (m := SERVING_LINE.search(line)):
                        self.url = m.group(1).rstrip("/")
                    if self.public_url is None and (m := PUBLIC_LINE.search(line)):
                        self.public_url = m.group(1).rstrip("/")
                    if self.tunnel_error is None and (m := TUNNEL_FAILED_LINE.search(line)):
                        self.tunnel_error = m.group(1).strip()
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _wait_for(self, what: str, deadline: float, unless: str | None = None) -> bool:
        """Waits until attribute ``what`` is set (True), or the process ends, the deadline passes or
        attribute ``unless`` is set (False)."""
        with self._changed:
            while getattr(self, what) is None and self.process.poll() is None:
                if unless and getattr(self, unless) is not None:
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
            return getattr(self, what) is not None


def start_server(model_dir, upload_folder, output_folder, *, tunnel: str = "none", ngrok_token: str | None = None,
                 infer_with_cpu: bool = False, threshold: float | None = None, host: str = "127.0.0.1",
                 port: int | None = None, extra_args: list[str] | tuple[str, ...] = (), log_path=None,
                 timeout: float = 180.0, tunnel_timeout: float = 45.0, stop_previous: bool = True) -> ServerProcess:
    """Starts the server in the background and returns once ``/health`` says the model is loaded.

    Args:
        model_dir: a model folder written by training.
        upload_folder, output_folder: where the server keeps uploads and results.
        tunnel: ``"none"`` (this machine only) or ``"ngrok"`` (a public https URL).
        ngrok_token: passed to the server as ``$NGROK_AUTHTOKEN``; None keeps the environment's.
        infer_with_cpu: run the model on the CPU even when a GPU is there.
        threshold: the default score threshold (None: the model folder's).
        host, port: where to listen; ``port=None`` picks a free one.
        extra_args: more server flags, e.g. ``["--api-key", key]``.
        log_path: the server's log file (default: ``output_folder/server.log``).
        timeout: seconds to wait for the model to load and ``/health`` to answer.
        tunnel_timeout: seconds to wait for the ``Public URL`` line after that.
        stop_previous: first stop the servers started before in this runtime and still running
            (a re-run cell, or a kernel that crashed and left its server and ngrok agent alive:
            a second agent of the same ngrok account would be refused, ERR_NGROK_108).

    Returns:
        The :class:`ServerProcess`; ``public_url`` is None when the tunnel did not open
        (``tunnel_error`` says why).

    Raises:
        ServerStartError: the process exited, or did not answer within ``timeout``.
    """
    output_folder, upload_folder = Path(output_folder), Path(upload_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    upload_folder.mkdir(parents=True, exist_ok=True)
    port = 0 if port is None else port  # 0: the server binds a free port and prints it
    cmd = server_command(model_dir, upload_folder, output_folder, host=host, port=port, tunnel=tunnel,
                         infer_with_cpu=infer_with_cpu, threshold=threshold, extra_args=extra_args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if ngrok_token:
        env["NGROK_AUTHTOKEN"] = ngrok_token
    log_path = Path(log_path) if log_path else output_folder / "server.log"
    if stop_previous:
        stop_previous_servers()
    logger.info("starting the server: %s", " ".join(cmd))
    # its own session: interrupting a notebook cell (SIGINT to the kernel's group) leaves it running
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               text=True, bufsize=1, env=env, start_new_session=True)
    server = ServerProcess(process, log_path)
    remember_server(process.pid, cmd)
    atexit.register(server.stop)
    server._reader = threading.Thread(target=server._read_output, name="server-log", daemon=True)
    server._reader.start()

    deadline = time.monotonic() + timeout
    try:
        if not server._wait_for("url", deadline):
            raise ServerStartError(_failure("did not print 'Serving on ...'", server, timeout))
        _wait_healthy(server, deadline, timeout)
    except BaseException:
        server.stop()
        raise
    if tunnel == "ngrok" and not server._wait_for("public_url", time.monotonic() + tunnel_timeout, unless="tunnel_error"):
        logger.warning("no public URL (%s); the server keeps serving on %s", server.tunnel_error or
                       f"none within {tunnel_timeout:.0f} s, see {log_path}", server.url)
    logger.info("server ready at %s%s", server.url, f" (public: {server.public_url})" if server.public_url else "")
    return server


def _wait_healthy(server: ServerProcess, deadline: float, timeout: float) -> None:
    last = None
    while time.monotonic() < deadline:
        if not server.running:
            raise ServerStartError(_failure("stopped", server, timeout))
        try:
            body = server.health(timeout=5)
            if body.get("status") == "ok" and body.get("model_loaded", True):
                return
            last = body
        except (requests.RequestException, ValueError) as exc:
            last = exc
        time.sleep(0.2)
    raise ServerStartError(_failure(f"did not answer GET /health with status ok (last answer: {last})", server, timeout))


def _failure(what: str, server: ServerProcess, timeout: float) -> str:
    code = server.process.poll()
    if code is not None and server._reader is not None:
        server._reader.join(timeout=5)  # its last lines usually say what went wrong
    state = f"exited with code {code}" if code is not None else f"{what} within {timeout:.0f} s"
    if code is not None and what != "stopped":
        state = f"{state} ({what})"
    return (f"the server {state}. The end of its log ({server.log_path}):\n{server.log_tail()}\n"
            "Fix the problem it names (often --model-dir), then run the cell again.")
