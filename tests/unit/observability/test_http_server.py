"""Tests for app/observability/http_server.py: the stdlib /metrics endpoint."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.error import HTTPError, URLError
from urllib.request import ProxyHandler, Request, build_opener

import pytest
import structlog
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from app.observability.exposition import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    render_openmetrics,
    render_text,
)
from app.observability.http_server import MetricsServer
from collectors.snapshots import MetricFamily, MetricSpec, ValueSeries

#: What Prometheus 2.x sends when scraping.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

FAMILIES: tuple[MetricFamily, ...] = (
    MetricFamily(
        spec=MetricSpec(
            name="request_count", prom_name="risk_engine_requests", type="counter",
            help="Risk requests received, by tenant.", label_names=("tenant_id",),
        ),
        series=(ValueSeries(labels=(("tenant_id", "acme ü"),), value=4),),
    ),
    MetricFamily(
        spec=MetricSpec(
            name="collector_up", prom_name="observability_collector_up", type="gauge",
            help="1 while the collector thread is alive.", label_names=("collector",),
        ),
        series=(ValueSeries(labels=(("collector", "metrics"),), value=1),),
    ),
)

_opener = build_opener(ProxyHandler({}))  # loopback only: ignore any *_proxy variables


@dataclass
class CountingRender:
    """A render callable that counts its calls and can be told to fail."""

    fail_next: int = 0
    calls: int = 0
    threads: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, openmetrics: bool) -> str:
        with self.lock:
            self.calls += 1
            self.threads.append(threading.current_thread().name)
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeError("store unavailable")
        return render_openmetrics(FAMILIES) if openmetrics else render_text(FAMILIES)


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


def get(url: str, accept: str | None = None) -> Response:
    """GET ``url``; HTTP errors come back as responses, never as exceptions."""
    request = Request(url, headers={"Accept": accept} if accept else {})
    try:
        with _opener.open(request, timeout=10) as resp:
            return Response(resp.status, resp.headers["Content-Type"], resp.read())
    except HTTPError as err:
        try:
            return Response(err.code, err.headers["Content-Type"], err.read())
        finally:
            err.close()


@pytest.fixture
def render() -> CountingRender:
    return CountingRender()


@pytest.fixture
def server(render: CountingRender) -> Iterator[MetricsServer]:
    metrics_server = MetricsServer(render)
    metrics_server.start()
    yield metrics_server
    assert metrics_server.stop(timeout=5.0)


def base_url(server: MetricsServer) -> str:
    return f"http://127.0.0.1:{server.port}"


# --- routes -----------------------------------------------------------------


def test_metrics_serves_text_0_0_4_by_default(
    server: MetricsServer, render: CountingRender
) -> None:
    resp = get(server.url)

    assert resp.status == 200
    assert resp.content_type == CONTENT_TYPE_TEXT
    assert resp.body == render_text(FAMILIES).encode("utf-8")
    parsed = list(parse_text(resp.body.decode("utf-8")))
    assert [s.labels for s in parsed[0].samples] == [{"tenant_id": "acme ü"}]
    assert render.calls == 1


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        PROMETHEUS_ACCEPT,
    ],
)
def test_metrics_serves_openmetrics_when_asked(
    server: MetricsServer, render: CountingRender, accept: str
) -> None:
    resp = get(server.url, accept=accept)

    assert resp.status == 200
    assert resp.content_type == CONTENT_TYPE_OPENMETRICS
    assert resp.body == render_openmetrics(FAMILIES).encode("utf-8")
    assert [f.name for f in parse_openmetrics(resp.body.decode("utf-8"))] == [
        "risk_engine_requests", "observability_collector_up",
    ]
    assert render.calls == 1


@pytest.mark.parametrize(
    "accept",
    ["text/plain;version=0.0.4", "*/*", "application/openmetrics-text;q=0,text/plain;q=0.5"],
)
def test_metrics_serves_text_for_other_accept_headers(server: MetricsServer, accept: str) -> None:
    resp = get(server.url, accept=accept)
    assert (resp.status, resp.content_type) == (200, CONTENT_TYPE_TEXT)


def test_query_strings_are_ignored(server: MetricsServer) -> None:
    assert get(server.url + "?name[]=x").status == 200


def test_healthz(server: MetricsServer, render: CountingRender) -> None:
    resp = get(base_url(server) + "/healthz")
    assert (resp.status, resp.body) == (200, b"ok")
    assert render.calls == 0


@pytest.mark.parametrize("path", ["/", "/metric", "/metrics/extra", "/healthz/x"])
def test_unknown_paths_are_404(server: MetricsServer, render: CountingRender, path: str) -> None:
    assert get(base_url(server) + path).status == 404
    assert render.calls == 0


def test_render_error_is_500_logged_and_the_server_keeps_serving(
    server: MetricsServer, render: CountingRender
) -> None:
    render.fail_next = 1
    with structlog.testing.capture_logs() as logs:
        failed = get(server.url)
    recovered = get(server.url)

    assert (failed.status, failed.body) == (500, b"metrics render failed\n")
    assert b"store unavailable" not in failed.body  # no internals leak to the scraper
    assert [e["log_level"] for e in logs if e["event"] == "metrics render failed"] == ["error"]
    assert recovered.status == 200
    assert recovered.body == render_text(FAMILIES).encode("utf-8")
    assert render.calls == 2


def test_render_is_called_once_per_scrape_off_the_serving_thread(
    server: MetricsServer, render: CountingRender
) -> None:
    for _ in range(3):
        get(server.url)
    get(server.url, accept="application/openmetrics-text")

    assert render.calls == 4
    assert "metrics-http" not in render.threads  # each request has its own thread


def test_requests_are_not_logged_to_stderr(
    server: MetricsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    get(server.url)
    get(base_url(server) + "/nope")
    assert "GET /" not in capsys.readouterr().err


# --- lifecycle --------------------------------------------------------------


def test_serves_from_a_named_daemon_thread(server: MetricsServer) -> None:
    threads = [t for t in threading.enumerate() if t.name == "metrics-http"]
    assert len(threads) == 1
    assert threads[0].daemon
    assert server.running
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    assert server.port > 0


def test_stop_is_idempotent_and_closes_the_socket(render: CountingRender) -> None:
    server = MetricsServer(render)
    server.start()
    url = server.url

    assert server.stop(timeout=5.0) is True
    assert server.stop(timeout=5.0) is True
    assert not server.running
    assert not [t for t in threading.enumerate() if t.name == "metrics-http"]
    with pytest.raises(URLError):
        get(url)
    assert server.port > 0  # still readable for logs after stop


def test_stop_before_start_is_allowed_and_final(render: CountingRender) -> None:
    server = MetricsServer(render)
    assert server.stop() is True
    with pytest.raises(RuntimeError, match="stopped"):
        server.start()


def test_start_twice_or_after_stop_is_an_error(server: MetricsServer) -> None:
    with pytest.raises(RuntimeError, match="running"):
        server.start()
    server.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        server.start()


def test_port_is_unknown_before_start(render: CountingRender) -> None:
    server = MetricsServer(render)
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.url


def test_a_port_in_use_fails_start(server: MetricsServer, render: CountingRender) -> None:
    second = MetricsServer(render, port=server.port)
    with pytest.raises(OSError):
        second.start()
    assert not second.running
    assert second.stop() is True


def test_context_manager_starts_and_stops(render: CountingRender) -> None:
    with MetricsServer(render, host="127.0.0.1", port=0) as server:
        assert get(server.url).status == 200
        url = server.url
    assert not server.running
    with pytest.raises(URLError):
        get(url)


def test_constructor_checks_its_arguments(render: CountingRender) -> None:
    with pytest.raises(TypeError, match="callable"):
        MetricsServer("not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        MetricsServer(render, port=70000)
