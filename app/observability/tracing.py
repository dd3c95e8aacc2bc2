"""``TracingService``: spans with W3C ids, propagated through ``contextvars``.

The current span lives in a ``ContextVar`` owned by the service instance (two
containers never see each other's spans). That gives the propagation Python
already provides for context variables: across ``await``, into tasks created
from the current task (they copy the context), and into threads that run in a
copied context (``asyncio.to_thread``, ``contextvars.copy_context().run``).

Four ways in, one path each:

* ``await start_span(...)`` / ``await end_span(span)`` (the specification's);
* ``with tracing.span(...)`` or ``async with tracing.span(...)``;
* ``start_span_sync(...)`` / ``end_span_sync(span)`` for synchronous code
  (the workflow's synchronous nodes).

Only a finished span is sent, as one immutable
:class:`~collectors.records.SpanRecord`, to the trace collector, or into its
run's outbox (:class:`~collectors.outbox.RunOutbox`) when the span belongs to
a batched run. Sampling is parent-based with a trace-id ratio (like
OpenTelemetry's ``ParentBased(TraceIdRatioBased)``); it only decides which
spans are stored and exported -- metrics, costs and failure counts never
depend on it.

Hierarchy used by the workflow: ``workflow`` (root, one per request) ->
``node`` (one per LangGraph node) -> ``generation`` (one per LLM call).
"""

from __future__ import annotations

import os
import random
import re
import time
import weakref
from collections.abc import Mapping, Sequence
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, NamedTuple

from app.observability.settings import InputLimits
from app.observability.validation import check_attribute, check_id, check_text
from collectors.base import Collector
from collectors.outbox import RecordSink, RunOutbox
from collectors.records import Attributes, AttributeValue, MetricRecord, SpanEvent, SpanRecord
from collectors.trace import TraceStoreCollector

__all__ = (
    "Span",
    "SpanContext",
    "TracingService",
    "exception_type_name",
    "parse_traceparent",
)

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_KINDS = frozenset({"workflow", "node", "generation", "internal"})
_STATUSES = frozenset({"ok", "error", "unset"})
_MASK64 = (1 << 64) - 1
#: Set on a span whose requested start was earlier than its parent's: it was moved.
START_CLAMPED_ATTRIBUTE = "observability.start_clamped"


