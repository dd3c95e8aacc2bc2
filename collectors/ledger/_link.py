"""A collector's connection to its ledger: a bounded buffer, retries, accounting.

Rows wait in a bounded buffer until the owning collector commits them, one
transaction per drained batch. When the database is away the rows stay
buffered and the link retries with exponential backoff (a timer asks the
collector for a flush, so the retry runs on the collector thread like any
other write); once the buffer is full, new rows are dropped from the ledger
and counted. The collector keeps applying records to its in-memory store
either way, so the pipeline stays healthy and bounded.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from collectors.ledger._common import Ledger, redact_url
from collectors.logs import get_logger
from collectors.records import ns_to_datetime

__all__ = ("LedgerLink", "LedgerState", "LedgerStats")

_logger = get_logger(__name__)

RowT = TypeVar("RowT")
ResultT = TypeVar("ResultT")

#: Seconds between two "ledger unavailable" warnings of one link.
_WARN_INTERVAL = 10.0


class LedgerState(enum.Enum):
    """Where a collector's ledger connection stands."""

    CONNECTING = "connecting"  # not opened yet
    UP = "up"  # the last open or write succeeded
    DOWN = "down"  # the last attempt failed; rows are buffered and retried
    CLOSED = "closed"


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerStats:
    """One collector's ledger, as ``health()`` shows it.

    Attributes:
        collector: The collector that owns the connection (``cost``, ``audit``).
        url: The ledger URL, password masked.
        state: See :class:`LedgerState`.
        lag: Rows applied in memory but not committed yet (the buffer).
        capacity: The buffer's bound.
        committed: Rows committed so far by this process.
        dropped: Rows lost to a full buffer (or left at close): never committed.
        duplicates: Rows the ledger already had (same event id): not billed again.
        errors: Failed open or write attempts.
        last_error: The last failure, if any.
        last_commit: When the last transaction committed.
    """

    collector: str
    url: str
    state: LedgerState
    lag: int
    capacity: int
    committed: int
    dropped: int
    duplicates: int
    errors: int
    last_error: str | None
    last_commit: datetime | None

    @property
    def healthy(self) -> bool:
        """Connected, or still connecting, with nothing dropped."""
        return self.state in (LedgerState.UP, LedgerState.CONNECTING) and not self.dropped


