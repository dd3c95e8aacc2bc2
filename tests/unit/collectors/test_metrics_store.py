"""Tests for :mod:`collectors.metrics`: counters, histograms, the cardinality cap.

The collector is driven directly with :class:`MetricRecord` messages and read
through :meth:`MetricsStoreCollector.snapshot` (a query answered after every
earlier record, so no flush is needed before a read). A record sent straight
to the store is checked where a bad one could corrupt it: its labels must be
exactly the declared names in the declared order, its value a finite number
>= 0; anything else is a counted handler error.
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
                       label_names=("a",)),
    "pairs": MetricSpec(name="pairs", prom_name="test_pairs", type="counter", help="Pairs.",
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


def test_labels_in_another_order_are_a_counted_handler_error(
    metrics: MetricsStoreCollector,
) -> None:
    declared = (("a", "1"), ("b", "2"))
    metrics.send(MetricRecord("pairs", declared, 1))
    metrics.send(MetricRecord("pairs", (("b", "2"), ("a", "1")), 1))  # refused, not re-sorted
    metrics.send(MetricRecord("pairs", declared, 1))
    assert _family(metrics, "pairs") == {declared: ValueSeries(declared, 2)}
    _, overflowed = metrics.snapshot(JOIN)
    assert overflowed == {}  # the refused set did not count against the cap either
    stats = metrics.stats()
    assert (stats.applied, stats.handler_errors, dict(stats.dropped)) == (
        2, 1, {"handler_error": 1}
    )


@pytest.mark.parametrize("labels", [
    (),  # both missing
    (("a", "1"),),  # one missing
    (("a", "1"), ("b", "2"), ("c", "3")),  # one undeclared
    (("a", "1"), ("x", "2")),  # a wrong name
    (("a", "1"), ("b", 2)),  # a value that is not a str
    (("a", "1"), ("b", None)),
], ids=["none", "missing", "undeclared", "wrong-name", "int-value", "none-value"])
def test_a_label_set_that_is_not_the_declared_one_is_a_counted_handler_error(
    metrics: MetricsStoreCollector, labels: tuple[tuple[str, object], ...],
) -> None:
    metrics.send(MetricRecord("pairs", labels, 1))  # type: ignore[arg-type]
    metrics.send(MetricRecord("pairs", (("a", "1"), ("b", "2")), 1))
    assert _family(metrics, "pairs") == {
        (("a", "1"), ("b", "2")): ValueSeries((("a", "1"), ("b", "2")), 1)
    }
    stats = metrics.stats()
    assert (stats.applied, stats.handler_errors, dict(stats.dropped)) == (
        1, 1, {"handler_error": 1}
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1, -0.5, "1", None])
@pytest.mark.parametrize("metric", ["hits", "latency"])
def test_a_value_that_is_not_a_finite_number_at_least_zero_is_a_counted_handler_error(
    metrics: MetricsStoreCollector, metric: str, value: object,
) -> None:
    labels = (("a", "x"),)
    metrics.send(MetricRecord(metric, labels, 1))
    metrics.send(MetricRecord(metric, labels, value))  # type: ignore[arg-type]
    metrics.send(MetricRecord(metric, labels, 2))
    series = _family(metrics, metric)[labels]
    if isinstance(series, HistogramSeries):
        assert (series.count, series.sum) == (2, 3)
        assert series.buckets[-1] == (math.inf, 2)
    else:
        assert series.value == 3 and type(series.value) is int  # never NaN, never 0-for-NaN
    stats = metrics.stats()
    assert (stats.applied, stats.handler_errors, dict(stats.dropped)) == (
        2, 1, {"handler_error": 1}
    )


def test_an_unknown_metric_is_a_counted_handler_error(metrics: MetricsStoreCollector) -> None:
    metrics.send(MetricRecord("nope", (), 1))
    metrics.send(MetricRecord("hits", (("a", "x"),), 1))
    assert _family(metrics, "hits") == {(("a", "x"),): ValueSeries((("a", "x"),), 1)}
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
        labels = (("a", "x"),)
        collector.send(Batch(tuple(MetricRecord("latency", labels, v) for v in values)),
                       len(values))
        series = _family(collector, "latency")[labels]
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
    labels = (("a", "x"),)
    metrics.send(MetricRecord("hits", labels, 1))
    families, overflowed = metrics.snapshot(JOIN)
    metrics.send(MetricRecord("hits", labels, 1))
    assert _family(metrics, "hits")[labels].value == 2
    (hits,) = [f for f in families if f.name == "hits"]
    assert hits.series[0].value == 1  # the earlier snapshot did not move
    with pytest.raises(AttributeError):
        hits.series = ()  # type: ignore[misc]
    overflowed["hits"] = 99  # a plain dict copy: the store is not affected
    assert metrics.snapshot(JOIN)[1] == {}


# --- batches: every record applied on its own, a bad one counted alone ---------------


def _flushed(collector: MetricsStoreCollector) -> None:
    assert collector.request_flush().result(JOIN)


@pytest.mark.timeout(30)
def test_a_batch_with_one_bad_record_applies_the_others_and_counts_only_that_one(
    metrics: MetricsStoreCollector,
) -> None:
    hits, latency = (("a", "x"),), (("a", "y"),)
    warm = (MetricRecord("hits", hits, 1), MetricRecord("latency", latency, 0.5))
    metrics.send(Batch(warm), 2)
    metrics.send(Batch(warm), 2)
    _flushed(metrics)
    bad = (
        MetricRecord("hits", hits, 1),
        MetricRecord("latency", latency, 0.25),
        MetricRecord("hits", hits, "not a number"),  # type: ignore[arg-type]  # the bad one
        MetricRecord("hits", hits, 2.5),
        MetricRecord("latency", latency, 2.0),
    )
    metrics.send(Batch(bad), len(bad))
    _flushed(metrics)
    series = _family(metrics, "hits")[hits]
    assert series.value == 1 + 1 + 1 + 2.5  # each good record once: none twice, none lost
    histogram = _family(metrics, "latency")[latency]
    assert isinstance(histogram, HistogramSeries)
    assert histogram.count == 4
    assert histogram.sum == 0.5 + 0.5 + 0.25 + 2.0
    stats = metrics.stats()
    assert (stats.applied, stats.handler_errors, dict(stats.dropped)) == (
        8, 1, {"handler_error": 1}
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad", [
    "not a record",
    ("hits", (("a", "x"),)),  # a plain tuple of two fields
    ("hits", (("a", "x"),), 1),  # a plain tuple, not a MetricRecord
    MetricRecord("hits", [("a", "x")], 1),  # type: ignore[arg-type]  # unhashable labels
    MetricRecord("nope", (), 1),  # an unknown metric
    MetricRecord("latency", (("a", "z"),), "1"),  # type: ignore[arg-type]  # a str observation
    MetricRecord("latency", (("a", "z"),), math.inf),  # no sketch bin for infinity
    MetricRecord("latency", (("a", "z"),), math.nan),
    MetricRecord("latency", (("a", "z"), ("b", "q")), 1.0),  # an undeclared label
], ids=["str", "two-fields", "plain-tuple", "unhashable-labels", "unknown-metric",
        "str-value", "inf", "nan", "undeclared-label"])
def test_any_bad_record_in_a_batch_is_the_only_error(
    metrics: MetricsStoreCollector, bad: object,
) -> None:
    good = (MetricRecord("hits", (("a", "x"),), 1), MetricRecord("latency", (("a", "y"),), 0.5))
    metrics.send(Batch((*good, MetricRecord("latency", (("a", "z"),), 1.0))), 3)
    metrics.send(Batch(good), 2)
    metrics.send(Batch((*good, bad, *good)), 5)
    _flushed(metrics)
    assert _family(metrics, "hits")[(("a", "x"),)].value == 4
    assert _family(metrics, "latency")[(("a", "y"),)].count == 4
    z = _family(metrics, "latency")[(("a", "z"),)]
    assert (z.count, z.sum) == (1, 1.0)  # a refused observation left no trace in the series
    stats = metrics.stats()
    assert (stats.applied, stats.handler_errors) == (9, 1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("metric", ["hits", "latency"])
def test_a_value_past_the_float_range_is_refused_whole(
    metrics: MetricsStoreCollector, metric: str,
) -> None:
    labels = (("a", "x"),)
    metrics.send(MetricRecord(metric, labels, 0.5))
    metrics.send(MetricRecord(metric, labels, 2**1100))  # an int no float can hold
    metrics.send(MetricRecord(metric, labels, 0.25))
    series = _family(metrics, metric)[labels]
    if isinstance(series, HistogramSeries):
        assert (series.count, series.sum, series.buckets[-1]) == (2, 0.75, (math.inf, 2))
    else:
        assert series.value == 0.75
    stats = metrics.stats()
    assert (stats.applied, stats.handler_errors) == (2, 1)


@pytest.mark.timeout(30)
def test_counters_in_a_batch_add_in_arrival_order(metrics: MetricsStoreCollector) -> None:
    labels = (("a", "x"),)
    metrics.send(MetricRecord("hits", labels, 0))
    _flushed(metrics)
    amounts: list[int | float] = [0.1, 0.2, 0.3, 1, 2**70, 0.7, 3, 1e-17] * 20  # 160: a big batch
    metrics.send(Batch(tuple(MetricRecord("hits", labels, a) for a in amounts)), len(amounts))
    small = [0.1, 5, 0.2]
    metrics.send(Batch(tuple(MetricRecord("hits", labels, a) for a in small)), len(small))
    _flushed(metrics)
    total: int | float = 0
    for amount in amounts + small:  # float sums depend on the order: so must the check
        total += amount
    value = _family(metrics, "hits")[labels].value
    assert value == total and type(value) is float


@pytest.mark.timeout(30)
def test_equal_label_tuples_that_are_different_objects_share_one_series(
    metrics: MetricsStoreCollector,
) -> None:
    first = (("a", "x"), ("b", "y"))
    second = tuple([tuple(["a", "x"]), tuple(["b", "y"])])
    assert first == second and first is not second and first[0] is not second[0]
    for _ in range(3):
        for labels in (first, second):
            metrics.send(MetricRecord("pairs", labels, 1))
            metrics.send(Batch((MetricRecord("pairs", labels, 10),
                                MetricRecord("pairs", labels, 100))), 2)
    series = _family(metrics, "pairs")
    assert series == {first: ValueSeries(first, 3 * 2 * 111)}


@pytest.mark.timeout(60)
def test_thousands_of_label_sets_stay_exact() -> None:
    collector = _start(max_series_per_metric=10_000)
    try:
        label_sets = [(("a", str(i)),) for i in range(6_000)]
        for round_ in range(3):
            for start in range(0, len(label_sets), 500):
                chunk = label_sets[start:start + 500]
                records = tuple(MetricRecord("hits", labels, round_ + 1)
                                for labels in reversed(chunk))
                collector.send(Batch(records), len(records))
        series = _family(collector, "hits")
        assert len(series) == len(label_sets)
        assert {s.value for s in series.values()} == {6}
        assert collector.stats().handler_errors == 0
    finally:
        collector.stop(JOIN)


@pytest.mark.timeout(30)
def test_the_same_label_objects_land_in_the_right_series_past_the_cap() -> None:
    collector = _start(max_series_per_metric=1)
    try:
        kept, folded = (("a", "kept"),), (("a", "folded"),)
        batch = Batch((MetricRecord("hits", kept, 1), MetricRecord("hits", folded, 10),
                       MetricRecord("latency", kept, 0.5)))
        for _ in range(4):
            collector.send(batch, 3)
            collector.send(MetricRecord("hits", folded, 100))
            collector.send(MetricRecord("hits", kept, 1000))
        series = _family(collector, "hits")
        assert series == {
            kept: ValueSeries(kept, 4 * 1001),
            OVERFLOW_LABELS: ValueSeries(OVERFLOW_LABELS, 4 * 110),
        }
        assert collector.snapshot(JOIN)[1] == {"hits": 8}  # every folded record is counted
        assert _family(collector, "latency")[kept].count == 4
    finally:
        collector.stop(JOIN)


@pytest.mark.timeout(30)
def test_histogram_quantiles_over_the_whole_float_range(metrics: MetricsStoreCollector) -> None:
    labels = (("a", "wide"),)
    values = [0.0, 0.0, 5e-324, 1e-300, 1e-9, 1e-3, 0.25, 1, 7.5, 1e3, 1e250, 1e300,
              1.7976931348623157e308]
    metrics.send(MetricRecord("latency", labels, 0.01))
    metrics.send(Batch(tuple(MetricRecord("latency", labels, v) for v in values)), len(values))
    metrics.send(Batch(tuple(MetricRecord("latency", labels, 0.001 * (1 + i % 50))
                             for i in range(100))), 100)
    everything = [0.01, *values, *(0.001 * (1 + i % 50) for i in range(100))]
    series = _family(metrics, "latency")[labels]
    assert series.count == len(everything) and metrics.stats().handler_errors == 0
    for q, estimate in ((0.5, series.p50), (0.95, series.p95), (0.99, series.p99)):
        exact = _exact_lower_rank(everything, q)
        assert estimate is not None
        assert abs(estimate - exact) <= 0.01 * exact * (1 + 1e-9)
