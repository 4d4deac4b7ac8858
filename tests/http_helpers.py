"""One local HTTP(S) server for the tests: downloads and URL fetching never touch the internet.

``local_server()`` serves bytes at paths on 127.0.0.1 and counts requests; each path's
:class:`Route` says how it answers, including the ways real servers fail (errors, bodies cut off,
slow or endless bodies, redirects). The ``http_server`` fixture of ``tests/conftest.py`` is one.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Route:
    """What the server answers at one path."""

    body: bytes = b""
    status: int = 200
    fail_first: int = 0  # answer the first N requests with fail_status
    fail_status: int = 503
    drop_first: int = 0  # for the first N requests, send the headers and half the body, then hang up
    redirect: str | None = None  # answer 302 to this address
    trickle_s: float = 0.0  # send the body a byte at a time, this many seconds apart
    length: bool = True  # send Content-Length (False: the body just streams until it ends)
    echo_host: bool = False  # the body is "host=<the Host header>"


class LocalServer:
    """Serves bytes at paths on 127.0.0.1 and counts the requests it gets.

    ``serve(path, body)`` adds a route; ``url(path)`` is its address; ``count(path)`` how many
    requests reached it. Unknown paths answer 404.
    """

    def __init__(self, server: ThreadingHTTPServer, scheme: str = "http") -> None:
        self._server, self.scheme = server, scheme
        self.routes: dict[str, Route] = {}
        self.requests: Counter = Counter()
        self.lock = threading.Lock()

    def serve(self, path: str, body: bytes = b"", **kwargs) -> str:
        """Adds (or replaces) the answer at ``path``; keyword args are :class:`Route` fields. Returns its URL."""
        self.routes[path] = Route(body=body, **kwargs)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

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
        if route.redirect:
            self.send_response(302)
            self.send_header("Location", route.redirect)
            self.end_headers()
            return
        body = f"host={self.headers['Host']}".encode() if route.echo_host else route.body
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if route.length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.close_connection = True
        self.end_headers()
        try:
            if n <= route.fail_first + route.drop_first:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
            elif route.trickle_s:
                for k in range(len(body)):
                    self.wfile.write(body[k:k + 1])
                    self.wfile.flush()
                    time.sleep(route.trickle_s)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass

    def log_message(self, format, *args) -> None:  # keep the test output clean
        pass


@contextlib.contextmanager
def local_server(tls: ssl.SSLContext | None = None) -> Iterator[LocalServer]:
    """A :class:`LocalServer` on 127.0.0.1 at a free port (https with ``tls``), shut down on leaving."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.state = LocalServer(server, "https" if tls is not None else "http")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
