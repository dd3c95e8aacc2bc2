"""``AuditLogger``: structured audit events, logged with structlog and kept for reads.

:meth:`AuditLogger.log` builds one immutable
:class:`~collectors.records.AuditRecord` and sends it to the audit actor
(:class:`collectors.audit.AuditStoreCollector`), whose thread writes the
structlog line and keeps the event in a bounded buffer. Producers never pay
for log formatting; tests read :meth:`AuditLogger.events` after a flush.
"""

from __future__ import annotations

import time

from collectors.audit import AuditStoreCollector
from collectors.records import AuditRecord

__all__ = ("AuditLogger",)

#: Keys the audit collector sets on every log line itself: a field of the same
#: name would make its structlog call fail on the collector thread and the
#: event would be lost.
_RESERVED_FIELDS = ("audit", "timestamp")


class AuditLogger:
    """Emits audit events.

    Args:
        collector: The audit actor.
        read_timeout: Seconds a read waits for the collector's answer.
    """

    def __init__(self, collector: AuditStoreCollector, *, read_timeout: float = 5.0) -> None:
        self._collector = collector
        self._read_timeout = read_timeout

    def log(self, event: str, **fields: object) -> None:
        """Emit one audit event.

        Args:
            event: A dotted event name, e.g. ``"failure.classified"``.
            **fields: Event data; values should be JSON-friendly scalars.

        Raises:
            ValueError: ``event`` is empty, or a field is named ``audit`` or
                ``timestamp`` (set on every audit log line).
            TypeError: ``event`` is not a str.
        """
        if type(event) is not str:
            raise TypeError(f"event must be a str, got {type(event).__name__}")
        if not event:
            raise ValueError("event must not be empty")
        for name in _RESERVED_FIELDS:
            if name in fields:
                raise ValueError(f"audit field {name!r} is reserved for the log line")
        self._collector.send(AuditRecord(event, time.time_ns(), tuple(fields.items())))

    def events(
        self, *, event: str | None = None, tenant_id: str | None = None
    ) -> tuple[AuditRecord, ...]:
        """Audit events in the buffer, oldest first, optionally filtered.

        Reflects every event the calling thread emitted before the call.
        """
        return self._collector.events(event=event, tenant_id=tenant_id,
                                      timeout=self._read_timeout)
