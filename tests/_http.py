"""A loopback HTTP stand-in for the tests of our HTTP clients (OTLP, Pushgateway).

:class:`RecordingServer` records every request and answers what the test sets
(``status``, ``body``, ``content_type``, ``extra_headers``); a subclass that
needs behaviour of its own overrides :meth:`RecordingServer.answer`.
:func:`serving` runs one on a thread for the length of a ``with`` block.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

__all__ = ("RecordedRequest", "RecordingServer", "serving")


class RecordedRequest(NamedTuple):
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class RecordingServer(http.server.ThreadingHTTPServer):
    """Records requests on 127.0.0.1 (a free port) and answers with what the test set."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[Any] = []
        self.status = 200
        self.body = b""
        self.content_type = "application/json"
        self.extra_headers: dict[str, str] = {}

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def answer(self, request: RecordedRequest) -> tuple[int, bytes]:
        """Record ``request`` and return the status and body to answer with.

        Runs on the request's thread, before the answer is sent: what a client
        sent is recorded by the time its call returns.
        """
        with self.lock:
            self.requests.append(request)
        return self.status, self.body


class _Handler(http.server.BaseHTTPRequestHandler):
    server: RecordingServer
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status, answer = self.server.answer(
            RecordedRequest(self.command, self.path, dict(self.headers.items()), body))
        self.send_response(status)
        for key, value in self.server.extra_headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", self.server.content_type)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, format: str, *args: Any) -> None:  # the base class names it so
        """Keep the test output quiet."""


ServerT = TypeVar("ServerT", bound=RecordingServer)


@contextmanager
def serving(server: ServerT) -> Iterator[ServerT]:
    """Serve ``server`` on a thread of its own; shut it down and join the thread after."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              name="test-http-server")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive()
