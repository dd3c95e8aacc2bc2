"""Tests for :mod:`collectors.base`: one queue, one thread, one store, exact accounting.

A small ``Recorder`` collector stores what it receives. A ``Gate`` record
blocks its thread until the test releases it, which is how these tests hold
the collector still (a full queue, a marker behind a slow record) without
ever sleeping. Fixtures release every gate and stop every collector.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from collectors.base import Collector, CollectorState
from collectors.records import Batch

JOIN = 10.0  # seconds: a bound on every wait, never an expected duration


class Gate(NamedTuple):
    """Blocks the collector thread in ``_apply`` until ``release`` is set."""

    entered: threading.Event
    release: threading.Event
    tag: str = "gate"


class Recorder(Collector[list[Any]]):
    """Stores every record; a :class:`Gate` blocks the thread first."""

    def __init__(self, name: str = "rec", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)

    def _new_store(self) -> list[Any]:
        return []

    def _apply(self, record: Any) -> None:
        if type(record) is Gate:
            record.entered.set()
            if not record.release.wait(JOIN):
                raise TimeoutError("gate never released")
        self._store.append(record)

    def items(self) -> tuple[Any, ...]:
        return self.query(tuple)


class Harness:
    """Builds collectors and gates; releases and stops all of them at teardown."""

    def __init__(self) -> None:
        self.collectors: list[Collector[Any]] = []
        self.gates: list[Gate] = []

    def recorder(self, name: str = "rec", *, start: bool = True, **kwargs: Any) -> Recorder:
        collector = Recorder(name, **kwargs)
        self.collectors.append(collector)
        if start:
            collector.start()
        return collector

    def gate(self, tag: str = "gate") -> Gate:
        gate = Gate(threading.Event(), threading.Event(), tag)
        self.gates.append(gate)
        return gate

    def hold(self, collector: Collector[Any]) -> Gate:
        """Block ``collector``'s thread inside ``_apply`` and return the gate."""
        gate = self.gate()
        assert collector.send(gate)
        assert gate.entered.wait(JOIN), "the collector never took the gate"
        return gate

    def close(self) -> None:
        for gate in self.gates:
            gate.release.set()
        for collector in self.collectors:
            assert collector.stop(JOIN), f"collector {collector.name} did not stop"


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


def flushed(collector: Collector[Any]) -> bool:
    return collector.request_flush().result(JOIN)


def accounted(collector: Collector[Any]) -> int:
    stats = collector.stats()
    return stats.applied + stats.dropped_total


