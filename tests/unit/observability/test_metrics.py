"""Tests for :mod:`app.observability.metrics`: the ``MetricsCollector`` facade.

Reads (``export_metrics``, ``render_prometheus``) are answered by the metrics
collector thread through its FIFO queue, so a read sees every record the
reading thread enqueued before it: most tests here read without a flush on
purpose. A flush is only needed for records *another* collector produces
(budget crossings come from the cost collector).
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from app.errors import HighRiskError, InfrastructureError
from app.observability import Observability, ObservabilitySettings
from app.observability.catalog import NO_NODE, NO_TENANT, PIPELINE_METRICS, build_catalog
from app.observability.metrics import format_bound
from app.observability.settings import DEFAULT_NODE_LATENCY_BUCKETS

MakeObs = Callable[..., Observability]


def _series(obs: Observability, metric: str) -> list[dict[str, Any]]:
    return list(obs.metrics.export_metrics()[metric]["series"])


def _value(obs: Observability, metric: str, **labels: str) -> Any:
    """The value of the one series with exactly ``labels`` (``None`` if absent)."""
    for series in _series(obs, metric):
        if series["labels"] == labels:
            return series.get("value", series)
    return None


#: Complete label sets of ``request_count`` and ``request_latency``.
T1 = {"tenant_id": "t1"}
REQ = {"tenant_id": "t1", "workflow": "risk_assessment", "status": "ok"}


def _samples(text: str) -> dict[str, list[Any]]:
    """Prometheus text parsed by prometheus_client, samples by family name."""
    return {family.name: list(family.samples) for family in text_string_to_metric_families(text)}


# --- the specification's list ----------------------------------------------


def test_counters_increment_correctly(obs: Observability) -> None:
    obs.metrics.increment("request_count", tenant_id="t1")
    obs.metrics.increment("request_count", tenant_id="t1")
    obs.metrics.increment("request_count", 3, tenant_id="t1")
    obs.metrics.increment("request_count", 0.5, tenant_id="t1")

    assert _value(obs, "request_count", tenant_id="t1") == 5.5


def test_histogram_tracks_latency(obs: Observability) -> None:
    for seconds in (0.0004, 0.012, 0.012, 0.3, 7.0, 120.0):
        obs.metrics.observe_latency("node_execution_latency", seconds, node="risk_scoring",
                                    tenant_id="t1", status="ok")

    (series,) = _series(obs, "node_execution_latency")
    assert series["labels"] == {"node": "risk_scoring", "tenant_id": "t1", "status": "ok"}
    assert series["count"] == 6
    assert series["sum"] == pytest.approx(0.0004 + 0.012 * 2 + 0.3 + 7.0 + 120.0)
    buckets = series["buckets"]
    # Node latencies have their own, finer buckets (from 50 µs); requests keep the default.
    assert list(buckets) == [format_bound(b) for b in DEFAULT_NODE_LATENCY_BUCKETS] + ["+Inf"]
    assert buckets["5e-05"] == 0
    assert buckets["0.0005"] == 1
    assert buckets["0.01"] == 1
    assert buckets["0.025"] == 3
    assert buckets["0.5"] == 4
    assert buckets["5.0"] == 4
    assert buckets["10.0"] == 5
    assert buckets["+Inf"] == 6
    assert series["p50"] == pytest.approx(0.012, rel=0.011)
    assert series["p99"] == pytest.approx(7.0, rel=0.011)


def test_tenant_metrics_are_separate_series(obs: Observability) -> None:
    for _ in range(3):
        obs.metrics.increment("request_count", tenant_id="t1")
    obs.metrics.increment("request_count", tenant_id="t2")
    for tenant, seconds in (("t1", 0.1), ("t2", 0.2), ("t2", 0.3)):
        obs.metrics.observe_latency("request_latency", seconds, tenant_id=tenant,
                                    workflow="risk_assessment", status="ok")

    assert _value(obs, "request_count", tenant_id="t1") == 3
    assert _value(obs, "request_count", tenant_id="t2") == 1
    by_tenant = {s["labels"]["tenant_id"]: s for s in _series(obs, "request_latency")}
    assert by_tenant["t1"]["count"] == 1
    assert by_tenant["t2"]["count"] == 2
    assert by_tenant["t2"]["sum"] == pytest.approx(0.5)


def test_failure_metrics_increment(obs: Observability) -> None:
    obs.failures.classify(HighRiskError("too risky"), tenant_id="t1", node="risk_scoring")
    obs.failures.classify(HighRiskError("again"), tenant_id="t1", node="risk_scoring")
    obs.failures.classify(InfrastructureError("endpoint down"), tenant_id="t1")
    obs.failures.classify(KeyError("x"))

    assert _value(obs, "failure_count", category="HIGH_RISK", tenant_id="t1",
                  node="risk_scoring") == 2
    # Every series has every declared label: no node is "none", no tenant "unknown".
    assert _value(obs, "failure_count", category="INFRA_ERROR", tenant_id="t1",
                  node=NO_NODE) == 1
    assert _value(obs, "failure_count", category="UNEXPECTED_ERROR", tenant_id=NO_TENANT,
                  node=NO_NODE) == 1
    assert (NO_TENANT, NO_NODE) == ("unknown", "none")


def test_observe_records_non_latency_histograms(obs: Observability) -> None:
    obs.metrics.observe("quality_score", 0.85, tenant_id="t1")

    (series,) = _series(obs, "quality_score")
    assert series["count"] == 1
    assert series["buckets"]["0.8"] == 0
    assert series["buckets"]["0.9"] == 1


# --- export shape -------------------------------------------------------------


def test_export_metrics_shape(obs: Observability) -> None:
    obs.metrics.increment("request_count", tenant_id="t1")
    obs.metrics.observe_latency("node_execution_latency", 0.012, node="risk_scoring",
                                tenant_id="t1", status="ok")
    obs.costs.add_cost(tenant_id="t1", model_version="risk-llm-v2", input_tokens=10,
                       output_tokens=5, request_id="r1")

    exported = obs.metrics.export_metrics()

    catalog = build_catalog()
    assert list(exported) == [*catalog, *PIPELINE_METRICS]
    for name, family in exported.items():
        spec = catalog.get(name) or PIPELINE_METRICS[name]
        assert family["type"] == spec.type
        assert family["help"] == spec.help
        assert isinstance(family["series"], list)
    (counter,) = exported["request_count"]["series"]
    assert counter == {"labels": {"tenant_id": "t1"}, "value": 1}
    (histogram,) = exported["node_execution_latency"]["series"]
    assert set(histogram) == {"labels", "count", "sum", "buckets", "p50", "p95", "p99"}
    counts = list(histogram["buckets"].values())
    assert counts == sorted(counts), "buckets are cumulative"
    assert histogram["buckets"]["+Inf"] == histogram["count"] == 1
    (cost,) = exported["cost_usd"]["series"]
    assert cost == {"labels": {"model_version": "risk-llm-v2", "tenant_id": "t1"},
                    "value": Decimal("0.0000600")}
    assert exported["request_count"]["prometheus_name"] == "risk_engine_requests_total"
    assert exported["request_latency"]["series"] == []


def test_export_is_a_snapshot_not_a_live_view(obs: Observability) -> None:
    obs.metrics.increment("request_count", tenant_id="t1")
    before = obs.metrics.export_metrics()

    obs.metrics.increment("request_count", tenant_id="t1")

    assert before["request_count"]["series"][0]["value"] == 1
    assert _value(obs, "request_count", tenant_id="t1") == 2


@pytest.mark.asyncio
async def test_async_export(obs: Observability) -> None:
    obs.metrics.increment("approval_required_count", tenant_id="t1")

    exported = await obs.metrics.aexport_metrics()

    assert exported["approval_required_count"]["series"][0]["value"] == 1


# --- Prometheus text ----------------------------------------------------------


def test_prometheus_rendering_parses_with_prometheus_client(obs: Observability) -> None:
    awkward = 'quote " backslash \\ end'  # a newline is refused (a control character)
    obs.metrics.increment("request_count", tenant_id="t1")
    obs.metrics.increment("request_count", 2, tenant_id=awkward)
    obs.metrics.observe_latency("node_execution_latency", 0.012, node="risk_scoring",
                                tenant_id="t1", status="ok")
    obs.costs.add_cost(tenant_id="t1", model_version="risk-llm-v2", input_tokens=1000,
                       output_tokens=500)
    obs.costs.add_cost(tenant_id="t1", model_version="unknown-model", input_tokens=1,
                       output_tokens=1)
    obs.flush()

    samples = _samples(obs.metrics.render_prometheus())

    requests = {s.labels["tenant_id"]: s.value for s in samples["risk_engine_requests"]}
    assert requests == {"t1": 1.0, awkward: 2.0}
    latency = samples["risk_engine_node_execution_latency_seconds"]
    count = [s for s in latency if s.name.endswith("_count")]
    assert [s.value for s in count] == [1.0]
    inf_bucket = [s for s in latency if s.labels.get("le") == "+Inf"]
    assert [s.value for s in inf_bucket] == [1.0]
    (cost, unpriced_cost) = sorted(samples["risk_engine_cost_usd"],
                                   key=lambda s: s.labels["model_version"])
    assert cost.name == "risk_engine_cost_usd_total"
    assert cost.labels == {"model_version": "risk-llm-v2", "tenant_id": "t1"}
    assert cost.value == pytest.approx(0.006)
    assert unpriced_cost.value == 0
    (unpriced,) = samples["risk_engine_unpriced_generations"]
    assert unpriced.labels == {"model_version": "unknown-model"} and unpriced.value == 1
    for family in ("observability_records_dropped", "observability_records_applied",
                   "observability_queue_depth", "observability_collector_up",
                   "observability_spans_evicted", "observability_series_overflow"):
        assert family in samples
    up = {s.labels["collector"]: s.value for s in samples["observability_collector_up"]}
    assert up == {"metrics": 1.0, "cost": 1.0, "trace": 1.0, "audit": 1.0}


def test_prometheus_rendering_counts_dropped_records() -> None:
    obs = Observability(ObservabilitySettings(queue_maxsize=1, drain_at_exit=False), start=False)
    try:
        for _ in range(3):  # not started: the first waits in the queue, two find it full
            obs.metrics.increment("request_count", tenant_id="t1")
        obs.start()
        assert obs.flush()

        samples = _samples(obs.metrics.render_prometheus())

        dropped = {(s.labels["collector"], s.labels["reason"]): s.value
                   for s in samples["observability_records_dropped"]}
        assert {key: n for key, n in dropped.items() if n} == {("metrics", "queue_full"): 2.0}
        assert [s.value for s in samples["risk_engine_requests"]] == [1.0]
        applied = {s.labels["collector"]: s.value
                   for s in samples["observability_records_applied"]}
        assert applied["metrics"] == 1.0
    finally:
        obs.close()


def test_openmetrics_rendering_parses(obs: Observability) -> None:
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as parse_openmetrics,
    )

    obs.metrics.increment("request_count", tenant_id="t1")
    obs.metrics.observe_latency("request_latency", 0.2, tenant_id="t1",
                                workflow="risk_assessment", status="ok")

    text = obs.metrics.render_prometheus(openmetrics=True)

    names = {family.name for family in parse_openmetrics(text)}
    assert {"risk_engine_requests", "risk_engine_request_latency_seconds"} <= names
    assert text.endswith("# EOF\n")


# --- validation and its cache ---------------------------------------------------


class _Tenant(enum.StrEnum):
    T1 = "t1"


class _Str(str):
    __slots__ = ()


@pytest.mark.parametrize("sub", [_Tenant.T1, _Str("t1")], ids=["StrEnum", "str-subclass"])
@pytest.mark.parametrize("first", ["subclass", "plain"])
def test_str_subclass_labels_are_stored_as_plain_strings_whatever_came_first(
    obs: Observability, sub: str, first: str
) -> None:
    calls = [sub, "t1"] if first == "subclass" else ["t1", sub]
    for tenant in calls:
        obs.metrics.increment("request_count", tenant_id=tenant)
        obs.metrics.observe_latency("request_latency", 0.1, tenant_id=tenant,
                                    workflow="w", status="ok")

    assert _value(obs, "request_count", tenant_id="t1") == 2
    series = obs.metrics.export_metrics()["request_count"]["series"]
    assert [type(s["labels"]["tenant_id"]) for s in series] == [str]
    latency = obs.metrics.export_metrics()["request_latency"]["series"]
    assert [(s["labels"], s["count"]) for s in latency] == [
        ({"tenant_id": "t1", "workflow": "w", "status": "ok"}, 2)
    ]


def test_a_cached_child_does_not_let_a_bad_label_set_through_after_a_good_one(
    obs: Observability,
) -> None:
    obs.metrics.increment("request_count", tenant_id="t1")  # its child is now kept

    with pytest.raises(TypeError, match="tenant_id"):
        obs.metrics.increment("request_count", tenant_id=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no label 'node'"):
        obs.metrics.increment("request_count", node="t1")
    with pytest.raises(TypeError, match="amount"):
        obs.metrics.increment("request_count", "1", tenant_id="t1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="amount"):
        obs.metrics.increment("request_count", -1, tenant_id="t1")

    assert _value(obs, "request_count", tenant_id="t1") == 1


def test_children_are_per_metric(obs: Observability) -> None:
    obs.metrics.observe_latency("node_execution_latency", 0.1, node="n1", tenant_id="t1",
                                status="ok")

    with pytest.raises(ValueError, match="no label 'node'"):
        obs.metrics.increment("request_count", node="n1", tenant_id="t1", status="ok")
    with pytest.raises(ValueError, match="no label 'node'"):
        obs.metrics.increment("request_count", node="n1")


def test_unhashable_label_value_raises_type_error_naming_the_label(obs: Observability) -> None:
    obs.metrics.increment("request_count", tenant_id="t1")

    with pytest.raises(TypeError, match="tenant_id"):
        obs.metrics.increment("request_count", tenant_id=["t1"])  # type: ignore[arg-type]


def test_label_validation_errors(obs: Observability) -> None:
    with pytest.raises(ValueError, match="no label 'colour'"):
        obs.metrics.increment("request_count", colour="red")
    with pytest.raises(ValueError, match="no label 'colour'"):
        obs.metrics.increment("request_count", tenant_id="t1", colour="red")
    with pytest.raises(ValueError, match=r"tenant_id.*control character"):
        obs.metrics.increment("request_count", tenant_id="t1\nt2")
    with pytest.raises(ValueError, match=r"tenant_id.*lone surrogate"):
        obs.metrics.increment("request_count", tenant_id="t\ud800")
    with pytest.raises(ValueError, match=r"tenant_id.*empty"):
        obs.metrics.increment("request_count", tenant_id="")
    with pytest.raises(ValueError, match=r"tenant_id.*longer than 256"):
        obs.metrics.increment("request_count", tenant_id="x" * 257)
    with pytest.raises(TypeError, match=r"tenant_id.*str"):
        obs.metrics.increment("request_count", tenant_id=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "error", "field"),
    [
        (lambda m: m.increment("no_such_metric"), ValueError, "no_such_metric"),
        (lambda m: m.increment("request_latency"), ValueError, "not a counter"),
        (lambda m: m.increment(42), TypeError, "metric name"),
        (lambda m: m.increment(["request_count"]), TypeError, "metric name"),
        (lambda m: m.increment("request_count", -1, **T1), ValueError, "amount"),
        (lambda m: m.increment("request_count", math.nan, **T1), ValueError, "amount"),
        (lambda m: m.increment("request_count", math.inf, **T1), ValueError, "amount"),
        (lambda m: m.increment("request_count", 10**400, **T1), ValueError, "amount"),
        (lambda m: m.increment("request_count", 1e9 + 1, **T1), ValueError, "amount"),
        (lambda m: m.increment("request_count", True, **T1), TypeError, "amount"),
        (lambda m: m.increment("request_count", "1", **T1), TypeError, "amount"),
        (lambda m: m.increment("request_count", Decimal(1), **T1), TypeError, "amount"),
        (lambda m: m.increment("request_count"), ValueError, "needs label 'tenant_id'"),
        (lambda m: m.increment("request_count", 1, tenant_id="t1", node="n"), ValueError,
         "no label 'node'"),
        (lambda m: m.observe_latency("request_count", 0.1), ValueError, "not a histogram"),
        (lambda m: m.observe_latency("nope", 0.1), ValueError, "unknown histogram metric"),
        (lambda m: m.observe_latency("request_latency", -0.001, **REQ), ValueError, "latency"),
        (lambda m: m.observe_latency("request_latency", math.nan, **REQ), ValueError,
         "latency"),
        (lambda m: m.observe_latency("request_latency", -math.inf, **REQ), ValueError,
         "latency"),
        (lambda m: m.observe_latency("request_latency", math.inf, **REQ), ValueError,
         "latency"),
        (lambda m: m.observe_latency("request_latency", 10**400, **REQ), ValueError, "latency"),
        (lambda m: m.observe_latency("request_latency", 86_400.5, **REQ), ValueError,
         "latency"),
        (lambda m: m.observe_latency("request_latency", "0.1", **REQ), TypeError, "latency"),
        (lambda m: m.observe_latency("request_latency", None, **REQ), TypeError, "latency"),
        (lambda m: m.observe_latency("request_latency", False, **REQ), TypeError, "latency"),
        (lambda m: m.observe_latency("request_latency", 0.1, tenant_id="t1"), ValueError,
         "needs label 'workflow'"),
    ],
)
def test_bad_arguments_raise_at_once_and_record_nothing(
    obs: Observability, call: Callable[[Any], None], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        call(obs.metrics)

    assert obs.flush()
    exported = obs.metrics.export_metrics()
    assert exported["request_count"]["series"] == []
    assert exported["request_latency"]["series"] == []
    health = obs.health()
    assert health.healthy
    assert health.collectors["metrics"].applied == 0
    assert health.dropped_total == 0


def test_zero_and_integer_latencies_are_valid(obs: Observability) -> None:
    obs.metrics.observe_latency("request_latency", 0, **REQ)
    obs.metrics.observe_latency("request_latency", 2, **REQ)

    (series,) = _series(obs, "request_latency")
    assert series["count"] == 2
    assert series["sum"] == 2
    assert series["buckets"]["0.0005"] == 1
    assert series["p50"] == 0.0


# --- cardinality cap ----------------------------------------------------------


def test_cardinality_cap_folds_new_series_into_overflow(make_obs: MakeObs) -> None:
    obs = make_obs(max_series_per_metric=3)
    for tenant in ("t1", "t2", "t3", "t4", "t5", "t6"):
        obs.metrics.increment("request_count", tenant_id=tenant)
    obs.metrics.increment("request_count", tenant_id="t1")  # an existing series still counts
    obs.metrics.increment("request_count", tenant_id="t6")  # an overflowed one folds again
    for tenant in ("t1", "t2", "t3", "t4"):
        obs.metrics.observe_latency("request_latency", 0.5, tenant_id=tenant, workflow="w",
                                    status="ok")

    exported = obs.metrics.export_metrics()

    requests = {tuple(s["labels"].items()): s["value"]
                for s in exported["request_count"]["series"]}
    assert requests == {
        (("otel_metric_overflow", "true"),): 4,
        (("tenant_id", "t1"),): 2,
        (("tenant_id", "t2"),): 1,
        (("tenant_id", "t3"),): 1,
    }
    latency = {s["labels"].get("tenant_id", "overflow"): s["count"]
               for s in exported["request_latency"]["series"]}
    assert latency == {"t1": 1, "t2": 1, "t3": 1, "overflow": 1}
    overflow = {s["labels"]["metric"]: s["value"] for s in exported["series_overflow"]["series"]}
    assert {metric: n for metric, n in overflow.items() if n} == {
        "request_count": 4, "request_latency": 1,
    }
    samples = _samples(obs.metrics.render_prometheus())
    (folded,) = [s for s in samples["observability_series_overflow"]
                 if s.labels == {"metric": "request_count"}]
    assert folded.value == 4


# --- reads see the reader's own records -----------------------------------------


def test_a_read_reflects_every_record_the_reader_enqueued_without_flush(
    make_obs: MakeObs,
) -> None:
    obs = make_obs(linger_seconds=0.5)  # a lingering collector must not delay the answer
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            tenant = f"t{index}"
            for n in range(1, 301):
                obs.metrics.increment("request_count", tenant_id=tenant)
                obs.metrics.observe_latency("request_latency", 0.01, tenant_id=tenant,
                                            workflow="w", status="ok")
                if n % 100 == 0:
                    assert _value(obs, "request_count", tenant_id=tenant) == n
                    series = _value(obs, "request_latency", tenant_id=tenant, workflow="w",
                                    status="ok")
                    assert series["count"] == n
        except BaseException as exc:  # reported on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []


# --- histograms, as properties -------------------------------------------------


_latencies = st.lists(
    st.floats(min_value=0.0, max_value=200.0, allow_nan=False, allow_infinity=False),
    min_size=1, max_size=60,
)


def test_histogram_buckets_and_quantiles_property(make_obs: MakeObs) -> None:
    obs = make_obs()
    bounds = (*DEFAULT_NODE_LATENCY_BUCKETS, math.inf)
    examples = iter(range(1_000_000))

    @settings(max_examples=60, deadline=None)
    @given(values=_latencies)
    def check(values: list[float]) -> None:
        node = f"n{next(examples)}"  # a fresh series per example
        for value in values:
            obs.metrics.observe_latency("node_execution_latency", value, node=node,
                                        tenant_id="t1", status="ok")

        series = _value(obs, "node_execution_latency", node=node, tenant_id="t1", status="ok")

        assert series["count"] == len(values)
        assert series["sum"] == pytest.approx(math.fsum(values), rel=1e-9, abs=1e-12)
        expected = [sum(1 for v in values if v <= bound) for bound in bounds]
        assert list(series["buckets"].values()) == expected
        ordered = sorted(values)
        for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            true = ordered[math.floor(q * (len(ordered) - 1))]
            estimate = series[key]
            assert ordered[0] <= estimate <= ordered[-1]
            assert estimate == pytest.approx(true, rel=0.0101, abs=1e-300)

    check()


def test_counter_totals_are_exact_under_concurrency(obs: Observability) -> None:
    def worker() -> None:
        for _ in range(2_000):
            obs.metrics.increment("request_count", tenant_id="shared")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert _value(obs, "request_count", tenant_id="shared") == 16_000
    assert obs.health().dropped_total == 0


# --- bound handles ----------------------------------------------------------------


def test_a_bound_child_is_validated_once_and_records_through_the_same_series(
    obs: Observability,
) -> None:
    requests = obs.metrics.counter("request_count").labels(tenant_id="t1")
    assert obs.metrics.counter("request_count").labels(tenant_id="t1") is requests
    requests.inc()
    requests.inc(2.5)
    obs.metrics.increment("request_count", tenant_id="t1")  # the same child, through the cache
    latency = obs.metrics.histogram("request_latency").labels(
        status="ok", workflow="w", tenant_id="t1")  # keyword order does not matter
    assert latency is obs.metrics.histogram("request_latency").labels(**{
        "tenant_id": "t1", "workflow": "w", "status": "ok"})
    latency.observe(0.25)

    assert _value(obs, "request_count", tenant_id="t1") == 4.5
    series = _value(obs, "request_latency", tenant_id="t1", workflow="w", status="ok")
    assert (series["count"], series["sum"]) == (1, 0.25)
    assert list(series["labels"]) == ["tenant_id", "workflow", "status"]  # declared order


def test_a_child_checks_only_the_number_and_record_builds_without_sending(
    obs: Observability,
) -> None:
    requests = obs.metrics.counter("request_count").labels(tenant_id="t1")
    record = requests.record(3)
    assert (record.metric, record.labels, record.value) == (
        "request_count", (("tenant_id", "t1"),), 3)
    with pytest.raises(ValueError, match="amount"):
        requests.inc(-1)
    with pytest.raises(TypeError, match="amount"):
        requests.inc("1")  # type: ignore[arg-type]
    latency = obs.metrics.histogram("request_latency").labels(**REQ)
    with pytest.raises(ValueError, match="latency"):
        latency.observe(math.nan)
    with pytest.raises(ValueError, match="latency"):
        latency.record(-0.5)

    assert obs.flush()
    assert _series(obs, "request_count") == []  # record() sent nothing, bad numbers neither
    assert _series(obs, "request_latency") == []
    assert obs.health().collectors["metrics"].applied == 0


def test_families_are_typed_and_refuse_a_wrong_name(obs: Observability) -> None:
    with pytest.raises(ValueError, match="not a counter"):
        obs.metrics.counter("request_latency")
    with pytest.raises(ValueError, match="not a histogram"):
        obs.metrics.histogram("request_count")
    with pytest.raises(ValueError, match="unknown counter metric 'nope'"):
        obs.metrics.counter("nope")
    with pytest.raises(TypeError, match="metric name"):
        obs.metrics.histogram(1)  # type: ignore[arg-type]
    family = obs.metrics.counter("failure_count")
    with pytest.raises(ValueError, match="needs label 'node'"):
        family.labels(category="HIGH_RISK", tenant_id="t1")
    with pytest.raises(ValueError, match="no label 'colour'"):
        family.labels(category="HIGH_RISK", tenant_id="t1", node="n", colour="red")


# --- self-metrics: every known series exported from the start, at 0 ------------------


def test_self_metrics_are_exported_at_zero_from_the_start() -> None:
    from app.observability.metrics import DROP_REASONS, EXPORT_OUTCOMES
    from collectors.export import CallableExporter

    exporter = CallableExporter(lambda spans: True, name="memory")
    obs = Observability(ObservabilitySettings(drain_at_exit=False), exporters=[exporter])
    try:
        exported = obs.metrics.export_metrics()
        collectors = set(obs.pipeline.collectors)

        dropped = {(s["labels"]["collector"], s["labels"]["reason"]): s["value"]
                   for s in exported["records_dropped"]["series"]}
        assert dropped == {(c, r): 0 for c in collectors for r in DROP_REASONS}
        spans = {(s["labels"]["exporter"], s["labels"]["outcome"]): s["value"]
                 for s in exported["spans_exported"]["series"]}
        assert spans == {("memory", outcome): 0 for outcome in EXPORT_OUTCOMES}
        overflow = {s["labels"]["metric"]: s["value"]
                    for s in exported["series_overflow"]["series"]}
        assert overflow == dict.fromkeys(
            [*build_catalog(), "cost_usd", "unpriced_generations"], 0)

        samples = _samples(obs.metrics.render_prometheus())
        assert len(samples["observability_records_dropped"]) == len(dropped)
        assert {s.value for s in samples["observability_spans_exported"]} == {0.0}
    finally:
        obs.close()


def test_a_first_drop_is_a_visible_increase_of_an_existing_series() -> None:
    obs = Observability(ObservabilitySettings(drain_at_exit=False), start=False)
    try:
        before = {(s["labels"]["collector"], s["labels"]["reason"]): s["value"]
                  for s in obs.metrics.export_metrics()["records_dropped"]["series"]}
        obs.close()
        obs.metrics.increment("request_count", tenant_id="t1")  # after close: dropped, counted
        after = {(s["labels"]["collector"], s["labels"]["reason"]): s["value"]
                 for s in obs.metrics.export_metrics()["records_dropped"]["series"]}
        assert set(before) == set(after)
        assert before[("metrics", "closed")] == 0 and after[("metrics", "closed")] == 1
        assert {k: v - before[k] for k, v in after.items() if v != before[k]} == {
            ("metrics", "closed"): 1}
    finally:
        obs.close()


# --- the cost families are capped like the others --------------------------------------


def test_the_cost_families_fold_series_past_the_cap_and_count_them(make_obs: MakeObs) -> None:
    obs = make_obs(max_series_per_metric=2)
    for tenant in ("t1", "t2", "t3", "t4"):
        obs.costs.add_cost(tenant_id=tenant, model_version="risk-llm-v2", input_tokens=1000,
                           output_tokens=500)
    for model in ("m1", "m2", "m3"):
        obs.costs.add_cost(tenant_id="t1", model_version=model, input_tokens=1,
                           output_tokens=1)
    assert obs.flush()

    exported = obs.metrics.export_metrics()

    costs = {tuple(sorted(s["labels"].items())): s["value"]
             for s in exported["cost_usd"]["series"]}
    overflow_key = (("otel_metric_overflow", "true"),)
    assert len(costs) == 3 and overflow_key in costs  # two series of their own, then folded
    assert sum(costs.values()) == 4 * Decimal("0.006")  # money is folded, never lost
    assert costs[(("model_version", "risk-llm-v2"), ("tenant_id", "t1"))] == Decimal("0.006")
    unpriced = {tuple(sorted(s["labels"].items())): s["value"]
                for s in exported["unpriced_generations"]["series"]}
    assert unpriced == {(("model_version", "m1"),): 1, (("model_version", "m2"),): 1,
                        overflow_key: 1}
    overflow = {s["labels"]["metric"]: s["value"] for s in exported["series_overflow"]["series"]}
    assert overflow["cost_usd"] == 7 - 2
    assert overflow["unpriced_generations"] == 1
    samples = _samples(obs.metrics.render_prometheus())
    assert len(samples["risk_engine_cost_usd"]) == 3
