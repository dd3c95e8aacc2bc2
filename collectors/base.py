"""The actor every store is owned by: one queue, one thread, one store.

A :class:`Collector` owns exactly one store. Producers (workflow nodes, the
facades in :mod:`app.observability`, any thread or event loop) only ever
*send* immutable records to it; the collector's thread, named
``collector-<name>``, is the only code that touches the store. Reads go
through the same FIFO queue as a query message answered on that thread with
an immutable snapshot, so a read reflects every record its caller enqueued
before it.

Accounting is exact: every record offered to a collector ends up counted
either as *applied* (by the collector thread) or as *dropped* with a reason
(``queue_full``, ``closed``, ``handler_error``, ``collector_dead``, ``fork``).
Control messages (flush markers, queries, stop) bypass the queue bound so
they keep their FIFO place while records are being dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from collectors._queue import RecordQueue
from collectors.logs import get_logger
from collectors.records import Batch, ns_to_datetime

__all__ = (
    "Collector",
    "CollectorState",
    "CollectorStats",
    "OverflowPolicy",
)

_logger = get_logger(__name__)

OverflowPolicy = Literal["drop_newest", "block"]
StoreT = TypeVar("StoreT")
ResultT = TypeVar("ResultT")

#: Seconds between two "records dropped" warnings of one collector.
_DROP_WARNING_INTERVAL = 10.0


class CollectorState(enum.Enum):
    """Lifecycle of one collector thread."""

    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    DEAD = "dead"


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectorStats:
    """A point-in-time view of one collector, read without blocking producers."""

    name: str
    state: CollectorState
    alive: bool
    queue_depth: int
    queue_capacity: int
    applied: int
    dropped: MappingProxyType[str, int]
    handler_errors: int
    last_flush: datetime | None
    last_error: str | None

    @property
    def dropped_total(self) -> int:
        """All dropped records, whatever the reason."""
        return sum(self.dropped.values())


class _Flush(NamedTuple):
    future: Future[bool]


class _Query(NamedTuple):
    fn: Callable[[], Any]
    future: Future[Any]


class _Stop(NamedTuple):
    pass


_STOP = _Stop()
#: Item types the loop handles itself; any other item is a record for ``_apply``.
_SPECIAL = frozenset({Batch, _Flush, _Query, _Stop})


class _DropCounter:
    """Counts of dropped records by reason, shared by every producer thread.

    Drops happen on producer threads (a full queue) and on the collector
    thread (a handler error), so this small counter is the one structure
    here guarded by a lock. It is not a store: it holds accounting only.
    """

    __slots__ = ("_counts", "_lock")

    def __init__(self, initial: dict[str, int] | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict(initial or {})

    def add(self, reason: str, n: int) -> None:
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _record_count(item: object) -> int:
    """How many records a queue item carries (0 for control messages)."""
    if type(item) is Batch:
        return len(item.records)
    if isinstance(item, _Flush | _Query | _Stop):
        return 0
    return 1


class Collector(ABC, Generic[StoreT]):
    """Base actor: a bounded janus queue drained in batches by one thread.

    Subclasses implement :meth:`_new_store` and :meth:`_apply`; both run on
    the collector thread only (``_new_store`` also runs once in the
    constructor and after ``fork()``, before any thread exists).

    Args:
        name: Short name (``"metrics"``); the thread is ``collector-<name>``.
        maxsize: Queue bound, in queue items (a batch is one item).
        batch_size: The most items applied per wake-up.
        linger: After a busy wake-up, seconds the thread waits for a batch to
            gather before applying a small one. Records then wait at most this
            long; flushes and reads end the wait at once.
        overflow: ``"drop_newest"`` (never blocks) or ``"block"``.
        block_timeout: Seconds a ``"block"`` send waits for room.
    """

    #: Names of collectors this one sends records to (for staged flushes).
    downstream: tuple[str, ...] = ()

    def __init__(
        self,
        name: str,
        *,
        maxsize: int = 65_536,
        batch_size: int = 4_096,
        overflow: OverflowPolicy = "drop_newest",
        block_timeout: float = 0.25,
        linger: float = 0.1,
    ) -> None:
        if maxsize <= 0:
            raise ValueError(f"maxsize must be positive, got {maxsize}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if overflow not in ("drop_newest", "block"):
            raise ValueError(f"overflow must be 'drop_newest' or 'block', got {overflow!r}")
        if not block_timeout >= 0:
            raise ValueError(f"block_timeout must be >= 0, got {block_timeout}")
        self.name = name
        self._maxsize = maxsize
        self._batch_size = batch_size
        self._block = overflow == "block"
        self._block_timeout = block_timeout
        if not 0 <= linger <= 1:
            raise ValueError(f"linger must be within [0, 1] seconds, got {linger}")
        self._linger = linger
        self._init_runtime(dropped=None)

    def _init_runtime(self, dropped: dict[str, int] | None) -> None:
        """Fresh queue, counters, store and thread slot (constructor and after fork)."""
        self._queue = RecordQueue(self._maxsize, wake_batch=min(256, self._batch_size))
        self._drops = _DropCounter(dropped)
        self._store: StoreT = self._new_store()
        self._applied = 0
        self._handler_errors = 0
        self._last_error: str | None = None
        self._last_flush_ns: int | None = None
        self._last_drop_warning = 0.0
        self._last_error_log = -_DROP_WARNING_INTERVAL
        self._state = CollectorState.CREATED
        self._thread: threading.Thread | None = None
        self._thread_ident: int | None = None
        #: False once closed or dead: sends are then dropped and counted.
        self.accepting = True

    # --- any thread -------------------------------------------------------

    @property
    def state(self) -> CollectorState:
        """The collector's lifecycle state."""
        return self._state

    def start(self) -> None:
        """Start the collector thread (idempotent while running)."""
        if self._state is not CollectorState.CREATED:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"collector-{self.name}", daemon=True
        )
        self._state = CollectorState.RUNNING
        self._thread.start()

    def send(self, record: object, n: int = 1) -> bool:
        """Enqueue one record (or a :class:`Batch` of ``n``); never raises.

        Under ``drop_newest`` this never blocks; under ``block`` it waits up
        to ``block_timeout`` for room. A record that cannot be enqueued is
        dropped and counted.

        Returns:
            Whether the record was enqueued.
        """
        if self.accepting and self._queue.offer(record):
            return True
        return self._send_slow(record, n)

    def owns_current_thread(self) -> bool:
        """Whether the calling thread is this collector's thread (or one of its helpers).

        Waiting for this collector from such a thread could never end: a flush
        refuses to, at once.
        """
        return threading.get_ident() == self._thread_ident

    def _send_slow(self, record: object, n: int) -> bool:
        if not self.accepting:
            self._dropped(self._refusal_reason(), n)
            return False
        if self._block and self._queue.put_until(
            record, time.monotonic() + self._block_timeout
        ):
            return True
        self._dropped(self._refusal_reason() if not self.accepting else "queue_full", n)
        return False

    def _refusal_reason(self) -> str:
        """Why a record that cannot be enqueued any more is dropped."""
        return "collector_dead" if self._state is CollectorState.DEAD else "closed"

    def send_control(self, record: object) -> bool:
        """Enqueue a rare control record (a reset) past the queue bound, in FIFO order.

        It still counts as one record: applied by the thread, or dropped
        (reason ``closed``, or ``collector_dead``) once the collector no
        longer accepts records.
        """
        if self.accepting and self._queue.offer_control(record):
            return True
        self._dropped(self._refusal_reason(), 1)
        return False

    async def asend(self, record: object, n: int = 1) -> bool:
        """Like :meth:`send`, but a ``block`` wait awaits instead of blocking the loop.

        The wait runs in the loop's default executor, so it works from any
        event loop (janus's own async side would bind to the first loop).
        Accounting happens inside the waiting call, so it stays exact even if
        the awaiting task is cancelled.
        """
        if not self.accepting:
            self._dropped(self._refusal_reason(), n)
            return False
        if self._queue.offer(record):
            return True
        if not self._block:
            self._dropped("queue_full", n)
            return False
        deadline = time.monotonic() + self._block_timeout
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._send_until, record, n, deadline)

    def _send_until(self, record: object, n: int, deadline: float) -> bool:
        if self._queue.put_until(record, deadline):
            return True
        self._dropped(self._refusal_reason() if not self.accepting else "queue_full", n)
        return False

    def _dropped(self, reason: str, n: int) -> None:
        self._drops.add(reason, n)
        now = time.monotonic()
        if now - self._last_drop_warning >= _DROP_WARNING_INTERVAL:
            self._last_drop_warning = now
            _logger.warning(
                "observability.records_dropped", collector=self.name, reason=reason, count=n
            )

    def request_flush(self) -> Future[bool]:
        """Enqueue a flush marker; its future resolves once all earlier items are handled.

        The future's result is ``True`` when the collector applied (or
        counted as dropped) everything enqueued before the marker, ``False``
        when the collector is dead or was never started.
        """
        future: Future[bool] = Future()
        if self._state is not CollectorState.RUNNING or not self._queue.offer_control(
            _Flush(future)
        ):
            future.set_result(self._state is CollectorState.STOPPED)
            return future
        if self._state is not CollectorState.RUNNING:  # stopped or died while we enqueued
            self._sweep(self._refusal_reason())
        return future

    def query(self, fn: Callable[[StoreT], ResultT], timeout: float = 5.0) -> ResultT:
        """Run ``fn(store)`` on the collector thread and return its result.

        ``fn`` must return an immutable snapshot, never the store itself.
        When the thread is not running (not started, stopped, dead) nobody
        else mutates the store, so ``fn`` runs on the caller's thread.

        Raises:
            TimeoutError: The collector did not answer within ``timeout``.
        """
        if self._state is CollectorState.RUNNING:
            future: Future[ResultT] = Future()
            if self._queue.offer_control(_Query(lambda: self._read_owned(fn), future)):
                if self._state is not CollectorState.RUNNING:  # stopped or died meanwhile
                    self._sweep(self._refusal_reason())
                return future.result(timeout)
        self._wait_thread_gone(timeout)
        return fn(self._store)

    def _wait_thread_gone(self, timeout: float) -> None:
        thread = self._thread
        if thread is not None and thread.ident != threading.get_ident():
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"collector {self.name!r} thread is still running")

    def stop(self, timeout: float, *, helpers: bool = True) -> bool:
        """Stop accepting, let the thread apply what is queued, and join it.

        Records still queued when the thread is gone (or sent later) are
        counted as dropped with reason ``closed``. Idempotent.

        Args:
            timeout: Seconds to wait, helpers included.
            helpers: Then stop the helper threads this collector feeds (see
                :meth:`stop_helpers`) within what is left of ``timeout``.
                :meth:`Pipeline.close <collectors.pipeline.Pipeline.close>`
                passes ``False`` and stops helpers once every collector
                thread is gone, so a slow helper never delays another
                collector's drain.

        Returns:
            ``True`` if the thread is gone (or never ran).
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        self.accepting = False
        thread = self._thread
        stopped = True
        if self._state is CollectorState.RUNNING and thread is not None:
            self._queue.offer_control(_STOP)
            thread.join(max(timeout, 0.0))
            stopped = not thread.is_alive()
        if stopped:
            if self._state is not CollectorState.DEAD:
                self._state = CollectorState.STOPPED
            self._sweep(self._refusal_reason())
        if helpers:
            self.stop_helpers(max(deadline - time.monotonic(), 0.0))
        return stopped

    def stop_helpers(self, timeout: float) -> bool:
        """Stop helper threads fed by this collector (none here; see the trace collector).

        Called after the collector thread has stopped.

        Returns:
            ``True`` if every helper thread is gone.
        """
        return True

    def stats(self) -> CollectorStats:
        """A consistent-enough view of this collector, without blocking producers."""
        if self._state in (CollectorState.STOPPED, CollectorState.DEAD):
            self._sweep("closed" if self._state is CollectorState.STOPPED else "collector_dead")
        thread = self._thread
        return CollectorStats(
            name=self.name,
            state=self._state,
            alive=thread is not None and thread.is_alive(),
            queue_depth=self._queue.depth(),
            queue_capacity=self._maxsize,
            applied=self._applied,
            dropped=MappingProxyType(self._drops.snapshot()),
            handler_errors=self._handler_errors,
            last_flush=ns_to_datetime(self._last_flush_ns) if self._last_flush_ns else None,
            last_error=self._last_error,
        )

    def _sweep(self, reason: str) -> None:
        """Account for items left in the queue once no thread will apply them.

        Records are counted as dropped; flush markers resolve (``True`` after
        a clean stop, ``False`` after a death); queries run here, since the
        store has no owner thread any more.
        """
        for item in self._queue.take_all():
            kind = type(item)
            if kind is _Flush:
                _resolve(item.future, reason == "closed")
            elif kind is _Query:
                _run_query(item)
            elif kind is not _Stop:
                self._drops.add(reason, _record_count(item))

    def after_fork_in_child(self, *, restart: bool) -> int:
        """Rebuild queue, thread and store in a freshly forked child process.

        Records in flight at the fork are counted as dropped with reason
        ``fork``. The child's store starts empty (the parent's may have been
        mid-update when the fork happened), and so do its counters: applied,
        errors and drops describe the child's own records, the lost copies
        included, never the parent's history.

        Returns:
            How many records were lost.
        """
        lost = sum(_record_count(item) for item in self._queue.unsafe_items_after_fork())
        was_accepting = self.accepting
        self._init_runtime(dropped={"fork": lost} if lost else None)
        self.accepting = was_accepting
        if restart:
            self.start()
        return lost

    # --- runs on the collector thread only ---------------------------------

    @abstractmethod
    def _new_store(self) -> StoreT:
        """Build an empty store (collector thread, or before it exists)."""

    @abstractmethod
    def _apply(self, record: Any) -> None:
        """Apply one record to the store. Runs on the collector thread only."""

    def _on_idle(self) -> None:
        """Called after each drained batch (collector thread); override to publish."""

    def _commit(self) -> bool:
        """Make everything applied so far durable (collector thread).

        Called after each drained batch and before a flush marker resolves,
        so a flush that returns complete covers what a ledger committed. The
        default has nothing to commit.

        Returns:
            ``True`` if everything applied so far is committed.
        """
        return True

    def _check_owner(self) -> None:
        """Debug check: raise if called off the collector thread."""
        if threading.get_ident() != self._thread_ident:
            raise RuntimeError(f"store of collector {self.name!r} touched off its thread")

    def _read_owned(self, fn: Callable[[StoreT], ResultT]) -> ResultT:
        """Run a read query on the store; the debug check proves we are its owner."""
        if __debug__:
            self._check_owner()
        return fn(self._store)

    def _run(self) -> None:
        self._thread_ident = threading.get_ident()
        queue = self._queue
        queue.consumer_running = True
        batch_size = self._batch_size
        apply = self._apply
        linger: float | None = None  # idle: sleep until something arrives
        items: list[Any] = []  # the drained items being handled
        index = 0  # position in ``items`` of the item being handled
        done = 0  # records of that item already handled (a Batch carries several)
        try:
            while True:
                items = queue.drain(batch_size, linger)
                if not items:
                    linger = None
                    continue
                linger = self._linger
                stop_at = -1
                for index, item in enumerate(items):
                    done = 0
                    kind = type(item)
                    if kind not in _SPECIAL:  # one record
                        try:
                            apply(item)
                            self._applied += 1
                        except Exception as exc:
                            self._handler_failed(item, exc)
                    elif kind is Batch:
                        for record in item.records:
                            try:
                                apply(record)
                                self._applied += 1
                            except Exception as exc:
                                self._handler_failed(record, exc)
                            done += 1
                    elif kind is _Flush:
                        self._last_flush_ns = time.time_ns()
                        _resolve(item.future, self._commit())
                    elif kind is _Query:
                        _run_query(item)
                    else:  # _Stop
                        stop_at = index
                        break
                handled, items = items, []
                if stop_at >= 0:
                    self._finish_after_stop(handled[stop_at + 1 :])
                    return
                self._commit()
                self._on_idle()
        except BaseException as exc:
            self._state = CollectorState.DEAD
            self.accepting = False
            self._last_error = f"{type(exc).__name__}: {exc}"
            _logger.critical(
                "observability.collector_died", collector=self.name, error=self._last_error
            )
            self._account_in_flight(items[index:], done)
            self._sweep("collector_dead")
            raise

    def _account_in_flight(self, rest: list[Any], done: int) -> None:
        """After a death: drop what the thread had drained but not handled.

        ``rest[0]`` is the item that was being handled when the thread died,
        of which ``done`` records were already applied or counted. Records
        are counted as dropped (``collector_dead``); flush markers resolve
        ``False`` at once, so a flush fails fast instead of timing out.
        """
        for position, item in enumerate(rest):
            kind = type(item)
            if kind is _Flush:
                _resolve(item.future, False)
            elif kind is _Query:
                if position == 0:  # its function is what raised: do not run it again
                    _fail(item.future, RuntimeError(f"collector {self.name!r} died"))
                else:
                    _run_query(item)
            elif kind is not _Stop:
                lost = _record_count(item) - (done if position == 0 else 0)
                if lost:
                    self._drops.add("collector_dead", lost)

    def _finish_after_stop(self, rest: list[Any]) -> None:
        """Items that followed the stop message in the last batch: account for them.

        Then the thread marks the collector stopped and sweeps the queue, so
        nothing enqueued meanwhile waits for a thread that is gone, even when
        :meth:`stop` gave up joining it.
        """
        for item in rest:
            kind = type(item)
            if kind is _Flush:
                _resolve(item.future, self._commit())
            elif kind is _Query:
                _run_query(item)
            elif kind is not _Stop:
                self._drops.add("closed", _record_count(item))
        self._commit()
        self._on_idle()
        if self._state is not CollectorState.DEAD:
            self._state = CollectorState.STOPPED
        self._sweep("closed")

    def _handler_failed(self, record: object, exc: Exception) -> None:
        self._handler_errors += 1
        self._drops.add("handler_error", 1)
        self._last_error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - self._last_error_log >= _DROP_WARNING_INTERVAL:  # rate-limited, like drops
            self._last_error_log = now
            _logger.error(
                "observability.handler_error",
                collector=self.name,
                record_type=type(record).__name__,
                error=self._last_error,
                errors_so_far=self._handler_errors,
                exc_info=exc,
            )


def _run_query(query: _Query) -> None:
    try:
        result = query.fn()
    except Exception as exc:
        _fail(query.future, exc)
    else:
        _resolve(query.future, result)


def _resolve(future: Future[Any], result: object) -> None:
    """Set a future's result; a future its caller cancelled is left alone.

    ``Future.set_result`` raises on a cancelled future, which must never
    kill a collector thread.
    """
    with contextlib.suppress(InvalidStateError):
        future.set_result(result)


def _fail(future: Future[Any], exc: BaseException) -> None:
    """Set a future's exception unless it is already done (see :func:`_resolve`)."""
    with contextlib.suppress(InvalidStateError):
        future.set_exception(exc)
