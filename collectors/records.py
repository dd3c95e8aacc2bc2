"""Immutable records: the messages producers put on collector queues.

Records are ``NamedTuple`` subclasses because they are built on the hot path of
every workflow node (a NamedTuple costs ~0.3 us to build here, a frozen slotted
dataclass ~0.6 us, a pydantic model ~2.3 us). Every field is immutable:
mappings travel as tuples of ``(key, value)`` pairs, built in the caller's
thread before the record leaves it.

Timestamps are integers of nanoseconds since the Unix epoch, which is UTC by
definition; the ``*_time`` properties turn them into timezone-aware
``datetime`` objects for people.

**On the wire, records are plain tuples.** The library's own producers put
exact ``tuple`` objects, field for field in the order of the classes below,
on the queues and into run outboxes; collectors read them by position (so a
``NamedTuple`` sent by a caller works the same), and the trace store keeps
spans as plain tuples too. Readers get the typed ``NamedTuple`` views
(:func:`as_span_record`). The reason is CPython's cyclic garbage collector.
It stops tracking an exact tuple whose items are atoms (strings, numbers,
``None``, ``Decimal``) or untracked tuples when a collection finds it alive,
but a ``NamedTuple`` subclass stays tracked for life. Records wait in a queue
for up to a linger (0.1 s) and spans stay in the trace ring, so as
``NamedTuple`` objects they outlived the young collections and were promoted
to the oldest generation: ~35 objects per workflow run, which triggered a
full collection (~90 ms with LangGraph loaded) every ~1,000 runs. Nesting is
kept shallow for the same reason: a collection untracks one level of nested
tuples at a time (it moves an inner tuple behind its container while it looks
for unreachable objects), so a span tuple carries its attributes flat,
``("k1", v1, "k2", v2)``, not as pairs, and metric records share label tuples
built once (already untracked) instead of building new ones per call.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from itertools import chain
from types import MappingProxyType
from typing import Any, NamedTuple

__all__ = (
    "AttributeValue",
    "AuditRecord",
    "Batch",
    "CostRecord",
    "Labels",
    "MetricRecord",
    "SpanEvent",
    "SpanRecord",
    "as_span_record",
    "flat_attributes",
    "ns_to_datetime",
    "paired_attributes",
)

AttributeValue = str | bool | int | float
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


def flat_attributes(pairs: tuple[tuple[str, Any], ...]) -> tuple[Any, ...]:
    """``(("k1", v1), ("k2", v2))`` -> ``("k1", v1, "k2", v2)``: the wire form."""
    return tuple(chain.from_iterable(pairs))


def paired_attributes(flat: tuple[Any, ...]) -> tuple[tuple[str, Any], ...]:
    """The inverse of :func:`flat_attributes`; pairs pass through unchanged."""
    if not flat or type(flat[0]) is tuple:
        return flat
    return tuple(zip(flat[::2], flat[1::2], strict=True))


def as_span_record(record: tuple[Any, ...]) -> SpanRecord:
    """The typed view of a span record received or stored as a plain tuple.

    A plain span tuple carries its attributes flat (``("k1", v1, "k2",
    v2)``); the view has them as ``(key, value)`` pairs, as documented on
    :class:`SpanRecord`.
    """
    if type(record) is SpanRecord:
        return record
    attributes = record[10]
    if attributes and type(attributes[0]) is not tuple:
        record = (*record[:10], paired_attributes(attributes), *record[11:])
    view: SpanRecord = _new_tuple(SpanRecord, record)
    return view


_new_tuple = tuple.__new__


class SpanEvent(NamedTuple):
    """A timestamped event inside a span (for example an ``exception``)."""

    name: str
    time_ns: int
    attributes: tuple[tuple[str, AttributeValue], ...] = ()


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
    attributes: tuple[tuple[str, AttributeValue], ...]
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
    """The priced usage of one model call. ``cost`` is exact (``Decimal``)."""

    tenant_id: str
    request_id: str | None
    model_version: str
    input_tokens: int
    output_tokens: int
    cost: Decimal
    priced: bool  # False when the model version is missing from the price table
    time_ns: int


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
