"""Metric declarations and the immutable snapshots a metrics read returns.

A :class:`MetricSpec` declares one metric family (its catalog name, its
Prometheus name, type, help and allowed labels). A read of the metrics store
returns :class:`MetricFamily` objects whose series are :class:`ValueSeries`
(counters and gauges) or :class:`HistogramSeries`. Every renderer (the
``export_metrics()`` dict, Prometheus text 0.0.4, OpenMetrics 1.0) works from
these snapshots only, never from a live store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, NamedTuple

__all__ = (
    "DEFAULT_LATENCY_BUCKETS",
    "HistogramSeries",
    "MetricFamily",
    "MetricSpec",
    "MetricType",
    "ValueSeries",
)

MetricType = Literal["counter", "gauge", "histogram"]

#: Seconds; spans sub-millisecond node work up to a minute-long request.
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSpec:
    """Declaration of one metric family.

    Attributes:
        name: The catalog name used by callers (``"request_count"``).
        prom_name: The Prometheus family name *without* the ``_total`` suffix
            of counters (``"risk_engine_requests"``); renderers add it.
        type: ``"counter"``, ``"gauge"`` or ``"histogram"``.
        help: One line for the ``# HELP`` comment.
        label_names: The label names every series of the family has, in this order.
        unit: The base unit (``"seconds"``, ``"usd"``, ``""``) for OpenMetrics.
        buckets: Histogram upper bounds, ascending, without ``+Inf``.
    """

    name: str
    prom_name: str
    type: MetricType
    help: str
    label_names: tuple[str, ...]
    unit: str = ""
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.type == "histogram":
            if not self.buckets:
                raise ValueError(f"histogram {self.name!r} needs buckets")
            if any(not math.isfinite(b) for b in self.buckets):
                raise ValueError(f"histogram {self.name!r}: buckets must be finite")
            if list(self.buckets) != sorted(set(self.buckets)):
                raise ValueError(f"histogram {self.name!r}: buckets must be strictly ascending")
        elif self.buckets:
            raise ValueError(f"{self.type} {self.name!r} takes no buckets")


class ValueSeries(NamedTuple):
    """One counter or gauge series. ``labels`` are sorted ``(name, value)`` pairs."""

    labels: tuple[tuple[str, str], ...]
    value: int | float | Decimal


class HistogramSeries(NamedTuple):
    """One histogram series.

    ``buckets`` are cumulative ``(upper_bound, count)`` pairs in ascending order,
    the last one ``(math.inf, count)``. The quantiles come from a relative-error
    sketch kept beside the buckets (1 % relative accuracy), not from bucket
    interpolation; they are ``None`` for an empty series.
    """

    labels: tuple[tuple[str, str], ...]
    count: int  # type: ignore[assignment]  # shadows tuple.count, as the spec names it
    sum: float
    buckets: tuple[tuple[float, int], ...]
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricFamily:
    """An immutable snapshot of one metric family and all its series."""

    spec: MetricSpec
    series: tuple[ValueSeries | HistogramSeries, ...]

    @property
    def name(self) -> str:
        """The catalog name."""
        return self.spec.name

    @property
    def type(self) -> MetricType:
        """The metric type."""
        return self.spec.type
