"""Tests for :mod:`app.observability.pushgateway` against a loopback HTTP stand-in.

The real Pushgateway is exercised in ``tests/integration/test_pushgateway_to_prometheus.py``.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator

import pytest

from app.observability.pushgateway import (
    DEFAULT_JOB,
    PushgatewayError,
    grouping_path,
    push_metrics,
)
from tests._http import RecordingServer, serving

EXPOSITION = "# TYPE x_total counter\nx_total 1\n"


@pytest.fixture
def gateway() -> Iterator[RecordingServer]:
    with serving(RecordingServer()) as server:
        yield server


def test_push_puts_the_text_exposition_under_job_and_instance(gateway: RecordingServer) -> None:
    url = push_metrics(gateway.base_url + "/", EXPOSITION, grouping_key={"instance": "host-1"})

    (method, path, headers, body), = gateway.requests
    assert method == "PUT"
    assert path == "/metrics/job/risk_engine_batch/instance/host-1"
    assert url == gateway.base_url + path
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


def test_an_error_answer_is_a_clear_error_with_the_gateways_text(gateway: RecordingServer) -> None:
    gateway.status = 400
    gateway.body = b"pushed metrics are invalid or inconsistent with existing metrics"

    with pytest.raises(PushgatewayError, match=r"HTTP 400 .*inconsistent with existing"):
        push_metrics(gateway.base_url, EXPOSITION)


def test_a_redirect_is_not_followed(gateway: RecordingServer) -> None:
    gateway.status = 307
    gateway.extra_headers = {"Location": gateway.base_url + "/elsewhere"}

    with pytest.raises(PushgatewayError, match="HTTP 307"):
        push_metrics(gateway.base_url, EXPOSITION)
    assert [path for _, path, _, _ in gateway.requests] == ["/metrics/job/risk_engine_batch"]


def test_an_unreachable_gateway_is_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    with pytest.raises(PushgatewayError, match=f"cannot reach http://127.0.0.1:{port}/"):
        push_metrics(f"http://127.0.0.1:{port}", EXPOSITION, timeout=2.0)
