"""A real Prometheus scrapes our ``/metrics`` endpoint and answers PromQL with our numbers.

Debian's ``prometheus`` binary (package ``prometheus``, installed in CI by
``make tools``) runs on loopback with its own scrape config, free port and
temporary data folder, and loads ``ops/prometheus/alerts.yml``. A missing
binary fails the test, it never skips.

The workflow traffic runs and is flushed *before* Prometheus starts, so every
scrape sees the final values; the test polls Prometheus's HTTP API (bounded by
one shared deadline) until the series appear with them, then asserts. Besides
the numbers, it checks what the ops files claim against the real thing: the
node-latency buckets resolve sub-millisecond nodes, every dashboard panel has
a series, no alert fires on a healthy target, and ``TargetDown`` does once the
target stops answering.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence

import pytest

from app.cli import generate_requests
from app.observability import Observability, ObservabilitySettings
from app.observability.settings import MetricsServerSettings
from app.workflows.langgraph.config import WorkflowConfig
from app.workflows.langgraph.instrumentation import InstrumentedRiskWorkflow
from app.workflows.langgraph.state import RiskRequest
from collectors.records import SpanRecord
from tests.integration._services import (
    JOB,
    OPENER,
    REPO,
    PrometheusService,
    StartPrometheus,
    by_label,
)

REQUESTS = 30
TENANTS = 3
SEED = 11
COLLECTORS = ("audit", "cost", "metrics", "trace")
ALERTS = REPO / "ops" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "ops" / "grafana" / "risk-engine-dashboard.json"
#: Everything Prometheus must do (start, scrape, answer) happens within this.
DEADLINE_SECONDS = 40.0
#: What Grafana substitutes in the dashboard's queries, for this short-lived scrape.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1m", "$tenant": ".*"}


# --- fixtures -----------------------------------------------------------------


class _Accept:
    """A span exporter that accepts every batch (so the exporter series exist)."""

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        return True


@pytest.fixture
def served_obs() -> Iterator[Observability]:
    """A container serving ``/metrics`` on a free loopback port; closed afterwards."""
    container = Observability(ObservabilitySettings(
        id_seed=SEED, drain_at_exit=False,
        metrics_server=MetricsServerSettings(enabled=True, host="127.0.0.1", port=0),
    ), exporters=[_Accept()])
    try:
        yield container
    finally:
        container.close(timeout=5.0)


async def _drive(obs: Observability, requests: list[RiskRequest]) -> None:
    workflow = InstrumentedRiskWorkflow(obs, config=WorkflowConfig(seed=SEED))
    await asyncio.gather(*(workflow.run(request) for request in requests))
    flushed = await obs.aflush(timeout=10, exporters=True)
    assert flushed, flushed


def _histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """PromQL's ``histogram_quantile`` over cumulative ``(le, count)`` pairs."""
    buckets = sorted(buckets)
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count)
        lower_bound, lower_count = bound, count
    raise AssertionError("unreachable: the +Inf bucket holds every observation")


def _dashboard_exprs() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs: dict[str, str] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            exprs[f"{panel['title']} ({target['refId']})"] = expr
    return exprs


def _active_alerts(prometheus: PrometheusService) -> list[tuple[str, str, dict[str, str]]]:
    alerts = prometheus.api("/api/v1/alerts")["alerts"]
    return sorted((a["labels"]["alertname"], a["state"], a["labels"]) for a in alerts)


