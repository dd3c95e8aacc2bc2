"""Tests for :mod:`collectors.metrics`: counters, histograms, the cardinality cap.

The collector is driven directly with :class:`MetricRecord` messages and read
through :meth:`MetricsStoreCollector.snapshot` (a query answered after every
earlier record, so no flush is needed before a read).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.metrics import OVERFLOW_LABELS, MetricsStoreCollector
from collectors.records import Batch, MetricRecord
from collectors.snapshots import HistogramSeries, MetricSpec, ValueSeries

JOIN = 10.0
BOUNDS = (0.1, 1.0, 10.0)
CATALOG = {
    "hits": MetricSpec(name="hits", prom_name="test_hits", type="counter", help="Hits.",
                       label_names=("a", "b")),
    "latency": MetricSpec(name="latency", prom_name="test_latency_seconds", type="histogram",
                          help="Latency.", label_names=("a",), unit="seconds", buckets=BOUNDS),
}


def _start(**kwargs: Any) -> MetricsStoreCollector:
    collector = MetricsStoreCollector(CATALOG, **kwargs)
    collector.start()
    return collector


@pytest.fixture
def metrics() -> Iterator[MetricsStoreCollector]:
    collector = _start()
    try:
        yield collector
    finally:
        collector.stop(JOIN)


def _family(collector: MetricsStoreCollector, name: str) -> dict[Any, Any]:
    families, _ = collector.snapshot(JOIN)
    (family,) = [f for f in families if f.name == name]
    return {series.labels: series for series in family.series}


def _exact_lower_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


# --- counters ------------------------------------------------------------------------


def test_counters_add_per_label_set(metrics: MetricsStoreCollector) -> None:
    for _ in range(3):
        metrics.send(MetricRecord("hits", (("a", "x"),), 1))
    metrics.send(MetricRecord("hits", (("a", "y"),), 2.5))
    metrics.send(Batch((MetricRecord("hits", (("a", "x"),), 4),)), 1)
    series = _family(metrics, "hits")
    assert series == {
        (("a", "x"),): ValueSeries((("a", "x"),), 7),
        (("a", "y"),): ValueSeries((("a", "y"),), 2.5),
    }
    assert type(series[(("a", "x"),)].value) is int


def test_label_order_does_not_create_a_new_series() -> None:
    collector = _start(max_series_per_metric=1)
    try:
        collector.send(MetricRecord("hits", (("a", "1"), ("b", "2")), 1))
        collector.send(MetricRecord("hits", (("b", "2"), ("a", "1")), 1))
        collector.send(MetricRecord("hits", (("a", "1"), ("b", "2")), 1))
        series = _family(collector, "hits")
        assert series == {(("a", "1"), ("b", "2")): ValueSeries((("a", "1"), ("b", "2")), 3)}
        _, overflowed = collector.snapshot(JOIN)
        assert overflowed == {}  # the reordered set did not count against the cap
    finally:
        collector.stop(JOIN)


def test_an_unknown_metric_is_a_counted_handler_error(metrics: MetricsStoreCollector) -> None:
    metrics.send(MetricRecord("nope", (), 1))
    metrics.send(MetricRecord("hits", (), 1))
    assert _family(metrics, "hits") == {(): ValueSeries((), 1)}
    stats = metrics.stats()
    assert (stats.applied, stats.handler_errors, dict(stats.dropped)) == (
        1, 1, {"handler_error": 1}
    )


# --- histograms ----------------------------------------------------------------------


def test_histogram_buckets_are_cumulative_with_inf_count_and_sum(
    metrics: MetricsStoreCollector,
) -> None:
    values = [0.05, 0.1, 0.5, 1.0, 5.0, 50.0]  # 0.1 and 1.0 sit exactly on a bound
    for value in values:
        metrics.send(MetricRecord("latency", (("a", "x"),), value))
    series = _family(metrics, "latency")[(("a", "x"),)]
    assert isinstance(series, HistogramSeries)
    assert series.buckets == ((0.1, 2), (1.0, 4), (10.0, 5), (math.inf, 6))
    assert series.count == 6
    assert series.sum == sum(values)
    assert series.p50 is not None and series.p99 is not None
    assert abs(series.p50 - 0.5) <= 0.01 * 0.5
    assert abs(series.p99 - 5.0) <= 0.01 * 5.0


def test_an_unobserved_histogram_has_no_series(metrics: MetricsStoreCollector) -> None:
    assert _family(metrics, "latency") == {}


@settings(max_examples=40, deadline=None, database=None)
@given(st.lists(
    st.one_of(st.sampled_from([0.0, *BOUNDS]),
              st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_subnormal=False)),
    min_size=1, max_size=300,
))
def test_histogram_bucket_counts_equal_exact_counts(values: list[float]) -> None:
    collector = _start()
    try:
        collector.send(Batch(tuple(MetricRecord("latency", (), v) for v in values)), len(values))
        series = _family(collector, "latency")[()]
        expected = tuple((bound, sum(1 for v in values if v <= bound)) for bound in BOUNDS)
        assert series.buckets == (*expected, (math.inf, len(values)))
        assert series.count == len(values)
        total = 0.0
        for value in values:  # the store adds in arrival order: so must the check
            total += value
        assert series.sum == total
        for q, estimate in ((0.5, series.p50), (0.95, series.p95), (0.99, series.p99)):
            exact = _exact_lower_rank(values, q)
            assert estimate is not None
            assert abs(estimate - exact) <= 0.01 * exact + 1e-12
    finally:
        collector.stop(JOIN)


# --- the cardinality cap -------------------------------------------------------------------


def test_label_sets_past_the_cap_fold_into_the_overflow_series_and_are_counted() -> None:
    collector = _start(max_series_per_metric=3)
    try:
        for i in range(3):
            collector.send(MetricRecord("hits", (("a", str(i)),), 1))
        for i in range(3, 8):  # five new label sets, two records each
            collector.send(MetricRecord("hits", (("a", str(i)),), 1))
            collector.send(MetricRecord("hits", (("a", str(i)),), 10))
        collector.send(MetricRecord("hits", (("a", "0"),), 5))  # an existing set still counts
        collector.send(MetricRecord("latency", (("a", "x"),), 0.5))  # other metrics unaffected
        series = _family(collector, "hits")
        assert set(series) == {(("a", "0"),), (("a", "1"),), (("a", "2"),), OVERFLOW_LABELS}
        assert series[OVERFLOW_LABELS].value == 5 * 11
        assert series[(("a", "0"),)].value == 6
        _, overflowed = collector.snapshot(JOIN)
        assert overflowed == {"hits": 10}
        assert OVERFLOW_LABELS == (("otel_metric_overflow", "true"),)
        assert list(_family(collector, "latency")) == [(("a", "x"),)]
    finally:
        collector.stop(JOIN)


def test_the_overflow_series_is_a_histogram_for_histograms() -> None:
    collector = _start(max_series_per_metric=1)
    try:
        collector.send(MetricRecord("latency", (("a", "first"),), 0.5))
        for i in range(4):
            collector.send(MetricRecord("latency", (("a", f"new{i}"),), 5.0))
        series = _family(collector, "latency")
        overflow = series[OVERFLOW_LABELS]
        assert isinstance(overflow, HistogramSeries)
        assert overflow.count == 4
        assert overflow.buckets[-1] == (math.inf, 4)
        assert series[(("a", "first"),)].count == 1
    finally:
        collector.stop(JOIN)


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_series_per_metric"):
        MetricsStoreCollector(CATALOG, max_series_per_metric=0)


def test_snapshots_are_immutable_copies(metrics: MetricsStoreCollector) -> None:
    metrics.send(MetricRecord("hits", (), 1))
    families, overflowed = metrics.snapshot(JOIN)
    metrics.send(MetricRecord("hits", (), 1))
    assert _family(metrics, "hits")[()].value == 2
    (hits,) = [f for f in families if f.name == "hits"]
    assert hits.series[0].value == 1  # the earlier snapshot did not move
    with pytest.raises(AttributeError):
        hits.series = ()  # type: ignore[misc]
    overflowed["hits"] = 99  # a plain dict copy: the store is not affected
    assert metrics.snapshot(JOIN)[1] == {}
