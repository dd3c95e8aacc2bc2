"""The bounded janus queue every collector reads from.

``RecordQueue`` subclasses :class:`janus.Queue` (janus 2.x; pinned in
``pyproject.toml``): it keeps janus's deque, mutex and conditions, and adds
the operations a collector needs that janus does not offer.

**Producers do not take the queue's mutex for an ordinary put.** With many
producer threads, a thread preempted while holding the mutex makes every other
producer wait for it (a lock convoy), and each of them pays a context switch;
appending to the deque needs no lock. ``deque.append`` and ``deque.popleft``
are atomic (single C calls, under the GIL and, in free-threaded builds, under
the deque's own lock), and the one consumer pops exactly the number of items
it has seen, so no item is lost or duplicated. The mutex is still used for
what needs it: waking the consumer, and the ``block`` overflow policy's wait
for room. ``docs/PERFORMANCE.md`` has the throughput this gives.

Consequences, by design:

* the bound is checked without the lock, so under a race it can be exceeded
  by at most the number of threads putting at that instant;
* the consumer is woken only when it sleeps idle, or when it lingers to
  gather a batch and the batch is full (see :meth:`RecordQueue.drain`), so a
  busy pipeline does no wake-up per record;
* lost wake-ups cannot happen: the consumer publishes its wake threshold
  *before* it checks the length, under the mutex, and a producer that sees
  the threshold reached takes the mutex to notify.

Only the synchronous side of janus is used. Its async side binds to the first
event loop that touches it, and this queue is used from any number of event
loops and plain threads over its life. ``janus.Queue`` also counts unfinished
tasks for ``join()``; collectors never use ``join()`` (it would wait for
records enqueued *after* the call), so these methods leave that counter alone.
"""

from __future__ import annotations

import time
from typing import Any

import janus

__all__ = ("RecordQueue",)

_NEVER = 1 << 62


