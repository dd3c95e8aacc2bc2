"""The set of collectors one ``Observability`` container runs, and its lifecycle.

A :class:`Pipeline` starts, flushes and closes its collectors together:

* ``flush(timeout)`` / ``await aflush(timeout)`` put a marker on every
  collector queue and wait until each collector has handled everything that
  was enqueued before the marker. Collectors that feed others (the cost
  collector sends budget events to metrics and audit) are flushed in stages,
  upstream first, so a flush also covers what those records caused. This is
  not ``Queue.join()``, which would also wait for records enqueued later.
* ``close(timeout)`` stops accepting, drains, joins the threads, and counts
  whatever is left as dropped (reason ``closed``). Idempotent and bounded.
* A process that exits with a running pipeline closes it from ``atexit``
  (bounded by the configured timeout). After ``os.fork()`` the child gets
  fresh queues and threads; records in flight at the fork count as lost.
* A running pipeline that is garbage-collected without ``close()`` warns
  with ``ResourceWarning``, like an unclosed file, and is closed on a
  short-lived thread of its own (``observability-close``), so its collector
  threads drain and stop.
* ``flush``, ``aflush`` and ``close`` called on one of the pipeline's own
  threads (a collector, or a span exporter: from inside an exporter or a log
  processor) raise ``RuntimeError`` at once: they would wait for the very
  thread that is waiting.

The pipeline holds no global state, and nothing but its owner holds it
strongly: the ``atexit`` and fork hooks hold it weakly, and the collector
threads hold the collectors, never the pipeline, so dropping the last
reference to a pipeline makes it collectable.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import enum
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from collectors.base import Collector, CollectorState, CollectorStats
from collectors.logs import get_logger

__all__ = ("FlushResult", "Pipeline", "PipelineHealth", "PipelineState")

_logger = get_logger(__name__)


class PipelineState(enum.Enum):
    """Lifecycle of a pipeline."""

    CREATED = "created"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True, kw_only=True)
class FlushResult:
    """What a flush (or close) achieved. Truthy only when complete.

    Attributes:
        complete: Every collector handled everything enqueued before the call.
        pending: Records still queued when the call returned.
        dropped: Records dropped so far, all collectors and reasons.
        elapsed: Seconds the call took.
        dead: Collectors found dead (a flush fails fast on them).
        timed_out: The deadline passed first.
    """

    complete: bool
    pending: int
    dropped: int
    elapsed: float
    dead: tuple[str, ...] = ()
    timed_out: bool = False

    def __bool__(self) -> bool:
        return self.complete


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineHealth:
    """Every collector's state, read without blocking producers."""

    state: PipelineState
    collectors: Mapping[str, CollectorStats]
    #: Tenants whose spend has reached their budget (filled by the container).
    over_budget: tuple[str, ...] = ()
    #: Span exporters' counters (filled by the container).
    exporters: tuple[Any, ...] = ()
    #: Each ledger connection's state, lag and errors (filled by the container).
    ledgers: tuple[Any, ...] = ()
    #: Why the last metrics exposition failed; ``None`` once one succeeds (the container).
    exposition_error: str | None = None

    @property
    def healthy(self) -> bool:
        """Running, every collector thread alive, and the last exposition rendered."""
        return (
            self.state is PipelineState.RUNNING
            and all(s.alive for s in self.collectors.values())
            and self.exposition_error is None
        )

    @property
    def dropped_total(self) -> int:
        """Dropped records over all collectors."""
        return sum(s.dropped_total for s in self.collectors.values())


