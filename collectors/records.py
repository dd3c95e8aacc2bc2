"""Immutable records: the messages producers put on collector queues.

One named type per kind of record. Each is a ``NamedTuple``: cheap to build
on the hot path of every workflow node, immutable, and read by field name
everywhere (nothing outside this module reads a record by position).
Mappings travel as tuples of ``(key, value)`` pairs, built in the caller's
thread before the record leaves it, so a record shares nothing mutable.

Timestamps are integers of nanoseconds since the Unix epoch, which is UTC by
definition; the ``*_time`` properties turn them into timezone-aware
``datetime`` objects for people.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import NamedTuple

__all__ = (
    "AttributeValue",
    "Attributes",
    "AuditRecord",
    "Batch",
    "CostRecord",
    "Labels",
    "MetricRecord",
    "SpanEvent",
    "SpanRecord",
    "ns_to_datetime",
)

AttributeValue = str | bool | int | float
#: Span and event attributes: ``(key, value)`` pairs.
Attributes = tuple[tuple[str, AttributeValue], ...]
#: Metric labels: ``(name, value)`` pairs in the metric's declared order.
Labels = tuple[tuple[str, str], ...]


def ns_to_datetime(time_ns: int) -> datetime:
    """Convert nanoseconds since the Unix epoch into an aware UTC ``datetime``."""
    return datetime.fromtimestamp(time_ns / 1e9, tz=UTC)


class MetricRecord(NamedTuple):
    """One counter increment or one histogram observation.

    The metrics store knows from its catalog whether ``metric`` is a counter
    (``value`` is added) or a histogram (``value`` is observed).
    """

    metric: str
    labels: Labels
    value: int | float


class SpanEvent(NamedTuple):
    """A timestamped event inside a span (for example an ``exception``)."""

    name: str
    time_ns: int
    attributes: Attributes = ()


class SpanRecord(NamedTuple):
    """A finished span. Ids are integers; the ``*_hex`` properties give W3C form."""

    trace_id: int
    span_id: int
    parent_span_id: int  # 0 for a root span
    name: str
    kind: str  # "workflow" | "node" | "generation" | "internal"
    start_ns: int
    end_ns: int
    status: str  # "ok" | "error" | "unset"
    error_type: str | None
    error_message: str | None
    attributes: Attributes
    events: tuple[SpanEvent, ...] = ()
    remote_parent: bool = False

    @property
    def trace_id_hex(self) -> str:
        """The 32-hex-digit W3C trace id."""
        return f"{self.trace_id:032x}"

    @property
    def span_id_hex(self) -> str:
        """The 16-hex-digit W3C span id."""
        return f"{self.span_id:016x}"

    @property
    def parent_span_id_hex(self) -> str | None:
        """The parent's 16-hex-digit span id, or ``None`` for a root span."""
        return f"{self.parent_span_id:016x}" if self.parent_span_id else None

    @property
    def duration_ns(self) -> int:
        """Duration in nanoseconds, measured on the monotonic clock.

        ``start_ns`` is the wall clock at the start; ``end_ns`` is ``start_ns``
        plus the monotonic elapsed time, so durations never go negative when
        the wall clock is adjusted.
        """
        return self.end_ns - self.start_ns

    @property
    def duration_seconds(self) -> float:
        """Wall duration in seconds."""
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def start_time(self) -> datetime:
        """Start as an aware UTC ``datetime``."""
        return ns_to_datetime(self.start_ns)

    @property
    def end_time(self) -> datetime:
        """End as an aware UTC ``datetime``."""
        return ns_to_datetime(self.end_ns)

    @property
    def attrs(self) -> MappingProxyType[str, AttributeValue]:
        """The attributes as a read-only mapping."""
        return MappingProxyType(dict(self.attributes))


class CostRecord(NamedTuple):
    """The priced usage of one model call. ``cost`` is exact (``Decimal``).

    ``event_id`` identifies the call: the same event recorded twice is billed
    once (the ledger's idempotency key).
    """

    event_id: str
    tenant_id: str
    request_id: str | None
    model_version: str
    prompt_version: str | None
    input_tokens: int
    output_tokens: int
    cost: Decimal
    priced: bool  # False when the model version is missing from the price table
    time_ns: int

    @property
    def time(self) -> datetime:
        """When the call was priced, as an aware UTC ``datetime``."""
        return ns_to_datetime(self.time_ns)


class AuditRecord(NamedTuple):
    """One audit event; ``fields`` are ``(key, value)`` pairs."""

    event: str
    time_ns: int
    fields: tuple[tuple[str, object], ...]

    @property
    def time(self) -> datetime:
        """When it happened, as an aware UTC ``datetime``."""
        return ns_to_datetime(self.time_ns)

    @property
    def data(self) -> MappingProxyType[str, object]:
        """The fields as a read-only mapping."""
        return MappingProxyType(dict(self.fields))


class Batch(NamedTuple):
    """Several records for one collector, enqueued as one queue item.

    Accounting counts the records inside, not the batch: a dropped batch of
    five is five dropped records.
    """

    records: tuple[object, ...]