class RecordQueue(janus.Queue[Any]):
    """A janus queue with lock-free offers and a batch drain for one consumer.

    Args:
        maxsize: The bound (items); must be positive.
        wake_batch: How many queued items end a lingering consumer's wait.
    """

    def __init__(self, maxsize: int, *, wake_batch: int = 256) -> None:
        if maxsize <= 0:
            raise ValueError(f"maxsize must be positive, got {maxsize}")
        super().__init__(maxsize)
        self._wake_batch = max(1, wake_batch)
        #: Queue length at which a put wakes the consumer: 1 while it sleeps
        #: idle, ``wake_batch`` while it lingers, "never" while it is busy.
        self._wake_at = _NEVER
        #: Past this depth a producer yields the GIL once per put, so that the
        #: consumer thread gets its turn even against many busy producers.
        self._yield_at = max(1, maxsize // 2)
        #: Set by the consumer thread while it runs (no yielding to nobody).
        self.consumer_running = False
        #: Control messages offered so far, and the count the consumer had seen
        #: when it last emptied the queue (both under the mutex): a control
        #: message queued while the consumer was busy must not wait a linger.
        self._controls = 0
        self._controls_seen = 0

    # --- producers (any thread) -------------------------------------------

    def offer(self, item: object) -> bool:
        """Append ``item`` unless the queue is full. Never waits for room.

        Args:
            item: An immutable record (or batch) to enqueue.

        Returns:
            ``True`` if enqueued, ``False`` if the queue was full or shut down.
        """
        queue = self._queue
        depth = len(queue)
        if depth >= self._yield_at:
            if depth >= self._maxsize or self._is_shutdown:
                return False
            if self.consumer_running:  # past the high-water mark: let it have the GIL
                time.sleep(0)
        queue.append(item)
        if depth >= self._wake_at - 1:
            self._wake()
        return True

    def offer_control(self, item: object) -> bool:
        """Append a control message regardless of the bound, and wake the consumer.

        Control messages (flush markers, queries, stop) are rare and tiny;
        letting them past the bound keeps flush and read ordering exact while
        records are being dropped.

        Returns:
            ``False`` only if the queue is shut down.
        """
        if self._is_shutdown:
            return False
        self._queue.append(item)
        with self._sync_mutex:
            self._controls += 1  # after the append: a consumer that sees it finds the item
            if self._sync_not_empty_waiting:
                self._sync_not_empty.notify()
        return True

    def put_until(self, item: object, deadline: float) -> bool:
        """Wait until there is room for ``item`` or ``deadline`` passes.

        Args:
            item: The record to enqueue.
            deadline: A ``time.monotonic()`` instant.

        Returns:
            ``True`` if enqueued, ``False`` on timeout or shutdown.
        """
        while True:
            if self.offer(item):
                return True
            with self._sync_mutex:
                if self._is_shutdown:
                    return False
                if len(self._queue) < self._maxsize:
                    continue  # room appeared meanwhile: offer again
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._sync_not_full_waiting += 1
                try:
                    self._sync_not_full.wait(remaining)
                finally:
                    self._sync_not_full_waiting -= 1

    def _wake(self) -> None:
        with self._sync_mutex:
            if self._sync_not_empty_waiting:
                self._sync_not_empty.notify()
                # One wake-up per wait: the consumer republishes its threshold
                # under this mutex before it waits again, so none is lost.
                self._wake_at = _NEVER

    # --- the consumer (one thread) ------------------------------------------

    def drain(self, max_items: int, linger: float | None) -> list[Any]:
        """Take up to ``max_items`` at once, waiting first if there are few.

        Args:
            max_items: The most items returned by one call.
            linger: ``None``: the consumer is idle; wait without limit for the
                first item. A number of seconds: the consumer was just busy;
                if fewer than ``wake_batch`` items are queued, wait up to that
                long for more (a control message, queued before or during
                the wait, or a full batch ends the wait early), then take
                what is there.

        Returns:
            The items in FIFO order; empty if a linger found nothing or the
            queue is shut down and empty.
        """
        items = self._queue
        with self._sync_mutex:
            wake_at = 1 if linger is None else self._wake_batch
            self._wake_at = wake_at  # publish before looking: no lost wake-up
            try:
                lingering_allowed = linger is None or self._controls == self._controls_seen
                if len(items) < wake_at and lingering_allowed:
                    if self._is_shutdown and not items:
                        return []
                    self._sync_not_empty_waiting += 1
                    try:
                        self._sync_not_empty.wait(linger)
                    finally:
                        self._sync_not_empty_waiting -= 1
            finally:
                self._wake_at = _NEVER
            controls = self._controls
            count = min(len(items), max_items)
            # ``count`` separate pops, each atomic: producers may append meanwhile.
            popleft = items.popleft
            batch = [popleft() for _ in range(count)]
            if not items:  # every control message counted so far has been taken
                self._controls_seen = controls
            if self._sync_not_full_waiting:
                self._sync_not_full.notify_all()
            return batch

    def take_all(self) -> list[Any]:
        """Remove and return everything queued now, without waiting.

        Used once no consumer thread runs any more, to account for leftovers.
        """
        items = self._queue
        popleft = items.popleft
        batch: list[Any] = []
        while True:
            try:
                batch.append(popleft())
            except IndexError:
                break
        with self._sync_mutex:
            if self._sync_not_full_waiting:
                self._sync_not_full.notify_all()
        return batch

    def depth(self) -> int:
        """Items waiting now (a racy read, fine for gauges)."""
        return len(self._queue)

    def unsafe_items_after_fork(self) -> list[Any]:
        """Read the queued items without any lock, in a freshly forked child.

        After ``fork()`` only the forking thread exists in the child; a lock
        another thread held at fork time stays held forever, so taking it
        would deadlock. The caller is the only thread, so the read is safe.
        """
        return list(self._queue)