class LedgerLink(Generic[RowT]):
    """The ledger connection of one collector, used on that collector's thread only.

    Args:
        collector: The owning collector's name (for logs and stats).
        url: The ledger URL (see :func:`collectors.ledger.open_ledger`).
        opener: Opens a ledger from the URL (on the calling, i.e. collector, thread).
        capacity: The most rows buffered while uncommitted.
        retry: Called (on a timer thread) when a retry is due; it should make
            the collector thread call :meth:`commit` (a flush request does).
        retry_initial: First backoff after a failure, in seconds.
        retry_max: Backoff ceiling, in seconds.
    """

    def __init__(
        self,
        collector: str,
        url: str,
        opener: Callable[[str], Ledger],
        *,
        capacity: int,
        retry: Callable[[], object],
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
    ) -> None:
        self.collector = collector
        self._url = url
        self._opener = opener
        self._capacity = capacity
        self._retry = retry
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._pending: deque[RowT] = deque()
        self._ledger: Ledger | None = None
        self._state = LedgerState.CONNECTING
        self._backoff = retry_initial
        self._timer: threading.Timer | None = None
        self._timer_lock = threading.Lock()
        self._committed = 0
        self._dropped = 0
        self.duplicates = 0
        self._errors = 0
        self._last_error: str | None = None
        self._last_commit_ns: int | None = None
        self._last_warning = -_WARN_INTERVAL

    # --- the owning collector's thread -----------------------------------------

    @property
    def ledger(self) -> Ledger | None:
        """The open ledger, or ``None`` while it is unreachable."""
        return self._ledger

    @property
    def pending(self) -> Sequence[RowT]:
        """The rows not committed yet, oldest first (read-only use)."""
        return self._pending

    def open(self) -> Ledger | None:
        """Open the ledger if it is not open; ``None`` (and a retry scheduled) on failure."""
        if self._ledger is None and self._state is not LedgerState.CLOSED:
            try:
                self._ledger = self._opener(self._url)
            except Exception as exc:
                self._failed("open", exc)
                return None
            self._state = LedgerState.UP
            self._backoff = self._retry_initial
        return self._ledger

    def add(self, row: RowT) -> bool:
        """Buffer one row for the next commit; ``False`` (counted) when the buffer is full."""
        if len(self._pending) >= self._capacity:
            self._dropped += 1
            self._warn("observability.ledger_buffer_full", None)
            return False
        self._pending.append(row)
        return True

    def commit(self, write: Callable[[Ledger, list[RowT]], ResultT]) -> tuple[bool, ResultT | None]:
        """Write every buffered row in one transaction with ``write``.

        Returns:
            ``(True, result)`` when the buffer is empty afterwards (``result``
            is ``None`` if there was nothing to write); ``(False, None)`` when
            the ledger is unreachable or the write failed: the rows stay
            buffered and a retry is scheduled.
        """
        if not self._pending:
            return True, None
        ledger = self.open()
        if ledger is None:
            return False, None
        rows = list(self._pending)
        try:
            result = write(ledger, rows)
        except Exception as exc:
            self._failed("write", exc)
            return False, None
        self._pending.clear()
        self._committed += len(rows)
        self._last_commit_ns = time.time_ns()
        self._state = LedgerState.UP
        self._backoff = self._retry_initial
        return True, result

    def read(self, fn: Callable[[Ledger], ResultT]) -> ResultT | None:
        """Run a read on the ledger; ``None`` (counted as an error) if it fails."""
        ledger = self.open()
        if ledger is None:
            return None
        try:
            return fn(ledger)
        except Exception as exc:
            self._failed("read", exc)
            return None

    def _failed(self, action: str, exc: Exception) -> None:
        self._errors += 1
        self._last_error = f"{action}: {type(exc).__name__}: {exc}"
        self._state = LedgerState.DOWN
        ledger, self._ledger = self._ledger, None
        if ledger is not None:  # a failed connection is not reused: the next try reopens
            with contextlib.suppress(Exception):  # already broken: the error above counts
                ledger.close()
        self._warn("observability.ledger_unavailable", self._last_error)
        self._schedule_retry()

    def _warn(self, event: str, error: str | None) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_INTERVAL:
            self._last_warning = now
            _logger.warning(event, collector=self.collector, ledger=redact_url(self._url),
                            error=error, lag=len(self._pending), dropped=self._dropped)

    def _schedule_retry(self) -> None:
        with self._timer_lock:
            if self._timer is not None or self._state is LedgerState.CLOSED:
                return
            delay = self._backoff
            self._backoff = min(self._backoff * 2, self._retry_max)
            timer = threading.Timer(delay, self._retry_due)
            timer.name = f"ledger-retry-{self.collector}"
            timer.daemon = True
            self._timer = timer
        timer.start()

    def _retry_due(self) -> None:  # timer thread
        with self._timer_lock:
            self._timer = None
            if self._state is LedgerState.CLOSED:
                return
        self._retry()

    def close(self) -> int:
        """Close the connection and stop retrying; rows still buffered are counted as dropped.

        Call it once the owning thread is gone (or from it). Idempotent.

        Returns:
            The rows dropped by the close.
        """
        with self._timer_lock:
            self._state = LedgerState.CLOSED
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        lost = len(self._pending)
        if lost:
            self._dropped += lost
            self._pending.clear()
            _logger.error("observability.ledger_rows_lost_at_close", collector=self.collector,
                          ledger=redact_url(self._url), count=lost)
        ledger, self._ledger = self._ledger, None
        if ledger is not None:
            try:
                ledger.close()
            except Exception as exc:
                _logger.warning("observability.ledger_close_failed", error=str(exc))
        return lost

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's connection and rows without touching them.

        The parent still owns both; closing the connection here would end the
        parent's session on a shared socket.
        """
        self._ledger = None
        self._pending.clear()
        self._timer = None
        self._timer_lock = threading.Lock()
        if self._state is not LedgerState.CLOSED:
            self._state = LedgerState.CONNECTING

    # --- any thread ---------------------------------------------------------------

    def stats(self) -> LedgerStats:
        """A consistent-enough view, read without blocking the owner."""
        return LedgerStats(
            collector=self.collector,
            url=redact_url(self._url),
            state=self._state,
            lag=len(self._pending),
            capacity=self._capacity,
            committed=self._committed,
            dropped=self._dropped,
            duplicates=self.duplicates,
            errors=self._errors,
            last_error=self._last_error,
            last_commit=ns_to_datetime(self._last_commit_ns) if self._last_commit_ns else None,
        )
