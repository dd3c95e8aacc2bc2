"""Fault injection: handlers that raise, collectors that die, interrupts that must not be eaten.

* An ``Exception`` in a handler is caught, counted (``handler_errors`` and
  ``dropped["handler_error"]``) and logged; the thread lives on.
* A ``BaseException`` (the test's own ``Die``, ``KeyboardInterrupt``,
  ``SystemExit``) is not swallowed: the thread dies with it (the test's
  ``threading.excepthook`` receives it), the collector is ``DEAD``, health
  shows it, flushes fail fast, and every record is still accounted for
  (``collector_dead``), including those the thread had drained but not
  applied.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from collectors.base import Collector, CollectorState
from collectors.pipeline import Pipeline
from collectors.records import Batch, SpanRecord
from collectors.trace import TraceStoreCollector

JOIN = 10.0


class Die(BaseException):
    """Raised by a handler to kill its collector thread."""


class Gate(NamedTuple):
    entered: threading.Event
    release: threading.Event


class Raise(NamedTuple):
    """A record whose handler raises ``exc``."""

    exc: BaseException


class Faulty(Collector[list[Any]]):
    """Stores ints; ``Raise`` records raise; a ``Gate`` blocks the thread."""

    def __init__(self, name: str = "faulty", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)

    def _new_store(self) -> list[Any]:
        return []

    def _apply(self, record: Any) -> None:
        kind = type(record)
        if kind is Raise:
            raise record.exc
        if kind is Gate:
            record.entered.set()
            if not record.release.wait(JOIN):
                raise TimeoutError("gate never released")
        self._store.append(record)


class ThreadDeaths:
    """Collects what ``threading.excepthook`` receives during a test."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, type[BaseException]]] = []

    def __call__(self, args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        self.seen.append((name, args.exc_type))


@pytest.fixture
def deaths(monkeypatch: pytest.MonkeyPatch) -> ThreadDeaths:
    """Record thread deaths instead of letting pytest turn them into errors."""
    hook = ThreadDeaths()
    monkeypatch.setattr(threading, "excepthook", hook)
    return hook


@pytest.fixture
def made() -> Iterator[list[Any]]:
    """Collectors, pipelines and gates a test made; released and stopped at teardown."""
    things: list[Any] = []
    try:
        yield things
    finally:
        for thing in things:
            if isinstance(thing, Gate):
                thing.release.set()
        for thing in things:
            if isinstance(thing, Pipeline):
                thing.close(JOIN)
            elif isinstance(thing, Collector):
                thing.stop(JOIN)


def _gate(made: list[Any]) -> Gate:
    gate = Gate(threading.Event(), threading.Event())
    made.append(gate)
    return gate


def _started(made: list[Any], collector: Collector[Any]) -> Collector[Any]:
    made.append(collector)
    collector.start()
    return collector


def _join(collector: Collector[Any]) -> None:
    thread = collector._thread
    assert thread is not None
    thread.join(JOIN)
    assert not thread.is_alive()


# --- handler exceptions ---------------------------------------------------------


def test_a_handler_raising_on_one_record_in_n_is_counted_and_the_rest_applied(
    made: list[Any],
) -> None:
    collector = _started(made, Faulty())
    n, total = 7, 7_000
    for i in range(total):
        collector.send(Raise(ValueError(f"bad {i}")) if i % n == 0 else i)
    # and inside batches too
    collector.send(Batch((1, Raise(KeyError("k")), 2)), 3)
    assert collector.request_flush().result(JOIN)
    stats = collector.stats()
    failures = total // n + 1
    assert stats.handler_errors == failures
    assert dict(stats.dropped) == {"handler_error": failures}
    assert stats.applied == total + 3 - failures
    assert stats.alive and stats.state is CollectorState.RUNNING
    assert stats.last_error == "KeyError: 'k'"
    stored = collector.query(tuple)
    assert stored[:-2] == tuple(i for i in range(total) if i % n)
    assert stored[-2:] == (1, 2)


def test_a_redactor_that_raises_masks_its_span_instead_of_leaking_or_losing_it(
    made: list[Any],
) -> None:
    """Redaction runs where spans leave the store; a failing redactor fails safe."""

    def redactor(span: SpanRecord) -> SpanRecord:
        if span.span_id % 5 == 0:
            raise RuntimeError("redaction failed")
        return span

    collector = _started(made, TraceStoreCollector(redactor=redactor))
    for span_id in range(1, 101):
        collector.send(SpanRecord(1, span_id, 0, "s", "internal", 0, 1, "error", "E", "boom",
                                  (("user", "alice"), ("attempt", 2))))
    assert collector.request_flush().result(JOIN)
    stats = collector.stats()
    assert (stats.applied, stats.handler_errors, dict(stats.dropped)) == (100, 0, {})
    spans = collector.spans()
    assert len(spans) == 100
    masked = [span for span in spans if span.span_id % 5 == 0]
    assert len(masked) == 20
    assert all(span.attributes == (("user", "[REDACTED]"), ("attempt", 2)) for span in masked)
    assert all(span.error_message == "[REDACTED]" for span in masked)
    assert all(span.attributes == (("user", "alice"), ("attempt", 2))
               for span in spans if span.span_id % 5)
    assert stats.alive


# --- collector death ------------------------------------------------------------


def test_a_dying_handler_kills_the_thread_and_every_record_is_still_accounted(
    made: list[Any], deaths: ThreadDeaths,
) -> None:
    collector = _started(made, Faulty("doomed"))
    gate = _gate(made)
    collector.send(gate)
    assert gate.entered.wait(JOIN)
    # Everything below is drained in one batch after the gate: records before
    # and after the fatal one, inside a batch, and a flush marker behind them.
    for i in range(10):
        collector.send(i)
    collector.send(Batch((100, 101, Raise(Die("fatal")), 102, 103)), 5)
    for i in range(5):
        collector.send(i)
    marker = collector.request_flush()
    gate.release.set()
    started = time.monotonic()
    assert marker.result(JOIN) is False  # resolved at once, not left to time out
    assert time.monotonic() - started < 1.0
    _join(collector)
    assert deaths.seen == [("collector-doomed", Die)]
    stats = collector.stats()
    assert stats.state is CollectorState.DEAD
    assert not stats.alive
    assert stats.last_error == "Die: fatal"
    assert stats.applied == 1 + 10 + 2  # the gate, ten records, 100 and 101
    assert dict(stats.dropped) == {"collector_dead": 3 + 5}  # the fatal one, 102, 103, five
    # Sends after the death are refused as collector_dead, never raised.
    assert collector.send(1) is False
    assert collector.send_control("x") is False
    stats = collector.stats()
    assert stats.applied + stats.dropped_total == 1 + 10 + 5 + 5 + 2
    assert dict(stats.dropped) == {"collector_dead": 10}
    # Reads still work: nobody owns the store any more.
    assert collector.query(len) == 13
    assert collector.request_flush().result(0) is False


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3)], ids=type)
def test_keyboard_interrupt_and_system_exit_are_not_swallowed(
    made: list[Any], deaths: ThreadDeaths, exc: BaseException,
) -> None:
    collector = Faulty("victim")
    pipeline = Pipeline([collector, Faulty("bystander")], drain_at_exit=False)
    made.append(pipeline)
    pipeline.start()
    assert pipeline.health().healthy
    collector.send(1)
    collector.send(Raise(exc))
    collector.send(2)
    _join(collector)
    assert deaths.seen == [("collector-victim", type(exc))]
    health = pipeline.health()
    assert not health.healthy
    assert health.collectors["victim"].state is CollectorState.DEAD
    assert not health.collectors["victim"].alive
    assert health.collectors["bystander"].alive
    assert health.collectors["victim"].last_error.startswith(type(exc).__name__)
    started = time.monotonic()
    result = pipeline.flush(JOIN)
    assert time.monotonic() - started < 1.0
    assert not result
    assert result.dead == ("victim",)
    assert not result.timed_out
    stats = health.collectors["victim"]
    assert stats.applied + stats.dropped_total == 3


