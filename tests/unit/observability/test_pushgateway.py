"""Tests for :mod:`app.observability.pushgateway` against a loopback HTTP stand-in.

The real Pushgateway is exercised in ``tests/integration/test_pushgateway_to_prometheus.py``.
"""

from __future__ import annotations

import base64
import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from app.observability.pushgateway import (
    DEFAULT_JOB,
    PushgatewayError,
    grouping_path,
    push_metrics,
)

EXPOSITION = "# TYPE x_total counter\nx_total 1\n"


class _Gateway(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.status = 200
        self.body = b""
        self.extra_headers: dict[str, str] = {}

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Gateway
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.server.requests.append((self.command, self.path, dict(self.headers.items()), body))
        self.send_response(self.server.status)
        for key, value in self.server.extra_headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    do_PUT = do_POST = do_GET = _answer

    def log_message(self, format: str, *args: Any) -> None:  # the base class names it so
        """Keep the test output quiet."""


@pytest.fixture
def gateway() -> Iterator[_Gateway]:
    server = _Gateway()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_push_puts_the_text_exposition_under_job_and_instance(gateway: _Gateway) -> None:
    url = push_metrics(gateway.url + "/", EXPOSITION, grouping_key={"instance": "host-1"})

    (method, path, headers, body), = gateway.requests
    assert method == "PUT"
    assert path == "/metrics/job/risk_engine_batch/instance/host-1"
    assert url == gateway.url + path
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert body == EXPOSITION.encode()
    assert DEFAULT_JOB == "risk_engine_batch"


@pytest.mark.parametrize(
    ("job", "key", "expected"),
    [
        ("batch", None, "/metrics/job/batch"),
        ("batch", {"zone": "b", "instance": "a"}, "/metrics/job/batch/instance/a/zone/b"),
        ("a/b", None, "/metrics/job@base64/" + base64.urlsafe_b64encode(b"a/b").decode()),
        ("batch", {"instance": "host 1"},
         "/metrics/job/batch/instance@base64/" + base64.urlsafe_b64encode(b"host 1").decode()),
        ("batch", {"instance": "ü?#%"}, "/metrics/job/batch/instance/%C3%BC%3F%23%25"),
    ],
)
def test_grouping_key_escaping(job: str, key: dict[str, str] | None, expected: str) -> None:
    assert grouping_path(job, key) == expected


@pytest.mark.parametrize(
    ("job", "key", "message"),
    [
        ("", None, "job"),
        ("batch", {"job": "x"}, "label name other than 'job'"),
        ("batch", {"bad-name": "x"}, "label name"),
        ("batch", {"instance": ""}, "instance"),
        ("batch", {"instance": "a\nb"}, "instance"),
    ],
)
def test_bad_grouping_keys_are_refused(job: str, key: dict[str, str] | None,
                                       message: str) -> None:
    with pytest.raises(ValueError, match=message):
        grouping_path(job, key)


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1:9091", "127.0.0.1:9091", "http://", "http://u:p@127.0.0.1:9091",
     "http://127.0.0.1:9091/?x=1"],
)
def test_bad_gateway_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="Pushgateway URL"):
        push_metrics(url, EXPOSITION)


def test_an_error_answer_is_a_clear_error_with_the_gateways_text(gateway: _Gateway) -> None:
    gateway.status = 400
    gateway.body = b"pushed metrics are invalid or inconsistent with existing metrics"

    with pytest.raises(PushgatewayError, match=r"HTTP 400 .*inconsistent with existing"):
        push_metrics(gateway.url, EXPOSITION)


def test_a_redirect_is_not_followed(gateway: _Gateway) -> None:
    gateway.status = 307
    gateway.extra_headers = {"Location": gateway.url + "/elsewhere"}

    with pytest.raises(PushgatewayError, match="HTTP 307"):
        push_metrics(gateway.url, EXPOSITION)
    assert [path for _, path, _, _ in gateway.requests] == ["/metrics/job/risk_engine_batch"]


def test_an_unreachable_gateway_is_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    with pytest.raises(PushgatewayError, match=f"cannot reach http://127.0.0.1:{port}/"):
        push_metrics(f"http://127.0.0.1:{port}", EXPOSITION, timeout=2.0)