# --- construction -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"maxsize": 0}, "maxsize"),
        ({"batch_size": 0}, "batch_size"),
        ({"overflow": "drop_oldest"}, "overflow"),
        ({"block_timeout": -1.0}, "block_timeout"),
        ({"block_timeout": float("nan")}, "block_timeout"),
        ({"linger": 1.5}, "linger"),
        ({"linger": -0.1}, "linger"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Recorder(**kwargs)


def test_thread_is_named_after_the_collector_and_start_is_idempotent(harness: Harness) -> None:
    collector = harness.recorder("orders", start=False)
    assert collector.state is CollectorState.CREATED
    assert not collector.stats().alive
    collector.start()
    collector.start()
    names = [t.name for t in threading.enumerate()]
    assert names.count("collector-orders") == 1
    assert collector.state is CollectorState.RUNNING
    assert collector.stats().alive


# --- sending, flushing, querying --------------------------------------------


def test_records_and_batches_are_applied_in_fifo_order(harness: Harness) -> None:
    collector = harness.recorder()
    assert collector.send(1)
    assert collector.send(Batch((2, 3, 4)), 3)
    assert collector.send(5)
    assert flushed(collector)
    assert collector.items() == (1, 2, 3, 4, 5)
    stats = collector.stats()
    assert stats.applied == 5
    assert stats.dropped_total == 0
    assert stats.last_flush is not None


def test_query_runs_on_the_collector_thread_after_earlier_records(harness: Harness) -> None:
    collector = harness.recorder("q")
    for i in range(100):
        collector.send(i)
    # No flush: the query is queued behind the records, so it sees all of them.
    seen = collector.query(lambda store: (threading.current_thread().name, len(store)))
    assert seen == ("collector-q", 100)


def test_query_errors_reach_the_caller_and_the_thread_lives_on(harness: Harness) -> None:
    collector = harness.recorder()
    collector.send(1)
    with pytest.raises(ZeroDivisionError):
        collector.query(lambda store: 1 / 0)
    assert collector.items() == (1,)
    assert collector.stats().alive


def test_query_times_out_while_the_thread_is_held(harness: Harness) -> None:
    collector = harness.recorder()
    gate = harness.hold(collector)
    with pytest.raises(TimeoutError):
        collector.query(len, timeout=0.05)
    gate.release.set()
    assert collector.query(len) == 1


def test_flush_waits_for_records_before_the_marker_but_not_for_later_ones(
    harness: Harness,
) -> None:
    # Not Queue.join(): a record enqueued after the marker -- here one whose
    # handler blocks -- must not delay the flush.
    collector = harness.recorder()
    first = harness.hold(collector)
    for i in range(50):
        collector.send(i)
    marker = collector.request_flush()
    late = harness.gate("late")
    collector.send(late)
    assert not marker.done()  # the thread is still held before the marker
    first.release.set()
    assert marker.result(JOIN) is True
    assert late.entered.wait(JOIN)  # the late record is now blocking the thread
    stats = collector.stats()
    assert stats.applied == 51  # the gate and the 50 records, not the late one
    assert stats.queue_depth == 0
    late.release.set()
    assert flushed(collector)
    assert collector.stats().applied == 52


def test_concurrent_flushes_each_cover_their_own_callers_records(harness: Harness) -> None:
    collector = harness.recorder()
    threads, per_thread, rounds = 8, 200, 10
    failures: list[str] = []
    start = threading.Barrier(threads)

    def worker(tid: int) -> None:
        start.wait(JOIN)
        for r in range(rounds):
            for i in range(per_thread):
                collector.send((tid, r, i))
            if not flushed(collector):
                failures.append(f"{tid}: flush failed")
            mine = collector.query(lambda store: sum(1 for x in store if x[0] == tid))
            if mine != (r + 1) * per_thread:
                failures.append(f"{tid}: saw {mine} after round {r}")

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(JOIN * 2)
        assert not thread.is_alive()
    assert failures == []
    assert collector.stats().applied == threads * rounds * per_thread


def test_request_flush_before_start_is_false_and_after_stop_is_true(harness: Harness) -> None:
    collector = harness.recorder(start=False)
    assert collector.request_flush().result(0) is False
    collector.start()
    assert collector.stop(JOIN)
    assert collector.request_flush().result(0) is True


def test_a_cancelled_flush_marker_does_not_kill_the_thread(harness: Harness) -> None:
    collector = harness.recorder()
    gate = harness.hold(collector)
    marker = collector.request_flush()
    assert marker.cancel()
    gate.release.set()
    assert flushed(collector)
    assert collector.stats().alive
    assert collector.state is CollectorState.RUNNING


# --- overflow accounting ------------------------------------------------------


def test_drop_newest_counts_exactly_what_did_not_fit(harness: Harness) -> None:
    collector = harness.recorder(maxsize=8, overflow="drop_newest")
    gate = harness.hold(collector)
    results = [collector.send(i) for i in range(20)]
    assert results == [True] * 8 + [False] * 12
    assert collector.send(Batch((1, 2, 3)), 3) is False  # a batch counts its records
    stats = collector.stats()
    assert stats.queue_depth == 8
    assert dict(stats.dropped) == {"queue_full": 15}
    gate.release.set()
    assert flushed(collector)
    stats = collector.stats()
    assert stats.applied == 9
    assert stats.applied + stats.dropped_total == 1 + 20 + 3
    assert collector.items()[1:] == tuple(range(8))


def test_block_policy_drops_after_its_timeout(harness: Harness) -> None:
    collector = harness.recorder(maxsize=4, overflow="block", block_timeout=0.05)
    gate = harness.hold(collector)
    assert all(collector.send(i) for i in range(4))
    started = time.monotonic()
    assert collector.send("too many") is False
    assert time.monotonic() - started >= 0.04
    assert dict(collector.stats().dropped) == {"queue_full": 1}
    gate.release.set()
    assert flushed(collector)
    assert accounted(collector) == 6


def test_block_policy_enqueues_once_room_appears(harness: Harness) -> None:
    collector = harness.recorder(maxsize=4, overflow="block", block_timeout=JOIN)
    gate = harness.hold(collector)
    assert all(collector.send(i) for i in range(4))
    waiting = threading.Event()
    original_wait = collector._queue._sync_not_full.wait

    def signalling_wait(timeout: float | None = None) -> bool:
        waiting.set()
        return original_wait(timeout)

    collector._queue._sync_not_full.wait = signalling_wait  # type: ignore[method-assign]
    result: list[bool] = []
    sender = threading.Thread(target=lambda: result.append(collector.send("fits")), daemon=True)
    sender.start()
    assert waiting.wait(JOIN), "the sender never blocked"
    gate.release.set()
    sender.join(JOIN)
    assert result == [True]
    assert flushed(collector)
    assert collector.items()[-1] == "fits"
    stats = collector.stats()
    assert (stats.applied, stats.dropped_total) == (6, 0)


def test_async_block_send_gives_up_at_its_deadline(harness: Harness) -> None:
    collector = harness.recorder(maxsize=2, overflow="block", block_timeout=0.05)
    gate = harness.hold(collector)

    async def main() -> list[bool]:
        sent = [await collector.asend(i) for i in range(2)]
        started = time.monotonic()
        sent.append(await collector.asend("late"))
        assert time.monotonic() - started >= 0.04
        return sent

    assert asyncio.run(main()) == [True, True, False]
    gate.release.set()
    assert flushed(collector)
    stats = collector.stats()
    assert dict(stats.dropped) == {"queue_full": 1}
    assert stats.applied + stats.dropped_total == 4


def test_async_block_send_completes_when_room_appears(harness: Harness) -> None:
    collector = harness.recorder(maxsize=2, overflow="block", block_timeout=JOIN)
    gate = harness.hold(collector)

    async def main() -> bool:
        assert await collector.asend(0) and await collector.asend(1)
        pending = asyncio.ensure_future(collector.asend("fits"))
        await asyncio.sleep(0)  # let the send reach its executor wait
        assert not pending.done()
        gate.release.set()
        return await pending

    assert asyncio.run(main()) is True
    assert flushed(collector)
    assert collector.items() == (harness.gates[0], 0, 1, "fits")


def test_async_drop_newest_never_waits(harness: Harness) -> None:
    collector = harness.recorder(maxsize=2)
    gate = harness.hold(collector)

    async def main() -> list[bool]:
        return [await collector.asend(i) for i in range(5)]

    assert asyncio.run(main()) == [True, True, False, False, False]
    gate.release.set()
    assert flushed(collector)
    stats = collector.stats()
    assert dict(stats.dropped) == {"queue_full": 3}
    assert stats.applied + stats.dropped_total == 6


def test_many_producers_under_drop_newest_are_accounted_exactly(harness: Harness) -> None:
    collector = harness.recorder(maxsize=64, batch_size=16)
    threads, per_thread = 8, 5_000
    start = threading.Barrier(threads)
    sent_ok = [0] * threads

    def produce(tid: int) -> None:
        start.wait(JOIN)
        sent_ok[tid] = sum(collector.send((tid, i)) for i in range(per_thread))

    pool = [threading.Thread(target=produce, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(JOIN)
    assert flushed(collector)
    stats = collector.stats()
    assert stats.applied == sum(sent_ok)
    assert stats.applied + stats.dropped_total == threads * per_thread
    assert set(stats.dropped) <= {"queue_full"}
    assert len(collector.items()) == stats.applied


# --- stopping -------------------------------------------------------------------


def test_stop_drains_then_later_sends_are_dropped_as_closed(harness: Harness) -> None:
    collector = harness.recorder()
    for i in range(100):
        collector.send(i)
    assert collector.stop(JOIN)
    assert collector.state is CollectorState.STOPPED
    assert not collector.stats().alive
    assert collector.send("late") is False
    assert collector.send(Batch(("a", "b")), 2) is False
    assert collector.send_control("reset") is False
    assert asyncio.run(collector.asend("async late")) is False
    stats = collector.stats()
    assert stats.applied == 100
    assert dict(stats.dropped) == {"closed": 5}
    assert collector.stop(JOIN)  # idempotent
    assert collector.items() == tuple(range(100))  # reads work after stop


def test_stop_is_bounded_and_accounting_stays_exact_when_the_thread_is_slow(
    harness: Harness,
) -> None:
    collector = harness.recorder()
    gate = harness.hold(collector)
    for i in range(10):
        collector.send(i)
    started = time.monotonic()
    assert collector.stop(0.05) is False  # the thread is held: gave up, bounded
    assert time.monotonic() - started < 1.0
    assert collector.send("after stop") is False
    gate.release.set()
    collector._thread.join(JOIN)  # type: ignore[union-attr]
    # The thread marks itself stopped on its way out, so reads and flushes
    # do not wait for a thread that is gone.
    assert collector.state is CollectorState.STOPPED
    assert collector.items()[1:] == tuple(range(10))
    assert collector.request_flush().result(0) is True
    stats = collector.stats()
    assert stats.applied == 11
    assert dict(stats.dropped) == {"closed": 1}


def test_records_queued_before_start_are_dropped_as_closed_if_never_started(
    harness: Harness,
) -> None:
    collector = harness.recorder(start=False)
    for i in range(3):
        collector.send(i)
    assert collector.stop(JOIN)
    stats = collector.stats()
    assert (stats.applied, dict(stats.dropped)) == (0, {"closed": 3})
    assert collector.items() == ()


def test_send_control_passes_the_bound_and_counts_as_one_record(harness: Harness) -> None:
    collector = harness.recorder(maxsize=2)
    gate = harness.hold(collector)
    assert collector.send(1) and collector.send(2)
    assert collector.send(3) is False
    assert collector.send_control("control")
    gate.release.set()
    assert flushed(collector)
    assert collector.items()[1:] == (1, 2, "control")
    stats = collector.stats()
    assert (stats.applied, dict(stats.dropped)) == (4, {"queue_full": 1})


def test_stats_never_wait_for_a_held_thread(harness: Harness) -> None:
    collector = harness.recorder(maxsize=16)
    gate = harness.hold(collector)
    for i in range(40):
        collector.send(i)
    started = time.monotonic()
    stats = [collector.stats() for _ in range(1_000)]
    assert time.monotonic() - started < 1.0
    last = stats[-1]
    assert last.queue_depth == 16
    assert last.queue_capacity == 16
    assert last.dropped_total == 24
    assert last.applied == 0
    assert last.alive
    gate.release.set()


# --- the commit hook and thread ownership -------------------------------------------


class Committer(Recorder):
    """Remembers how many records were applied at each commit; answers ``durable``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("committer", **kwargs)
        self.commits: list[int] = []
        self.durable = True

    def _commit(self) -> bool:
        self.commits.append(len(self._store))
        return self.durable


def test_a_flush_resolves_with_what_the_commit_hook_answers(harness: Harness) -> None:
    collector = Committer()
    harness.collectors.append(collector)
    collector.start()
    collector.send("a")
    collector.send(Batch(("b", "c")), 2)
    assert flushed(collector) is True
    assert collector.commits and collector.commits[-1] == 3  # committed before it resolved
    collector.durable = False  # e.g. a ledger that could not write
    collector.send("d")
    assert flushed(collector) is False
    assert collector.commits[-1] == 4
    collector.durable = True
    assert flushed(collector) is True
    assert collector.items() == ("a", "b", "c", "d")


def test_owns_current_thread_is_true_only_on_the_collector_thread(harness: Harness) -> None:
    collector = harness.recorder()
    assert collector.owns_current_thread() is False
    assert collector.query(lambda _: collector.owns_current_thread()) is True
    other: list[bool] = []
    thread = threading.Thread(target=lambda: other.append(collector.owns_current_thread()))
    thread.start()
    thread.join(JOIN)
    assert other == [False]
    unstarted = harness.recorder("idle", start=False)
    assert unstarted.owns_current_thread() is False