class SpanContext(NamedTuple):
    """The propagated identity of a span (what ``traceparent`` carries)."""

    trace_id: int
    span_id: int
    sampled: bool
    remote: bool = False

    @property
    def trace_id_hex(self) -> str:
        """32 lowercase hex digits."""
        return f"{self.trace_id:032x}"

    @property
    def span_id_hex(self) -> str:
        """16 lowercase hex digits."""
        return f"{self.span_id:016x}"

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` header value (version 00)."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{'01' if self.sampled else '00'}"


def parse_traceparent(value: str) -> SpanContext | None:
    """Parse a W3C ``traceparent`` value; ``None`` if it is not valid.

    Follows the Trace Context rules: lowercase hex, version ``ff`` invalid,
    all-zero ids invalid, version ``00`` with no trailing fields; a higher
    version may carry more fields after the four known ones.
    """
    if not isinstance(value, str) or len(value) > 512:
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, bool(int(flags, 16) & 1), remote=True)


class Span:
    """A started span. Mutable until it ends; then it is sent as a record.

    Create spans with :meth:`TracingService.start_span` (or ``start_span_sync``,
    or ``span``), not directly. A span is its own context manager: leaving a
    ``with`` / ``async with`` block ends it, and an escaping exception marks it
    as an error and propagates unchanged.

    Attributes:
        sink: Where this span's record and the records of its work go: its
            run's outbox in a batched run, else straight to the collectors.
    """

    __slots__ = (
        "_perf_start", "_service", "_token", "attributes", "correlation_id", "end_ns",
        "events", "identity", "kind", "name", "parent", "request_id", "sampled", "sink",
        "span_id", "start_ns", "status", "tenant_id", "trace_id",
    )

    name: str
    kind: str
    trace_id: int
    span_id: int
    parent: Span | SpanContext | None
    sampled: bool
    #: Attributes set on this span; ``None`` until the first is set.
    attributes: dict[str, AttributeValue] | None
    tenant_id: str | None
    correlation_id: str | None
    request_id: str | None
    #: The tenant, correlation and request id attributes, shared by a run's spans.
    identity: Attributes
    events: list[SpanEvent] | None
    sink: RecordSink
    status: str
    start_ns: int
    end_ns: int
    _perf_start: int
    _token: Token[Span | SpanContext | None]
    _service: TracingService

    def __init__(self) -> None:
        raise TypeError("start spans with TracingService.start_span() or .span(), not Span()")

    @property
    def context(self) -> SpanContext:
        """This span's propagated identity."""
        return SpanContext(self.trace_id, self.span_id, self.sampled)

    @property
    def trace_id_hex(self) -> str:
        """32 lowercase hex digits."""
        return f"{self.trace_id:032x}"

    @property
    def span_id_hex(self) -> str:
        """16 lowercase hex digits."""
        return f"{self.span_id:016x}"

    @property
    def parent_span_id(self) -> int:
        """The parent's span id, 0 for a root span."""
        return self.parent.span_id if self.parent is not None else 0

    @property
    def ended(self) -> bool:
        """Whether the span has ended."""
        return self.end_ns != 0

    def identity_attributes(self) -> dict[str, AttributeValue]:
        """A new dict of the tenant, correlation and request ids that are set."""
        return dict(self.identity)

    def elapsed_seconds(self) -> float:
        """Seconds since the span started (monotonic clock)."""
        return (time.perf_counter_ns() - self._perf_start) / 1e9

    def now_ns(self) -> int:
        """Now, on this span's clock: its start plus the monotonic time since (ns)."""
        return self.start_ns + (time.perf_counter_ns() - self._perf_start)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Set one attribute; a long text value is truncated, visibly.

        Raises:
            TypeError: ``value`` is not a str, bool, int or float.
            ValueError: ``key`` is empty or invalid, or ``value`` is a non-finite float.
        """
        value = check_attribute(key, value, max_length=self._service.limits.max_attribute_length)
        if self.attributes is None:
            self.attributes = {}
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Set several attributes (same rules as :meth:`set_attribute`)."""
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, **attributes: AttributeValue) -> None:
        """Add a timestamped event (same attribute rules as :meth:`set_attribute`)."""
        limits = self._service.limits
        check_id("event name", name, max_length=limits.max_id_length)
        limit = limits.max_attribute_length
        checked = tuple(
            (key, check_attribute(key, value, max_length=limit))
            for key, value in attributes.items()
        )
        self._add_event(SpanEvent(name, time.time_ns(), checked))

    def record_exception(self, exc: BaseException) -> None:
        """Mark the span as failed and add an ``exception`` event."""
        self.status = "error"
        self._add_event(SpanEvent("exception", time.time_ns(), (
            ("exception.type", exception_type_name(exc)),
            ("exception.message", self._service.error_message(exc)),
        )))

    def _add_event(self, event: SpanEvent) -> None:
        if self.events is None:
            self.events = [event]
        else:
            self.events.append(event)

    def __repr__(self) -> str:
        return f"<Span {self.kind}:{self.name} {self.trace_id:032x}/{self.span_id:016x}>"

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.end_ns:
            self._service.end_span_sync(self, error=exc)

    async def __aenter__(self) -> Span:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class TracingService:
    """Starts and ends spans; keeps the current span in a context variable.

    Args:
        collector: The trace collector finished spans are sent to.
        metrics: The metrics collector (a batched run's metrics go there).
        costs: The cost collector (a batched run's costs go there).
        sample_ratio: Share of new traces that are recorded (0..1).
        id_seed: Seed for deterministic ids (tests); random otherwise.
        read_timeout: Seconds :meth:`finished_spans` waits for the collector.
        limits: Bounds on names, ids and attribute values.
    """

    def __init__(
        self,
        collector: TraceStoreCollector | None,
        *,
        metrics: Collector[Any] | None = None,
        costs: Collector[Any] | None = None,
        sample_ratio: float = 1.0,
        id_seed: int | None = None,
        read_timeout: float = 5.0,
        limits: InputLimits | None = None,
    ) -> None:
        if not 0.0 <= sample_ratio <= 1.0:
            raise ValueError(f"sample_ratio must be in [0, 1], got {sample_ratio!r}")
        self._collector = collector
        self._metrics = metrics
        self._costs = costs
        self._read_timeout = read_timeout
        self.limits = limits if limits is not None else InputLimits()
        #: The sink of spans outside any batched run: straight to the collectors.
        self.direct_sink = RecordSink(collector, metrics, costs)
        self._sample_bound = round(sample_ratio * (1 << 64))
        self._rng = random.Random(id_seed)
        self._current: ContextVar[Span | SpanContext | None] = ContextVar(
            f"observability_current_span_{id(self):x}", default=None
        )
        if id_seed is None:  # a forked child must not repeat the parent's ids
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _reseed(ref))

    # --- context ----------------------------------------------------------

    def new_id(self, bits: int = 96) -> str:
        """A random hex id from this service's generator (deterministic with ``id_seed``)."""
        return f"{self._rng.getrandbits(bits):0{(bits + 3) // 4}x}"

    def current_span(self) -> Span | None:
        """The active local span in this context, if any."""
        current = self._current.get()
        return current if type(current) is Span else None

    def current_context(self) -> SpanContext | None:
        """The active span's identity (local or remote), if any."""
        current = self._current.get()
        if current is None:
            return None
        return current.context if isinstance(current, Span) else current

    def current_sink(self) -> RecordSink:
        """Where records made now belong: the current run's outbox, or straight through."""
        current = self._current.get()
        return current.sink if type(current) is Span else self.direct_sink

    def inject(self, carrier: dict[str, str] | None = None) -> dict[str, str]:
        """Write the current ``traceparent`` into ``carrier`` (a new dict if omitted)."""
        carrier = {} if carrier is None else carrier
        context = self.current_context()
        if context is not None:
            carrier["traceparent"] = context.traceparent
        return carrier

    def extract(self, carrier: Mapping[str, str]) -> SpanContext | None:
        """Read a remote parent from a ``traceparent`` entry (case-insensitive key)."""
        for key, value in carrier.items():
            if isinstance(key, str) and key.lower() == "traceparent":
                return parse_traceparent(value)
        return None

    def attach(self, context: SpanContext) -> Token[Span | SpanContext | None]:
        """Make a remote context current (e.g. from :meth:`extract`); undo with :meth:`detach`."""
        if type(context) is not SpanContext:
            raise TypeError(f"attach needs a SpanContext, got {type(context).__name__}")
        return self._current.set(context)

    def detach(self, token: Token[Span | SpanContext | None]) -> None:
        """Undo :meth:`attach`."""
        self._current.reset(token)

    def error_message(self, error: BaseException) -> str:
        """An exception's message as spans and events keep it (bounded, valid UTF-8)."""
        return check_text("error message", str(error),
                          max_length=self.limits.max_attribute_length)

    # --- spans --------------------------------------------------------------

    def start_span_sync(
        self,
        name: str,
        *,
        kind: str = "internal",
        parent: Span | SpanContext | None = None,
        root: bool = False,
        tenant_id: str | None = None,
        correlation_id: str | None = None,
        request_id: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
        batch: bool = False,
        start_ns: int | None = None,
    ) -> Span:
        """Start a span and make it current in this context.

        The parent is ``parent`` if given, else the current span (unless
        ``root``). ``tenant_id``, ``correlation_id`` and ``request_id`` are
        inherited from a local parent when not given, and set as attributes.

        Args:
            name: The span's name.
            kind: ``"workflow"``, ``"node"``, ``"generation"`` or ``"internal"``.
            parent: An explicit parent (a local span or a remote context).
            root: Start a new trace even if a span is current.
            tenant_id: The tenant (inherited from a local parent if omitted).
            correlation_id: The correlation id (likewise).
            request_id: The request id (likewise).
            attributes: Initial attributes.
            batch: The span owns a :class:`~collectors.outbox.RunOutbox`: the
                records of its descendants leave together when it ends (the
                workflow instrumentation sends each request this way).
            start_ns: When the span started (ns since the epoch), for work
                that already began (an LLM call logged after it returned).
                A start before a local parent's is moved to the parent's
                start, and the span says so in the attribute
                ``observability.start_clamped``: a child never starts before
                its parent.

        Returns:
            The started span, current in this context until it ends.

        Raises:
            ValueError: An empty or invalid name or id, an unknown kind, a bad attribute.
            TypeError: A wrong type.
        """
        limits = self.limits
        check_id("span name", name, max_length=limits.max_id_length)
        if type(kind) is not str or kind not in _KINDS:
            raise (ValueError if isinstance(kind, str) else TypeError)(
                f"span kind must be one of {sorted(_KINDS)}, got {kind!r}"
            )
        if parent is None:
            if not root:
                parent = self._current.get()
        elif type(parent) is not Span and type(parent) is not SpanContext:
            raise TypeError(f"parent must be a Span or SpanContext, got {type(parent).__name__}")
        attrs: dict[str, AttributeValue] | None = None
        if attributes:
            if not isinstance(attributes, Mapping):
                raise TypeError(f"attributes must be a mapping, got {type(attributes).__name__}")
            attrs = {
                key: check_attribute(key, value, max_length=limits.max_attribute_length)
                for key, value in attributes.items()
            }
        local_parent = parent if type(parent) is Span else None
        if tenant_id is None and correlation_id is None and request_id is None:
            if local_parent is not None:  # identity inherited, already checked
                tenant_id = local_parent.tenant_id
                correlation_id = local_parent.correlation_id
                request_id = local_parent.request_id
                identity = local_parent.identity
            else:
                identity = ()
        else:
            if local_parent is not None:
                tenant_id = tenant_id if tenant_id is not None else local_parent.tenant_id
                correlation_id = (correlation_id if correlation_id is not None
                                  else local_parent.correlation_id)
                request_id = request_id if request_id is not None else local_parent.request_id
            identity = _identity(tenant_id, correlation_id, request_id, limits.max_id_length)
        now_perf = time.perf_counter_ns()
        if local_parent is not None:
            # The parent's wall-clock start plus the monotonic time since: a
            # trace stays consistent if the wall clock steps meanwhile.
            now_ns = local_parent.start_ns + (now_perf - local_parent._perf_start)
        else:
            now_ns = time.time_ns()
        if start_ns is not None:
            if type(start_ns) is not int or start_ns < 0:
                raise ValueError(f"start_ns must be an int of ns since the epoch, got {start_ns!r}")
            start_ns = min(start_ns, now_ns)  # a span never starts in the future
            if local_parent is not None and start_ns < local_parent.start_ns:
                start_ns = local_parent.start_ns
                if attrs is None:
                    attrs = {}
                attrs[START_CLAMPED_ATTRIBUTE] = True
        else:
            start_ns = now_ns

        span = object.__new__(Span)
        getrandbits = self._rng.getrandbits
        if parent is None:
            span.trace_id = trace_id = getrandbits(128) or 1
            span.sampled = (trace_id & _MASK64) < self._sample_bound
        else:
            span.trace_id = parent.trace_id
            span.sampled = parent.sampled
        span.span_id = getrandbits(64) or 1
        span.name = name
        span.kind = kind
        span.parent = parent
        span.attributes = attrs
        span.tenant_id = tenant_id
        span.correlation_id = correlation_id
        span.request_id = request_id
        span.identity = identity
        span.events = None
        if batch:
            span.sink = RunOutbox(self._collector, self._metrics, self._costs)
        elif local_parent is not None:
            span.sink = local_parent.sink
        else:
            span.sink = self.direct_sink
        span.status = "unset"
        span.start_ns = start_ns
        span.end_ns = 0
        span._perf_start = now_perf - (now_ns - start_ns)
        span._service = self
        span._token = self._current.set(span)
        return span

    async def start_span(self, name: str, **kwargs: Any) -> Span:
        """Async form of :meth:`start_span_sync`; the span becomes current in the caller."""
        return self.start_span_sync(name, **kwargs)

    #: ``with obs.tracing.span("node", kind="node"):`` (or ``async with``): the
    #: started :class:`Span` is its own context manager.
    span = start_span_sync

    def end_span_sync(
        self,
        span: Span,
        *,
        status: str | None = None,
        error: BaseException | None = None,
        end_ns: int | None = None,
        metrics: Sequence[MetricRecord] = (),
    ) -> SpanRecord:
        """End ``span``, restore its parent as current, and send the record.

        Args:
            span: A span from :meth:`start_span_sync`.
            status: ``"ok"``, ``"error"`` or ``"unset"`` (default: ``"error"``
                if ``error`` is given or an exception was recorded, else ``"ok"``).
            error: The exception that ended the span, if any.
            end_ns: When the span ended (ns since the epoch, not before its
                start); default now.
            metrics: Checked metric records of the span's work (from a bound
                child's ``record()``), sent with the span, in its run's batch;
                sent whether or not the span is sampled.

        Returns:
            The finished, immutable record (also when it is not sampled).

        Raises:
            TypeError: ``span`` is not a :class:`Span`, or ``error`` not an exception.
            ValueError: An unknown status, or an ``end_ns`` before the start.
            RuntimeError: The span has already ended.
        """
        if type(span) is not Span:
            raise TypeError(f"end_span needs a Span, got {type(span).__name__}")
        if span.end_ns:
            raise RuntimeError(f"span {span.name!r} has already ended")
        if status is not None and (type(status) is not str or status not in _STATUSES):
            raise ValueError(f"status must be one of {sorted(_STATUSES)}, got {status!r}")
        if error is not None and not isinstance(error, BaseException):
            raise TypeError(f"error must be an exception, got {type(error).__name__}")
        start_ns = span.start_ns
        if end_ns is None:
            end_ns = span.now_ns()
        elif type(end_ns) is not int or end_ns < start_ns:
            raise ValueError(f"end_ns must be an int not before the span's start, got {end_ns!r}")
        span.end_ns = end_ns
        current = self._current
        if current.get() is span:
            try:
                current.reset(span._token)
            except ValueError:  # ended in another context than it started in
                current.set(span.parent)
        error_type = error_message = None
        if error is not None:
            span.record_exception(error)
            error_type = exception_type_name(error)
            error_message = self.error_message(error)
        if status is None:
            status = "ok" if span.status == "unset" else span.status
        span.status = status
        record = _span_record(span, status, error_type, error_message)
        sink = span.sink
        if span.sampled:
            sink.add_span(record, metrics)
        elif metrics:
            sink.add_metrics(metrics)
        parent = span.parent
        if type(sink) is RunOutbox and (not isinstance(parent, Span) or parent.sink is not sink):
            sink.close()  # the run's root has ended: its records leave together
        return record

    async def end_span(
        self,
        span: Span,
        *,
        status: str | None = None,
        error: BaseException | None = None,
        end_ns: int | None = None,
        metrics: Sequence[MetricRecord] = (),
    ) -> SpanRecord:
        """Async form of :meth:`end_span_sync`."""
        return self.end_span_sync(span, status=status, error=error, end_ns=end_ns,
                                  metrics=metrics)

    # --- reading ------------------------------------------------------------

    def finished_spans(
        self, *, trace_id: int | str | None = None, tenant_id: str | None = None
    ) -> tuple[SpanRecord, ...]:
        """Finished spans in the in-memory store, oldest first.

        Args:
            trace_id: Only this trace (an int or 32 hex digits).
            tenant_id: Only spans of this tenant.
        """
        if self._collector is None:
            return ()
        if isinstance(trace_id, str):
            trace_id = int(trace_id, 16)
        return self._collector.spans(
            trace_id=trace_id, tenant_id=tenant_id, timeout=self._read_timeout
        )


def _span_record(
    span: Span, status: str, error_type: str | None, error_message: str | None
) -> SpanRecord:
    """The one place a finished span's record is built."""
    parent = span.parent
    attributes = span.attributes
    return SpanRecord(  # positional, in field order: this runs for every span
        span.trace_id,
        span.span_id,
        0 if parent is None else parent.span_id,
        span.name,
        span.kind,
        span.start_ns,
        span.end_ns,
        status,
        error_type,
        error_message,
        _merge(span.identity, attributes) if attributes else span.identity,
        tuple(span.events) if span.events else (),
        type(parent) is SpanContext and parent.remote,
    )


def _identity(
    tenant_id: str | None, correlation_id: str | None, request_id: str | None, max_length: int
) -> Attributes:
    """The identity attributes that are set, checked: ``(("tenant_id", t), ...)``."""
    pairs: list[tuple[str, AttributeValue]] = []
    for key, value in (("tenant_id", tenant_id), ("correlation_id", correlation_id),
                       ("request_id", request_id)):
        if value is not None:
            pairs.append((key, check_id(key, value, max_length=max_length)))
    return tuple(pairs)


def _merge(identity: Attributes, attributes: dict[str, AttributeValue]) -> Attributes:
    """Identity then the span's own attributes (an own attribute overrides its key)."""
    if identity and not attributes.keys().isdisjoint(key for key, _ in identity):
        merged = dict(identity)
        merged.update(attributes)
        return tuple(merged.items())
    return identity + tuple(attributes.items())


def _reseed(ref: weakref.ref[TracingService]) -> None:
    service = ref()
    if service is not None:
        service._rng = random.Random()


def exception_type_name(exc: BaseException) -> str:
    """The exception's class as spans, audit events and exports name it (module-qualified)."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
