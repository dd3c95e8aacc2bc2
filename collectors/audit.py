"""The audit-event store and its collector.

Audit events are written to the structured log (structlog, one line per
event, on this collector's thread, so producers never pay for log
formatting) and kept in a bounded buffer that tests and operators read after
a flush. A redactor, when configured, runs before both.

With a ledger (``ledger_url``) every event is also appended, after
redaction, to the ledger's audit trail: one SHA-256 hash chain per tenant
(the event's ``tenant_id`` field; events without one form the chain ``""``),
each row hashing its canonical content and the previous row's hash. Rows are
written in one transaction per drained batch on this thread, and a flush
returns only once they are committed. Nothing updates or deletes them;
``python -m app audit-verify`` checks every chain.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from collectors.ledger import AuditRow, Ledger, LedgerCollector, canonical_fields, open_ledger
from collectors.logs import get_logger
from collectors.records import AuditRecord

__all__ = ("AuditRedactor", "AuditStore", "AuditStoreCollector")

AuditRedactor = Callable[[AuditRecord], AuditRecord]

#: Keys the log call uses itself; a field with one of these names is renamed.
_RESERVED = frozenset({"event", "audit", "timestamp"})


class AuditStore:
    """Recent audit events. Owned by one :class:`AuditStoreCollector` thread."""

    __slots__ = ("events", "evicted")

    def __init__(self, capacity: int) -> None:
        self.events: deque[AuditRecord] = deque(maxlen=capacity)
        self.evicted = 0


class AuditStoreCollector(LedgerCollector[AuditStore, AuditRow]):
    """Actor owning the :class:`AuditStore` and writing the audit log.

    Args:
        capacity: Events kept in memory; older ones are evicted and counted.
        redactor: Applied to every event before it is logged or stored.
        logger_name: The structlog logger audit lines are written to.
        ledger_url: ``sqlite:///PATH`` or ``postgresql://...``; ``None``: memory only.
        ledger_buffer_size: Rows kept while the ledger is unreachable; past it,
            rows are dropped from the ledger and counted.
        ledger_retry_max_seconds: The ceiling of the retry backoff.
        ledger_opener: Opens a ledger from its URL (tests inject failures here).
        **kwargs: Passed to :class:`~collectors.base.Collector`.

    The ledger connection's lifecycle (opened at start, closed after stop,
    forgotten after fork) is :class:`~collectors.ledger.LedgerCollector`'s.
    """

    def __init__(
        self,
        *,
        capacity: int = 10_000,
        redactor: AuditRedactor | None = None,
        logger_name: str = "audit",
        ledger_url: str | None = None,
        ledger_buffer_size: int = 100_000,
        ledger_retry_max_seconds: float = 5.0,
        ledger_opener: Callable[[str], Ledger] = open_ledger,
        **kwargs: Any,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._redactor = redactor
        self._log = get_logger(logger_name)
        super().__init__(
            "audit", ledger_url=ledger_url, ledger_buffer_size=ledger_buffer_size,
            ledger_retry_max_seconds=ledger_retry_max_seconds, ledger_opener=ledger_opener,
            **kwargs,
        )

    # --- runs on the collector thread only (or before it starts) ---------

    def _new_store(self) -> AuditStore:
        return AuditStore(self._capacity)

    def _apply(self, record: AuditRecord) -> None:
        """Log and keep one audit event. Collector thread only."""
        if self._redactor is not None:
            record = self._redactor(record)
        fields = {
            (f"field_{key}" if key in _RESERVED else key): value for key, value in record.fields
        }
        self._log.info(record.event, audit=True, timestamp=record.time.isoformat(), **fields)
        store = self._store
        if len(store.events) == self._capacity:
            store.evicted += 1
        store.events.append(record)
        link = self._link
        if link is not None:
            tenant = dict(record.fields).get("tenant_id")
            row = AuditRow(chain="" if tenant is None else str(tenant), event=record.event,
                           time_ns=record.time_ns, fields_json=canonical_fields(record.fields))
            link.add(row)  # a row it cannot take is counted by the ledger link

    def _commit(self) -> bool:
        """Append the buffered events to their chains in one transaction (collector thread)."""
        link = self._link
        if link is None:
            return True
        committed, _ = link.commit(lambda ledger, rows: ledger.append_audit(rows))
        return committed

    # --- any thread -------------------------------------------------------

    def events(
        self, *, event: str | None = None, tenant_id: str | None = None, timeout: float = 5.0
    ) -> tuple[AuditRecord, ...]:
        """Audit events still in the buffer, oldest first, optionally filtered."""

        def select(store: AuditStore) -> tuple[AuditRecord, ...]:
            return tuple(
                e for e in store.events
                if (event is None or e.event == event)
                and (tenant_id is None or ("tenant_id", tenant_id) in e.fields)
            )

        return self.query(select, timeout)
