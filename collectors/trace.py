"""The finished-span store (a bounded in-memory exporter) and its collector.

Finished spans are kept in a ring buffer of fixed size; when it is full the
oldest span is evicted and counted. A redactor, when configured, runs here on
the collector thread before a span reaches the store, so the producer's hot
path pays nothing for it and nothing unredacted is ever stored or exported.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from collectors.base import Collector
from collectors.records import SpanRecord

__all__ = ("SpanRedactor", "TraceStore", "TraceStoreCollector")

SpanRedactor = Callable[[SpanRecord], SpanRecord]


class TraceStore:
    """Finished spans, oldest first. Owned by one :class:`TraceStoreCollector` thread."""

    __slots__ = ("evicted", "received", "spans")

    def __init__(self, capacity: int) -> None:
        self.spans: deque[SpanRecord] = deque(maxlen=capacity)
        self.evicted = 0
        self.received = 0


class TraceStoreCollector(Collector[TraceStore]):
    """Actor owning the :class:`TraceStore`.

    Args:
        capacity: Spans kept; older ones are evicted and counted.
        redactor: Applied to every span before it is stored.
        **kwargs: Passed to :class:`~collectors.base.Collector`.
    """

    def __init__(
        self, *, capacity: int = 10_000, redactor: SpanRedactor | None = None, **kwargs: Any
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._redactor = redactor
        super().__init__("trace", **kwargs)

    # --- runs on the collector thread only (or before it starts) ---------

    def _new_store(self) -> TraceStore:
        return TraceStore(self._capacity)

    def _apply(self, record: SpanRecord) -> None:
        """Store one finished span, evicting the oldest if full. Collector thread only."""
        if self._redactor is not None:
            record = self._redactor(record)
        store = self._store
        spans = store.spans
        if len(spans) == self._capacity:
            store.evicted += 1
        spans.append(record)
        store.received += 1

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
                if tenant_id is not None and ("tenant_id", tenant_id) not in span.attributes:
                    continue
                found.append(span)
            return tuple(found)

        return self.query(select, timeout)

    def counts(self, timeout: float = 5.0) -> tuple[int, int]:
        """``(spans received, spans evicted)`` so far."""
        return self.query(lambda store: (store.received, store.evicted), timeout)
