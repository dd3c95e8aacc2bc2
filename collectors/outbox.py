"""Where a span's records go: straight to the collectors, or into its run's outbox.

Every finished span, and every metric or cost record produced inside a span's
work, is handed to a :class:`RecordSink`. The plain sink sends each record to
its collector at once. A :class:`RunOutbox` is the sink of one batched run
(a workflow request): it keeps the run's records and sends them as one
:class:`~collectors.records.Batch` per collector when the run's root span
ends, so a whole request costs a handful of queue puts instead of dozens.

Records added to an outbox after its run closed (a task of the run that
outlived its root) go straight to their collector: nothing is lost, nothing
is sent twice. A run that grows past ``limit`` records sends what it has
early, so a long run never holds an unbounded list.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from collectors.base import Collector
from collectors.records import Batch, CostRecord, MetricRecord, SpanRecord

__all__ = ("RecordSink", "RunOutbox")

# The lanes of a sink, one per collector.
_SPANS, _METRICS, _COSTS = 0, 1, 2


class RecordSink:
    """Sends each record straight to its collector (never blocks, never raises).

    Args:
        spans: The trace collector (finished spans).
        metrics: The metrics collector.
        costs: The cost collector.
    """

    __slots__ = ("_collectors",)

    def __init__(
        self,
        spans: Collector[Any] | None,
        metrics: Collector[Any] | None,
        costs: Collector[Any] | None,
    ) -> None:
        self._collectors = (spans, metrics, costs)

    def add_span(self, record: SpanRecord, metrics: Sequence[MetricRecord] = ()) -> None:
        """A finished span, and the metric records of its work sent with it."""
        self._add(((_SPANS, (record,)), (_METRICS, metrics)))

    def add_metric(self, record: MetricRecord) -> None:
        """One metric record."""
        self._add(((_METRICS, (record,)),))

    def add_metrics(self, records: Sequence[MetricRecord]) -> None:
        """Several metric records, sent together."""
        self._add(((_METRICS, records),))

    def add_cost(self, record: CostRecord) -> None:
        """One priced model call."""
        self._add(((_COSTS, (record,)),))

    def _add(self, entries: tuple[tuple[int, Sequence[Any]], ...]) -> None:
        """Records for one or more lanes: ``((lane, records), ...)``."""
        for lane, records in entries:
            _send(self._collectors[lane], records)


class RunOutbox(RecordSink):
    """The sink of one batched run: its records leave together when it closes.

    Adds come from the run's tasks and threads, concurrently; a small lock
    guards the lists and the open flag, so a record is either taken by the
    close (or an early send) or sent straight to its collector, exactly once.

    Args:
        spans: The trace collector.
        metrics: The metrics collector.
        costs: The cost collector.
        limit: Records kept before the outbox sends what it has early.
    """

    __slots__ = ("_count", "_limit", "_lock", "_open", "_pending")

    def __init__(
        self,
        spans: Collector[Any] | None,
        metrics: Collector[Any] | None,
        costs: Collector[Any] | None,
        *,
        limit: int = 512,
    ) -> None:
        super().__init__(spans, metrics, costs)
        self._lock = threading.Lock()
        self._open = True
        self._pending: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
        self._count = 0
        self._limit = limit

    @property
    def open(self) -> bool:
        """Whether the run is still gathering records."""
        return self._open

    def close(self) -> None:
        """Send everything gathered, one batch per collector; later adds go straight through."""
        with self._lock:
            self._open = False
            taken = self._take()
        self._send_all(taken)

    def _add(self, entries: tuple[tuple[int, Sequence[Any]], ...]) -> None:
        with self._lock:
            if self._open:
                pending = self._pending
                for lane, records in entries:
                    pending[lane].extend(records)
                    self._count += len(records)
                if self._count < self._limit:
                    return
                taken = self._take()  # a long run: send what it has so far
            else:
                taken = None
        if taken is None:  # closed: straight to the collectors
            RecordSink._add(self, entries)
        else:
            self._send_all(taken)

    def _take(self) -> tuple[list[Any], list[Any], list[Any]]:
        """Everything gathered so far (the caller holds the lock)."""
        taken = self._pending
        self._pending = ([], [], [])
        self._count = 0
        return taken

    def _send_all(self, taken: tuple[list[Any], list[Any], list[Any]]) -> None:
        for collector, records in zip(self._collectors, taken, strict=True):
            _send(collector, records)


def _send(collector: Collector[Any] | None, records: Sequence[Any]) -> None:
    """One record as itself, several as one :class:`Batch`; nothing to no collector."""
    if collector is None or not records:
        return
    if len(records) == 1:
        collector.send(records[0])
    else:
        collector.send(Batch(tuple(records)), len(records))
