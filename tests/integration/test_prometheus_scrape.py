"""A real Prometheus scrapes our ``/metrics`` endpoint and answers PromQL with our numbers.

Debian's ``prometheus`` binary (package ``prometheus``, installed in CI by
``make tools``) runs on loopback with its own scrape config, free port and
temporary data folder. A missing binary fails the test, it never skips.

The workflow traffic runs and is flushed *before* Prometheus starts, so every
scrape sees the final values; the test polls Prometheus's HTTP API (bounded by
one shared deadline) until the series appear with them, then asserts.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.cli import generate_requests
from app.observability import Observability, ObservabilitySettings
from app.observability.settings import MetricsServerSettings
from app.workflows.langgraph.config import WorkflowConfig
from app.workflows.langgraph.instrumentation import InstrumentedRiskWorkflow
from app.workflows.langgraph.state import RiskRequest

REQUESTS = 30
TENANTS = 3
SEED = 11
JOB = "risk-engine"
COLLECTORS = ("audit", "cost", "metrics", "trace")
#: Everything Prometheus must do (start, scrape, answer) happens within this.
DEADLINE_SECONDS = 30.0
#: Pause between polls of the external process (never a wait for our own threads).
POLL_INTERVAL_SECONDS = 0.25

# Loopback only: never route these requests through an HTTP(S)_PROXY from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PAUSE = threading.Event()  # never set: wait(t) is a bounded pause

Vector = dict[str, float]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail(
            "prometheus is not on PATH: install Debian's `prometheus` package "
            "(apt-get install -y prometheus, or `make tools`); this test never skips",
            pytrace=False,
        )
    return path


@dataclass
class PrometheusProcess:
    """A running ``prometheus`` on loopback and the files it writes."""

    process: subprocess.Popen[bytes]
    base_url: str
    stdout_path: Path
    stderr_path: Path
    deadline: float = field(default=0.0)

    def logs(self) -> str:
        out = self.stdout_path.read_text(encoding="utf-8", errors="replace")
        err = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        return f"--- prometheus stdout ---\n{out}\n--- prometheus stderr ---\n{err}"

    def api(self, path: str, **params: str) -> Any:
        """GET an API path and return its ``data`` (raises OSError/ValueError if not ready)."""
        url = f"{self.base_url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with _OPENER.open(url, timeout=5) as response:
            body = json.loads(response.read().decode("utf-8"))
        if body.get("status") != "success":
            raise ValueError(f"{url}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def poll(self, what: str, probe: Callable[[], Any]) -> Any:
        """Call ``probe`` until it returns something other than ``None`` (bounded).

        Fails the test with Prometheus's logs when the process dies or the
        shared deadline passes.
        """
        last: object = None
        while True:
            code = self.process.poll()
            if code is not None:
                pytest.fail(f"prometheus exited with {code} while waiting for {what}\n"
                            f"{self.logs()}", pytrace=False)
            try:
                result = probe()
            except (OSError, ValueError) as exc:  # not listening / not ready yet
                last = exc
            else:
                if result is not None:
                    return result
                last = "no result yet"
            if time.monotonic() > self.deadline:
                pytest.fail(f"no {what} within {DEADLINE_SECONDS} s (last: {last!r})\n"
                            f"{self.logs()}", pytrace=False)
            _PAUSE.wait(POLL_INTERVAL_SECONDS)

    def settle(self, promql: str, label: str, expected: Callable[[Vector], bool]) -> Vector:
        """Poll ``promql`` until ``expected`` accepts the vector keyed by ``label``.

        Returns the last vector seen, also after the deadline, so the caller's
        plain ``assert`` shows the difference.
        """
        vector: Vector = {}
        while True:
            try:
                vector = by_label(self.query(promql), label)
            except (OSError, ValueError):
                vector = {}
            if expected(vector) or time.monotonic() > self.deadline:
                return vector
            if self.process.poll() is not None:
                return vector
            _PAUSE.wait(POLL_INTERVAL_SECONDS)


def by_label(result: list[dict[str, Any]], label: str) -> Vector:
    """An instant-vector result as ``{label value: sample value}``."""
    vector: Vector = {}
    for sample in result:
        key = sample["metric"].get(label, "")
        assert key not in vector, ("duplicate", label, key, result)
        vector[key] = float(sample["value"][1])
    return vector


# --- fixtures -----------------------------------------------------------------


@pytest.fixture
def served_obs() -> Iterator[Observability]:
    """A container serving ``/metrics`` on a free loopback port; closed afterwards."""
    container = Observability(ObservabilitySettings(
        id_seed=SEED, drain_at_exit=False,
        metrics_server=MetricsServerSettings(enabled=True, host="127.0.0.1", port=0),
    ))
    try:
        yield container
    finally:
        container.close(timeout=5.0)


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[str], PrometheusProcess]]:
    """Factory: start ``prometheus`` scraping one target; always stopped afterwards."""
    binary = _prometheus_binary()
    started: list[PrometheusProcess] = []

    def start(target: str) -> PrometheusProcess:
        config = tmp_path / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write the config.
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": JOB,
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [target]}],
            }],
        }, indent=2), encoding="utf-8")
        port = _free_port()
        stdout_path, stderr_path = tmp_path / "prometheus.out", tmp_path / "prometheus.err"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=tmp_path,
            )
        prometheus = PrometheusProcess(
            process=process, base_url=f"http://127.0.0.1:{port}",
            stdout_path=stdout_path, stderr_path=stderr_path,
            deadline=time.monotonic() + DEADLINE_SECONDS,
        )
        started.append(prometheus)
        return prometheus

    try:
        yield start
    finally:
        for prometheus in started:
            prometheus.process.terminate()
            try:
                prometheus.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                prometheus.process.kill()
                prometheus.process.wait(timeout=10)


async def _drive(obs: Observability, requests: list[RiskRequest]) -> None:
    workflow = InstrumentedRiskWorkflow(obs, config=WorkflowConfig(seed=SEED))
    await asyncio.gather(*(workflow.run(request) for request in requests))
    flushed = await obs.aflush(timeout=10)
    assert flushed, flushed


# --- the test -------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_prometheus_scrapes_the_workflow_metrics(
    served_obs: Observability, start_prometheus: Callable[[str], PrometheusProcess]
) -> None:
    requests = generate_requests(REQUESTS, TENANTS, SEED, failure_rate=0.0)
    sent = Counter(request.tenant_id for request in requests)
    assert len(sent) == TENANTS  # every tenant has traffic
    asyncio.run(_drive(served_obs, requests))

    exported = served_obs.metrics.export_metrics()
    node_runs: Counter[str] = Counter()
    for series in exported["node_execution_latency"]["series"]:
        node_runs[series["labels"]["node"]] += series["count"]
    node_spans = [s for s in served_obs.tracing.finished_spans() if s.kind == "node"]
    assert node_runs.total() == len(node_spans) > REQUESTS  # several nodes per request
    costs = {tenant: float(cost) for tenant, cost in served_obs.costs.snapshot().by_tenant.items()}
    assert set(costs) == set(sent)
    assert all(cost > 0 for cost in costs.values())

    server = served_obs.metrics_server
    assert server is not None
    target = f"127.0.0.1:{server.port}"
    prometheus = start_prometheus(target)

    # Prometheus is up and has scraped us successfully at least once.
    prometheus.poll("successful scrape (up == 1)", lambda: prometheus.query(
        f'up{{job="{JOB}"}} == 1'
    ) or None)

    requests_seen = prometheus.settle(
        "sum by (tenant_id) (risk_engine_requests_total)", "tenant_id",
        lambda v: v == dict(sent),
    )
    assert requests_seen == {tenant: float(n) for tenant, n in sent.items()}

    nodes_seen = prometheus.settle(
        "sum by (node) (risk_engine_node_execution_latency_seconds_count)", "node",
        lambda v: v == dict(node_runs),
    )
    assert nodes_seen == {node: float(n) for node, n in node_runs.items()}
    total_seen = prometheus.settle(
        "sum(risk_engine_node_execution_latency_seconds_count)", "",
        lambda v: v == {"": node_runs.total()},
    )
    assert total_seen == {"": float(node_runs.total())}

    costs_seen = prometheus.settle(
        "sum by (tenant_id) (risk_engine_cost_usd_total)", "tenant_id",
        lambda v: v == pytest.approx(costs, abs=1e-9),
    )
    assert costs_seen == pytest.approx(costs, abs=1e-9)

    up_seen = prometheus.settle(
        "observability_collector_up", "collector", lambda v: set(v) == set(COLLECTORS),
    )
    assert up_seen == dict.fromkeys(COLLECTORS, 1.0)

    # No records dropped: the series are absent (nothing was ever dropped) or 0.
    dropped = by_label(prometheus.query("observability_records_dropped_total"), "collector")
    assert all(value == 0 for value in dropped.values()), dropped
    # ... where "absent" is not a misspelt name: the family is in what Prometheus scraped,
    with _OPENER.open(server.url, timeout=5) as response:
        assert "# TYPE observability_records_dropped_total counter\n" in response.read().decode()
    # and its sibling family from the same pipeline health snapshot reached Prometheus.
    applied = prometheus.settle(
        "observability_records_applied_total", "collector", lambda v: set(v) == set(COLLECTORS),
    )
    assert set(applied) == set(COLLECTORS)
    assert all(value > 0 for value in applied.values()), applied

    # The target is healthy, scraped from our endpoint, without errors.
    targets = prometheus.api("/api/v1/targets", state="active")["activeTargets"]
    (ours,) = [t for t in targets if t["labels"]["job"] == JOB]
    assert ours["health"] == "up", ours
    assert ours["lastError"] == "", ours
    assert ours["scrapeUrl"] == server.url == f"http://{target}/metrics"
    assert ours["labels"]["instance"] == target
