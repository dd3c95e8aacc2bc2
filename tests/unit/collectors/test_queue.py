"""Tests for :mod:`collectors._queue`: the bounded janus queue every collector drains.

Nothing here sleeps to wait for another thread: threads are joined, and the
one wait that must be observed (a producer blocked for room) is made visible
by a condition variable that signals when ``wait`` is entered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from collectors._queue import RecordQueue

JOIN = 10.0  # seconds: a bound on every join, never an expected duration


class _SignallingCondition(threading.Condition):
    """A condition that sets ``entered`` each time a thread starts waiting on it."""

    def __init__(self, lock: Any, entered: threading.Event) -> None:
        super().__init__(lock)
        self.entered = entered

    def wait(self, timeout: float | None = None) -> bool:
        self.entered.set()
        return super().wait(timeout)


def _watch_not_full(queue: RecordQueue) -> threading.Event:
    """Return an event set when a producer starts waiting for room in ``queue``."""
    entered = threading.Event()
    queue._sync_not_full = _SignallingCondition(queue._sync_mutex, entered)
    return entered


def _watch_not_empty(queue: RecordQueue) -> threading.Event:
    """Return an event set when the consumer starts waiting for items in ``queue``."""
    entered = threading.Event()
    queue._sync_not_empty = _SignallingCondition(queue._sync_mutex, entered)
    return entered


def _run(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Start ``target`` on a thread; its return value lands in the returned list."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)
    thread.start()
    return thread, out


def _joined(thread: threading.Thread) -> bool:
    thread.join(JOIN)
    return not thread.is_alive()


# --- construction and the bound ------------------------------------------


@pytest.mark.parametrize("maxsize", [0, -1])
def test_non_positive_maxsize_is_refused(maxsize: int) -> None:
    with pytest.raises(ValueError, match="maxsize must be positive"):
        RecordQueue(maxsize)


def test_offer_fills_to_the_bound_then_refuses() -> None:
    queue = RecordQueue(4)
    assert [queue.offer(i) for i in range(6)] == [True, True, True, True, False, False]
    assert queue.depth() == 4
    assert queue.drain(100, 0) == [0, 1, 2, 3]
    assert queue.offer(4)  # room again
    assert queue.depth() == 1


def test_offer_control_passes_the_bound_and_keeps_its_fifo_place() -> None:
    queue = RecordQueue(2)
    assert queue.offer("a") and queue.offer("b")
    assert not queue.offer("c")
    assert queue.offer_control("flush")
    assert queue.depth() == 3
    assert not queue.offer("d")  # still full for records
    assert queue.drain(100, 0) == ["a", "b", "flush"]


def test_drain_is_fifo_and_takes_at_most_max_items() -> None:
    queue = RecordQueue(100)
    for i in range(10):
        queue.offer(i)
    assert queue.drain(3, 0) == [0, 1, 2]
    assert queue.drain(4, 0) == [3, 4, 5, 6]
    assert queue.drain(100, 0) == [7, 8, 9]
    assert queue.drain(100, 0) == []


def test_take_all_empties_the_queue_without_waiting() -> None:
    queue = RecordQueue(8)
    for i in range(5):
        queue.offer(i)
    queue.offer_control("ctl")
    assert queue.take_all() == [0, 1, 2, 3, 4, "ctl"]
    assert queue.take_all() == []
    assert queue.depth() == 0


def test_unsafe_items_after_fork_reads_without_removing() -> None:
    queue = RecordQueue(8)
    queue.offer(1)
    queue.offer_control(2)
    assert queue.unsafe_items_after_fork() == [1, 2]
    assert queue.depth() == 2


# --- put_until ------------------------------------------------------------


def test_put_until_enqueues_at_once_when_there_is_room() -> None:
    queue = RecordQueue(2)
    assert queue.put_until("x", time.monotonic() - 1.0)  # a past deadline is fine with room
    assert queue.drain(10, 0) == ["x"]


def test_put_until_gives_up_at_its_deadline_on_a_full_queue() -> None:
    queue = RecordQueue(1)
    queue.offer("full")
    assert not queue.put_until("late", time.monotonic() - 1.0)
    started = time.monotonic()
    assert not queue.put_until("late", started + 0.05)
    assert time.monotonic() - started >= 0.04
    assert queue.drain(10, 0) == ["full"]


def test_put_until_wakes_when_the_consumer_drains() -> None:
    queue = RecordQueue(1)
    queue.offer("first")
    producer_waiting = _watch_not_full(queue)
    producer, result = _run(lambda: queue.put_until("second", time.monotonic() + 30.0))
    assert producer_waiting.wait(JOIN), "the producer never waited for room"
    assert queue.drain(1, None) == ["first"]
    assert _joined(producer)
    assert result == [True]
    assert queue.drain(1, None) == ["second"]


def test_put_until_wakes_when_take_all_empties_the_queue() -> None:
    queue = RecordQueue(1)
    queue.offer("first")
    producer_waiting = _watch_not_full(queue)
    producer, result = _run(lambda: queue.put_until("second", time.monotonic() + 30.0))
    assert producer_waiting.wait(JOIN)
    assert queue.take_all() == ["first"]
    assert _joined(producer)
    assert result == [True]
    assert queue.take_all() == ["second"]


# --- drain: waiting and lingering -----------------------------------------


def test_idle_drain_waits_for_the_first_item() -> None:
    queue = RecordQueue(8)
    consumer_waiting = _watch_not_empty(queue)
    consumer, result = _run(lambda: queue.drain(8, None))
    assert consumer_waiting.wait(JOIN)
    assert consumer.is_alive()
    queue.offer("item")
    assert _joined(consumer)
    assert result == [["item"]]


def test_linger_returns_what_is_there_when_it_expires() -> None:
    queue = RecordQueue(8, wake_batch=4)
    queue.offer("one")
    assert queue.drain(8, 0.01) == ["one"]


def test_linger_ends_early_on_a_control_message_sent_during_the_wait() -> None:
    queue = RecordQueue(100, wake_batch=64)
    queue.offer("record")
    consumer_waiting = _watch_not_empty(queue)
    started = time.monotonic()
    consumer, result = _run(lambda: queue.drain(100, 30.0))
    assert consumer_waiting.wait(JOIN), "the consumer never lingered"
    queue.offer_control("flush")
    assert _joined(consumer)
    assert result == [["record", "flush"]]
    assert time.monotonic() - started < JOIN


def test_linger_ends_early_on_a_control_message_queued_before_the_wait() -> None:
    # A flush marker that arrives while the consumer is busy applying must
    # not then wait out the linger (the wake-up for it was sent to nobody).
    queue = RecordQueue(100, wake_batch=64)
    queue.offer("record")
    queue.offer_control("flush")
    started = time.monotonic()
    assert queue.drain(100, 30.0) == ["record", "flush"]
    assert time.monotonic() - started < 1.0
    # The marker was taken: the next linger waits for more again.
    queue.offer("next")
    assert queue.drain(100, 0.01) == ["next"]


def test_a_control_message_left_behind_by_a_small_drain_still_ends_the_next_linger() -> None:
    queue = RecordQueue(100, wake_batch=64)
    for i in range(3):
        queue.offer(i)
    queue.offer_control("flush")
    assert queue.drain(2, 30.0) == [0, 1]  # max_items stops short of the marker
    started = time.monotonic()
    assert queue.drain(100, 30.0) == [2, "flush"]
    assert time.monotonic() - started < 1.0


def test_linger_ends_early_when_a_full_batch_gathers() -> None:
    queue = RecordQueue(100, wake_batch=4)
    queue.offer(0)
    consumer_waiting = _watch_not_empty(queue)
    consumer, result = _run(lambda: queue.drain(100, 30.0))
    assert consumer_waiting.wait(JOIN)
    for i in range(1, 4):
        queue.offer(i)
    assert _joined(consumer)
    assert result == [[0, 1, 2, 3]]


# --- no lost wake-up --------------------------------------------------------


def test_ping_pong_never_loses_the_idle_wake_up() -> None:
    # Each round the consumer goes idle again and the producer offers one item
    # while the consumer is entering its wait: a lost wake-up hangs a round.
    queue = RecordQueue(4)
    rounds = 2_000
    taken = threading.Event()
    received: list[int] = []

    def consume() -> None:
        while len(received) < rounds:
            received.extend(queue.drain(4, None))
            taken.set()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    for i in range(rounds):
        taken.clear()
        assert queue.offer(i)
        assert taken.wait(JOIN), f"wake-up lost in round {i}"
    assert _joined(consumer)
    assert received == list(range(rounds))


def test_many_producers_one_consumer_exact_counts_and_per_producer_order() -> None:
    producers, per_producer = 8, 5_000
    total = producers * per_producer
    queue = RecordQueue(256, wake_batch=32)
    start = threading.Barrier(producers + 1)
    received: list[tuple[int, int]] = []

    def produce(pid: int) -> None:
        start.wait(JOIN)
        for seq in range(per_producer):
            item = (pid, seq)
            if not queue.offer(item):  # full: wait for room (exercises put_until)
                assert queue.put_until(item, time.monotonic() + JOIN)

    def consume() -> None:
        linger: float | None = None
        while len(received) < total:
            batch = queue.drain(64, linger)
            received.extend(batch)
            linger = 0.001 if batch else None  # like a collector: linger after work

    threads = [threading.Thread(target=produce, args=(p,), daemon=True) for p in range(producers)]
    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    for thread in threads:
        thread.start()
    start.wait(JOIN)
    for thread in threads:
        assert _joined(thread)
    assert _joined(consumer), f"consumer stuck after {len(received)} of {total}"
    assert len(received) == total
    assert len(set(received)) == total  # nothing duplicated
    last = dict.fromkeys(range(producers), -1)
    for pid, seq in received:
        assert seq == last[pid] + 1, "a producer's items came out of order"
        last[pid] = seq
    assert queue.depth() == 0
