"""Tests for :mod:`collectors.outbox`: where a span's records go.

A :class:`RecordSink` sends each record straight to its collector; a
:class:`RunOutbox` keeps a batched run's records and sends them as one
:class:`~collectors.records.Batch` per collector when the run closes (or
early, past its limit). Records added after the close go straight through.
Whatever the interleaving, every record reaches its collector exactly once.

The collectors here are real :class:`~collectors.base.Collector` threads
that store what they apply and log each ``send`` (the item's type and how
many records it carries), so the tests see both what arrived and in which
shape. Reads go through ``flush`` and ``query``; nothing sleeps.
"""

from __future__ import annotations

import contextvars
import threading
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from app.observability import Observability, ObservabilitySettings
from collectors.base import Collector
from collectors.outbox import RecordSink, RunOutbox
from collectors.records import Batch, CostRecord, MetricRecord, SpanRecord

JOIN = 10.0  # seconds: a bound on every wait, never an expected duration


class Spy(Collector[list[Any]]):
    """Stores every record it applies and logs every send as ``(kind, n)``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.sends: list[tuple[str, int]] = []
        self._sends_lock = threading.Lock()

    def send(self, record: object, n: int = 1) -> bool:
        with self._sends_lock:
            self.sends.append(("batch" if type(record) is Batch else "record", n))
        return super().send(record, n)

    def _new_store(self) -> list[Any]:
        return []

    def _apply(self, record: Any) -> None:
        self._store.append(record)

    def received(self) -> list[Any]:
        """Everything applied so far, after every record sent before the call."""
        assert self.request_flush().result(JOIN)
        return self.query(list)


@pytest.fixture
def spies() -> Iterator[tuple[Spy, Spy, Spy]]:
    made = (Spy("spans"), Spy("metrics"), Spy("costs"))
    for spy in made:
        spy.start()
    try:
        yield made
    finally:
        for spy in made:
            assert spy.stop(JOIN)


def _span(span_id: int) -> SpanRecord:
    return SpanRecord(1, span_id, 0, "s", "node", 0, 1, "ok", None, None, ())


def _metric(value: int) -> MetricRecord:
    return MetricRecord("m", (("tenant_id", "t1"),), value)


def _cost(n: int) -> CostRecord:
    return CostRecord(f"e{n}", "t1", None, "m", None, 1, 1, Decimal(n), True, n)


# --- the plain sink ----------------------------------------------------------------


def test_the_plain_sink_sends_each_record_straight_through(
    spies: tuple[Spy, Spy, Spy],
) -> None:
    spans, metrics, costs = spies
    sink = RecordSink(spans, metrics, costs)
    sink.add_span(_span(1))
    sink.add_metric(_metric(1))
    sink.add_metrics([_metric(2), _metric(3), _metric(4)])
    sink.add_metrics([])  # nothing to send: no send at all
    sink.add_metrics([_metric(5)])  # one record travels as itself
    sink.add_cost(_cost(1))

    assert [r.span_id for r in spans.received()] == [1]
    assert [r.value for r in metrics.received()] == [1, 2, 3, 4, 5]
    assert [r.event_id for r in costs.received()] == ["e1"]
    assert spans.sends == [("record", 1)]
    assert metrics.sends == [("record", 1), ("batch", 3), ("record", 1)]
    assert costs.sends == [("record", 1)]
    assert metrics.stats().applied == 5  # a batch counts its records, not itself


def test_a_sink_without_a_collector_drops_nothing_and_raises_nothing() -> None:
    sink = RecordSink(None, None, None)
    sink.add_span(_span(1))
    sink.add_metrics([_metric(1), _metric(2)])
    outbox = RunOutbox(None, None, None, limit=1)
    outbox.add_metric(_metric(1))
    outbox.close()
    outbox.add_cost(_cost(1))


# --- the run's outbox -----------------------------------------------------------------


def test_a_run_s_records_leave_together_one_batch_per_collector_at_close(
    spies: tuple[Spy, Spy, Spy],
) -> None:
    spans, metrics, costs = spies
    outbox = RunOutbox(spans, metrics, costs)
    assert outbox.open
    for i in range(3):
        outbox.add_span(_span(i))
        outbox.add_metric(_metric(i))
    outbox.add_metrics([_metric(10), _metric(11)])
    outbox.add_cost(_cost(1))
    assert (spans.received(), metrics.received(), costs.received()) == ([], [], [])

    outbox.close()

    assert not outbox.open
    assert [r.span_id for r in spans.received()] == [0, 1, 2]
    assert [r.value for r in metrics.received()] == [0, 1, 2, 10, 11]  # in the order added
    assert [r.event_id for r in costs.received()] == ["e1"]
    assert spans.sends == [("batch", 3)]
    assert metrics.sends == [("batch", 5)]
    assert costs.sends == [("record", 1)]  # a single record is sent as itself
    assert (spans.stats().applied, metrics.stats().applied, costs.stats().applied) == (3, 5, 1)


def test_a_run_that_reaches_its_limit_sends_what_it_has_early(
    spies: tuple[Spy, Spy, Spy],
) -> None:
    spans, metrics, costs = spies
    outbox = RunOutbox(spans, metrics, costs, limit=5)
    for i in range(2):
        outbox.add_span(_span(i))
    outbox.add_metric(_metric(0))
    outbox.add_cost(_cost(0))
    assert (spans.received(), metrics.received(), costs.received()) == ([], [], [])

    outbox.add_metrics([_metric(1), _metric(2)])  # 6 records >= 5: everything leaves
    assert outbox.open  # an early send does not close the run
    assert [r.span_id for r in spans.received()] == [0, 1]
    assert [r.value for r in metrics.received()] == [0, 1, 2]
    assert [r.event_id for r in costs.received()] == ["e0"]
    assert (spans.sends, metrics.sends, costs.sends) == (
        [("batch", 2)], [("batch", 3)], [("record", 1)])

    outbox.add_span(_span(2))  # counting starts again from zero
    for i in range(3, 6):
        outbox.add_metric(_metric(i))
    assert metrics.received() == [_metric(v) for v in range(3)]  # 4 < 5: kept
    outbox.close()
    assert [r.span_id for r in spans.received()] == [0, 1, 2]
    assert [r.value for r in metrics.received()] == [0, 1, 2, 3, 4, 5]
    assert (spans.sends[-1], metrics.sends[-1]) == (("record", 1), ("batch", 3))
    assert len(costs.sends) == 1  # no empty batch is ever sent


def test_adds_after_the_close_go_straight_through(spies: tuple[Spy, Spy, Spy]) -> None:
    spans, metrics, costs = spies
    outbox = RunOutbox(spans, metrics, costs)
    outbox.add_metric(_metric(0))
    outbox.close()
    assert metrics.sends == [("record", 1)]

    outbox.add_span(_span(7))  # a task of the run that outlived its root
    outbox.add_metrics([_metric(1), _metric(2)])
    outbox.add_cost(_cost(3))

    assert [r.span_id for r in spans.received()] == [7]
    assert [r.value for r in metrics.received()] == [0, 1, 2]
    assert [r.event_id for r in costs.received()] == ["e3"]
    assert metrics.sends == [("record", 1), ("batch", 2)]
    outbox.close()  # closing again sends nothing twice
    assert [r.value for r in metrics.received()] == [0, 1, 2]
    assert len(metrics.sends) == 2


def test_a_batch_a_closed_collector_refuses_counts_every_record_in_it(
    spies: tuple[Spy, Spy, Spy],
) -> None:
    spans, metrics, costs = spies
    outbox = RunOutbox(spans, metrics, costs)
    outbox.add_metrics([_metric(i) for i in range(5)])
    outbox.add_span(_span(1))
    assert metrics.stop(JOIN)

    outbox.close()  # the metrics collector is gone: five records dropped, not one batch

    stats = metrics.stats()
    assert (stats.applied, dict(stats.dropped)) == (0, {"closed": 5})
    assert [r.span_id for r in spans.received()] == [1]


# --- many threads, one run ------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("limit", [7, 512])
def test_concurrent_adds_and_a_close_deliver_every_record_exactly_once(
    spies: tuple[Spy, Spy, Spy], limit: int,
) -> None:
    """Sixteen threads add while the run closes midway; small limits send early often."""
    spans, metrics, _ = spies
    threads, per_thread = 16, 500
    outbox = RunOutbox(spans, metrics, None, limit=limit)
    halfway = threading.Barrier(threads + 1)

    def producer(index: int) -> None:
        base = index * per_thread
        for i in range(per_thread):
            if i == per_thread // 2:
                halfway.wait(JOIN)  # the close happens while the second halves run
            outbox.add_span(_span(base + i))
            if i % 2:
                outbox.add_metrics([_metric(base + i), _metric(-(base + i) - 1)])
            else:
                outbox.add_metric(_metric(base + i))

    workers = [threading.Thread(target=producer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    halfway.wait(JOIN)
    outbox.close()
    for worker in workers:
        worker.join(JOIN)
        assert not worker.is_alive()

    total = threads * per_thread
    span_ids = Counter(r.span_id for r in spans.received())
    assert span_ids == Counter(range(total))  # each exactly once
    values = Counter(r.value for r in metrics.received())
    odd = [v for v in range(total) if (v % per_thread) % 2]
    assert values == Counter([*range(total), *(-v - 1 for v in odd)])
    assert sum(n for _, n in metrics.sends) == total + len(odd)  # sends account for all
    for spy in (spans, metrics):
        stats = spy.stats()
        assert (stats.dropped_total, stats.handler_errors) == (0, 0)


THREADS, PER_THREAD = 16, 300


def _one_batched_run_ended_from_many_threads(obs: Observability) -> None:
    """Sixteen threads end spans of one batched run; its root ends halfway through."""
    tracing = obs.tracing
    requests = obs.metrics.counter("request_count").labels(tenant_id="t1")
    latency = obs.metrics.histogram("node_execution_latency").labels(
        node="n", tenant_id="t1", status="ok")
    root = tracing.start_span_sync("wf", kind="workflow", tenant_id="t1", batch=True)
    assert type(root.sink) is RunOutbox
    halfway = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []

    def node_spans() -> None:
        try:
            for i in range(PER_THREAD):
                if i == PER_THREAD // 2:
                    halfway.wait(JOIN)
                span = tracing.start_span_sync(f"n{i % 3}", kind="node")
                record = tracing.end_span_sync(span)
                span.sink.add_metric(requests.record(1))
                if i % 3 == 0:
                    span.sink.add_metrics([requests.record(2),
                                           latency.record(record.duration_seconds)])
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=contextvars.copy_context().run, args=(node_spans,))
               for _ in range(THREADS)]
    for worker in workers:
        worker.start()
    halfway.wait(JOIN)
    tracing.end_span_sync(root)  # the run's root ends while its spans still end
    for worker in workers:
        worker.join(JOIN)
        assert not worker.is_alive()
    assert errors == []
    assert obs.flush(JOIN)

    spans = tracing.finished_spans()
    children = [s for s in spans if s.kind == "node"]
    assert len(spans) == THREADS * PER_THREAD + 1
    assert len({s.span_id for s in spans}) == len(spans)  # none twice
    assert {s.parent_span_id for s in children} == {root.span_id}
    assert {s.trace_id for s in spans} == {root.trace_id}
    thirds = len(range(0, PER_THREAD, 3))
    exported = obs.metrics.export_metrics()
    (value,) = [s["value"] for s in exported["request_count"]["series"]]
    assert value == THREADS * (PER_THREAD + 2 * thirds)
    (histogram,) = exported["node_execution_latency"]["series"]
    assert histogram["count"] == THREADS * thirds
    health = obs.health()
    assert health.dropped_total == 0
    assert all(s.handler_errors == 0 for s in health.collectors.values())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("round_number", range(3))
def test_sixteen_threads_ending_spans_of_one_batched_run_deliver_every_record_once(
    round_number: int,
) -> None:
    """The spans of one batched run end on many threads at once: each record arrives once.

    A batched root is started; sixteen threads, each in a copy of its context,
    start and end child spans and add metric records through the span's sink
    (its run's outbox). The root ends while they are halfway through, so some
    records leave in early sends, some with the root and the rest straight
    through after the close. After a flush every span is stored once and the
    metrics' totals are exact.
    """
    obs = Observability(ObservabilitySettings(id_seed=round_number, drain_at_exit=False))
    try:
        _one_batched_run_ended_from_many_threads(obs)
    finally:
        obs.close(JOIN)