def test_a_pipeline_flush_with_a_dead_collector_fails_fast(
    made: list[Any], deaths: ThreadDeaths,
) -> None:
    dead, alive = Faulty("dead"), Faulty("alive")
    pipeline = Pipeline([dead, alive], drain_at_exit=False)
    made.append(pipeline)
    pipeline.start()
    dead.send(Raise(Die("x")))
    _join(dead)
    alive.send(1)
    started = time.monotonic()
    result = pipeline.flush(JOIN)
    assert time.monotonic() - started < 1.0
    assert (result.complete, result.dead, result.timed_out) == (False, ("dead",), False)
    assert alive.query(tuple) == (1,)
    closed = pipeline.close(JOIN)
    assert not closed.complete and closed.dead == ("dead",)
    assert deaths.seen == [("collector-dead", Die)]


def test_a_query_whose_function_kills_the_thread_fails_instead_of_hanging(
    made: list[Any], deaths: ThreadDeaths,
) -> None:
    collector = _started(made, Faulty())
    collector.send(1)

    def fatal(store: list[Any]) -> None:
        raise Die("in a query")

    with pytest.raises(RuntimeError, match="died"):
        collector.query(fatal, timeout=JOIN)
    _join(collector)
    assert collector.state is CollectorState.DEAD
    assert collector.query(tuple) == (1,)
    assert deaths.seen == [("collector-faulty", Die)]


