"""A small stdlib HTTP endpoint serving ``/metrics`` for Prometheus to scrape.

:class:`MetricsServer` runs :class:`http.server.ThreadingHTTPServer` on a
daemon thread named ``metrics-http``; each request runs on its own short-lived
daemon thread. A scrape calls the ``render`` callable once, outside any lock
of this module, for the exposition in the format the scraper asked for
(:meth:`app.observability.metrics.MetricsCollector.render_prometheus`).

Routes:

* ``GET /metrics``: 200, Prometheus text 0.0.4, or OpenMetrics 1.0 when the
  ``Accept`` header asks for ``application/openmetrics-text``; 500 with a
  short body if rendering fails (logged, the server keeps serving).
* ``GET /healthz``: 200 ``ok``, or 503 when the ``healthy`` callable says no.
* anything else: 404.
"""

from __future__ import annotations

import enum
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from app.observability.exposition import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT
from collectors.logs import get_logger

__all__ = ("MetricsServer",)

_logger = get_logger(__name__)

#: ``render(openmetrics)``: the exposition, OpenMetrics 1.0 if true, else text 0.0.4.
RenderExposition = Callable[[bool], str]

_THREAD_NAME = "metrics-http"
#: How often ``serve_forever`` checks for a shutdown request (seconds).
_POLL_INTERVAL = 0.05
#: A client that sends nothing for this long is disconnected (seconds).
_REQUEST_TIMEOUT = 10.0
_PLAIN = "text/plain; charset=utf-8"
_OPENMETRICS_MEDIA_TYPE = "application/openmetrics-text"


class _State(enum.Enum):
    UNSTARTED = "unstarted"
    RUNNING = "running"
    STOPPED = "stopped"


class MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` over HTTP from a daemon thread.

    Example::

        with MetricsServer(obs.metrics.render_prometheus, port=9464) as server:
            ...  # Prometheus scrapes server.url

    Args:
        render: Returns a fresh snapshot of all metric families; called once
            per scrape, on the request's thread, never under a lock of ours.
        host: The address to bind (an IPv6 literal binds an IPv6 socket).
        port: The TCP port; ``0`` picks a free one (read it from :attr:`port`).
        healthy: Answers ``/healthz``: 200 ``ok`` when it returns true, 503
            ``unhealthy`` otherwise (default: always healthy).
    """

    def __init__(
        self, render: RenderExposition, host: str = "127.0.0.1", port: int = 0,
        healthy: Callable[[], bool] | None = None,
    ) -> None:
        if not callable(render):
            raise TypeError("render must be callable")
        self._healthy = healthy
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        self._render = render
        self._host = host
        self._requested_port = port
        self._lock = threading.Lock()
        self._state = _State.UNSTARTED
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (still readable after :meth:`stop`).

        Raises:
            RuntimeError: The server was never started.
        """
        if self._port is None:
            raise RuntimeError("metrics server is not started: no port bound yet")
        return self._port

    @property
    def url(self) -> str:
        """The full URL of the metrics endpoint, e.g. ``http://127.0.0.1:9464/metrics``.

        Raises:
            RuntimeError: The server was never started.
        """
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/metrics"

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._state is _State.RUNNING

    def start(self) -> None:
        """Bind the socket and start serving on a daemon thread named ``metrics-http``.

        Raises:
            RuntimeError: The server is already running or was stopped.
            OSError: The address cannot be bound (port in use, bad host).
        """
        with self._lock:
            if self._state is not _State.UNSTARTED:
                raise RuntimeError(f"cannot start: metrics server is {self._state.value}")
            server = _HTTPServer((self._host, self._requested_port), self._render,
                                 self._healthy)
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name=_THREAD_NAME,
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
            self._port = int(server.server_address[1])
            self._state = _State.RUNNING
        _logger.info("metrics server started", url=self.url)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop serving and close the listening socket; safe to call again.

        Requests already being answered finish on their own threads.

        Args:
            timeout: Seconds to wait for the serving thread to exit.

        Returns:
            True if the serving thread has exited (or never ran), False if it
            was still alive when ``timeout`` expired.
        """
        with self._lock:
            if self._state is _State.UNSTARTED:
                self._state = _State.STOPPED
                return True
            if self._state is _State.STOPPED:
                return self._thread is None or not self._thread.is_alive()
            self._state = _State.STOPPED
            server, thread = self._server, self._thread
        assert server is not None and thread is not None  # set together in start()
        # shutdown() blocks until serve_forever returns, at most one poll interval
        # later, since requests run on their own threads.
        server.shutdown()
        thread.join(timeout)
        server.server_close()
        stopped = not thread.is_alive()
        _logger.info("metrics server stopped", port=self._port, stopped=stopped)
        return stopped

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- implementation ---------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that carries the render callable and logs via structlog."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], render: RenderExposition,
        healthy: Callable[[], bool] | None = None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.render = render
        self.healthy = healthy
        super().__init__(address, _MetricsHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log an exception escaping a handler instead of printing it to stderr."""
        _logger.exception("metrics http handler failed", client=str(client_address))


class _MetricsHandler(BaseHTTPRequestHandler):
    """Answers one HTTP request; runs on a per-request daemon thread."""

    server: _HTTPServer
    timeout = _REQUEST_TIMEOUT
    server_version = "risk-engine-metrics"

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/metrics":
            self._serve_metrics()
        elif path == "/healthz":
            self._serve_health()
        else:
            self._send(404, _PLAIN, b"not found\n")

    def _serve_health(self) -> None:
        check = self.server.healthy
        try:
            ok = True if check is None else bool(check())
        except Exception:
            _logger.exception("metrics health check failed")
            ok = False
        if ok:
            self._send(200, _PLAIN, b"ok")
        else:
            self._send(503, _PLAIN, b"unhealthy\n")

    def _serve_metrics(self) -> None:
        openmetrics = _wants_openmetrics(self.headers.get("Accept", ""))
        try:
            body = self.server.render(openmetrics).encode("utf-8")
        except Exception:
            _logger.exception("metrics render failed")
            self._send(500, _PLAIN, b"metrics render failed\n")
            return
        self._send(200, CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT, body)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError as exc:  # the scraper hung up; nothing to answer
            _logger.debug("metrics http write failed", error=repr(exc))

    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("metrics http request", client=self.address_string(), message=format % args)


def _wants_openmetrics(accept: str) -> bool:
    """Whether an ``Accept`` header asks for OpenMetrics (and does not refuse it with q=0)."""
    for media_range in accept.split(","):
        media_type, *params = media_range.split(";")
        if media_type.strip().lower() != _OPENMETRICS_MEDIA_TYPE:
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    if float(value) <= 0:
                        break
                except ValueError:
                    break
        else:
            return True
    return False
