"""Minimal prototypes of proposed design changes, measured beside the real code.

**Not product code.** Each prototype is the smallest thing that shows what a
design change recommended in ``docs/PERFORMANCE.md`` would cost on the hot
path, so that the recommendation rests on a measurement made in the same run
rather than on a guess. Nothing in ``app/`` or ``collectors/`` uses them.

* :class:`AggregatingCounter`: producer-side aggregation of counter
  increments in a per-thread dict (what a collector would swap out and merge).
* :class:`PrototypeTracer`: a span that is its own context manager and is
  queued as-is when it ends (the collector would build the record).
* :func:`one_wake_per_linger`: ``RecordQueue._wake`` that notifies a lingering
  consumer once, not on every offer until it runs (applied only while a
  benchmark variant runs, then restored).
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

__all__ = ("AggregatingCounter", "PrototypeSpan", "PrototypeTracer", "one_wake_per_linger")


class AggregatingCounter:
    """Counter increments aggregated per thread: ``dict[(metric, labels)] -> total``."""

    def __init__(self) -> None:
        self._local = threading.local()

    def increment(self, metric: str, amount: int | float = 1, /, **labels: str) -> None:
        """Add ``amount`` to the calling thread's accumulator (validation as cheap as today's
        cached path: a type check of the amount)."""
        if type(amount) is not int and type(amount) is not float:
            raise TypeError("amount must be an int or float")
        try:
            totals = self._local.totals
        except AttributeError:
            totals = self._local.totals = {}
        key = (metric, tuple(labels.items()))
        totals[key] = totals.get(key, 0) + amount

    def swap(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], int | float]:
        """Take the calling thread's totals (a collector would do this per producer)."""
        totals: dict[Any, Any] = getattr(self._local, "totals", {})
        self._local.totals = {}
        return totals


class PrototypeSpan:
    """A span that is its own context manager and is queued as-is when it ends."""

    __slots__ = ("_perf", "_token", "_tracer", "end_perf", "kind", "name", "parent_id",
                 "span_id", "start_ns", "trace_id")

    trace_id: int
    span_id: int
    parent_id: int
    start_ns: int
    end_perf: int
    _perf: int
    _token: Token[PrototypeSpan | None]

    def __init__(self, tracer: PrototypeTracer, name: str, kind: str) -> None:
        self._tracer = tracer
        self.name = name
        self.kind = kind

    def __enter__(self) -> PrototypeSpan:
        tracer = self._tracer
        parent = tracer.current.get()
        if parent is None:
            self.trace_id = tracer.rng.getrandbits(128) or 1
            self.parent_id = 0
        else:
            self.trace_id = parent.trace_id
            self.parent_id = parent.span_id
        self.span_id = tracer.rng.getrandbits(64) or 1
        self.start_ns = time.time_ns()
        self._perf = time.perf_counter_ns()
        self._token = tracer.current.set(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end_perf = time.perf_counter_ns()
        tracer = self._tracer
        tracer.current.reset(self._token)
        tracer.queue.append(self)


class PrototypeTracer:
    """Starts :class:`PrototypeSpan` objects; ended spans land in a bounded deque."""

    def __init__(self) -> None:
        self.current: ContextVar[PrototypeSpan | None] = ContextVar(
            "prototype_span", default=None
        )
        self.rng = random.Random()
        self.queue: deque[PrototypeSpan] = deque(maxlen=65_536)

    def span(self, name: str, *, kind: str = "internal") -> PrototypeSpan:
        """A span for ``with``."""
        return PrototypeSpan(self, name, kind)


@contextmanager
def one_wake_per_linger() -> Iterator[None]:
    """Patch ``RecordQueue._wake`` to notify a waiting consumer once per wait, then restore.

    After a notify the producer sets the queue's wake threshold to "never";
    the consumer publishes a new threshold under the mutex before its next
    wait, so no wake-up can be lost.
    """
    from collectors import _queue

    original = _queue.RecordQueue._wake

    def _wake(self: Any) -> None:
        with self._sync_mutex:
            if self._sync_not_empty_waiting:
                self._wake_at = _queue._NEVER
                self._sync_not_empty.notify()

    _queue.RecordQueue._wake = _wake  # type: ignore[method-assign]
    try:
        yield
    finally:
        _queue.RecordQueue._wake = original  # type: ignore[method-assign]