def test_a_cancelled_query_future_does_not_kill_the_thread(made: list[Any]) -> None:
    collector = _started(made, Faulty())
    gate = _gate(made)
    collector.send(gate)
    assert gate.entered.wait(JOIN)
    with pytest.raises(TimeoutError):
        collector.query(len, timeout=0.01)  # the caller gave up; its answer comes later
    marker = collector.request_flush()
    marker.cancel()
    gate.release.set()
    assert collector.request_flush().result(JOIN)
    assert collector.stats().alive


def _span(span_id: int) -> SpanRecord:
    return SpanRecord(1, span_id, 0, "s", "node", 0, 1, "ok", None, None, (("tenant_id", "t1"),))


def test_a_batch_of_spans_is_stored_at_once_and_evictions_are_counted_exactly(
    made: list[Any],
) -> None:
    collector = _started(made, TraceStoreCollector(capacity=5))
    collector.send(Batch(tuple(_span(i) for i in range(1, 4))), 3)
    collector.send(Batch(tuple(_span(i) for i in range(4, 12))), 8)  # more than fits
    assert collector.request_flush().result(JOIN)

    assert collector.counts() == (11, 6)
    assert [span.span_id for span in collector.spans()] == [7, 8, 9, 10, 11]
    assert collector.spans()[0].attributes == (("tenant_id", "t1"),)
    assert collector.stats().applied == 11


def test_a_batch_with_a_malformed_span_keeps_the_good_ones_and_counts_the_bad(
    made: list[Any],
) -> None:
    collector = _started(made, TraceStoreCollector(capacity=100))
    pairs = SpanRecord(1, 3, 0, "s", "node", 0, 1, "ok", None, None, (("user", "u"),))
    # A plain tuple with a span's fields is not a SpanRecord: refused like any other junk.
    plain = (1, 9, 0, "s", "node", 0, 1, "ok", None, None, (("tenant_id", "t1"),), (), False)
    collector.send(Batch((_span(1), (1, 2, 3), pairs, plain, _span(4))), 5)
    assert collector.request_flush().result(JOIN)

    stats = collector.stats()
    assert (stats.applied, stats.handler_errors) == (3, 2)
    assert dict(stats.dropped) == {"handler_error": 2}
    assert [span.span_id for span in collector.spans()] == [1, 3, 4]
    assert collector.spans()[1].attributes == (("user", "u"),)
