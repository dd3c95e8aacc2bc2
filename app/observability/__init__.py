"""Observability for the AI risk engine: metrics, traces, costs, audit, in-process.

Build everything from one container::

    from app.observability import Observability

    with Observability() as obs:
        obs.metrics.increment("request_count", tenant_id="t1")
        obs.flush()
        obs.metrics.export_metrics()["request_count"]

The container builds the collector pipeline (one thread per store, see
:mod:`collectors`) and the services on top of it, and injects them into each
other. It holds no global state: two containers in one process share nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from app.observability.audit import AuditLogger
from app.observability.catalog import build_catalog
from app.observability.cost_tracker import CostEstimate, CostTracker
from app.observability.evaluation import EvaluationResult, EvaluationService
from app.observability.failure_classifier import FailureCategory, FailureClassifier
from app.observability.langfuse_client import Generation, LangfuseClient
from app.observability.metrics import (
    BoundCounter,
    BoundHistogram,
    CounterFamily,
    HistogramFamily,
    MetricsCollector,
)
from app.observability.settings import (
    InputLimits,
    MetricsServerSettings,
    ModelPrice,
    ObservabilitySettings,
)
from app.observability.tracing import Span, SpanContext, TracingService
from collectors.audit import AuditStoreCollector
from collectors.cost import CostStoreCollector
from collectors.export import CallableExporter, ExportStats, SpanExporter
from collectors.ledger import LedgerStats
from collectors.metrics import MetricsStoreCollector
from collectors.pipeline import FlushResult, Pipeline, PipelineHealth, PipelineState
from collectors.trace import TraceStoreCollector

if TYPE_CHECKING:
    from app.observability.http_server import MetricsServer

__all__ = (
    "AuditLogger",
    "BoundCounter",
    "BoundHistogram",
    "CostEstimate",
    "CostTracker",
    "CounterFamily",
    "EvaluationResult",
    "EvaluationService",
    "FailureCategory",
    "FailureClassifier",
    "FlushResult",
    "Generation",
    "HistogramFamily",
    "InputLimits",
    "LangfuseClient",
    "LedgerStats",
    "MetricsCollector",
    "MetricsServerSettings",
    "ModelPrice",
    "Observability",
    "ObservabilitySettings",
    "PipelineHealth",
    "PipelineState",
    "Span",
    "SpanContext",
    "TracingService",
)


class Observability:
    """The dependency-injection container of the observability layer.

    Args:
        settings: The configuration; defaults to ``ObservabilitySettings()``.
        start: Start the collector threads now (default). With ``False``,
            records are queued until :meth:`start`.
        exporters: Span exporters (:class:`collectors.export.SpanExporter`),
            each run on its own thread after redaction; with an OTLP
            endpoint configured (``settings.otlp_endpoint`` or the standard
            ``OTEL_EXPORTER_OTLP_*`` variables, read here), an OTLP/HTTP
            exporter is added.

    Raises:
        ValueError: A malformed ``OTEL_*`` variable (it is named).

    Attributes:
        metrics: :class:`MetricsCollector` facade.
        tracing: :class:`TracingService`.
        langfuse: :class:`LangfuseClient` (generations, in-process).
        evaluation: :class:`EvaluationService`.
        costs: :class:`CostTracker`.
        failures: :class:`FailureClassifier`.
        audit: :class:`AuditLogger`.
        pipeline: The :class:`~collectors.pipeline.Pipeline` of collectors.
    """

    def __init__(
        self,
        settings: ObservabilitySettings | None = None,
        *,
        start: bool = True,
        exporters: Sequence[SpanExporter] = (),
    ) -> None:
        self.settings = settings = settings or ObservabilitySettings()
        queue_kwargs: dict[str, Any] = {
            "maxsize": settings.queue_maxsize,
            "batch_size": settings.drain_batch_size,
            "overflow": settings.overflow_policy,
            "block_timeout": settings.block_timeout_seconds,
            "linger": settings.linger_seconds,
        }
        catalog = build_catalog(
            latency_buckets=settings.latency_buckets,
            node_latency_buckets=settings.node_latency_buckets,
        )
        span_redactor = audit_redactor = None
        if settings.redact:
            from app.observability.redaction import Redactor

            redactor = Redactor()
            span_redactor, audit_redactor = redactor.span, redactor.audit
        metrics_actor = MetricsStoreCollector(
            catalog,
            max_series_per_metric=settings.max_series_per_metric,
            relative_accuracy=settings.quantile_relative_accuracy,
            **queue_kwargs,
        )
        ledger_kwargs: dict[str, Any] = {
            "ledger_url": settings.ledger_url,
            "ledger_buffer_size": settings.ledger_buffer_size,
            "ledger_retry_max_seconds": settings.ledger_retry_max_seconds,
        }
        audit_actor = AuditStoreCollector(
            capacity=settings.audit_buffer_size, redactor=audit_redactor, **ledger_kwargs,
            **queue_kwargs,
        )
        span_exporters = list(exporters)
        from app.observability.otlp import OtlpConfig, OtlpHttpSender

        # The settings and the OTEL_EXPORTER_OTLP_* variables, read once, here.
        otlp = OtlpConfig.resolve(settings)
        if otlp is not None:
            sender = OtlpHttpSender.from_config(
                otlp, max_retries=settings.otlp_max_retries,
                # No retry starts so late that the export call would count as timed out.
                retry_window=settings.export_timeout_seconds * 0.9,
            )
            span_exporters.append(CallableExporter(
                functools.partial(sender.send, **otlp.resource), name="otlp",
            ))
        trace_actor = TraceStoreCollector(
            capacity=settings.trace_buffer_size, redactor=span_redactor,
            exporters=span_exporters, export_timeout=settings.export_timeout_seconds,
            export_queue_batches=settings.export_queue_batches, **queue_kwargs
        )
        cost_actor = CostStoreCollector(
            budgets=settings.budgets,
            budget_thresholds=settings.budget_thresholds,
            budget_period=settings.budget_period,
            max_tracked_requests=settings.max_tracked_requests,
            metrics=metrics_actor,
            audit=audit_actor,
            ledger_refresh_seconds=settings.ledger_refresh_seconds,
            **ledger_kwargs,
            **queue_kwargs,
        )
        self.pipeline = Pipeline(
            (metrics_actor, cost_actor, trace_actor, audit_actor),
            close_timeout=settings.close_timeout_seconds,
            drain_at_exit=settings.drain_at_exit,
        )
        read_timeout = settings.flush_timeout_seconds
        self.audit = AuditLogger(audit_actor, read_timeout=read_timeout, limits=settings.limits)
        self.metrics = MetricsCollector(
            metrics_actor, catalog, pipeline=self.pipeline, costs=cost_actor,
            traces=trace_actor, ledgers=(cost_actor, audit_actor), limits=settings.limits,
            max_series_per_metric=settings.max_series_per_metric, read_timeout=read_timeout,
        )
        self.tracing = TracingService(
            trace_actor, metrics=metrics_actor, costs=cost_actor,
            sample_ratio=settings.sample_ratio, id_seed=settings.id_seed,
            read_timeout=read_timeout, limits=settings.limits,
        )
        self.costs = CostTracker(
            cost_actor, settings.price_table, unpriced_policy=settings.unpriced_policy,
            read_timeout=read_timeout, limits=settings.limits,
            new_id=functools.partial(_prefixed_id, self.tracing, "cost-"),
        )
        self.failures = FailureClassifier(metrics=self.metrics, audit=self.audit)
        self.langfuse = LangfuseClient(
            tracing=self.tracing, costs=self.costs, metrics=self.metrics
        )
        self.evaluation = EvaluationService(audit=self.audit, metrics=self.metrics)
        self._server: MetricsServer | None = None
        if start:
            self.start()

    # --- lifecycle ------------------------------------------------------------

    @property
    def state(self) -> PipelineState:
        """``created``, ``running`` or ``closed``."""
        return self.pipeline.state

    def start(self) -> Self:
        """Start the collector threads (and the ``/metrics`` server if enabled).

        Raises:
            RuntimeError: The container is closed.
        """
        self.pipeline.start()
        server_settings = self.settings.metrics_server
        if server_settings.enabled and self._server is None:
            from app.observability.http_server import MetricsServer

            self._server = MetricsServer(
                self.metrics.render_prometheus, host=server_settings.host,
                port=server_settings.port, healthy=self._healthy,
            )
            self._server.start()
        return self

    @property
    def metrics_server(self) -> MetricsServer | None:
        """The running ``/metrics`` server, if enabled."""
        return self._server

    def flush(self, timeout: float | None = None, *, exporters: bool = False) -> FlushResult:
        """Wait until every record enqueued before the call is applied (bounded).

        Args:
            timeout: Deadline in seconds (default ``flush_timeout_seconds``).
            exporters: Also wait, within the same deadline, until the span
                exporters have handled every span stored by then (what
                :meth:`flush_exporters` does); a flush that completes only
                for the stores is then reported incomplete.

        Returns:
            A :class:`FlushResult`, truthy only when complete.
        """
        limit = self.settings.flush_timeout_seconds if timeout is None else timeout
        started = time.perf_counter()
        result = self.pipeline.flush(limit)
        if not exporters or not result:
            return result
        exported = self.flush_exporters(max(limit - (time.perf_counter() - started), 0.0))
        return _exported(result, exported, started)

    async def aflush(
        self, timeout: float | None = None, *, exporters: bool = False
    ) -> FlushResult:
        """Async :meth:`flush`; works on any event loop."""
        limit = self.settings.flush_timeout_seconds if timeout is None else timeout
        started = time.perf_counter()
        result = await self.pipeline.aflush(limit)
        if not exporters or not result:
            return result
        exported = await asyncio.to_thread(
            self.flush_exporters, max(limit - (time.perf_counter() - started), 0.0)
        )
        return _exported(result, exported, started)

    def flush_exporters(self, timeout: float | None = None) -> bool:
        """Hand every span stored before the call to the span exporters and wait for them.

        Returns:
            ``True`` if every exporter handled them (exported, or failed and
            counted) in time; always ``True`` with no exporter configured.

        Raises:
            RuntimeError: Called on a collector or exporter thread (it would
                wait for itself).
        """
        self.pipeline.refuse_own_thread("flush")
        trace = self.pipeline.collectors["trace"]
        assert isinstance(trace, TraceStoreCollector)
        return trace.flush_exporters(
            self.settings.flush_timeout_seconds if timeout is None else timeout
        )

    def close(self, timeout: float | None = None) -> FlushResult:
        """Drain and stop everything. Idempotent and bounded by ``timeout``."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(1.0)
        return self.pipeline.close(timeout)

    async def aclose(self, timeout: float | None = None) -> FlushResult:
        """:meth:`close` without blocking the event loop."""
        return await asyncio.to_thread(self.close, timeout)

    def exporter_stats(self) -> tuple[ExportStats, ...]:
        """Each span exporter's counts (exported, failed, timed out, dropped, in flight)."""
        trace = self.pipeline.collectors["trace"]
        assert isinstance(trace, TraceStoreCollector)
        return trace.exporter_stats()

    def health(self) -> PipelineHealth:
        """Each collector's state, queue depth, applied/dropped counts and errors,
        the span exporters' counters, the tenants over their cost budget, and
        each ledger connection's state, lag (rows not committed yet) and errors.

        Producers are never blocked: collector and ledger stats are read
        without waiting, and the budget view is a query answered by the cost
        collector. A ledger that is down leaves the pipeline healthy (records
        are buffered and retried); its state and drops show in ``ledgers``.
        """
        base = self.pipeline.health()
        over_budget: tuple[str, ...] = ()
        if self.settings.budgets:
            budgets = self.costs.snapshot().budgets
            over_budget = tuple(sorted(t for t, b in budgets.items() if b.over_budget))
        return dataclasses.replace(
            base, over_budget=over_budget, exporters=self.exporter_stats(),
            ledgers=self.ledger_stats(), exposition_error=self.metrics.exposition_error,
        )

    def _healthy(self) -> bool:
        """What ``/healthz`` answers: collectors alive, and the last exposition rendered."""
        return self.pipeline.health().healthy and self.metrics.exposition_error is None

    def ledger_stats(self) -> tuple[LedgerStats, ...]:
        """Each ledger connection (cost, audit): state, lag, commits, drops, errors.

        Empty without ``settings.ledger_url``.
        """
        stats: list[LedgerStats] = []
        for name in ("cost", "audit"):
            collector = self.pipeline.collectors[name]
            assert isinstance(collector, CostStoreCollector | AuditStoreCollector)
            found = collector.ledger_stats()
            if found is not None:
                stats.append(found)
        return tuple(stats)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _prefixed_id(tracing: TracingService, prefix: str) -> str:
    """An id from the tracing service's generator (deterministic with ``id_seed``)."""
    return prefix + tracing.new_id()


def _exported(result: FlushResult, exported: bool, started: float) -> FlushResult:
    """A complete store flush, followed by an exporter flush that did or did not finish."""
    return dataclasses.replace(
        result, complete=exported, timed_out=not exported,
        elapsed=time.perf_counter() - started,
    )
