"""Minimal prototypes of proposed design changes, measured beside the real code.

**Not product code.** Each prototype is the smallest thing that shows what a
design change recommended in ``docs/PERFORMANCE.md`` would cost on the hot
path, so that the recommendation rests on a measurement made in the same run
rather than on a guess. Nothing in ``app/`` or ``collectors/`` uses them.

* :class:`AggregatingCounter`: producer-side aggregation of counter
  increments in a per-thread dict (what a collector would swap out and merge).
* :class:`PrototypeTracer`: a span that is its own context manager and is
  queued as-is when it ends (the collector would build the record).
* :class:`FloorNode`: the least Python work one instrumented node needs
  (context variable, ids, clocks, three records, then storing them), with no
  facade, no argument checks and no collector thread: a floor for the
  ``node`` benchmark, not a design.
* :class:`ShellFacade`: the public calls' shapes with empty bodies: what the
  calls alone cost (``with span(...)``, two metric calls with keyword labels).
* :func:`floor_node_wrapper`: the least a LangGraph node wrapper can do that
  still measures the node (two clock reads, one tuple per call, appended to a
  list), keeping sync nodes sync and async nodes async: a floor for the
  ``workflow`` benchmark, not a design.
"""

from __future__ import annotations

import functools
import inspect
import math
import random
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

__all__ = (
    "AggregatingCounter", "FloorNode", "PrototypeSpan", "PrototypeTracer", "ShellFacade",
    "floor_node_wrapper",
)


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


class FloorNode:
    """One node's instrumentation reduced to the work no design can skip, in one thread.

    Per node: read the current span, two random ids (a root span), the wall and
    monotonic clocks, set and reset the context variable, build the span
    record (13 fields), a counter record and a histogram record, and append
    the three to a deque. Every 256 nodes the same thread stores them: the span
    into a ring buffer, the counter into a dict, the histogram observation into
    its buckets and a log-scale sketch bin. No argument checks, no facade call,
    no queue bound, no thread hand-off: what the GIL makes the real pipeline
    pay in the caller's loop, minus everything a product adds.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.current: ContextVar[int | None] = ContextVar("floor_span", default=None)
        self.rng = random.Random()
        self.records: deque[tuple[Any, ...]] = deque()
        self.ring: deque[tuple[Any, ...]] = deque(maxlen=10_000)
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.bins: dict[int, int] = {}
        self.labels: dict[str, tuple[tuple[str, str], ...]] = {}
        self.inv_log_gamma = 1 / math.log(1.02)

    def run(self, nodes: int, tenants: tuple[str, ...], work: Any) -> int:
        """Run ``nodes`` instrumented nodes; returns how many spans were stored."""
        current, getrandbits, append = self.current, self.rng.getrandbits, self.records.append
        labels = self.labels
        clock, wall = time.perf_counter_ns, time.time_ns
        node_labels = (("node", "risk_scoring"),)
        for i in range(nodes):
            t0 = clock()
            tenant = tenants[i & 7]
            parent = current.get()
            trace_id, span_id = getrandbits(128), getrandbits(64)
            start_ns, start = wall(), clock()
            token = current.set(span_id)
            work()
            end = clock()
            current.reset(token)
            append((trace_id, span_id, parent or 0, "risk_scoring", "node", start_ns,
                    start_ns + end - start, "ok", None, None, (), (), False))
            tenant_labels = labels.get(tenant)
            if tenant_labels is None:
                tenant_labels = labels[tenant] = (("tenant_id", tenant),)
            append(("request_count", tenant_labels, 1))
            append(("node_execution_latency", node_labels, (clock() - t0) / 1e9))
            if i & 255 == 255:
                self._store()
        self._store()
        return len(self.ring)

    def _store(self) -> None:
        records, ring, counters = self.records, self.ring, self.counters
        buckets, bins, bounds, k = self.buckets, self.bins, self.bounds, self.inv_log_gamma
        while records:
            record = records.popleft()
            if len(record) == 13:
                ring.append(record)
            elif record[0] == "request_count":
                key = (record[0], record[1])
                counters[key] = counters.get(key, 0) + record[2]
            else:
                value = record[2]
                buckets[bisect_left(bounds, value)] += 1
                index = math.ceil(math.log(value) * k) if value > 0 else 0
                bins[index] = bins.get(index, 0) + 1


class _ShellSpan:
    __slots__ = ()

    def __enter__(self) -> _ShellSpan:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


_SHELL_SPAN = _ShellSpan()


class ShellFacade:
    """``span``, ``increment`` and ``observe_latency`` with our signatures and empty bodies."""

    def span(self, name: str, *, kind: str = "internal") -> _ShellSpan:
        """A context manager that does nothing."""
        return _SHELL_SPAN

    def increment(self, metric: str, amount: int | float = 1, /, **labels: str) -> None:
        """Nothing."""

    def observe_latency(self, metric: str, seconds: float, /, **labels: str) -> None:
        """Nothing."""


def floor_node_wrapper(
    sink: list[tuple[str, int, int]],
) -> Callable[[str, Callable[..., Any]], Callable[..., Any]]:
    """A ``node_wrapper`` for ``build_risk_graph`` that does the least that measures a node.

    Each call of a wrapped node appends ``(node, start_ns, end_ns)`` to ``sink``
    (a completed call only: no span, no context variable, no failure capture,
    no queue, no collector). The caller empties ``sink``.
    """
    append = sink.append
    clock = time.perf_counter_ns

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_node(*args: Any, **kwargs: Any) -> Any:
                started = clock()
                result = await fn(*args, **kwargs)
                append((name, started, clock()))
                return result

            return async_node

        @functools.wraps(fn)
        def sync_node(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            result = fn(*args, **kwargs)
            append((name, started, clock()))
            return result

        return sync_node

    return wrap
