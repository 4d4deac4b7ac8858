"""The model server as a background process (notebooks, benchmarks, tests): start it, wait until it answers, stop it.

    from rest_api_flask.launcher import start_server
    server = start_server("outputs/demo/model", "uploads", "served", tunnel="ngrok")
    print(server.public_url or server.url)

The server (``python -m rest_api_flask``, the same as ``rest_api_flask/flask_app.py``) is started
with ``--ready-file``: :func:`start_server` waits for that JSON file (:mod:`rest_api_flask.ready`),
which gives the URL and, with a tunnel, the public URL or why it did not open; then it polls
``GET /health`` until the model is loaded. The server's output goes to a log file.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import requests

from maskrcnn_finetune.errors import KitError, ServerStartError
from rest_api_flask.config import to_argv
from rest_api_flask.ready import read_ready
from rest_api_flask.registry import forget_server, remember_server, signal_group, stop_previous_servers

logger = logging.getLogger(__name__)

TUNNELS = ("none", "ngrok", "cloudflared", "auto")  # Colab's proxy is asked for from the kernel: colab.show_server


def server_command(model_dir, upload_folder, output_folder, *, host: str = "127.0.0.1", port: int = 5000,
                   tunnel: str = "none", infer_with_cpu: bool = False, threshold: float | None = None,
                   ready_file=None, extra_args: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The command line that starts the server (the ngrok token travels in the environment, never here).

    The flags come from :class:`~rest_api_flask.config.ServeConfig` (:func:`~rest_api_flask.config.to_argv`);
    ``model_dir`` None: the model comes from ``extra_args`` (e.g. ``--weights ... --config-file ...``).
    """
    if tunnel not in TUNNELS:
        raise KitError(f"tunnel must be one of {', '.join(TUNNELS)}, got '{tunnel}' "
                       "(Colab's own proxy: maskrcnn_finetune.colab.show_server shows the page in the notebook)")
    options = {"model_dir": model_dir, "upload_folder": upload_folder, "output_folder": output_folder, "host": host,
               "port": port, "tunnel": tunnel, "device": "cpu" if infer_with_cpu else None, "threshold": threshold,
               "ready_file": ready_file}
    return [sys.executable, "-u", "-m", "rest_api_flask", *to_argv(options), *map(str, extra_args)]


@dataclass
class ServerProcess:
    """A running server: its local ``url``, its ``public_url`` (tunnel) if any, its folders and its log.

    ``tunnel_error`` is the server's explanation when a tunnel was asked for and did not open.
    ``info`` is the server's ready signal as last read (device, model, tunnel state).

    Use it as a context manager, or call :meth:`stop`; it is also stopped when Python exits.
    """

    process: subprocess.Popen
    log_path: Path
    ready_path: Path
    upload_folder: Path
    output_folder: Path
    info: dict = field(default_factory=dict)
    _lines: deque = field(default_factory=lambda: deque(maxlen=2000), repr=False)
    _lines_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str | None:
        return self.info.get("url")

    @property
    def public_url(self) -> str | None:
        return self.info.get("public_url")

    @property
    def tunnel_error(self) -> str | None:
        return self.info.get("tunnel_error")

    @property
    def port(self) -> int | None:
        return self.info.get("port")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def lines(self) -> list[str]:
        """The lines the server printed so far (the last 2000)."""
        with self._lines_lock:
            return list(self._lines)

    def log_tail(self, n: int = 25) -> str:
        """The last ``n`` lines the server printed."""
        return "\n".join(self.lines[-n:])

    def health(self, timeout: float = 5.0) -> dict:
        """``GET /health`` as a dict (raises ``requests`` errors when it does not answer 200)."""
        response = requests.get(f"{self.url}/health", timeout=timeout)
        response.raise_for_status()
        return response.json()

    def refresh(self) -> dict:
        """Reads the server's ready signal again (it changes when a tunnel opens or fails)."""
        info = read_ready(self.ready_path)
        if info is not None:
            self.info = info
        return self.info

    def wait_for_tunnel(self, timeout: float = 45.0) -> str | None:
        """Waits until the tunnel asked for is open or has failed; returns the public URL (None: failed)."""
        deadline = time.monotonic() + timeout
        while self.refresh().get("tunnel_state") == "opening" and self.running and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.public_url

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
        self.ready_path.unlink(missing_ok=True)  # a killed server could not remove it
        if self._reader is not None:
            self._reader.join(timeout=5)  # its last lines into the log before returning
        atexit.unregister(self.stop)
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _read_output(self) -> None:
        """Copies the server's output to the log file (and keeps the last lines for messages)."""
        with self.log_path.open("a", encoding="utf-8") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                with self._lines_lock:
                    self._lines.append(line.rstrip("\n"))


