"""The finished-span store (a bounded in-memory exporter) and its collector.

Finished spans are kept in a ring buffer of fixed size; when it is full the
oldest span is evicted and counted. A redactor, when configured, runs here on
the collector thread where spans leave the store: on every read and before
every export hand-off. The producer's hot path pays nothing for it, nothing
unredacted is ever read or exported, and the spans that are evicted without
ever being read or exported (most of them, when no exporter is configured)
are never redacted at all. Stored spans live only in this process's memory,
which already held the same values when they were recorded.

Span exporters (:mod:`collectors.export`) are optional. After each drained
batch the collector thread hands the spans it has just stored to one
:class:`~collectors.export.ExportWorker` per exporter, without waiting; the
exporters run on their own threads, so a slow, failing or hung exporter
never holds up this collector or the pipeline.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from collectors.base import Collector
from collectors.export import ExportStats, ExportWorker, SpanExporter
from collectors.logs import get_logger
from collectors.records import SpanRecord

__all__ = ("SpanRedactor", "TraceStore", "TraceStoreCollector")

_logger = get_logger(__name__)

SpanRedactor = Callable[[SpanRecord], SpanRecord]

#: What replaces string values when the redactor itself fails.
_MASK = "[REDACTED]"


class TraceStore:
    """Finished spans, oldest first. Owned by one :class:`TraceStoreCollector` thread."""

    __slots__ = ("evicted", "received", "spans", "unexported")

    def __init__(self, capacity: int) -> None:
        self.spans: deque[SpanRecord] = deque(maxlen=capacity)
        self.evicted = 0
        self.received = 0
        #: Stored spans not yet handed to the exporters (only with exporters).
        self.unexported: list[SpanRecord] = []


class TraceStoreCollector(Collector[TraceStore]):
    """Actor owning the :class:`TraceStore`.

    Args:
        capacity: Spans kept; older ones are evicted and counted.
        redactor: Applied to every span before it is stored (and exported).
        exporters: Span exporters, each run by its own
            :class:`~collectors.export.ExportWorker` thread.
        export_timeout: Seconds after which an export call counts as timed out.
        export_queue_batches: Batches each exporter may have waiting.
        export_batch_size: The most spans per export call.
        **kwargs: Passed to :class:`~collectors.base.Collector`.
    """

    def __init__(
        self,
        *,
        capacity: int = 10_000,
        redactor: SpanRedactor | None = None,
        exporters: Sequence[SpanExporter] = (),
        export_timeout: float = 10.0,
        export_queue_batches: int = 64,
        export_batch_size: int = 512,
        **kwargs: Any,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if export_batch_size < 1:
            raise ValueError("export_batch_size must be at least 1")
        self._capacity = capacity
        self._redactor = redactor
        self._export_batch_size = export_batch_size
        self._workers = tuple(
            ExportWorker(exporter, name=name, max_queued_batches=export_queue_batches,
                         export_timeout=export_timeout)
            for name, exporter in zip(_exporter_names(exporters), exporters, strict=True)
        )
        super().__init__("trace", **kwargs)

    # --- runs on the collector thread only (or before it starts) ---------

    def _new_store(self) -> TraceStore:
        return TraceStore(self._capacity)

    def _apply(self, record: SpanRecord) -> None:
        """Store one finished span, evicting the oldest if full. Collector thread only."""
        if type(record) is not SpanRecord:
            raise TypeError(f"the trace collector takes SpanRecord, got {type(record).__name__}")
        store = self._store
        spans = store.spans
        if len(spans) == self._capacity:
            store.evicted += 1
        spans.append(record)
        store.received += 1
        if self._workers:
            store.unexported.append(record)

    def _egress(self, span: SpanRecord) -> SpanRecord:
        """A stored span as it may leave the store: redacted, as a :class:`SpanRecord`.

        Runs on the collector thread (or, once it is gone, on a reader's). A
        redactor that raises does not lose the span or leak it: every string
        attribute value and the error message are masked instead, and the
        failure is logged.
        """
        redactor = self._redactor
        if redactor is None:
            return span
        try:
            return redactor(span)
        except Exception as exc:
            _logger.error("observability.span_redaction_failed", error=repr(exc))
            return span._replace(
                error_message=_MASK if span.error_message else None,
                attributes=tuple((key, _MASK if isinstance(value, str) else value)
                                 for key, value in span.attributes),
                events=(),
            )

    def _on_idle(self) -> None:
        """After each drained batch: hand the new spans to the exporters (collector thread)."""
        if self._workers:
            self._hand_off(self._store)

    def _hand_off(self, store: TraceStore) -> None:
        """Submit the spans stored since the last hand-off to every export worker.

        Runs on the collector thread (or, once it is gone, on a reader's).
        Submitting never waits and never raises into this thread.
        """
        pending = store.unexported
        if not pending:
            return
        store.unexported = []
        size = self._export_batch_size
        try:
            for start in range(0, len(pending), size):
                chunk = tuple(map(self._egress, pending[start : start + size]))
                for worker in self._workers:
                    worker.submit(chunk)
        except Exception as exc:  # never let an export problem kill the collector
            _logger.error("observability.export_hand_off_failed", error=repr(exc), exc_info=exc)

    # --- any thread -------------------------------------------------------

    def spans(
        self, *, trace_id: int | None = None, tenant_id: str | None = None, timeout: float = 5.0
    ) -> tuple[SpanRecord, ...]:
        """Finished spans still in the buffer, oldest first, optionally filtered.

        Args:
            trace_id: Only spans of this trace.
            tenant_id: Only spans whose ``tenant_id`` attribute is this tenant.
            timeout: Seconds to wait for the collector's answer.
        """

        def select(store: TraceStore) -> tuple[SpanRecord, ...]:
            found: list[SpanRecord] = []
            for span in store.spans:
                if trace_id is not None and span.trace_id != trace_id:
                    continue
                record = self._egress(span)
                if tenant_id is not None and ("tenant_id", tenant_id) not in record.attributes:
                    continue
                found.append(record)
            return tuple(found)

        return self.query(select, timeout)

    def counts(self, timeout: float = 5.0) -> tuple[int, int]:
        """``(spans received, spans evicted)`` so far."""
        return self.query(lambda store: (store.received, store.evicted), timeout)

    # --- exporters (any thread) -----------------------------------------

    def start(self) -> None:
        """Start the export workers, then the collector thread (idempotent)."""
        for worker in self._workers:
            worker.start()
        super().start()

    def owns_current_thread(self) -> bool:
        """The collector thread, or one of its export workers' threads."""
        return super().owns_current_thread() or any(
            worker.owns_current_thread() for worker in self._workers
        )

    def stop_helpers(self, timeout: float) -> bool:
        """Stop the export workers, after the collector thread has stopped.

        Each worker exports what it still has queued, within what is left of
        ``timeout``; what remains is dropped and counted (see
        :meth:`~collectors.export.ExportWorker.stop`).

        Returns:
            ``True`` if every worker thread is gone.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        stopped = True
        for worker in self._workers:
            stopped &= worker.stop(max(deadline - time.monotonic(), 0.0))
        return stopped

    def flush_exporters(self, timeout: float = 5.0) -> bool:
        """Hand every span stored before this call to the exporters, and wait for them.

        The hand-off runs on the collector thread, in FIFO order with the
        spans enqueued before the call; then each worker is flushed.

        Returns:
            ``True`` if every worker handled (exported or counted) them in time;
            ``False`` at once while an export has overrun its timeout.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        self.query(self._hand_off, timeout)
        results = [
            worker.flush(max(deadline - time.monotonic(), 0.0)) for worker in self._workers
        ]
        return all(results)

    def exporter_stats(self) -> tuple[ExportStats, ...]:
        """Each export worker's counters, read without waiting for any thread."""
        return tuple(worker.stats() for worker in self._workers)

    def after_fork_in_child(self, *, restart: bool) -> int:
        """Rebuild the export workers too (see :meth:`Collector.after_fork_in_child`)."""
        for worker in self._workers:
            worker.after_fork_in_child()
        return super().after_fork_in_child(restart=restart)


def _exporter_names(exporters: Sequence[SpanExporter]) -> list[str]:
    """A unique worker name per exporter: its ``name`` attribute, else its class name."""
    names: list[str] = []
    for exporter in exporters:
        base = getattr(exporter, "name", None)
        if not isinstance(base, str) or not base:
            base = type(exporter).__name__.lower()
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names
