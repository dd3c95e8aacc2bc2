"""Span exporters, each called on its own bounded worker thread.

An exporter is anything with ``export(spans) -> bool | None`` (the
:class:`SpanExporter` protocol, the shape of OpenTelemetry's
``SpanExporter``). The trace collector never calls one on its own thread:
it hands each batch of newly stored (already redacted) spans to one
:class:`ExportWorker` per exporter, which queues it without waiting. The
worker's daemon thread ``exporter-<name>`` calls ``export`` one batch at a
time and counts every span it was given exactly once:

* ``exported``: ``export`` returned ``True`` or ``None``;
* ``failed``: ``export`` raised an ``Exception`` or returned ``False``;
* ``timed_out``: the call ran longer than ``export_timeout`` (see below);
* ``dropped`` by reason: ``queue_full`` (the worker is behind by more than
  its queue bound), ``exporter_stuck`` (arrived while a call had overrun its
  timeout), ``closed`` (after :meth:`ExportWorker.stop`), ``exporter_dead``,
  ``fork``.

**A hung export cannot be stopped.** Python has no way to interrupt a call
blocked in another thread. When a call overruns ``export_timeout`` the
worker cannot abandon it: the call keeps its thread until it returns, if
ever. What the worker does is contain it. The overrun is counted as
``timed_out`` as soon as anyone looks (a new batch arriving, :meth:`stats`,
:meth:`flush`, :meth:`stop`); from then on, new batches are dropped at once
and counted instead of piling up behind it; :meth:`flush` fails fast; and
:meth:`stop` gives up after its timeout, counts what is still queued as
``closed`` and leaves the daemon thread behind. The collector threads and
the pipeline never wait for an exporter. A hung call that does return
later is logged, but its outcome is not counted a second time.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from collectors._queue import RecordQueue
from collectors.base import CollectorState
from collectors.logs import get_logger
from collectors.records import SpanRecord

__all__ = ("CallableExporter", "ExportStats", "ExportWorker", "SpanExporter")

_logger = get_logger(__name__)

#: Seconds between two "spans dropped" warnings of one worker.
_DROP_WARNING_INTERVAL = 10.0


class SpanExporter(Protocol):
    """Receives batches of finished spans (the shape of OpenTelemetry's ``SpanExporter``).

    ``export`` is called on the exporter's own worker thread, one batch at a
    time, never concurrently with itself. It returns ``False`` on failure;
    ``True`` or ``None`` mean success; an ``Exception`` it raises counts as a
    failure. It should bound its own I/O (a network timeout); a call that
    runs longer than the worker's ``export_timeout`` is counted as timed out.

    An exporter may also define ``shutdown()``: it is called once, on the
    worker thread, when the worker stops (never during an ``export`` call).
    """

    def export(self, spans: Sequence[SpanRecord]) -> bool | None:
        """Export one batch of finished spans."""
        ...


class CallableExporter:
    """Adapt a function ``fn(spans) -> bool | None`` into a :class:`SpanExporter`.

    For example a bound :meth:`app.observability.otlp.OtlpHttpSender.send`.

    Args:
        fn: Called with each batch, on the worker thread.
        name: The exporter's name (its worker thread is ``exporter-<name>``).
        shutdown: Called once when the worker stops, if given.
    """

    __slots__ = ("_fn", "_shutdown", "name")

    def __init__(
        self,
        fn: Callable[[Sequence[SpanRecord]], bool | None],
        *,
        name: str,
        shutdown: Callable[[], object] | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self._fn = fn
        self._shutdown = shutdown
        self.name = name

    def export(self, spans: Sequence[SpanRecord]) -> bool | None:
        """Call the function with one batch."""
        return self._fn(spans)

    def shutdown(self) -> None:
        """Call the shutdown function, if one was given."""
        if self._shutdown is not None:
            self._shutdown()


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportStats:
    """A point-in-time view of one export worker. Span counts unless named ``*_batches``.

    Every span handed to the worker is counted exactly once in ``exported``,
    ``failed``, ``timed_out`` or ``dropped``, or is still ``in_flight``
    (queued, or in an export call not yet returned).
    """

    name: str
    state: CollectorState
    alive: bool
    busy: bool
    stuck: bool
    queue_depth: int
    queue_capacity: int
    submitted: int
    exported: int
    exported_batches: int
    failed: int
    failed_batches: int
    timed_out: int
    timed_out_batches: int
    dropped: MappingProxyType[str, int]
    dropped_batches: int
    last_error: str | None

    @property
    def dropped_total(self) -> int:
        """Spans dropped, whatever the reason."""
        return sum(self.dropped.values())

    @property
    def in_flight(self) -> int:
        """Spans queued or inside an export call, not yet counted otherwise."""
        return (
            self.submitted - self.exported - self.failed - self.timed_out - self.dropped_total
        )


class _Flush(NamedTuple):
    future: Future[bool]


class _Stop(NamedTuple):
    pass


_STOP = _Stop()


class _InFlight:
    """The export call in progress (guarded by the worker's lock)."""

    __slots__ = ("spans", "started", "timed_out")

    def __init__(self, spans: int, started: float) -> None:
        self.spans = spans
        self.started = started
        self.timed_out = False


class ExportWorker:
    """One exporter, one bounded queue of span batches, one daemon thread.

    :meth:`submit` never waits, so the trace collector thread that calls it
    is never held up by an exporter. Counters are guarded by a small lock
    shared by the worker thread and submitters; they are accounting, not a
    store.

    Args:
        exporter: The :class:`SpanExporter` to call.
        name: Short name; the thread is ``exporter-<name>``.
        max_queued_batches: Batches that may wait while an export runs;
            more are dropped and counted (``queue_full``).
        export_timeout: Seconds after which a running export is counted as
            timed out (it cannot be interrupted; see the module docstring).
        clock: Monotonic clock in seconds (tests pass a fake one).

    Raises:
        TypeError: ``exporter`` has no callable ``export``.
        ValueError: A non-positive bound or timeout.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        name: str,
        max_queued_batches: int = 64,
        export_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not callable(getattr(exporter, "export", None)):
            raise TypeError(f"exporter {type(exporter).__name__} has no export() method")
        if max_queued_batches < 1:
            raise ValueError(f"max_queued_batches must be at least 1, got {max_queued_batches}")
        if not (math.isfinite(export_timeout) and export_timeout > 0):
            raise ValueError(f"export_timeout must be a positive number, got {export_timeout!r}")
        self.name = name
        self._exporter = exporter
        self._capacity = max_queued_batches
        self._export_timeout = float(export_timeout)
        self._clock = clock
        self._init_runtime()

    def _init_runtime(self) -> None:
        """Fresh queue, lock, counters and thread slot (constructor and after fork)."""
        self._queue = RecordQueue(self._capacity, wake_batch=1)
        self._lock = threading.Lock()
        self._state = CollectorState.CREATED
        self._thread: threading.Thread | None = None
        self._accepting = True
        #: Set when :meth:`stop` gave up on a busy thread: it exits when it can.
        self._abandoned = False
        self._current: _InFlight | None = None
        self._submitted = 0
        self._exported = self._exported_batches = 0
        self._failed = self._failed_batches = 0
        self._timed_out = self._timed_out_batches = 0
        self._dropped: dict[str, int] = {}
        self._dropped_batches = 0
        self._last_error: str | None = None
        self._last_drop_warning = -math.inf

    @property
    def export_timeout(self) -> float:
        """Seconds after which a running export counts as timed out."""
        return self._export_timeout

    @property
    def state(self) -> CollectorState:
        """The worker's lifecycle state."""
        return self._state

    # --- any thread -------------------------------------------------------

    def owns_current_thread(self) -> bool:
        """Whether the calling thread is this worker's thread."""
        thread = self._thread
        return thread is not None and thread.ident == threading.get_ident()

    def start(self) -> None:
        """Start the worker thread (idempotent while running)."""
        if self._state is not CollectorState.CREATED:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"exporter-{self.name}", daemon=True
        )
        self._state = CollectorState.RUNNING
        self._thread.start()

    def submit(self, spans: Sequence[SpanRecord]) -> bool:
        """Queue one batch for export; never waits, never raises.

        Args:
            spans: Finished spans (copied into a tuple).

        Returns:
            Whether the batch was queued; otherwise it is dropped and counted.
        """
        batch = tuple(spans)
        count = len(batch)
        if not count:
            return True
        with self._lock:
            self._submitted += count
        if not self._accepting:
            reason = self._refusal_reason()
        elif self._check_overrun():
            reason = "exporter_stuck"
        elif self._queue.offer(batch):
            return True
        else:
            reason = "queue_full"
        self._drop(reason, count, 1)
        return False

    def flush(self, timeout: float) -> bool:
        """Wait until every batch submitted before the call has been handled.

        Handled means exported, failed or dropped. Fails fast (``False``)
        while an export has overrun its timeout.

        Args:
            timeout: Seconds to wait.

        Returns:
            ``True`` if the worker got through them in time.
        """
        if self._state is not CollectorState.RUNNING:
            return self._state is CollectorState.STOPPED
        if self._check_overrun():
            return False
        future: Future[bool] = Future()
        if not self._queue.offer_control(_Flush(future)):
            return False
        if self._state is not CollectorState.RUNNING:  # stopped or died meanwhile
            self._sweep(self._refusal_reason())
        try:
            return future.result(max(timeout, 0.0))
        except TimeoutError:
            return False

    def stop(self, timeout: float) -> bool:
        """Stop accepting, let the thread export what is queued, and join it.

        Bounded by ``timeout``: if the thread is still busy then (a slow or
        hung export), what is still queued is counted as dropped
        (``closed``) and the daemon thread is left to finish on its own; it
        exits as soon as its export call returns. The exporter's
        ``shutdown()`` runs on the worker thread after its last export.
        Idempotent.

        Returns:
            ``True`` if the thread is gone (or never ran).
        """
        self._accepting = False
        thread = self._thread
        if self._state is CollectorState.RUNNING and thread is not None:
            self._queue.offer_control(_STOP)
            thread.join(max(timeout, 0.0))
            if thread.is_alive():
                self._check_overrun()
                self._abandoned = True
                self._sweep("closed")
                self._queue.offer_control(_STOP)  # wakes the thread if it ever drains again
                _logger.warning("observability.exporter_abandoned", exporter=self.name)
                return False
        if self._state is not CollectorState.DEAD:
            self._state = CollectorState.STOPPED
        self._sweep(self._refusal_reason())
        return True

    def stats(self) -> ExportStats:
        """The worker's counters, read without waiting for the worker."""
        if self._state in (CollectorState.STOPPED, CollectorState.DEAD):
            self._sweep(self._refusal_reason())
        stuck = self._check_overrun()
        thread = self._thread
        with self._lock:
            return ExportStats(
                name=self.name,
                state=self._state,
                alive=thread is not None and thread.is_alive(),
                busy=self._current is not None,
                stuck=stuck,
                queue_depth=self._queue.depth(),
                queue_capacity=self._capacity,
                submitted=self._submitted,
                exported=self._exported,
                exported_batches=self._exported_batches,
                failed=self._failed,
                failed_batches=self._failed_batches,
                timed_out=self._timed_out,
                timed_out_batches=self._timed_out_batches,
                dropped=MappingProxyType(dict(self._dropped)),
                dropped_batches=self._dropped_batches,
                last_error=self._last_error,
            )

    def after_fork_in_child(self) -> int:
        """Rebuild queue, lock and thread slot in a freshly forked child process.

        The batches queued or being exported at the fork are the parent's to
        export; the child counts its copies as submitted and dropped
        (``fork``). Call :meth:`start` afterwards to run the child's worker.

        Returns:
            How many spans were lost.
        """
        lost = sum(
            len(item) for item in self._queue.unsafe_items_after_fork() if type(item) is tuple
        )
        current = self._current
        if current is not None and not current.timed_out:
            lost += current.spans
        self._init_runtime()
        if lost:
            self._submitted = lost
            self._dropped["fork"] = lost
        return lost

    def _refusal_reason(self) -> str:
        return "exporter_dead" if self._state is CollectorState.DEAD else "closed"

    def _check_overrun(self) -> bool:
        """Whether the export in progress has overrun; counts it once, when first seen."""
        with self._lock:
            current = self._current
            if current is None:
                return False
            if current.timed_out:
                return True
            elapsed = self._clock() - current.started
            if elapsed <= self._export_timeout:
                return False
            current.timed_out = True
            self._timed_out += current.spans
            self._timed_out_batches += 1
            self._last_error = f"export exceeded {self._export_timeout:g}s"
        _logger.warning(
            "observability.export_timed_out", exporter=self.name, spans=current.spans,
            elapsed=elapsed, export_timeout=self._export_timeout,
        )
        return True

    def _drop(self, reason: str, spans: int, batches: int) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + spans
            self._dropped_batches += batches
            now = time.monotonic()
            warn = now - self._last_drop_warning >= _DROP_WARNING_INTERVAL
            if warn:
                self._last_drop_warning = now
        if warn:
            _logger.warning(
                "observability.spans_dropped", exporter=self.name, reason=reason, spans=spans
            )

    def _sweep(self, reason: str) -> None:
        """Account for queued items once no thread will export them."""
        for item in self._queue.take_all():
            kind = type(item)
            if kind is tuple:
                self._drop(reason, len(item), 1)
            elif kind is _Flush:
                _resolve(item.future, False)

    # --- runs on the worker thread only -----------------------------------

    def _run(self) -> None:
        queue = self._queue
        try:
            while True:
                if self._abandoned:
                    self._finish()
                    return
                for item in queue.drain(1, None):
                    kind = type(item)
                    if kind is tuple:
                        self._export(item)
                    elif kind is _Flush:
                        _resolve(item.future, True)
                    elif kind is _Stop:
                        self._finish()
                        return
        except BaseException as exc:
            self._die(exc)
            raise

    def _export(self, batch: tuple[SpanRecord, ...]) -> None:
        """Call the exporter with one batch and count the outcome."""
        current = _InFlight(len(batch), self._clock())
        with self._lock:
            self._current = current
        error: str | None = None
        try:
            result = self._exporter.export(batch)
        except Exception as exc:
            result = False
            error = f"{type(exc).__name__}: {exc}"
            _logger.error("observability.export_failed", exporter=self.name,
                          spans=len(batch), error=error, exc_info=exc)
        with self._lock:
            self._current = None
            late = current.timed_out
            if not late:
                if result is False:
                    self._failed += current.spans
                    self._failed_batches += 1
                    self._last_error = error or "export returned False"
                else:
                    self._exported += current.spans
                    self._exported_batches += 1
        if late:
            _logger.warning(
                "observability.export_returned_late", exporter=self.name,
                spans=current.spans, succeeded=result is not False,
            )

    def _finish(self) -> None:
        """Last export done: shut the exporter down and account for leftovers."""
        shutdown = getattr(self._exporter, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception as exc:
                _logger.error("observability.exporter_shutdown_failed", exporter=self.name,
                              error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        if self._state is not CollectorState.DEAD:
            self._state = CollectorState.STOPPED
        self._sweep("closed")

    def _die(self, exc: BaseException) -> None:
        """A ``BaseException`` escaped an export: account for everything, then let it go."""
        with self._lock:
            current, self._current = self._current, None
            self._last_error = f"{type(exc).__name__}: {exc}"
        self._state = CollectorState.DEAD
        self._accepting = False
        if current is not None and not current.timed_out:
            self._drop("exporter_dead", current.spans, 1)
        _logger.critical("observability.exporter_died", exporter=self.name,
                         error=self._last_error)
        self._sweep("exporter_dead")


def _resolve(future: Future[Any], result: object) -> None:
    """Set a future's result unless its caller cancelled it."""
    with contextlib.suppress(InvalidStateError):
        future.set_result(result)
