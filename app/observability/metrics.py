"""``MetricsCollector``: the metrics facade the specification names.

Naming: this facade is what callers use; :class:`collectors.metrics.MetricsStoreCollector`
is the *actor* (a thread, a queue and the store it alone mutates).

Recording works like prometheus_client's ``labels()``: a family hands out a
child bound to one label set, validated once (the metric is known, the label
set is exactly the declared one, every value a valid label value); the child's
``inc`` / ``observe`` then only check the number, build one immutable
:class:`~collectors.records.MetricRecord` and put it on the actor's queue
without blocking::

    requests = obs.metrics.counter("request_count").labels(tenant_id="t1")
    requests.inc()

``increment(...)`` and ``observe_latency(...)`` resolve to the same children
through the family's bounded cache of children. Reads (``export_metrics()``,
``families()``, ``render_prometheus()``) ask the actors for immutable snapshots.

Programmer errors (an unknown metric, a missing or undeclared label, a bad
label value, a negative, non-finite or out-of-range number, a wrong type)
raise ``ValueError`` or ``TypeError`` at once, naming the field. Runtime
conditions (a full queue, a closed pipeline) never raise: the record is
dropped and counted in ``observability_records_dropped_total{collector,reason}``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Generic, TypeVar

from app.observability.catalog import PIPELINE_METRICS
from app.observability.settings import InputLimits
from app.observability.validation import check_label_value, check_number
from collectors.audit import AuditStoreCollector
from collectors.base import CollectorState
from collectors.cost import CostStoreCollector
from collectors.ledger import LedgerState
from collectors.metrics import OVERFLOW_LABELS, MetricsStoreCollector
from collectors.pipeline import Pipeline
from collectors.records import Labels, MetricRecord
from collectors.snapshots import HistogramSeries, MetricFamily, MetricSpec, ValueSeries
from collectors.trace import TraceStoreCollector

__all__ = (
    "BoundCounter",
    "BoundHistogram",
    "CounterFamily",
    "HistogramFamily",
    "MetricsCollector",
    "format_bound",
)

_INF = math.inf
#: Reasons a collector may drop records for; each is exported from the start, at 0.
DROP_REASONS: tuple[str, ...] = ("queue_full", "closed", "handler_error", "collector_dead", "fork")
#: Outcomes of span export; each is exported from the start, at 0, for every exporter.
EXPORT_OUTCOMES: tuple[str, ...] = (
    "exported", "failed", "timed_out", "dropped_queue_full", "dropped_closed",
    "dropped_exporter_stuck", "dropped_exporter_dead",
)


def format_bound(bound: float) -> str:
    """Format a histogram upper bound the way Prometheus ``le`` labels do."""
    if bound == _INF:
        return "+Inf"
    return repr(float(bound))


class _Bound:
    """A child of one family, bound to one validated label set."""

    __slots__ = ("_field", "_maximum", "_send", "labels", "metric")

    def __init__(
        self, metric: str, labels: Labels, send: Callable[[MetricRecord], object],
        maximum: float, field: str,
    ) -> None:
        self.metric = metric
        self.labels = labels
        self._send = send
        self._maximum = maximum
        self._field = field

    def record(self, value: int | float) -> MetricRecord:
        """The checked record for ``value``, not sent: for callers that batch records.

        Raises:
            ValueError: Negative, non-finite or above the configured bound.
            TypeError: Not an int or float.
        """
        try:
            value = check_number(self._field, value, maximum=self._maximum)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{self.metric}: {exc}") from None
        return MetricRecord(self.metric, self.labels, value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.metric}{dict(self.labels)}>"


class BoundCounter(_Bound):
    """A counter series: ``inc(amount)``."""

    __slots__ = ()

    def inc(self, amount: int | float = 1) -> None:
        """Add ``amount`` (finite, within ``[0, max_counter_increment]``); never blocks."""
        self._send(self.record(amount))


class BoundHistogram(_Bound):
    """A histogram series: ``observe(value)``."""

    __slots__ = ()

    def observe(self, value: int | float) -> None:
        """Observe ``value`` (finite, ``>= 0``, within the family's bound); never blocks."""
        self._send(self.record(value))


ChildT = TypeVar("ChildT", BoundCounter, BoundHistogram)
FamilyT = TypeVar("FamilyT")


class _Family(Generic[ChildT]):
    """One metric family: validates a label set once and keeps its child.

    Children are kept in a bounded cache keyed by the label values in declared
    order; past ``max_children`` a new label set still gets a valid child,
    built per call and not kept (the store folds such series into its
    overflow series anyway).
    """

    __slots__ = ("_child_type", "_children", "_field", "_max_children", "_max_id_length",
                 "_maximum", "_send", "label_names", "spec")

    def __init__(
        self, spec: MetricSpec, child_type: type[ChildT], send: Callable[[MetricRecord], object],
        *, maximum: float, field: str, max_children: int, max_id_length: int,
    ) -> None:
        self.spec = spec
        self.label_names = spec.label_names
        self._child_type: type[ChildT] = child_type
        self._send = send
        self._maximum = maximum
        self._field = field
        self._max_children = max_children
        self._max_id_length = max_id_length
        self._children: dict[tuple[Any, ...], ChildT] = {}

    def labels(self, *values: str, **labels: str) -> ChildT:
        """The child for this label set: exactly the family's declared labels.

        Like prometheus_client, the values come either by name
        (``labels(tenant_id="t1")``) or in declared order (``labels("t1")``).

        Raises:
            ValueError: A missing or undeclared label, or an invalid label value.
            TypeError: A label value that is not a ``str``, or both forms at once.
        """
        names = self.label_names
        if values:
            if labels:
                raise TypeError("give label values by name or in order, not both")
            if len(values) != len(names):
                raise ValueError(
                    f"metric {self.spec.name!r} takes {len(names)} label values "
                    f"{list(names)}, got {len(values)}"
                )
            key = values
        else:
            try:
                key = tuple([labels[name] for name in names])
            except KeyError:  # a missing label: the full check names it
                return self._new_child(labels)
            if len(labels) != len(names):  # an undeclared label besides
                return self._new_child(labels)
        try:
            child = self._children.get(key)
        except TypeError:  # an unhashable value: the full check refuses it
            child = None
        if child is None:
            child = self._new_child(labels if labels else dict(zip(names, values, strict=True)))
        return child

    def _new_child(self, labels: Mapping[str, object]) -> ChildT:
        metric = self.spec.name
        names = self.label_names
        extra = sorted(set(labels) - set(names))
        if extra:
            raise ValueError(
                f"metric {metric!r} has no label {extra[0]!r}; declared: {list(names)}"
            )
        missing = [name for name in names if name not in labels]
        if missing:
            raise ValueError(
                f"metric {metric!r} needs label {missing[0]!r}; declared: {list(names)}"
            )
        values = tuple(
            check_label_value(f"label {name!r} of {metric!r}", labels[name],
                              max_length=self._max_id_length)
            for name in names
        )
        child = self._child_type(
            metric, tuple(zip(names, values, strict=True)), self._send, self._maximum, self._field
        )
        if len(self._children) < self._max_children:
            self._children[values] = child
        return child


class CounterFamily(_Family[BoundCounter]):
    """A counter family: ``labels(...)`` gives a :class:`BoundCounter`."""

    __slots__ = ()


class HistogramFamily(_Family[BoundHistogram]):
    """A histogram family: ``labels(...)`` gives a :class:`BoundHistogram`."""

    __slots__ = ()


class MetricsCollector:
    """Records counters and histograms through bound children; exports snapshots.

    Args:
        collector: The metrics actor records are sent to.
        catalog: The recordable metric families, keyed by catalog name.
        pipeline: The pipeline, for the ``observability_*`` self-metrics.
        costs: The cost actor, for ``risk_engine_cost_usd_total``.
        traces: The trace actor, for the span store and exporter self-metrics.
        ledgers: The collectors that may own a ledger connection (its self-metrics).
        limits: Bounds on label values and numbers.
        max_series_per_metric: The cardinality cap per family (as the store applies it).
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
        ledgers: Sequence[CostStoreCollector | AuditStoreCollector] = (),
        limits: InputLimits | None = None,
        max_series_per_metric: int = 2_000,
        read_timeout: float = 5.0,
    ) -> None:
        limits = limits if limits is not None else InputLimits()
        self._ledgers = tuple(ledgers)
        self._collector = collector
        self._catalog = dict(catalog)
        self._pipeline = pipeline
        self._costs = costs
        self._traces = traces
        self._max_series = max_series_per_metric
        self._read_timeout = read_timeout
        self._exposition_error: str | None = None
        send = collector.send
        common: dict[str, Any] = {
            "max_children": max_series_per_metric, "max_id_length": limits.max_id_length,
        }
        self._counters = {
            name: CounterFamily(spec, BoundCounter, send, maximum=limits.max_counter_increment,
                                field="amount", **common)
            for name, spec in catalog.items() if spec.type == "counter"
        }
        self._histograms = {
            name: HistogramFamily(
                spec, BoundHistogram, send,
                maximum=(limits.max_latency_seconds if spec.unit == "seconds"
                         else limits.max_counter_increment),
                field="latency" if spec.unit == "seconds" else "value", **common)
            for name, spec in catalog.items() if spec.type == "histogram"
        }

    @property
    def catalog(self) -> Mapping[str, MetricSpec]:
        """The recordable metric families."""
        return dict(self._catalog)

    # --- recording (any thread, any event loop; never blocks) --------------

    def counter(self, name: str) -> CounterFamily:
        """The counter family ``name`` (a catalog name such as ``"request_count"``).

        Raises:
            ValueError: No such counter.
            TypeError: ``name`` is not a str.
        """
        return _family(name, "counter", self._counters, self._histograms)

    def histogram(self, name: str) -> HistogramFamily:
        """The histogram family ``name`` (e.g. ``"node_execution_latency"``).

        Raises:
            ValueError: No such histogram.
            TypeError: ``name`` is not a str.
        """
        return _family(name, "histogram", self._histograms, self._counters)

    def increment(self, metric: str, amount: int | float = 1, /, **labels: str) -> None:
        """Add ``amount`` to a counter series: ``counter(metric).labels(**labels).inc(amount)``.

        Raises:
            ValueError: Unknown counter, missing or undeclared label, bad label
                value, negative, non-finite or too large amount.
            TypeError: A non-numeric amount or a non-string label value.
        """
        self.counter(metric).labels(**labels).inc(amount)

    def observe_latency(self, metric: str, seconds: float, /, **labels: str) -> None:
        """Observe one value in a histogram: ``histogram(metric).labels(**labels).observe(v)``.

        Raises:
            ValueError: Unknown histogram, missing or undeclared label, bad label
                value, negative, non-finite or too large value.
            TypeError: A non-numeric value or a non-string label value.
        """
        self.histogram(metric).labels(**labels).observe(seconds)

    #: ``observe`` is the general name for histograms that are not latencies.
    observe = observe_latency

    # --- reading (answered by the collector threads) ------------------------

    def families(self) -> tuple[MetricFamily, ...]:
        """Every family as an immutable snapshot: the catalog, then pipeline metrics.

        Reflects every record the calling thread enqueued before the call.
        """
        catalog_families, overflowed = self._collector.snapshot(self._read_timeout)
        return catalog_families + self._pipeline_families(overflowed)

    def _pipeline_families(self, overflowed: Mapping[str, int]) -> tuple[MetricFamily, ...]:
        specs = PIPELINE_METRICS
        overflowed = dict(overflowed)
        families: list[MetricFamily] = []
        if self._costs is not None:
            costs = self._costs.snapshot(self._read_timeout)
            cost_series, folded = _capped(
                [((("tenant_id", tenant), ("model_version", model)), cost)
                 for (tenant, model), cost in costs.by_tenant_model.items()],
                self._max_series, Decimal(0))
            if folded:
                overflowed["cost_usd"] = overflowed.get("cost_usd", 0) + folded
            families.append(_values(specs["cost_usd"], cost_series))
            unpriced, folded = _capped(
                [((("model_version", model),), n) for model, n in costs.unpriced.items()],
                self._max_series, 0)
            if folded:
                overflowed["unpriced_generations"] = (
                    overflowed.get("unpriced_generations", 0) + folded)
            families.append(_values(specs["unpriced_generations"], unpriced))
        if self._pipeline is not None:
            health = self._pipeline.health()
            dropped: list[tuple[Labels, int]] = []
            applied: list[tuple[Labels, int]] = []
            depth: list[tuple[Labels, int]] = []
            up: list[tuple[Labels, int]] = []
            for name, stats in health.collectors.items():
                label = (("collector", name),)
                applied.append((label, stats.applied))
                depth.append((label, stats.queue_depth))
                up.append((label, int(stats.alive and stats.state is CollectorState.RUNNING)))
                # Every known reason from the start, at 0: a first drop is a visible increase.
                counts = dict.fromkeys(DROP_REASONS, 0) | dict(stats.dropped)
                dropped.extend(
                    ((("collector", name), ("reason", reason)), n) for reason, n in counts.items()
                )
            families.append(_values(specs["records_dropped"], dropped))
            families.append(_values(specs["records_applied"], applied))
            families.append(_values(specs["queue_depth"], depth))
            families.append(_values(specs["collector_up"], up))
        if self._traces is not None:
            _, evicted = self._traces.counts(self._read_timeout)
            families.append(_values(specs["spans_evicted"], [((), evicted)]))
            exported: list[tuple[tuple[tuple[str, str], ...], int]] = []
            for worker in self._traces.exporter_stats():
                outcomes = dict.fromkeys(EXPORT_OUTCOMES, 0)
                outcomes.update({"exported": worker.exported, "failed": worker.failed,
                                 "timed_out": worker.timed_out})
                outcomes.update({f"dropped_{r}": n for r, n in worker.dropped.items()})
                exported.extend(
                    ((("exporter", worker.name), ("outcome", outcome)), n)
                    for outcome, n in outcomes.items()
                )
            families.append(_values(specs["spans_exported"], exported))
        metric_names = (*self._catalog, "cost_usd", "unpriced_generations")
        families.append(_values(specs["series_overflow"], (
            ((("metric", metric),), overflowed.get(metric, 0)) for metric in metric_names
        )))
        ledger_rows: list[tuple[Labels, int]] = []
        ledger_lag: list[tuple[Labels, int]] = []
        ledger_up: list[tuple[Labels, int]] = []
        for source in self._ledgers:
            ledger = source.ledger_stats()
            if ledger is None:
                continue
            label = (("collector", ledger.collector),)
            for outcome, n in (("committed", ledger.committed),
                               ("duplicate", ledger.duplicates), ("dropped", ledger.dropped)):
                ledger_rows.append(((*label, ("outcome", outcome)), n))
            ledger_lag.append((label, ledger.lag))
            ledger_up.append((label, int(ledger.state is LedgerState.UP)))
        if self._ledgers:
            families.append(_values(specs["ledger_rows"], ledger_rows))
            families.append(_values(specs["ledger_lag"], ledger_lag))
            families.append(_values(specs["ledger_up"], ledger_up))
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

    def render_prometheus(self, openmetrics: bool = False) -> str:
        """The same snapshot in Prometheus text format 0.0.4 (or OpenMetrics 1.0).

        What the ``/metrics`` endpoint serves. Stored data always renders (every
        door validates what it stores); should rendering fail anyway, the error
        is kept in :attr:`exposition_error` (and so in ``health()``) until a
        later rendering succeeds, and re-raised.
        """
        from app.observability.exposition import render_openmetrics, render_text

        try:
            families = self.families()
            text = render_openmetrics(families) if openmetrics else render_text(families)
            text.encode("utf-8")  # what a scrape sends: it must encode
        except Exception as exc:
            self._exposition_error = f"{type(exc).__name__}: {exc}"[:1_024]
            raise
        self._exposition_error = None
        return text

    @property
    def exposition_error(self) -> str | None:
        """Why the last :meth:`render_prometheus` failed; ``None`` if it succeeded."""
        return self._exposition_error


def _capped(
    items: Iterable[tuple[Labels, Any]], cap: int, zero: Any
) -> tuple[list[tuple[Labels, Any]], int]:
    """The first ``cap`` series as they are; the rest folded into the overflow series.

    The cost store keeps its series in first-seen order, so the same series
    keep their own line from one scrape to the next (a counter never jumps
    between its own series and the overflow one).

    Returns:
        The series to export and how many were folded.
    """
    kept: list[tuple[Labels, Any]] = []
    overflow = zero
    folded = 0
    for labels, value in items:
        if len(kept) < cap:
            kept.append((labels, value))
        else:
            overflow += value
            folded += 1
    if folded:
        kept.append((OVERFLOW_LABELS, overflow))
    return kept, folded


def _values(
    spec: MetricSpec, items: Any
) -> MetricFamily:
    series = sorted(
        (ValueSeries(tuple(sorted(labels)), value) for labels, value in items),
        key=lambda s: s.labels,
    )
    return MetricFamily(spec=spec, series=tuple(series))


def _family(
    metric: object, kind: str, same: Mapping[str, FamilyT], other: Mapping[str, object]
) -> FamilyT:
    """The family named ``metric`` among ``same`` (the ``kind`` families).

    Raises:
        TypeError: ``metric`` is not a str.
        ValueError: ``metric`` names a family of ``other``, or none at all.
    """
    if type(metric) is not str:
        raise TypeError(f"metric name must be a str, got {type(metric).__name__}")
    family = same.get(metric)
    if family is None:
        if metric in other:
            raise ValueError(f"metric {metric!r} is not a {kind}")
        raise ValueError(f"unknown {kind} metric {metric!r}; known: {sorted(same)}")
    return family

