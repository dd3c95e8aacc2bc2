"""``MetricsCollector``: the metrics facade the specification names.

This facade validates arguments, builds one immutable
:class:`~collectors.records.MetricRecord` (as a plain tuple) and hands it to the metrics actor
(:class:`collectors.metrics.MetricsStoreCollector`, the thread that owns the
store) without blocking. Reads (``export_metrics()``, ``families()``,
``render_prometheus()``) ask that actor for an immutable snapshot.

Programmer errors (an unknown metric, a label the metric does not declare, a
negative or non-finite value, a wrong type) raise ``ValueError`` or
``TypeError`` at once, naming the field. Runtime conditions (a full queue, a
closed pipeline) never raise: the record is dropped and counted in
``observability_records_dropped_total{collector,reason}``.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from app.observability.catalog import PIPELINE_METRICS
from collectors.base import CollectorState
from collectors.cost import CostStoreCollector
from collectors.hotpath import speedups
from collectors.metrics import MetricsStoreCollector
from collectors.pipeline import Pipeline
from collectors.records import Labels
from collectors.snapshots import HistogramSeries, MetricFamily, MetricSpec, ValueSeries
from collectors.trace import TraceStoreCollector

__all__ = ("MetricsCollector", "format_bound")

_INF = math.inf
_FLOAT_MAX = sys.float_info.max
_VALID_CACHE_SIZE = 16_384


def format_bound(bound: float) -> str:
    """Format a histogram upper bound the way Prometheus ``le`` labels do."""
    if bound == _INF:
        return "+Inf"
    return repr(float(bound))


if TYPE_CHECKING or speedups is None:
    class _MetricsBase:
        """Pure Python: :class:`MetricsCollector` defines the recording methods itself."""

        __slots__ = ()
else:  # compiled increment / observe_latency (collectors/_speedups.c), same behaviour
    _MetricsBase = speedups.MetricsBase


class MetricsCollector(_MetricsBase):
    """Records counters and latency histograms; exports snapshots.

    Args:
        collector: The metrics actor records are sent to.
        catalog: The recordable metric families, keyed by catalog name.
        pipeline: The pipeline, for the ``observability_*`` self-metrics.
        costs: The cost actor, for ``risk_engine_cost_usd_total``.
        traces: The trace actor, for ``observability_spans_evicted_total``.
        max_label_value_length: Longest label value accepted.
        read_timeout: Seconds a read waits for the collectors' answer.
    """

    def __init__(
        self,
        collector: MetricsStoreCollector,
        catalog: Mapping[str, MetricSpec],
        *,
        pipeline: Pipeline | None = None,
        costs: CostStoreCollector | None = None,
        traces: TraceStoreCollector | None = None,
        max_label_value_length: int = 256,
        read_timeout: float = 5.0,
    ) -> None:
        self._collector = collector
        self._catalog = dict(catalog)
        self._pipeline = pipeline
        self._costs = costs
        self._traces = traces
        self._max_label = max_label_value_length
        self._read_timeout = read_timeout
        self._counters = {
            name: frozenset(spec.label_names)
            for name, spec in catalog.items() if spec.type == "counter"
        }
        self._histograms = {
            name: frozenset(spec.label_names)
            for name, spec in catalog.items() if spec.type == "histogram"
        }
        self._send = collector.send
        #: Label sets already validated, per kind: ``(metric, labels as given)``
        #: -> the validated labels (a bounded cache). A hit is the whole check of
        #: the metric and its labels. Records carry the validated instance, one
        #: long-lived tuple the GC has untracked, instead of the caller's new one
        #: (collectors.records).
        self._valid_counters: dict[tuple[str, Labels], Labels] = {}
        self._valid_histograms: dict[tuple[str, Labels], Labels] = {}

    @property
    def catalog(self) -> Mapping[str, MetricSpec]:
        """The recordable metric families."""
        return dict(self._catalog)

    # --- recording (any thread, any event loop; never blocks) --------------

    if TYPE_CHECKING or speedups is None:  # else compiled: the same checks and records
        def increment(self, metric: str, amount: int | float = 1, /, **labels: str) -> None:
            """Add ``amount`` to a counter series.

            Args:
                metric: A counter's catalog name, e.g. ``"request_count"``.
                amount: A finite, non-negative number (default 1).
                **labels: Label values by name, e.g. ``tenant_id="t1"``.

            Raises:
                ValueError: Unknown counter, undeclared label, empty or over-long
                    label value, negative or non-finite amount.
                TypeError: A non-numeric amount or a non-string label value.
            """
            try:
                known = self._valid_counters[metric, tuple(labels.items())]
            except (KeyError, TypeError):  # not validated yet, or unhashable: the full check
                known = self._validate(metric, amount, labels, counter=True)
            kind = type(amount)
            if kind is int:
                # An int beyond the float range would make the store's float
                # arithmetic raise on the collector thread (the record lost).
                if not 0 <= amount <= _FLOAT_MAX:
                    raise ValueError(f"amount must be finite and >= 0, got {amount!r}")
            elif kind is float:
                if not 0 <= amount < _INF:
                    raise ValueError(f"amount must be finite and >= 0, got {amount!r}")
            else:
                raise TypeError(f"amount must be an int or float, got {kind.__name__}")
            self._send((metric, known, amount))  # a plain tuple: see collectors.records

        def observe_latency(self, metric: str, seconds: float, /, **labels: str) -> None:
            """Observe one latency, in seconds, in a histogram.

            Args:
                metric: A histogram's catalog name, e.g. ``"node_execution_latency"``.
                seconds: A finite, non-negative duration.
                **labels: Label values by name, e.g. ``node="risk_scoring"``.

            Raises:
                ValueError: Unknown histogram, undeclared label, empty label value,
                    negative or non-finite latency.
                TypeError: A non-numeric latency or a non-string label value.
            """
            try:
                known = self._valid_histograms[metric, tuple(labels.items())]
            except (KeyError, TypeError):  # not validated yet, or unhashable: the full check
                known = self._validate(metric, seconds, labels, counter=False)
            kind = type(seconds)
            if kind is not float and kind is not int:
                raise TypeError(f"latency must be a float (seconds), got {kind.__name__}")
            if not 0 <= seconds <= _FLOAT_MAX:  # also rejects NaN, inf and ints past float range
                raise ValueError(f"latency must be finite and >= 0 seconds, got {seconds!r}")
            self._send((metric, known, seconds))

        #: ``observe`` is the general name for histograms that are not latencies.
        observe = observe_latency

    def _validate(
        self, metric: object, value: object, labels: dict[str, Any], *, counter: bool
    ) -> Labels:
        """The full check of a call not seen before; remembers a valid label set.

        Checks in order the metric, the value's type (the value itself is
        checked by the caller) and the labels. A label value of a ``str``
        subclass (a ``StrEnum`` member) is accepted as its plain string: the
        series and the cache hold plain strings, and such a value is accepted
        the same way whether or not its plain string was recorded before (the
        two are equal, so a cache hit finds the same series).

        Returns:
            The validated labels, as stored in records.
        """
        same, other = (
            (self._counters, self._histograms) if counter else (self._histograms, self._counters)
        )
        allowed = same.get(metric) if type(metric) is str else None
        if allowed is None:
            raise _unknown(metric, "counter" if counter else "histogram", same, other)
        assert isinstance(metric, str)
        kind = type(value)
        if kind is not int and kind is not float:
            raise TypeError(
                f"amount must be an int or float, got {kind.__name__}" if counter
                else f"latency must be a float (seconds), got {kind.__name__}"
            )
        if not labels.keys() <= allowed:
            extra = sorted(labels.keys() - allowed)
            raise ValueError(
                f"metric {metric!r} has no label {extra[0]!r}; declared: {sorted(allowed)}"
            )
        pairs: list[tuple[str, str]] = []
        for name, label in labels.items():
            if not isinstance(label, str):
                raise TypeError(
                    f"label {name!r} of {metric!r} must be a str, got {type(label).__name__}"
                )
            if type(label) is not str:
                label = str.__str__(label)  # a StrEnum member or other subclass: plain str
            if not label:
                raise ValueError(f"label {name!r} of {metric!r} must not be empty")
            if len(label) > self._max_label:
                raise ValueError(
                    f"label {name!r} of {metric!r} is longer than {self._max_label} characters"
                )
            pairs.append((name, label))
        known = tuple(pairs)
        valid = self._valid_counters if counter else self._valid_histograms
        if len(valid) >= _VALID_CACHE_SIZE:  # bounded: a label flood must not grow it
            valid.clear()
        valid[metric, known] = known
        return known

    # --- reading (answered by the collector threads) ------------------------

    def families(self) -> tuple[MetricFamily, ...]:
        """Every family as an immutable snapshot: the catalog, then pipeline metrics.

        Reflects every record the calling thread enqueued before the call.
        """
        catalog_families, overflowed = self._collector.snapshot(self._read_timeout)
        return catalog_families + self._pipeline_families(overflowed)

    def _pipeline_families(self, overflowed: Mapping[str, int]) -> tuple[MetricFamily, ...]:
        specs = PIPELINE_METRICS
        families: list[MetricFamily] = []
        if self._costs is not None:
            costs = self._costs.snapshot(self._read_timeout)
            families.append(_values(specs["cost_usd"], (
                ((("model_version", model), ("tenant_id", tenant)), cost)
                for (tenant, model), cost in costs.by_tenant_model.items()
            )))
            families.append(_values(specs["unpriced_generations"], (
                ((("model_version", model),), n) for model, n in costs.unpriced.items()
            )))
        if self._pipeline is not None:
            health = self._pipeline.health()
            dropped, applied, depth, up = [], [], [], []
            for name, stats in health.collectors.items():
                label = (("collector", name),)
                applied.append((label, stats.applied))
                depth.append((label, stats.queue_depth))
                up.append((label, int(stats.alive and stats.state is CollectorState.RUNNING)))
                for reason, n in stats.dropped.items():
                    dropped.append(((("collector", name), ("reason", reason)), n))
            families.append(_values(specs["records_dropped"], dropped))
            families.append(_values(specs["records_applied"], applied))
            families.append(_values(specs["queue_depth"], depth))
            families.append(_values(specs["collector_up"], up))
        if self._traces is not None:
            _, evicted = self._traces.counts(self._read_timeout)
            families.append(_values(specs["spans_evicted"], [((), evicted)]))
            exported: list[tuple[tuple[tuple[str, str], ...], int]] = []
            for worker in self._traces.exporter_stats():
                outcomes = {"exported": worker.exported, "failed": worker.failed,
                            "timed_out": worker.timed_out}
                outcomes.update({f"dropped_{r}": n for r, n in worker.dropped.items()})
                exported.extend(
                    ((("exporter", worker.name), ("outcome", outcome)), n)
                    for outcome, n in outcomes.items()
                )
            families.append(_values(specs["spans_exported"], exported))
        families.append(_values(specs["series_overflow"], (
            ((("metric", metric),), n) for metric, n in overflowed.items()
        )))
        return tuple(families)

    def export_metrics(self) -> dict[str, dict[str, Any]]:
        """Every family as plain data, keyed by catalog name.

        Returns:
            ``{name: {"type", "help", "prometheus_name", "series": [...]}}``.
            A counter or gauge series is ``{"labels": {...}, "value": v}``
            (``Decimal`` for money); a histogram series is ``{"labels",
            "count", "sum", "buckets": {le: cumulative count}, "p50", "p95",
            "p99"}`` with ``le`` formatted as in Prometheus (``"0.005"``,
            ``"+Inf"``).
        """
        exported: dict[str, dict[str, Any]] = {}
        for family in self.families():
            spec = family.spec
            series: list[dict[str, Any]] = []
            for item in family.series:
                if isinstance(item, HistogramSeries):
                    series.append({
                        "labels": dict(item.labels),
                        "count": item.count,
                        "sum": item.sum,
                        "buckets": {format_bound(le): n for le, n in item.buckets},
                        "p50": item.p50,
                        "p95": item.p95,
                        "p99": item.p99,
                    })
                else:
                    series.append({"labels": dict(item.labels), "value": item.value})
            exported[spec.name] = {
                "type": spec.type,
                "help": spec.help,
                "prometheus_name": spec.prom_name + ("_total" if spec.type == "counter" else ""),
                "series": series,
            }
        return exported

    async def aexport_metrics(self) -> dict[str, dict[str, Any]]:
        """:meth:`export_metrics` without blocking the event loop."""
        return await asyncio.to_thread(self.export_metrics)

    def render_prometheus(self, *, openmetrics: bool = False) -> str:
        """The same snapshot in Prometheus text format 0.0.4 (or OpenMetrics 1.0)."""
        from app.observability.exposition import render_openmetrics, render_text

        families = self.families()
        return render_openmetrics(families) if openmetrics else render_text(families)


def _values(
    spec: MetricSpec, items: Any
) -> MetricFamily:
    series = sorted(
        (ValueSeries(tuple(sorted(labels)), value) for labels, value in items),
        key=lambda s: s.labels,
    )
    return MetricFamily(spec=spec, series=tuple(series))


def _unknown(
    metric: object, kind: str, same: Mapping[str, Any], other: Mapping[str, Any]
) -> TypeError | ValueError:
    """The error for a metric name that is not a known ``kind``."""
    if type(metric) is not str:
        return TypeError(f"metric name must be a str, got {type(metric).__name__}")
    if metric in other:
        return ValueError(f"metric {metric!r} is not a {kind}")
    return ValueError(f"unknown {kind} metric {metric!r}; known: {sorted(same)}")

