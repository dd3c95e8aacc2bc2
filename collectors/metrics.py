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

import math
import sys
from bisect import bisect_left
from collections.abc import Mapping
from typing import Any

from collectors._sketch import QuantileSketch
from collectors.base import Collector
from collectors.records import Labels, MetricRecord
from collectors.snapshots import HistogramSeries, MetricFamily, MetricSpec, ValueSeries

__all__ = ("OVERFLOW_LABELS", "MetricsStore", "MetricsStoreCollector")

#: The label set every folded series gets.
OVERFLOW_LABELS: Labels = (("otel_metric_overflow", "true"),)

_INF = math.inf
_FLOAT_MAX = sys.float_info.max


class _Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: int | float = 0

    def add(self, amount: int | float) -> None:
        self.value += amount


class _Histogram(QuantileSketch):
    """Prometheus-style buckets, count and sum, and (inherited) the quantile sketch."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...], relative_accuracy: float) -> None:
        super().__init__(relative_accuracy)
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def add(self, value: int | float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        QuantileSketch.add(self, value)

    def snapshot(self, labels: Labels) -> HistogramSeries:
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


class MetricsStore:
    """Series by metric. Owned and mutated by one :class:`MetricsStoreCollector` thread."""

    __slots__ = ("overflowed", "series")

    def __init__(self) -> None:
        #: metric -> labels (in the family's declared order) -> series
        self.series: dict[str, dict[Labels, _Counter | _Histogram]] = {}
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
        return MetricsStore()

    def _apply(self, record: MetricRecord) -> None:
        """Add or observe one value. Runs on the collector thread only.

        The facade has checked the record; one sent here directly is checked
        again where a bad one could corrupt the store (an unknown metric, a
        label set that is not the declared one, a value that is not a finite
        number >= 0): it raises, and the loop counts it as a handler error.
        """
        metric, labels, value = record.metric, record.labels, record.value
        if not 0 <= value <= _FLOAT_MAX:  # NaN, inf and ints past the float range fail here
            raise ValueError(f"{metric}: value must be finite and >= 0, got {value!r}")
        family = self._store.series.get(metric)
        series = family.get(labels) if family is not None else None
        if series is None:
            series = self._new_series(metric, labels)
        series.add(value)

    def _new_series(self, metric: str, labels: Labels) -> _Counter | _Histogram:
        """The series for a label set not seen yet (or the overflow series past the cap)."""
        spec = self._catalog[metric]
        if tuple(name for name, _ in labels) != spec.label_names or not all(
            type(value) is str for _, value in labels
        ):
            raise ValueError(f"{metric}: labels {labels!r} are not {spec.label_names}")
        store = self._store
        family = store.series.setdefault(metric, {})
        if len(family) >= self._max_series + (OVERFLOW_LABELS in family):
            store.overflowed[metric] = store.overflowed.get(metric, 0) + 1
            labels = OVERFLOW_LABELS
            series = family.get(labels)
            if series is not None:
                return series
        series = (
            _Histogram(spec.buckets, self._relative_accuracy) if spec.type == "histogram"
            else _Counter()
        )
        family[labels] = series
        return series

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
