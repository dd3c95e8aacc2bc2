"""Actor-style collectors: one bounded janus queue, one thread, one store each.

Producers send immutable records (:mod:`collectors.records`); the collector
thread named ``collector-<name>`` is the only code that mutates its store.
The :class:`Pipeline` runs a set of collectors with one lifecycle and exact
flushes. The facades in :mod:`app.observability` are the public front; use
these classes directly only to build a custom pipeline.
"""

from __future__ import annotations

from collectors.audit import AuditStoreCollector
from collectors.base import Collector, CollectorState, CollectorStats, OverflowPolicy
from collectors.cost import BudgetStatus, CostSnapshot, CostStoreCollector, TenantUsage
from collectors.export import CallableExporter, ExportStats, ExportWorker, SpanExporter
from collectors.metrics import OVERFLOW_LABELS, MetricsStoreCollector
from collectors.pipeline import FlushResult, Pipeline, PipelineHealth, PipelineState
from collectors.trace import TraceStoreCollector

__all__ = (
    "OVERFLOW_LABELS",
    "AuditStoreCollector",
    "BudgetStatus",
    "CallableExporter",
    "Collector",
    "CollectorState",
    "CollectorStats",
    "CostSnapshot",
    "CostStoreCollector",
    "ExportStats",
    "ExportWorker",
    "FlushResult",
    "MetricsStoreCollector",
    "OverflowPolicy",
    "Pipeline",
    "PipelineHealth",
    "PipelineState",
    "SpanExporter",
    "TenantUsage",
    "TraceStoreCollector",
)