def start_server(model_dir, upload_folder, output_folder, *, tunnel: str = "none", ngrok_token: str | None = None,
                 infer_with_cpu: bool = False, threshold: float | None = None, host: str = "127.0.0.1",
                 port: int | None = None, extra_args: list[str] | tuple[str, ...] = (), log_path=None,
                 env: dict | None = None, cwd=None, timeout: float = 180.0, tunnel_timeout: float = 90.0,
                 stop_previous: bool = True) -> ServerProcess:
    """Starts the server in the background and returns once ``/health`` says the model is loaded.

    Args:
        model_dir: a model folder written by training, ``"coco"`` (torchvision's COCO model), or None
            when ``extra_args`` name the model (``--weights FILE_OR_URL --config-file CONFIG``).
        upload_folder, output_folder: where the server keeps uploads and results.
        tunnel: ``"none"`` (this machine only), ``"ngrok"`` (a public https URL; an account's authtoken),
            ``"cloudflared"`` (a public https URL without an account) or ``"auto"`` (ngrok when a token is
            set, else cloudflared).
        ngrok_token: passed to the server as ``$NGROK_AUTHTOKEN``; None keeps the environment's.
        infer_with_cpu: run the model on the CPU even when a GPU is there.
        threshold: the default score threshold (None: the model folder's).
        host, port: where to listen; ``port=None`` picks a free one.
        extra_args: more server flags, e.g. ``["--api-key", key]``.
        log_path: the server's log file (default: ``output_folder/server.log``).
        env: environment variables to set for the server, on top of this process's.
        cwd: the server's working folder (default: this process's).
        timeout: seconds to wait for the model to load and ``/health`` to answer.
        tunnel_timeout: seconds to wait for the tunnel to open (or fail) after that.
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
    port = 0 if port is None else port  # 0: the server binds a free port and says which
    ready_path = output_folder / f".server-ready-{uuid.uuid4().hex[:12]}.json"
    cmd = server_command(model_dir, upload_folder, output_folder, host=host, port=port, tunnel=tunnel,
                         infer_with_cpu=infer_with_cpu, threshold=threshold, ready_file=ready_path,
                         extra_args=extra_args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if ngrok_token:
        env["NGROK_AUTHTOKEN"] = ngrok_token
    log_path = Path(log_path) if log_path else output_folder / "server.log"
    if stop_previous:
        stop_previous_servers()
    logger.info("starting the server: %s", " ".join(cmd))
    # its own session: interrupting a notebook cell (SIGINT to the kernel's group) leaves it running
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               text=True, bufsize=1, env=env, cwd=cwd, start_new_session=True)
    server = ServerProcess(process, log_path, ready_path, upload_folder, output_folder)
    remember_server(process.pid, cmd)
    atexit.register(server.stop)
    server._reader = threading.Thread(target=server._read_output, name="server-log", daemon=True)
    server._reader.start()

    deadline = time.monotonic() + timeout
    try:
        while not server.refresh():
            if not server.running:
                raise ServerStartError(_failure("stopped", server, timeout))
            if time.monotonic() > deadline:
                raise ServerStartError(_failure("did not signal that it serves", server, timeout))
            time.sleep(0.1)
        _wait_healthy(server, deadline, timeout)
    except BaseException:
        server.stop()
        raise
    if tunnel != "none" and not server.wait_for_tunnel(tunnel_timeout):
        logger.warning("no public URL (%s); the server keeps serving on %s", server.tunnel_error or
                       f"none within {tunnel_timeout:.0f} s, see {log_path}", server.url)
    # the public URL itself is the caller's to print (once): colab.show_server, or the server's own log
    logger.info("server ready at %s%s", server.url,
                f" (a public URL through {server.info.get('public_via')} too)" if server.public_url else "")
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


def start_notebook_server(model_dir, upload_folder, output_folder, *, public: bool = True, use_ngrok: bool = True,
                          **options) -> ServerProcess:
    """The notebooks' start cell: the server in the background, with the best public URL that can be had.

    The order: ngrok when ``use_ngrok`` and an authtoken exists (``colab.request_ngrok_token``: the
    environment, the Colab secret, or one question per runtime); otherwise, or when ngrok fails, a
    TryCloudflare quick tunnel (no account). When neither opens, or ``public`` is False, there is no
    public URL and :func:`maskrcnn_finetune.colab.show_server` shows the page inside the notebook.

    Args:
        model_dir, upload_folder, output_folder: as :func:`start_server`.
        public: open a public URL at all.
        use_ngrok: try ngrok first (when a token exists).
        options: more :func:`start_server` arguments (``infer_with_cpu``, ``threshold``, ``extra_args``...).
    """
    from maskrcnn_finetune import colab

    if not public:
        tunnel = "none"
    elif use_ngrok:
        if not colab.token_requested():  # the notebooks' settings cells ask up front; anyone else, here
            colab.request_ngrok_token()
        tunnel = "auto"
    else:
        tunnel = "cloudflared"
    return start_server(model_dir, upload_folder, output_folder, tunnel=tunnel, **options)