class Pipeline:
    """Owns a set of collectors and their common lifecycle.

    Args:
        collectors: The collectors, each with a unique name.
        close_timeout: Default bound for :meth:`close` (also used at exit).
        drain_at_exit: Register an ``atexit`` hook that closes the pipeline.
    """

    def __init__(
        self,
        collectors: Iterable[Collector[Any]],
        *,
        close_timeout: float = 5.0,
        drain_at_exit: bool = True,
    ) -> None:
        self._collectors: dict[str, Collector[Any]] = {}
        for collector in collectors:
            if collector.name in self._collectors:
                raise ValueError(f"duplicate collector name {collector.name!r}")
            self._collectors[collector.name] = collector
        self._stages = _flush_stages(self._collectors)
        self._close_timeout = close_timeout
        self._state = PipelineState.CREATED
        self._lifecycle_lock = threading.Lock()
        self._pid = os.getpid()
        self._atexit_hook: Any = None
        if drain_at_exit:
            # Weak, so that an unclosed pipeline can still be collected (and
            # warn); the finalizer below unregisters it then.
            self._atexit_hook = _weak_hook(self, "_close_at_exit")
            atexit.register(self._atexit_hook)
        os.register_at_fork(after_in_child=_weak_hook(self, "_after_fork_in_child"))
        # Holds the collectors, never the pipeline; detached by close().
        self._finalizer = weakref.finalize(
            self, _close_unclosed,
            tuple(tuple(self._collectors[name] for name in stage) for stage in self._stages),
            close_timeout, self._atexit_hook,
        )
        self._finalizer.atexit = False  # at exit, the atexit hook (if any) decides

    @property
    def state(self) -> PipelineState:
        """The lifecycle state."""
        return self._state

    @property
    def collectors(self) -> Mapping[str, Collector[Any]]:
        """The collectors by name (read-only view)."""
        return MappingProxyType(self._collectors)

    def start(self) -> None:
        """Start every collector thread. Idempotent while running.

        Raises:
            RuntimeError: The pipeline is closed.
        """
        with self._lifecycle_lock:
            if self._state is PipelineState.CLOSED:
                raise RuntimeError("cannot start: the observability pipeline is closed")
            if self._state is PipelineState.RUNNING:
                return
            for collector in self._collectors.values():
                collector.start()
            self._state = PipelineState.RUNNING

    # --- flushing ---------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> FlushResult:
        """Wait until everything enqueued before this call is applied.

        Args:
            timeout: Deadline in seconds.

        Returns:
            A :class:`FlushResult`; truthy only if complete.

        Raises:
            RuntimeError: Called on one of the pipeline's own threads.
        """
        deadline = time.monotonic() + _check_timeout(timeout)
        self.refuse_own_thread("flush")
        started = time.perf_counter()
        if self._state is not PipelineState.RUNNING:
            return self._result(started, complete=self._state is PipelineState.CLOSED)
        for stage in self._stages:
            markers = {name: self._collectors[name].request_flush() for name in stage}
            remaining = max(deadline - time.monotonic(), 0.0)
            done, not_done = wait_futures(markers.values(), timeout=remaining)
            if not_done:
                return self._result(started, complete=False, timed_out=True)
            if not all(f.result() for f in done):
                return self._result(started, complete=False)
        return self._result(started, complete=True)

    async def aflush(self, timeout: float = 5.0) -> FlushResult:
        """Async :meth:`flush`: awaits instead of blocking; works on any event loop.

        Raises:
            RuntimeError: Called on one of the pipeline's own threads.
        """
        deadline = time.monotonic() + _check_timeout(timeout)
        self.refuse_own_thread("flush")
        started = time.perf_counter()
        if self._state is not PipelineState.RUNNING:
            return self._result(started, complete=self._state is PipelineState.CLOSED)
        loop = asyncio.get_running_loop()
        for stage in self._stages:
            markers = [self._collectors[name].request_flush() for name in stage]
            waiter = _all_done(loop, markers)
            remaining = max(deadline - time.monotonic(), 0.0)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return self._result(started, complete=False, timed_out=True)
            if not all(f.result() for f in markers):
                return self._result(started, complete=False)
        return self._result(started, complete=True)

    def owns_current_thread(self) -> bool:
        """Whether the calling thread is one of this pipeline's collector or exporter threads."""
        return any(c.owns_current_thread() for c in self._collectors.values())

    def refuse_own_thread(self, action: str) -> None:
        """Raise if called on one of the pipeline's own threads, where a wait could never end.

        Args:
            action: What the caller was about to do (``"flush"``), for the message.

        Raises:
            RuntimeError: The calling thread is a collector or exporter thread
                of this pipeline.
        """
        for collector in self._collectors.values():
            if collector.owns_current_thread():
                raise RuntimeError(
                    f"cannot {action} the observability pipeline on thread "
                    f"{threading.current_thread().name!r}, which belongs to its collector "
                    f"{collector.name!r}: it would wait for itself (called from inside an "
                    f"exporter or a log processor?); {action} from another thread"
                )

    def _result(self, started: float, *, complete: bool, timed_out: bool = False) -> FlushResult:
        stats = [c.stats() for c in self._collectors.values()]
        dead = tuple(s.name for s in stats if s.state is CollectorState.DEAD)
        return FlushResult(
            complete=complete and not dead,
            pending=sum(s.queue_depth for s in stats),
            dropped=sum(s.dropped_total for s in stats),
            elapsed=time.perf_counter() - started,
            dead=dead,
            timed_out=timed_out,
        )

    # --- closing ----------------------------------------------------------

    def close(self, timeout: float | None = None) -> FlushResult:
        """Stop accepting records, drain, stop the threads. Idempotent, bounded.

        Records sent after this call are dropped and counted (reason
        ``closed``); so is anything the threads could not apply in time.
        Collector threads stop first, upstream first; helper threads (span
        exporters) then get what is left of the budget, so a slow exporter
        never shortens a collector's drain. Exporter losses are counted by
        the exporters (``TraceStoreCollector.exporter_stats()``), not here.

        Args:
            timeout: Overall bound in seconds (default: ``close_timeout``).

        Returns:
            A :class:`FlushResult` describing the final drain.

        Raises:
            RuntimeError: Called on one of the pipeline's own threads (it
                would join itself).
        """
        budget = _check_timeout(self._close_timeout if timeout is None else timeout)
        self.refuse_own_thread("close")
        started = time.perf_counter()
        with self._lifecycle_lock:
            if self._state is PipelineState.CLOSED:
                return self._result(started, complete=True)
            self._state = PipelineState.CLOSED
        self._finalizer.detach()
        if self._atexit_hook is not None:
            atexit.unregister(self._atexit_hook)
            self._atexit_hook = None
        stages = tuple(tuple(self._collectors[name] for name in stage) for stage in self._stages)
        complete = _stop_collectors(stages, budget)
        result = self._result(started, complete=complete, timed_out=not complete)
        _logger.debug(
            "observability.pipeline_closed",
            complete=result.complete, dropped=result.dropped, elapsed=result.elapsed,
        )
        return result

    def _close_at_exit(self) -> None:
        if self._state is not PipelineState.CLOSED:
            self.close(self._close_timeout)

    def _after_fork_in_child(self) -> None:
        """Fresh queues and threads in the child (runs in the child only)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._lifecycle_lock = threading.Lock()
        restart = self._state is PipelineState.RUNNING
        lost = sum(c.after_fork_in_child(restart=restart) for c in self._collectors.values())
        if lost:
            _logger.warning("observability.records_lost_at_fork", count=lost)

    # --- health -----------------------------------------------------------

    def health(self) -> PipelineHealth:
        """Each collector's state, depth, applied and dropped counts, errors."""
        return PipelineHealth(
            state=self._state,
            collectors=MappingProxyType({n: c.stats() for n, c in self._collectors.items()}),
        )


