"""The metrics store and the collector thread that owns it.

Naming: :class:`MetricsStoreCollector` here is the *actor* (thread + queue +
store). :class:`app.observability.metrics.MetricsCollector` is the facade the
specification names; it validates arguments, builds :class:`MetricRecord`
messages and sends them here.

The store keeps one series object per (metric, label set): counters hold a
number, histograms hold Prometheus-style buckets, a count, a sum and a
:class:`~collectors._sketch.QuantileSketch` for p50/p95/p99. A cap on label
sets per metric bounds memory: past it, new label sets fold into one
overflow series labelled ``otel_metric_overflow="true"`` (the OpenTelemetry
convention) and are counted.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from collectors._sketch import QuantileSketch
from collectors.base import Collector
from collectors.hotpath import speedups
from collectors.records import Labels, MetricRecord
from collectors.snapshots import HistogramSeries, MetricFamily, MetricSpec, ValueSeries

__all__ = ("OVERFLOW_LABELS", "MetricsStore", "MetricsStoreCollector")

#: The label set every folded series gets.
OVERFLOW_LABELS: Labels = (("otel_metric_overflow", "true"),)

_INF = float("inf")


def _histogram_snapshot(self: Any, labels: Labels) -> HistogramSeries:
    """A histogram series' immutable snapshot (both implementations)."""
    cumulative: list[tuple[float, int]] = []
    running = 0
    for bound, n in zip((*self.bounds, _INF), self.counts, strict=True):
        running += n
        cumulative.append((bound, running))
    return HistogramSeries(
        labels=labels,
        count=self._count,
        sum=self.sum,
        buckets=tuple(cumulative),
        p50=self.quantile(0.50),
        p95=self.quantile(0.95),
        p99=self.quantile(0.99),
    )


if TYPE_CHECKING or speedups is None:
    class _Counter:
        __slots__ = ("value",)

        def __init__(self) -> None:
            self.value: int | float = 0

        def add(self, amount: int | float) -> None:
            self.value += amount

    class _Histogram(QuantileSketch):
        """Prometheus-style buckets, count and sum, and (inherited) the quantile sketch.

        The pure-Python series (without the compiled hot path, whose
        ``HistogramCell`` keeps the same fields).
        """

        __slots__ = ("bounds", "counts", "sum")

        def __init__(self, bounds: tuple[float, ...], relative_accuracy: float) -> None:
            super().__init__(relative_accuracy)
            self.bounds = bounds
            self.counts = [0] * (len(bounds) + 1)
            self.sum = 0.0

        def add(self, value: float) -> None:
            self.counts[bisect_left(self.bounds, value)] += 1
            self.sum += value
            QuantileSketch.add(self, value)

        snapshot = _histogram_snapshot

else:  # compiled series (collectors/_speedups.c): the same fields, updated in C
    class _Counter(speedups.CounterCell):
        __slots__ = ()

    class _Histogram(speedups.HistogramCell):
        """Prometheus-style buckets, count and sum, and the quantile sketch, in C."""

        __slots__ = ()
        quantile = QuantileSketch.quantile  # reads the same fields the sketch keeps
        snapshot = _histogram_snapshot


class MetricsStore:
    """Series by metric. Owned and mutated by one :class:`MetricsStoreCollector` thread."""

    __slots__ = ("by_key", "overflowed", "series")

    def __init__(self) -> None:
        #: metric -> canonical (sorted) labels -> series
        self.series: dict[str, dict[Labels, _Counter | _Histogram]] = {}
        #: (metric, labels as sent) -> series; a cache that skips canonicalising.
        #: Append-only while the store lives: the compiled applier caches its
        #: entries by the identity of the metric and labels objects (see
        #: ``MetricsApplier`` in collectors/_speedups.c); code that ever removes
        #: or replaces an entry must call the applier's ``clear_cache()``.
        self.by_key: dict[tuple[str, Labels], _Counter | _Histogram] = {}
        #: metric -> records folded into its overflow series
        self.overflowed: dict[str, int] = {}


