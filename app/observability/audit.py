"""``AuditLogger``: structured audit events, logged with structlog and kept for reads.

:meth:`AuditLogger.log` builds one immutable
:class:`~collectors.records.AuditRecord` and sends it to the audit actor
(:class:`collectors.audit.AuditStoreCollector`), whose thread writes the
structlog line and keeps the event in a bounded buffer (and, with a ledger,
appends it to the tenant's tamper-evident hash chain). Producers never pay
for log formatting; tests read :meth:`AuditLogger.events` after a flush.
"""

from __future__ import annotations

import time

from app.observability.settings import InputLimits
from app.observability.validation import check_id, check_text
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
        limits: Bounds on the event name, field names and text values.
    """

    def __init__(
        self, collector: AuditStoreCollector, *, read_timeout: float = 5.0,
        limits: InputLimits | None = None,
    ) -> None:
        self._collector = collector
        self._read_timeout = read_timeout
        self._limits = limits if limits is not None else InputLimits()

    def log(self, event: str, **fields: object) -> None:
        """Emit one audit event.

        Args:
            event: A dotted event name, e.g. ``"failure.classified"``.
            **fields: Event data; values should be JSON-friendly scalars.

        Raises:
            ValueError: ``event`` is not a valid id (empty, too long, control
                characters), or a field is named ``audit`` or ``timestamp``
                (set on every audit log line). Text values are kept, repaired
                and truncated past ``max_attribute_length``.
            TypeError: ``event`` is not a str.
        """
        limits = self._limits
        check_id("event", event, max_length=limits.max_id_length)
        for name in _RESERVED_FIELDS:
            if name in fields:
                raise ValueError(f"audit field {name!r} is reserved for the log line")
        items = tuple(
            (key, check_text(f"audit field {key}", value,
                             max_length=limits.max_attribute_length)
             if isinstance(value, str) else value)
            for key, value in fields.items()
        )
        self._collector.send(AuditRecord(event, time.time_ns(), items))

    def events(
        self, *, event: str | None = None, tenant_id: str | None = None
    ) -> tuple[AuditRecord, ...]:
        """Audit events in the buffer, oldest first, optionally filtered.

        Reflects every event the calling thread emitted before the call.
        """
        return self._collector.events(event=event, tenant_id=tenant_id,
                                      timeout=self._read_timeout)
