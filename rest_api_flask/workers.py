"""``--workers N``: N server processes, each with its own model, answering on one port.

This process binds the listening socket and starts N copies of the server (``python -m
rest_api_flask`` with the same flags) that inherit it: the kernel hands each new connection to
one of them. They share the upload and output folders, whose results live on disk, so any worker
serves any result id. The model folder is resolved once here (a ``--weights`` URL is downloaded
and imported once), the tunnel is opened once here, and each worker gets ``cores / N`` torch
threads unless ``OMP_NUM_THREADS`` is set. POSIX only (workers inherit the socket).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from maskrcnn_finetune.errors import ConfigError
from rest_api_flask.ready import read_ready


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket that child processes can inherit."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sock = socket.socket(infos[0][0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port "
                          "(0 picks a free one) or stop the program that uses it") from exc
    return sock


def worker_threads(workers: int) -> str:
    """torch threads per worker: the cores shared out (at least one)."""
    return str(max(1, (os.cpu_count() or 1) // workers))


class WorkerPool:
    """The N worker processes on one inherited socket.

    Args:
        argv: the server's own flags (each worker gets them, plus where to listen and which model folder).
        workers: how many processes.
        sock: the listening socket (:func:`listening_socket`).
        model_dir: the resolved model folder every worker loads.
    """

    def __init__(self, argv: list[str], workers: int, sock: socket.socket, model_dir: Path) -> None:
        if os.name != "posix":
            raise ConfigError("--workers above 1 needs Linux or macOS (the workers share one listening socket); "
                              "on this system start one server per port instead")
        self.sock = sock
        self._folder = Path(tempfile.mkdtemp(prefix="maskrcnn-workers-"))
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", worker_threads(workers))
        self.ready_paths = [self._folder / f"worker{k}.json" for k in range(workers)]
        self.processes = [
            subprocess.Popen([sys.executable, "-m", "rest_api_flask", *argv, "--worker-fd", str(sock.fileno()),
                              "--worker-model-dir", str(model_dir), "--ready-file", str(path)],
                             pass_fds=(sock.fileno(),), env=env)
            for path in self.ready_paths
        ]

    def wait_ready(self, timeout: float) -> list[int]:
        """Waits until every worker serves; returns their pids.

        Raises:
            ConfigError: a worker stopped before serving (its messages are above, on the same console), or
                some were not serving after ``timeout`` seconds (all are stopped then).
        """
        deadline = time.monotonic() + timeout
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    self.stop()
                    raise ConfigError(f"a server worker stopped (exit code {process.returncode}) before serving; "
                                      "see its message above")
            waiting = [process.pid for process, path in zip(self.processes, self.ready_paths) if not read_ready(path)]
            if not waiting:
                return [process.pid for process in self.processes]
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"server workers {', '.join(map(str, waiting))} were not serving after "
                                  f"{timeout:g} s (--worker-start-timeout) and were stopped; a slow disk or a "
                                  "busy machine loads the model slowly: give them more time or start fewer --workers")
            time.sleep(0.1)

    def serve(self) -> None:
        """Blocks while every worker runs; one that stops ends the server (its message says why)."""
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    raise ConfigError(f"server worker {process.pid} stopped (exit code {process.returncode}); "
                                      "stopping the others")
            time.sleep(0.5)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to every worker, SIGKILL to those still running after ``timeout`` seconds."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.sock.close()
        for path in self.ready_paths:
            path.unlink(missing_ok=True)
        try:
            self._folder.rmdir()
        except OSError:
            pass