class MetricsStoreCollector(Collector[MetricsStore]):
    """Actor owning the :class:`MetricsStore`.

    Args:
        catalog: The recordable metric families, keyed by catalog name.
        max_series_per_metric: Cardinality cap per metric family.
        relative_accuracy: Quantile sketch accuracy for histogram p50/p95/p99.
        **kwargs: Passed to :class:`~collectors.base.Collector`.
    """

    def __init__(
        self,
        catalog: Mapping[str, MetricSpec],
        *,
        max_series_per_metric: int = 2_000,
        relative_accuracy: float = 0.01,
        **kwargs: Any,
    ) -> None:
        if max_series_per_metric < 1:
            raise ValueError("max_series_per_metric must be at least 1")
        self._catalog = dict(catalog)
        self._max_series = max_series_per_metric
        self._relative_accuracy = relative_accuracy
        super().__init__("metrics", **kwargs)

    # --- runs on the collector thread only (or before it starts) ---------

    def _new_store(self) -> MetricsStore:
        # A new store (the constructor, or after fork) retires the compiled
        # applier of the old one, and its identity cache with it: the next
        # collector thread builds a new one (_record_applier, from Collector._run).
        self._apply_batch: Callable[[tuple[Any, ...]], bool] | None = None
        return MetricsStore()

    def _apply(self, record: MetricRecord | tuple[str, Labels, int | float]) -> None:
        """Add or observe one value. Runs on the collector thread only.

        ``record`` is a :class:`MetricRecord` or a plain ``(metric, labels,
        value)`` tuple (what the library's producers send; see
        :mod:`collectors.records`).
        """
        metric, labels, value = record
        store = self._store
        series = store.by_key.get((metric, labels))
        if series is None:
            series = self._resolve(store, metric, labels)
        if type(series) is _Counter:  # inlined: this runs for every record
            series.value += value
        else:
            series.add(value)

    def _record_applier(self) -> Callable[[Any], None]:
        if speedups is None:
            return self._apply
        # Compiled: a record whose series is cached is applied in C; any other
        # (a new label set, a malformed record) goes to _apply. Built for the
        # store of the moment, on the collector thread as it starts.
        applier = speedups.MetricsApplier(self._store.by_key, self._apply)
        self._apply_batch = applier.apply_all
        apply: Callable[[Any], None] = applier
        return apply

    def _apply_all(self, records: tuple[Any, ...]) -> bool:
        """A whole batch at once in C, or nothing (see :meth:`Collector._apply_all`).

        ``MetricsApplier.apply_all`` checks every record first: it declines
        (returns ``False``, nothing applied) if any needs the Python
        :meth:`_apply` (a new label set, a malformed record, an unusual value),
        and the loop then applies them one by one. Pure Python always declines.
        """
        apply_batch = self._apply_batch
        return apply_batch is not None and apply_batch(records)

    def _resolve(self, store: MetricsStore, metric: str, labels: Labels) -> _Counter | _Histogram:
        spec = self._catalog[metric]
        canonical = tuple(sorted(labels))
        family = store.series.get(metric)
        if family is None:
            family = store.series[metric] = {}
        series = family.get(canonical)
        if series is None:
            if len(family) >= self._max_series + (OVERFLOW_LABELS in family):
                store.overflowed[metric] = store.overflowed.get(metric, 0) + 1
                series = family.get(OVERFLOW_LABELS)
                if series is None:
                    series = family[OVERFLOW_LABELS] = self._new_series(spec)
                return series  # not cached: one entry per new label set would grow
            series = family[canonical] = self._new_series(spec)
        store.by_key[(metric, labels)] = series
        return series

    def _new_series(self, spec: MetricSpec) -> _Counter | _Histogram:
        if spec.type == "histogram":
            return _Histogram(spec.buckets, self._relative_accuracy)
        return _Counter()

    def _snapshot(self, store: MetricsStore) -> tuple[tuple[MetricFamily, ...], dict[str, int]]:
        families: list[MetricFamily] = []
        for name, spec in self._catalog.items():
            family = store.series.get(name, {})
            series: list[ValueSeries | HistogramSeries] = []
            for labels in sorted(family):
                state = family[labels]
                if isinstance(state, _Histogram):
                    series.append(state.snapshot(labels))
                else:
                    series.append(ValueSeries(labels, state.value))
            families.append(MetricFamily(spec=spec, series=tuple(series)))
        return tuple(families), dict(store.overflowed)

    # --- any thread -------------------------------------------------------

    def snapshot(self, timeout: float = 5.0) -> tuple[tuple[MetricFamily, ...], dict[str, int]]:
        """Immutable families for the whole catalog, plus overflow counts per metric.

        Answered by the collector thread, after every record enqueued before
        this call.
        """
        return self.query(self._snapshot, timeout)
