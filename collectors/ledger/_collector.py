"""A collector that also writes what it applies to a ledger, through one :class:`LedgerLink`.

The cost and audit collectors share this lifecycle: the link is created with
the collector, opened on the collector thread when it starts, committed by
the subclass's :meth:`~collectors.base.Collector._commit` (after each batch
and before a flush resolves), closed once the thread is gone, and forgotten
(never closed: the parent owns it) in a forked child.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from collectors.base import Collector
from collectors.ledger._common import Ledger
from collectors.ledger._link import LedgerLink, LedgerStats

__all__ = ("LedgerCollector",)

StoreT = TypeVar("StoreT")
RowT = TypeVar("RowT")


class LedgerCollector(Collector[StoreT], Generic[StoreT, RowT]):
    """A collector whose rows of type ``RowT`` also go to a ledger (when it has one).

    Subclasses add rows with ``self._link.add(row)`` while applying records
    and write them in their ``_commit`` with ``self._link.commit(...)``.

    Args:
        name: The collector's name (also the link's, in logs and stats).
        ledger_url: ``sqlite:///PATH`` or ``postgresql://...``; ``None``: memory only.
        ledger_buffer_size: Rows kept while the ledger is unreachable; past it,
            rows are dropped from the ledger and counted.
        ledger_retry_max_seconds: The ceiling of the retry backoff.
        ledger_opener: Opens a ledger from its URL
            (:func:`~collectors.ledger.open_ledger`; tests inject failures here).
        **kwargs: Passed to :class:`~collectors.base.Collector`.

    Raises:
        ValueError: ``ledger_buffer_size`` is below 1.
    """

    def __init__(
        self,
        name: str,
        *,
        ledger_url: str | None,
        ledger_buffer_size: int,
        ledger_retry_max_seconds: float,
        ledger_opener: Callable[[str], Ledger],
        **kwargs: Any,
    ) -> None:
        if ledger_buffer_size < 1:
            raise ValueError("ledger_buffer_size must be at least 1")
        self._link: LedgerLink[RowT] | None = None
        if ledger_url is not None:
            self._link = LedgerLink(
                name, ledger_url, ledger_opener, capacity=ledger_buffer_size,
                retry=self.request_flush, retry_max=ledger_retry_max_seconds,
            )
        super().__init__(name, **kwargs)

    # --- the collector thread ----------------------------------------------

    def _run(self) -> None:
        """Open the ledger on this thread (if configured), then run the loop."""
        if self._link is not None:
            self._open_ledger(self._link)
        super()._run()

    def _open_ledger(self, link: LedgerLink[RowT]) -> None:
        """Open the ledger as the thread starts; a failure is counted and retried by the link."""
        link.open()

    # --- any thread -------------------------------------------------------

    def stop(self, timeout: float, *, helpers: bool = True) -> bool:
        """Stop the thread (its last batch is committed first), then close the ledger.

        Rows the ledger could not take by then are counted as dropped by the
        ledger link (``observability_ledger_rows_total{outcome="dropped"}``).
        """
        stopped = super().stop(timeout, helpers=helpers)
        if stopped and self._link is not None:
            self._link.close()
        return stopped

    def after_fork_in_child(self, *, restart: bool) -> int:
        """In a forked child, also forget the parent's ledger connection and rows."""
        if self._link is not None:
            self._link.forget_after_fork()
        return super().after_fork_in_child(restart=restart)

    def ledger_stats(self) -> LedgerStats | None:
        """The ledger's state, lag and errors; ``None`` without a ledger."""
        return None if self._link is None else self._link.stats()
