"""``TracingService``: spans with W3C ids, propagated through ``contextvars``.

The current span lives in a ``ContextVar`` owned by the service instance (two
containers never see each other's spans). That gives the propagation Python
already provides for context variables: across ``await``, into tasks created
from the current task (they copy the context), and into threads that run in a
copied context (``asyncio.to_thread``, ``contextvars.copy_context().run``).

A span costs a few microseconds: ids come from a per-service PRNG, the start
is one wall-clock read plus a monotonic read, and only the finished span is
sent, as one immutable :class:`~collectors.records.SpanRecord`, to the trace
actor (:class:`collectors.trace.TraceStoreCollector`). Sampling is
parent-based with a trace-id ratio (like OpenTelemetry's
``ParentBased(TraceIdRatioBased)``); it only decides which spans are stored
and exported -- metrics, costs and failure counts never depend on it.

Hierarchy used by the workflow: ``workflow`` (root, one per request) ->
``node`` (one per LangGraph node) -> ``generation`` (one per LLM call).
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Mapping
from contextvars import ContextVar, Token
from itertools import chain
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from collectors.base import Collector
from collectors.hotpath import speedups
from collectors.records import (
    AttributeValue,
    Batch,
    CostRecord,
    Labels,
    SpanEvent,
    SpanRecord,
    as_span_record,
)
from collectors.trace import TraceStoreCollector

__all__ = (
    "Outbox",
    "Span",
    "SpanContext",
    "TracingService",
    "exception_type_name",
    "parse_traceparent",
)

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_KINDS = frozenset({"workflow", "node", "generation", "internal"})
_STATUSES = frozenset({"ok", "error", "unset"})
_MAX_ERROR_MESSAGE = 1_024
_MASK64 = (1 << 64) - 1


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
    if not isinstance(value, str):
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


class Outbox:
    """Records of one batched run, enqueued together when the run's root span ends.

    A workflow run opened with ``start_span(..., batch=True)`` owns one. Its
    descendants (node spans, generations, the instrumentation's metrics and
    costs) append their finished, immutable records here instead of putting
    each on a queue; the root's end sends at most one :class:`Batch` per
    collector. If a run grows past ``limit`` spans and metrics (checked when a
    span ends or a finished span is recorded), what it has so far is sent early.

    Appends come from the run's own tasks and threads without a lock (a
    ``list.append`` is atomic). Taking the lists' contents to send them
    (:meth:`TracingService.send_outbox`) holds ``lock``, so two senders never
    take the same records (compiled, the three takes run in C with no Python
    instruction in between, which under the GIL is the same guarantee).
    Nothing is lost at the close either: the root sets ``open = False``
    *before* it takes the lists, and a descendant that saw the
    outbox open checks ``open`` again *after* its appends and, if the root closed
    it meanwhile, sends what is left itself. Either the root's take comes after
    the append, or the appender's second check sees the close.
    """

    __slots__ = ("costs", "limit", "lock", "metrics", "open", "spans")

    def __init__(self, limit: int = 512) -> None:
        # Plain tuples in record field order (see collectors.records).
        self.spans: list[tuple[Any, ...]] = []
        self.metrics: list[tuple[Any, ...]] = []
        self.costs: list[CostRecord] = []
        self.limit = limit
        self.open = True
        self.lock = threading.Lock()


_SPAN_SLOTS = (
    "_perf_start", "_service", "_token", "attributes", "correlation_id", "end_ns", "events",
    "identity", "kind", "name", "outbox", "parent", "request_id", "sampled", "span_id",
    "start_ns", "status", "tenant_id", "trace_id",
)

if TYPE_CHECKING or speedups is None:
    class _SpanBase:
        """Pure Python: the slots are declared by :class:`Span` itself."""

        __slots__ = ()

    class _TracerBase:
        """Pure Python: :class:`TracingService` defines the hot-path methods itself."""

        __slots__ = ()

    _new_span = object.__new__
else:  # compiled (collectors/_speedups.c): the same slots and methods, see collectors.hotpath
    _SpanBase = speedups.SpanBase
    _TracerBase = speedups.TracerBase
    _new_span = speedups.SpanBase.__new__


class Span(_SpanBase):
    """A started span. Mutable until it ends; then it is sent as a record.

    Create spans with :meth:`TracingService.start_span` or
    :meth:`TracingService.span`, not directly.
    """

    # The 19 slots; with the compiled hot path they are its base type's fields.
    __slots__ = () if speedups is not None else _SPAN_SLOTS

    name: str
    kind: str
    trace_id: int
    span_id: int
    parent: Span | SpanContext | None
    sampled: bool
    #: Attributes set on this span (the identity attributes are kept apart);
    #: ``None`` until the first is set (most node spans never get one).
    attributes: dict[str, AttributeValue] | None
    tenant_id: str | None
    correlation_id: str | None
    request_id: str | None
    #: The tenant, correlation and request id attributes, flat (``("k1",
    #: v1, ...)``, the records' wire form): one tuple, shared by a run's spans.
    identity: tuple[AttributeValue, ...]
    events: list[SpanEvent] | None
    outbox: Outbox | None
    status: str
    end_ns: int
    start_ns: int
    _perf_start: int
    _token: Token[Span | SpanContext | None]
    _service: TracingService

    def __init__(self) -> None:
        # TracingService builds spans without __init__ (every slot set by hand,
        # the hot path); a span made any other way would have no context token.
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
        return _pairs_dict(self.identity)

    def elapsed_seconds(self) -> float:
        """Seconds since the span started (monotonic clock)."""
        return (time.perf_counter_ns() - self._perf_start) / 1e9

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Set one attribute.

        Raises:
            TypeError: ``value`` is not a str, bool, int or float.
            ValueError: ``key`` is empty or ``value`` is a non-finite float.
        """
        _check_attribute(key, value)
        self.attribute_map()[key] = value

    def attribute_map(self) -> dict[str, AttributeValue]:
        """The span's own attributes, for trusted writers (no checks); created on first use."""
        attributes = self.attributes
        if attributes is None:
            attributes = self.attributes = {}
        return attributes

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Set several attributes (same rules as :meth:`set_attribute`)."""
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, **attributes: AttributeValue) -> None:
        """Add a timestamped event."""
        if not isinstance(name, str) or not name:
            raise ValueError("event name must be a non-empty str")
        for key, value in attributes.items():
            _check_attribute(key, value)
        self._add_event(SpanEvent(name, time.time_ns(), tuple(attributes.items())))

    def record_exception(self, exc: BaseException) -> None:
        """Mark the span as failed and add an ``exception`` event."""
        self.status = "error"
        self._add_event(SpanEvent("exception", time.time_ns(), (
            ("exception.type", exception_type_name(exc)),
            ("exception.message", str(exc)[:_MAX_ERROR_MESSAGE]),
        )))

    def _add_event(self, event: SpanEvent) -> None:
        if self.events is None:  # most spans never get one: no list until then
            self.events = [event]
        else:
            self.events.append(event)

    def __repr__(self) -> str:
        return f"<Span {self.kind}:{self.name} {self.trace_id:032x}/{self.span_id:016x}>"

    # ``with`` / ``async with``: the span was started by TracingService.span();
    # leaving the block ends it (an escaping exception marks it as an error).

    if TYPE_CHECKING or speedups is None:  # else compiled, the same steps
        def __enter__(self) -> Span:
            return self

        def __exit__(
            self, exc_type: type[BaseException] | None, exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None:
            if not self.end_ns:
                self._service.finish(self, None, exc)  # a live span of ours: no checks needed

    async def __aenter__(self) -> Span:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class TracingService(_TracerBase):
    """Starts and ends spans; keeps the current span in a context variable.

    Args:
        collector: The trace actor finished spans are sent to.
        metrics: The metrics actor (where a batched run's metrics go).
        costs: The cost actor (where a batched run's costs go).
        sample_ratio: Share of new traces that are recorded (0..1).
        id_seed: Seed for deterministic ids (tests); random otherwise.
        read_timeout: Seconds :meth:`finished_spans` waits for the collector.
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
    ) -> None:
        if not 0.0 <= sample_ratio <= 1.0:
            raise ValueError(f"sample_ratio must be in [0, 1], got {sample_ratio!r}")
        self._collector = collector
        self._read_timeout = read_timeout
        self._metrics = metrics
        self._costs = costs
        self._send_span = collector.send if collector is not None else None
        self._send_metric = metrics.send if metrics is not None else None
        self._sample_bound = round(sample_ratio * (1 << 64))
        self._span_type = Span  # what the compiled start builds (a SpanBase subclass)
        self._context_type = SpanContext
        self._outbox_type = Outbox  # what a batched start creates
        self._batch_type = Batch  # what send_outbox wraps several records in
        self._id_seed = id_seed
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
        return current if isinstance(current, Span) else None

    def current_context(self) -> SpanContext | None:
        """The active span's identity (local or remote), if any."""
        current = self._current.get()
        if current is None:
            return None
        return current.context if isinstance(current, Span) else current

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
            if key.lower() == "traceparent":
                return parse_traceparent(value)
        return None

    def attach(self, context: SpanContext) -> Token[Span | SpanContext | None]:
        """Make a remote context current (e.g. from :meth:`extract`); undo with :meth:`detach`."""
        return self._current.set(context)

    def detach(self, token: Token[Span | SpanContext | None]) -> None:
        """Undo :meth:`attach`."""
        self._current.reset(token)

    # --- spans --------------------------------------------------------------

    def _start_span_py(
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
    ) -> Span:
        """Start a span and make it current in this context.

        The parent is ``parent`` if given, else the current span (unless
        ``root``). ``tenant_id``, ``correlation_id`` and ``request_id`` are
        inherited from a local parent when not given, and set as attributes.

        The returned :class:`Span` is a context manager: leaving a ``with`` /
        ``async with`` block ends it (an escaping exception marks it as an
        error and propagates unchanged).

        With ``batch=True`` the span owns an :class:`Outbox`: the records of
        its descendants are enqueued together when it ends (the workflow
        instrumentation uses this to send a run as one batch per collector).

        Raises:
            ValueError: Empty name, unknown kind, empty id, bad attribute.
            TypeError: A wrong attribute or id type.
        """
        if type(name) is not str or not name:
            raise ValueError("span name must be a non-empty str")
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
        if attributes is not None:
            if not isinstance(attributes, Mapping):
                raise TypeError(f"attributes must be a mapping, got {type(attributes).__name__}")
            if attributes:
                attrs = {}
                for key, value in attributes.items():
                    _check_attribute(key, value)
                    attrs[key] = value
        if tenant_id is None and correlation_id is None and request_id is None:
            if type(parent) is Span:  # the common child span: identity inherited, validated
                tenant_id, correlation_id, request_id = (
                    parent.tenant_id, parent.correlation_id, parent.request_id)
                identity = parent.identity
            else:
                identity = ()
        else:
            if type(parent) is Span:
                if tenant_id is None:
                    tenant_id = parent.tenant_id
                if correlation_id is None:
                    correlation_id = parent.correlation_id
                if request_id is None:
                    request_id = parent.request_id
            if tenant_id is not None:
                _check_id("tenant_id", tenant_id)
            if correlation_id is not None:
                _check_id("correlation_id", correlation_id)
            if request_id is not None:
                _check_id("request_id", request_id)
            identity = _identity(tenant_id, correlation_id, request_id)
        getrandbits = self._rng.getrandbits
        span = _new_span(Span)  # every slot is set below: no __init__ call on this path
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
            span.outbox = Outbox()
        elif type(parent) is Span:
            outbox = parent.outbox
            span.outbox = outbox if outbox is not None and outbox.open else None
        else:
            span.outbox = None
        span.status = "unset"
        span.end_ns = 0
        span.start_ns = time.time_ns()
        span._perf_start = time.perf_counter_ns()
        span._service = self
        span._token = self._current.set(span)
        return span

    def _start_child_py(self, name: str, kind: str) -> Span:
        """Start a child of the current span: the instrumentation's hot path.

        Equivalent to ``start_span_sync(name, kind=kind)`` when a local span
        is current (identity inherited, no extra attributes), without the
        argument checks: ``name`` and ``kind`` come from trusted code (the
        node wrapper), so only the current span is looked at. With no local
        span current it falls back to :meth:`start_span_sync`.
        """
        parent = self._current.get()
        if type(parent) is not Span:
            return self._start_span_py(name, kind=kind)
        span = _new_span(Span)
        span.name = name
        span.kind = kind
        span.trace_id = parent.trace_id
        span.span_id = self._rng.getrandbits(64) or 1
        span.parent = parent
        span.sampled = parent.sampled
        span.tenant_id = parent.tenant_id
        span.correlation_id = parent.correlation_id
        span.request_id = parent.request_id
        span.identity = parent.identity
        span.attributes = None
        span.events = None
        outbox = parent.outbox
        span.outbox = outbox if outbox is not None and outbox.open else None
        span.status = "unset"
        span.end_ns = 0
        # One clock read: the start on the wall clock is the parent's plus the
        # monotonic time since (a trace stays consistent if the wall clock steps).
        span._perf_start = now = time.perf_counter_ns()
        span.start_ns = parent.start_ns + (now - parent._perf_start)
        span._service = self
        span._token = self._current.set(span)
        return span

    async def start_span(self, name: str, **kwargs: Any) -> Span:
        """Async form of :meth:`start_span_sync`; the span becomes current in the caller."""
        return self.start_span_sync(name, **kwargs)

    def end_span_sync(
        self, span: Span, *, status: str | None = None, error: BaseException | None = None
    ) -> SpanRecord:
        """End ``span``, restore its parent as current, and send the record.

        Args:
            span: A span from :meth:`start_span_sync`.
            status: ``"ok"``, ``"error"`` or ``"unset"`` (default: ``"error"``
                if ``error`` is given or an exception was recorded, else ``"ok"``).
            error: The exception that ended the span, if any.

        Returns:
            The finished, immutable record.

        Raises:
            TypeError: ``span`` is not a :class:`Span`.
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
        return as_span_record(self.finish(span, status, error))

    def _finish_py(
        self, span: Span, status: str | None = None, error: BaseException | None = None,
        latency_metric: str | None = None, labels: Labels = (),
    ) -> tuple[Any, ...]:
        """End ``span`` like :meth:`end_span_sync`, for trusted callers: no checks.

        The node wrapper's hot path. ``span`` must be a live :class:`Span`,
        ``status`` one of the statuses or ``None``, ``error`` an exception or
        ``None``. With ``latency_metric`` (a histogram of the catalog, and
        ``labels`` valid for it, checked by the caller) the span's duration
        is also recorded there, in the same outbox or straight to the metrics
        actor, whether or not the span is sampled.

        Returns:
            The record as a plain tuple in :class:`SpanRecord` field order.
        """
        start_ns = span.start_ns
        span.end_ns = end_ns = start_ns + (time.perf_counter_ns() - span._perf_start)
        current = self._current
        if current.get() is span:
            try:
                current.reset(span._token)
            except ValueError:  # ended in another context than it started in
                current.set(span.parent)
        if error is None:
            error_type = error_message = None
        else:
            span.record_exception(error)
            error_type = exception_type_name(error)
            error_message = str(error)[:_MAX_ERROR_MESSAGE]
        if status is None:
            status = span.status
            if status == "unset":
                status = "ok"
        span.status = status
        parent = span.parent
        attributes = span.attributes
        events = span.events
        # A plain tuple, not a SpanRecord: see collectors.records on the GC.
        record = (
            span.trace_id, span.span_id, 0 if parent is None else parent.span_id,
            span.name, span.kind, start_ns, end_ns, status,
            error_type, error_message,
            _merge(span.identity, attributes) if attributes else span.identity,
            tuple(events) if events else (),
            type(parent) is SpanContext and parent.remote,
        )
        outbox = span.outbox
        if outbox is not None and outbox.open:
            if span.sampled:
                outbox.spans.append(record)
            metrics = outbox.metrics
            if latency_metric is not None:
                metrics.append((latency_metric, labels, (end_ns - start_ns) / 1e9))
            if type(parent) is not Span or parent.outbox is not outbox:  # the owner ends
                outbox.open = False
                self.send_outbox(outbox)
            elif not outbox.open or len(outbox.spans) + len(metrics) >= outbox.limit:
                self.send_outbox(outbox)  # closed by the root meanwhile, or a long run
        else:  # not batched, or ending after its root
            if span.sampled and self._send_span is not None:
                self._send_span(record)
            if latency_metric is not None and self._send_metric is not None:
                self._send_metric((latency_metric, labels, (end_ns - start_ns) / 1e9))
        return record

    def current_outbox(self) -> Outbox | None:
        """The open outbox of the current batched run, if any."""
        current = self._current.get()
        if type(current) is Span:
            outbox = current.outbox
            if outbox is not None and outbox.open:
                return outbox
        return None

    async def end_span(
        self, span: Span, *, status: str | None = None, error: BaseException | None = None
    ) -> SpanRecord:
        """Async form of :meth:`end_span_sync`."""
        return self.end_span_sync(span, status=status, error=error)

    if TYPE_CHECKING or speedups is None:
        # Pure Python. Compiled, the base type has these methods: the common
        # calls run in C and every other call reaches the Python
        # implementations above (collectors.hotpath); send_outbox is all C.
        start_span_sync = _start_span_py
        start_child_span = _start_child_py
        finish = _finish_py

        def send_outbox(self, outbox: Outbox) -> None:
            """Enqueue everything in ``outbox`` (one batch per collector) and empty it.

            Safe from any thread of the run, concurrently with appends and with
            other senders (see :class:`Outbox`).
            """
            with outbox.lock:
                spans, metrics, costs = (
                    _take(outbox.spans), _take(outbox.metrics), _take(outbox.costs))
            _send_batch(spans, self._collector)
            _send_batch(metrics, self._metrics)
            _send_batch(costs, self._costs)

        #: ``with obs.tracing.span("node", kind="node"):`` (or ``async with``): the
        #: started :class:`Span` is its own context manager, so this is
        #: :meth:`start_span_sync` under the name that reads well in a ``with``.
        span = _start_span_py

    def record_finished_span(
        self,
        name: str,
        *,
        kind: str,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, AttributeValue],
        parent: Span | SpanContext | None = None,
        status: str = "ok",
    ) -> SpanRecord:
        """Record a span that already happened (e.g. a generation logged after the call).

        The parent defaults to the current span. Nothing becomes current.
        """
        return as_span_record(self.record_finished(
            name, kind, start_ns, end_ns, tuple(chain.from_iterable(attributes.items())),
            parent, status,
        ))

    def record_finished(
        self, name: str, kind: str, start_ns: int, end_ns: int,
        attributes: tuple[AttributeValue, ...], parent: Span | SpanContext | None = None,
        status: str = "ok",
    ) -> tuple[Any, ...]:
        """:meth:`record_finished_span` for trusted callers, with flat attributes.

        Returns:
            The record as a plain tuple in :class:`SpanRecord` field order.
        """
        if parent is None:
            parent = self._current.get()
        if parent is None:
            trace_id = self._rng.getrandbits(128) or 1
            sampled = (trace_id & _MASK64) < self._sample_bound
            parent_id = 0
        else:
            trace_id, sampled, parent_id = parent.trace_id, parent.sampled, parent.span_id
        record = (
            trace_id, self._rng.getrandbits(64) or 1, parent_id, name, kind, start_ns, end_ns,
            status, None, None, attributes, (),
            type(parent) is SpanContext and parent.remote,
        )
        if sampled:
            outbox = parent.outbox if type(parent) is Span else None
            if outbox is not None and outbox.open:
                outbox.spans.append(record)
                if not outbox.open or (len(outbox.spans) + len(outbox.metrics)
                                       >= outbox.limit):
                    self.send_outbox(outbox)  # closed by the root meanwhile, or a long run
            elif self._collector is not None:
                self._collector.send(record)
        return record

    # --- reading ------------------------------------------------------------

    def finished_spans(
        self, *, trace_id: int | str | None = None, tenant_id: str | None = None
    ) -> tuple[SpanRecord, ...]:
        """Finished spans in the in-memory exporter, oldest first.

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



def _send_batch(records: list[Any], actor: Collector[Any] | None) -> None:
    if records and actor is not None:
        if len(records) == 1:  # one record needs no Batch around it
            actor.send(records[0])
        else:
            actor.send(Batch(tuple(records)), len(records))


def _take(items: list[Any]) -> list[Any]:
    """Remove and return the first ``len(items)`` items (the caller holds the outbox lock).

    Another thread of the run may append meanwhile; what it appends after the
    length was read stays in the list (``del`` of a prefix is one atomic step)
    for the next sender.
    """
    count = len(items)
    taken = items[:count]
    del items[:count]
    return taken


def _identity(
    tenant_id: str | None, correlation_id: str | None, request_id: str | None
) -> tuple[AttributeValue, ...]:
    """The identity attributes that are set, flat: ``("tenant_id", t, ...)``."""
    flat: list[AttributeValue] = []
    if tenant_id is not None:
        flat += ("tenant_id", tenant_id)
    if correlation_id is not None:
        flat += ("correlation_id", correlation_id)
    if request_id is not None:
        flat += ("request_id", request_id)
    return tuple(flat)


def _pairs_dict(flat: tuple[AttributeValue, ...]) -> dict[str, AttributeValue]:
    """``("k1", v1, "k2", v2)`` as a dict (keys are str by construction)."""
    return dict(zip(flat[::2], flat[1::2], strict=True))  # type: ignore[arg-type]


def _merge(
    identity: tuple[AttributeValue, ...], attributes: dict[str, AttributeValue]
) -> tuple[AttributeValue, ...]:
    """Identity then the span's attributes, flat (an attribute overrides its key)."""
    if identity and not attributes.keys().isdisjoint(identity[::2]):
        merged = _pairs_dict(identity)
        merged.update(attributes)
        attributes = merged
        identity = ()
    return identity + tuple(chain.from_iterable(attributes.items()))


def _reseed(ref: weakref.ref[TracingService]) -> None:
    service = ref()
    if service is not None:
        service._rng = random.Random()


def exception_type_name(exc: BaseException) -> str:
    """The exception's class as spans, audit events and exports name it (module-qualified)."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _check_id(field: str, value: object) -> str:
    if type(value) is not str:
        raise TypeError(f"{field} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{field} must not be empty")
    return value


def _check_attribute(key: object, value: object) -> None:
    if type(key) is not str or not key:
        raise ValueError("attribute keys must be non-empty str")
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise ValueError(f"attribute {key!r} must be finite, got {value!r}")
    elif kind is not str and kind is not int and kind is not bool:
        raise TypeError(
            f"attribute {key!r} must be str, bool, int or float, got {kind.__name__}"
        )