#: The longest wait any flush or close accepts (a day): every wait has a deadline.
_MAX_TIMEOUT = 86_400.0


def _check_timeout(timeout: object) -> float:
    """Validate a flush/close ``timeout``: a finite number of seconds; negatives mean 0.

    Raises:
        TypeError: Not a number.
        ValueError: NaN, infinite or larger than a day.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if timeout != timeout or timeout > _MAX_TIMEOUT:
        raise ValueError(
            f"timeout must be a finite number of seconds up to {_MAX_TIMEOUT:g}, got {timeout!r}"
        )
    return max(float(timeout), 0.0)


def _flush_stages(collectors: Mapping[str, Collector[Any]]) -> tuple[tuple[str, ...], ...]:
    """Group collectors so every collector comes after those that send to it."""
    depth: dict[str, int] = {}

    def level(name: str, seen: frozenset[str]) -> int:
        if name in depth:
            return depth[name]
        if name in seen:
            raise ValueError(f"collector cycle through {name!r}")
        upstream = [
            n for n, c in collectors.items() if name in c.downstream and n != name
        ]
        value = 1 + max((level(n, seen | {name}) for n in upstream), default=-1)
        depth[name] = value
        return value

    for name in collectors:
        level(name, frozenset())
    stages: dict[int, list[str]] = {}
    for name, value in depth.items():
        stages.setdefault(value, []).append(name)
    return tuple(tuple(stages[k]) for k in sorted(stages))


def _all_done(
    loop: asyncio.AbstractEventLoop, futures: Sequence[Future[Any]]
) -> asyncio.Future[None]:
    """An asyncio future (on ``loop``) done when every concurrent future is done.

    Unlike ``asyncio.wrap_future``, cancelling the result never cancels the
    concurrent futures, and a callback arriving after the loop closed is
    ignored instead of raising in the collector thread.
    """
    waiter: asyncio.Future[None] = loop.create_future()
    remaining = [len(futures)]
    lock = threading.Lock()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def on_done(_: Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            # RuntimeError: the loop is closed; nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake)

    if not futures:
        waiter.set_result(None)
    for future in futures:
        future.add_done_callback(on_done)
    return waiter


def _stop_collectors(stages: Sequence[Sequence[Collector[Any]]], budget: float) -> bool:
    """Stop collector threads stage by stage, then their helpers, within ``budget`` seconds.

    Upstream first: their output lands downstream. Helpers (span exporters)
    get what is left, so a slow one cannot eat another collector's drain
    time; their losses are counted by them.

    Returns:
        Whether every collector thread stopped in time.
    """
    deadline = time.monotonic() + budget
    complete = True
    for stage in stages:
        for collector in stage:
            complete &= collector.stop(max(deadline - time.monotonic(), 0.0), helpers=False)
    for stage in stages:
        for collector in stage:
            collector.stop_helpers(max(deadline - time.monotonic(), 0.0))
    return complete


def _close_unclosed(
    stages: tuple[tuple[Collector[Any], ...], ...], budget: float, atexit_hook: Any
) -> None:
    """Finalizer of a pipeline collected without ``close()``: warn, then close it.

    Runs wherever the garbage collector runs, perhaps on one of these very
    collector threads, or with a lock held: so it only warns and starts a
    thread that does the bounded close (nothing is started once the
    interpreter is shutting down; the threads are daemons).
    """
    if atexit_hook is not None:
        atexit.unregister(atexit_hook)
    running = [c.name for stage in stages for c in stage if c.state is CollectorState.RUNNING]
    if not running:
        return
    warnings.warn(
        f"unclosed observability pipeline (collectors {', '.join(running)} still running): "
        "call close(), or use the container as a context manager",
        ResourceWarning, stacklevel=2,
    )
    if sys.is_finalizing():
        return
    threading.Thread(
        target=_stop_collectors, args=(stages, budget), name="observability-close", daemon=True
    ).start()


def _weak_hook(target: Pipeline, method: str) -> Any:
    """A no-argument callable that calls ``target.method()`` while target lives."""
    ref = weakref.ref(target)

    def hook() -> None:
        obj = ref()
        if obj is not None:
            getattr(obj, method)()

    return hook
