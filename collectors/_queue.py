"""The bounded janus queue every collector reads from.

``RecordQueue`` subclasses :class:`janus.Queue` (janus 2.x; pinned in
``pyproject.toml``) and adds three operations the collectors need and janus
does not offer:

* :meth:`RecordQueue.offer` -- a non-blocking put that returns ``False`` when
  the queue is full instead of raising (~0.45 us here, against ~0.9 us for
  ``sync_q.put_nowait`` with its exception path);
* :meth:`RecordQueue.offer_control` -- a put that ignores ``maxsize``, for the
  few control messages (flush markers, queries, stop) that must keep their
  place in FIFO order even when records are being dropped;
* :meth:`RecordQueue.drain` -- the consumer's batch get: wait for the first
  item, then take everything there (up to a limit) under one lock acquisition.
  Per item that costs ~0.03 us instead of ~0.8 us for ``get_nowait``.

Only the synchronous side of janus is used. Its async side binds to the first
event loop that touches it, and this queue is used from any number of event
loops and plain threads over its life; async producers call :meth:`offer`
(which never blocks on anything but the queue's short critical section) and
waits with a deadline run in a worker thread (see
:meth:`collectors.base.Collector.aput_wait`).

``janus.Queue`` counts unfinished tasks for ``join()``; the collectors never
use ``join()`` (its semantics wait for records enqueued *after* the call), so
these methods leave that counter alone.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import janus

__all__ = ("RecordQueue",)


class RecordQueue(janus.Queue[Any]):
    """A janus queue with non-raising offers and a batch drain."""

    def offer(self, item: object) -> bool:
        """Append ``item`` unless the queue is full. Never blocks on space.

        Args:
            item: An immutable record (or batch) to enqueue.

        Returns:
            ``True`` if enqueued, ``False`` if the queue was full or shut down.
        """
        with self._sync_mutex:
            if self._is_shutdown or 0 < self._maxsize <= len(self._queue):
                return False
            self._queue.append(item)
            if self._sync_not_empty_waiting:
                self._sync_not_empty.notify()
            return True

    def offer_control(self, item: object) -> bool:
        """Append a control message regardless of ``maxsize``.

        Control messages are rare and tiny; letting them past the bound keeps
        flush and query ordering exact while records are being dropped.

        Returns:
            ``False`` only if the queue is shut down.
        """
        with self._sync_mutex:
            if self._is_shutdown:
                return False
            self._queue.append(item)
            if self._sync_not_empty_waiting:
                self._sync_not_empty.notify()
            return True

    def put_until(self, item: object, deadline: float) -> bool:
        """Block until there is room for ``item`` or ``deadline`` passes.

        Args:
            item: The record to enqueue.
            deadline: A ``time.monotonic()`` instant.

        Returns:
            ``True`` if enqueued, ``False`` on timeout or shutdown.
        """
        with self._sync_mutex:
            while True:
                if self._is_shutdown:
                    return False
                if not 0 < self._maxsize <= len(self._queue):
                    self._queue.append(item)
                    if self._sync_not_empty_waiting:
                        self._sync_not_empty.notify()
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._sync_not_full_waiting += 1
                try:
                    self._sync_not_full.wait(remaining)
                finally:
                    self._sync_not_full_waiting -= 1

    def drain(self, max_items: int, timeout: float | None) -> list[Any]:
        """Wait for at least one item, then take up to ``max_items`` at once.

        Args:
            max_items: The most items returned by one call.
            timeout: Seconds to wait for the first item (``None``: forever).

        Returns:
            The items in FIFO order; empty if the wait timed out or the queue
            is shut down and empty.
        """
        with self._sync_mutex:
            items: deque[Any] = self._queue
            if not items:
                if self._is_shutdown:
                    return []
                self._sync_not_empty_waiting += 1
                try:
                    self._sync_not_empty.wait(timeout)
                finally:
                    self._sync_not_empty_waiting -= 1
                if not items:
                    return []
            if len(items) <= max_items:
                batch = list(items)
                items.clear()
            else:
                popleft = items.popleft
                batch = [popleft() for _ in range(max_items)]
            if self._sync_not_full_waiting:
                self._sync_not_full.notify_all()
            return batch

    def take_all(self) -> list[Any]:
        """Remove and return everything queued, without waiting.

        Used after the consumer thread has stopped, to account for leftovers.
        """
        with self._sync_mutex:
            batch = list(self._queue)
            self._queue.clear()
            if self._sync_not_full_waiting:
                self._sync_not_full.notify_all()
            return batch

    def depth(self) -> int:
        """Items waiting now (a racy read, fine for gauges)."""
        return len(self._queue)

    def unsafe_items_after_fork(self) -> list[Any]:
        """Read the queued items without the lock, in a freshly forked child.

        After ``fork()`` only the forking thread exists in the child; a lock
        another thread held at fork time stays held forever, so taking it
        would deadlock. The caller is the only thread, so the read is safe.
        """
        return list(self._queue)
