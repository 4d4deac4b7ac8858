"""waitress with the kit's refusals: every error it answers itself is the kit's JSON, never a reset.

waitress refuses some requests before the app sees them (a body over its cap, malformed
headers) with a plain-text page, and it answers a too-large body as soon as its headers arrive,
then closes the connection while a client that did not send ``Expect: 100-continue`` (Python's
urllib, curl for small bodies, most scripts) is still sending: the client gets a connection reset
instead of the answer. Here waitress's cap is the app's own limit (``--max-upload-mb``), its error
pages are ``{"error": ...}`` JSON like the app's, and the rest of a refused body is read and thrown
away (up to :data:`DRAIN_LIMIT`, never stored) before the answer, as web servers' "lingering close"
does, so every client reads the 413, whether it sends a Content-Length or its body in chunks.
"""

from __future__ import annotations

import io
import json

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import MultiSocketServer, TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from waitress.utilities import RequestEntityTooLarge

DRAIN_LIMIT = 2**30
"""Bytes of a refused body read and discarded so that the client can read the 413; a body that
announces more is answered at once and the connection closed (the client may see a reset)."""


def refusal_message(error, limit_bytes: int) -> str:
    """The JSON error text of a request waitress refuses itself."""
    if isinstance(error, RequestEntityTooLarge):
        return (f"the request is larger than the server's limit of {limit_bytes / 2**20:.0f} MB; "
                "send a smaller image or start the server with a larger --max-upload-mb")
    return f"{error.reason.lower()}: {error.body}"


class _Discarded:
    """A body buffer that keeps only the count of what it was given."""

    def __init__(self) -> None:
        self.size = 0

    def append(self, data: bytes) -> None:
        self.size += len(data)

    def __len__(self) -> int:
        return self.size

    def getfile(self):
        return io.BytesIO()

    def close(self) -> None:
        pass


class _DrainingParser(HTTPRequestParser):
    """A request parser that, on a body over the cap, reads the rest of it before the request is complete.

    A body with a Content-Length is counted off; a chunked one goes on through waitress's own chunk
    decoder, into a buffer that keeps nothing, until its last chunk (or :data:`DRAIN_LIMIT`).
    """

    _left = 0
    _draining_chunks = False

    def received(self, data):
        if self._left:
            used = min(self._left, len(data))
            self._left -= used
            self.completed = self._left == 0
            return used
        if self._draining_chunks:
            chunks = self.body_rcv
            used = chunks.received(data)
            self.body_bytes_received += used
            if chunks.completed or chunks.error or self.body_bytes_received > DRAIN_LIMIT:
                self._draining_chunks, self.completed = False, True
            return used
        used = super().received(data)
        if isinstance(self.error, RequestEntityTooLarge) and self.headers_finished:
            # a client that sent Expect: 100-continue is told to continue by waitress all the same, so its
            # body is read too
            if not self.chunked and 0 < self.content_length <= DRAIN_LIMIT:
                self._left, self.completed = self.content_length, False
            elif self.chunked and self.body_rcv is not None and not self.body_rcv.completed:
                self.body_rcv.buf.close()  # what was kept of the refused body is let go
                self.body_rcv.buf = _Discarded()
                self._draining_chunks, self.completed = True, False
        return used


class _JsonErrorTask(ErrorTask):
    def execute(self):
        limit = self.channel.server.adj.max_request_body_size - 1
        body = json.dumps({"error": refusal_message(self.request.error, limit)}).encode()
        self.status = f"{self.request.error.code} {self.request.error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class KitChannel(HTTPChannel):
    """waitress's connection with the draining parser and the JSON error pages."""

    parser_class = _DrainingParser
    error_task_class = _JsonErrorTask


class KitServer(TcpWSGIServer):
    """waitress's TCP server whose connections are :class:`KitChannel` s (as ``webtest`` subclasses it)."""

    channel_class = KitChannel


def create_server(app, host: str, port: int, threads: int, max_body_bytes: int, sock=None):
    """A bound, listening waitress server for ``app`` whose cap on request bodies is ``max_body_bytes``
    (the app's ``MAX_CONTENT_LENGTH``): ``(port, serve_forever, close)``.

    ``sock``: an already listening socket to serve on (a ``--workers`` worker's) instead of ``host:port``.

    It is waitress's ``create_server`` for TCP with :class:`KitServer` in place of ``TcpWSGIServer``:
    one server per address (a name can give IPv4 and IPv6) or per given socket, all on one socket
    map and one pool of threads, run together by a ``MultiSocketServer`` when there are several.
    """
    # waitress refuses a body of max_request_body_size bytes or more; the app accepts max_body_bytes
    where = dict(sockets=[sock]) if sock is not None else dict(host=host, port=port)
    adj = Adjustments(threads=threads, max_request_body_size=max_body_bytes + 1, **where)
    socket_map: dict = {}
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    if sock is not None:  # waitress's own create_server hands a given socket to the server the same way
        servers = [KitServer(app, socket_map, _sock=sock, dispatcher=dispatcher, adj=adj, bind_socket=False,
                             sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()))]
    else:
        servers = [KitServer(app, socket_map, dispatcher=dispatcher, adj=adj, sockinfo=info) for info in adj.listen]
    if len(servers) == 1:
        server = servers[0]
        return server.effective_port, server.run, server.close
    listening = [(server.effective_host, server.effective_port) for server in servers]
    group = MultiSocketServer(socket_map, adj, listening, dispatcher, servers[-1].log_info)
    return listening[0][1], group.run, group.close