# --- the test -------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_prometheus_scrapes_the_workflow_metrics(
    served_obs: Observability, start_prometheus: StartPrometheus
) -> None:
    requests = generate_requests(REQUESTS, TENANTS, SEED, failure_rate=0.0)
    sent = Counter(request.tenant_id for request in requests)
    assert len(sent) == TENANTS  # every tenant has traffic
    asyncio.run(_drive(served_obs, requests))

    exported = served_obs.metrics.export_metrics()
    node_runs: Counter[str] = Counter()
    node_buckets: dict[str, Counter[float]] = {}
    for series in exported["node_execution_latency"]["series"]:
        node = series["labels"]["node"]
        node_runs[node] += series["count"]
        node_buckets.setdefault(node, Counter()).update(
            {float(bound): count for bound, count in series["buckets"].items()})
    node_spans = [s for s in served_obs.tracing.finished_spans() if s.kind == "node"]
    assert node_runs.total() == len(node_spans) > REQUESTS  # several nodes per request
    costs = {tenant: float(cost) for tenant, cost in served_obs.costs.snapshot().by_tenant.items()}
    assert set(costs) == set(sent)
    assert all(cost > 0 for cost in costs.values())

    server = served_obs.metrics_server
    assert server is not None
    target = f"127.0.0.1:{server.port}"
    prometheus = start_prometheus(target, rule_files=[ALERTS], deadline_seconds=DEADLINE_SECONDS)

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

    # The pipeline's own counters exist at 0 before anything was dropped, so
    # the "Dropped records" panel and RecordsDropped have a series to watch.
    dropped = prometheus.settle(
        "sum by (collector) (observability_records_dropped_total)", "collector",
        lambda v: set(v) == set(COLLECTORS),
    )
    assert dropped == dict.fromkeys(COLLECTORS, 0.0)
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

    # --- node latency: the buckets resolve sub-millisecond nodes -----------------
    p95_seen = by_label(prometheus.query(
        "histogram_quantile(0.95, sum by (le, node) "
        "(risk_engine_node_execution_latency_seconds_bucket))"), "node")
    expected_p95 = {node: _histogram_quantile(0.95, list(buckets.items()))
                    for node, buckets in node_buckets.items()}
    assert p95_seen == pytest.approx(expected_p95, rel=1e-9)
    fastest = min(p95_seen.values())
    assert fastest < 0.0005, p95_seen  # a 0.5 ms first bucket would read 0.475 ms here
    for node, p95 in p95_seen.items():
        durations = sorted(s.duration_seconds for s in node_spans if s.name == node)
        true_p95 = durations[math.ceil(0.95 * len(durations)) - 1]
        # Within the bucket of the spans' own p95, give or take one bucket edge
        # (the span and the histogram time the node at slightly different points).
        bounds = sorted(b for b in node_buckets[node] if not math.isinf(b))
        above = next((i for i, b in enumerate(bounds) if b >= true_p95), len(bounds) - 1)
        low = bounds[above - 2] if above >= 2 else 0.0
        high = bounds[min(above + 1, len(bounds) - 1)]
        assert low <= p95 <= high, (node, p95, true_p95)

    # --- the dashboard: every panel has a series on a healthy scrape -------------
    prometheus.poll("three scrapes (enough samples for rate())", lambda: prometheus.query(
        f'count_over_time(up{{job="{JOB}"}}[1m]) >= 3') or None)
    empty = {title: expr for title, expr in _dashboard_exprs().items()
             if not prometheus.query(expr)}
    # No request failed (failure_rate=0): the error-rate panel has nothing to show.
    assert set(empty) <= {"Error rate by category (A)"}, empty

    # --- the alerts: none fires on a healthy target ... --------------------------
    quiet = prometheus.poll("the alert rules evaluated", lambda: (
        prometheus.api("/api/v1/rules")["groups"] or None))
    assert {rule["name"] for group in quiet for rule in group["rules"]} >= {
        "TargetDown", "CostSpike", "RecordsDropped", "SpanExportFailing"}
    prometheus.poll("no active alert on a healthy target", lambda: (
        True if not _active_alerts(prometheus) else None))
    # ... and TargetDown does, once the target stops answering.
    served_obs.close(timeout=5.0)
    down = prometheus.poll("TargetDown pending", lambda: [
        alert for alert in _active_alerts(prometheus) if alert[0] == "TargetDown"] or None)
    ((_, state, labels),) = down
    assert state in ("pending", "firing")  # `for: 1m` holds it pending in this test
    assert (labels["job"], labels["instance"], labels["severity"]) == (JOB, target, "critical")
    with pytest.raises(OSError):
        OPENER.open(f"http://{target}/metrics", timeout=2)
