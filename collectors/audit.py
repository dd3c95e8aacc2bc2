"""The audit-event store and its collector.

Audit events are written to the structured log (structlog, one line per
event, on this collector's thread, so producers never pay for log
formatting) and kept in a bounded buffer that tests and operators read after
a flush. A redactor, when configured, runs before both.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from collectors.base import Collector
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


class AuditStoreCollector(Collector[AuditStore]):
    """Actor owning the :class:`AuditStore` and writing the audit log.

    Args:
        capacity: Events kept in memory; older ones are evicted and counted.
        redactor: Applied to every event before it is logged or stored.
        logger_name: The structlog logger audit lines are written to.
        **kwargs: Passed to :class:`~collectors.base.Collector`.
    """

    def __init__(
        self,
        *,
        capacity: int = 10_000,
        redactor: AuditRedactor | None = None,
        logger_name: str = "audit",
        **kwargs: Any,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._redactor = redactor
        self._log = structlog.get_logger(logger_name)
        super().__init__("audit", **kwargs)

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
