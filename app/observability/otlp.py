"""OTLP/JSON export of finished spans, and an optional OTLP/HTTP sender.

:func:`spans_to_otlp` turns :class:`~collectors.records.SpanRecord` objects
into one ``ExportTraceServiceRequest`` in the OTLP/JSON encoding
(https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding), which
differs from protobuf's generic proto3 JSON mapping in two ways that matter
here:

* ``traceId``, ``spanId`` and ``parentSpanId`` are lowercase **hex** strings,
  not base64 (a stock proto3 JSON parser would mis-decode them);
* enums (``kind``, ``status.code``) are integers, never their names.

As in proto3 JSON, 64-bit integers (timestamps, ``intValue``) are decimal
strings. Generation spans also carry the OpenTelemetry GenAI semantic
convention names (``gen_ai.*``) beside the engine's own attribute keys.

:func:`write_otlp_json` writes that document to a file atomically.
:class:`OtlpHttpSender` POSTs it to an OTLP/HTTP receiver (a collector's
``/v1/traces``); it uses only the standard library, is off unless something
constructs it, and reports network failures as ``False`` instead of raising.

Nothing here touches a collector's store: callers pass spans they already hold
(for example a snapshot read from the trace collector), so these functions may
run on any thread.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final, TypedDict, Unpack
from urllib.parse import urlsplit

import structlog

from collectors.records import AttributeValue, SpanEvent, SpanRecord

__all__ = (
    "OtlpHttpSender",
    "OtlpResourceOptions",
    "spans_to_otlp",
    "write_otlp_json",
)

_logger = structlog.get_logger(__name__)

# --- OTLP enum values (opentelemetry/proto/trace/v1/trace.proto) ---
_SPAN_KIND_UNSPECIFIED: Final = 0
_SPAN_KIND_INTERNAL: Final = 1
_SPAN_KIND_SERVER: Final = 2
_SPAN_KIND_CLIENT: Final = 3

#: A workflow run serves one risk request (SERVER); a generation calls a model
#: (CLIENT); nodes and plain internal spans are INTERNAL.
_SPAN_KINDS: Final[Mapping[str, int]] = MappingProxyType({
    "workflow": _SPAN_KIND_SERVER,
    "node": _SPAN_KIND_INTERNAL,
    "generation": _SPAN_KIND_CLIENT,
    "internal": _SPAN_KIND_INTERNAL,
})

_STATUS_CODE_OK: Final = 1
_STATUS_CODE_ERROR: Final = 2

#: ``SpanFlags``: bit 8 says whether the parent is remote is known, bit 9 says
#: it is remote (the SDK's OTLP encoder sets bit 8 on every span).
_FLAG_HAS_IS_REMOTE: Final = 0x100
_FLAG_IS_REMOTE: Final = 0x200

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

#: Keys that :func:`spans_to_otlp` owns through its keyword arguments.
_RESERVED_RESOURCE_KEYS: Final = frozenset({"service.name", "service.version"})

#: Strict JSON: no NaN/Infinity literals (non-finite doubles are encoded as the
#: proto3 JSON strings ``"NaN"``/``"Infinity"``/``"-Infinity"`` instead).
_JSON_OPTIONS: Final[Mapping[str, Any]] = MappingProxyType({
    "ensure_ascii": False,
    "separators": (",", ":"),
    "allow_nan": False,
})


class OtlpResourceOptions(TypedDict, total=False):
    """The keyword arguments of :func:`spans_to_otlp` besides the spans.

    :func:`write_otlp_json` and :meth:`OtlpHttpSender.send` pass them through.
    """

    service_name: str
    service_version: str | None
    resource_attributes: Mapping[str, AttributeValue] | None
    scope_name: str
    scope_version: str | None


# --- encoding -------------------------------------------------------------


def _any_value(value: object) -> dict[str, Any]:
    """Encode one attribute value as an OTLP/JSON ``AnyValue``.

    Exact built-in types take the fast path; subclasses (``StrEnum``,
    ``IntEnum``) are normalised to their base type; anything else
    (``Decimal``, ``None``...) becomes the ``stringValue`` of ``str(value)``.
    """
    if type(value) is str:
        return {"stringValue": value}
    if type(value) is bool:
        return {"boolValue": value}
    if type(value) is int:
        return _int_value(value)
    if type(value) is float:
        return _double_value(value)
    if isinstance(value, str):
        return {"stringValue": str.__str__(value)}
    if isinstance(value, int):  # bool cannot be subclassed, so never a bool here
        return _int_value(int(value))
    if isinstance(value, float):
        return _double_value(float(value))
    return {"stringValue": str(value)}


def _int_value(value: int) -> dict[str, Any]:
    """An ``intValue`` (int64 as a decimal string), or a string if out of range."""
    if _INT64_MIN <= value <= _INT64_MAX:
        return {"intValue": str(value)}
    return {"stringValue": str(value)}


def _double_value(value: float) -> dict[str, Any]:
    """A ``doubleValue``; non-finite values use the proto3 JSON string forms."""
    if math.isfinite(value):
        return {"doubleValue": value}
    if math.isnan(value):
        return {"doubleValue": "NaN"}
    return {"doubleValue": "Infinity" if value > 0 else "-Infinity"}


def _key_values(attributes: Mapping[str, object]) -> list[dict[str, Any]]:
    """Encode a mapping as a list of OTLP ``KeyValue`` objects (keys are unique)."""
    return [{"key": key, "value": _any_value(value)} for key, value in attributes.items()]


def _add_gen_ai_attributes(attrs: dict[str, object]) -> None:
    """Add the OTel GenAI semantic-convention names for a generation span.

    The engine's own keys stay; a ``gen_ai.*`` key the record already carries
    wins over the derived one.
    """
    model = attrs.get("model_version")
    if model is not None:
        attrs.setdefault("gen_ai.request.model", model)
        attrs.setdefault("gen_ai.response.model", model)
    input_tokens = attrs.get("input_tokens")
    if input_tokens is not None:
        attrs.setdefault("gen_ai.usage.input_tokens", input_tokens)
    output_tokens = attrs.get("output_tokens")
    if output_tokens is not None:
        attrs.setdefault("gen_ai.usage.output_tokens", output_tokens)
    attrs.setdefault("gen_ai.operation.name", attrs.get("operation", "chat"))
    provider = attrs.get("provider", "simulated")
    attrs.setdefault("gen_ai.provider.name", provider)  # current semantic conventions
    attrs.setdefault("gen_ai.system", provider)  # its deprecated name, still widely read


def _event(event: SpanEvent) -> dict[str, Any]:
    """Encode one span event."""
    return {
        "timeUnixNano": str(event.time_ns),
        "name": event.name,
        "attributes": _key_values(dict(event.attributes)),
    }


def _status(span: SpanRecord) -> dict[str, Any]:
    """Encode the span status: ``ok`` -> OK, ``error`` -> ERROR, else unset."""
    if span.status == "ok":
        return {"code": _STATUS_CODE_OK}
    if span.status == "error":
        status: dict[str, Any] = {"code": _STATUS_CODE_ERROR}
        message = span.error_message or span.error_type
        if message:
            status["message"] = message
        return status
    return {}


def _span(span: SpanRecord) -> dict[str, Any]:
    """Encode one finished span as an OTLP/JSON ``Span``."""
    out: dict[str, Any] = {
        "traceId": f"{span.trace_id:032x}",
        "spanId": f"{span.span_id:016x}",
    }
    if span.parent_span_id:
        out["parentSpanId"] = f"{span.parent_span_id:016x}"
    out["flags"] = (_FLAG_HAS_IS_REMOTE | _FLAG_IS_REMOTE) if span.remote_parent else (
        _FLAG_HAS_IS_REMOTE
    )
    out["name"] = span.name
    kind = span.kind
    out["kind"] = _SPAN_KINDS.get(kind, _SPAN_KIND_UNSPECIFIED)
    out["startTimeUnixNano"] = str(span.start_ns)
    out["endTimeUnixNano"] = str(span.end_ns)

    # One dict per span: it makes keys unique (last value wins, as in
    # ``SpanRecord.attrs``) and is where the GenAI names are added.
    attrs: dict[str, object] = dict(span.attributes)
    if kind == "generation":
        _add_gen_ai_attributes(attrs)
    out["attributes"] = _key_values(attrs)

    events = [_event(event) for event in span.events]
    if (
        span.status == "error"
        and (span.error_type or span.error_message)
        and not any(event.name == "exception" for event in span.events)
    ):
        exc_attrs: dict[str, object] = {}
        if span.error_type:
            exc_attrs["exception.type"] = span.error_type
        if span.error_message:
            exc_attrs["exception.message"] = span.error_message
        events.append({
            "timeUnixNano": str(span.end_ns),
            "name": "exception",
            "attributes": _key_values(exc_attrs),
        })
    if events:
        out["events"] = events
    out["status"] = _status(span)
    return out


def spans_to_otlp(
    spans: Iterable[SpanRecord],
    *,
    service_name: str = "ai-risk-engine",
    service_version: str | None = None,
    resource_attributes: Mapping[str, AttributeValue] | None = None,
    scope_name: str = "ai-risk-engine.observability",
    scope_version: str | None = None,
) -> dict[str, Any]:
    """Build an OTLP/JSON ``ExportTraceServiceRequest`` from finished spans.

    All spans go under one resource and one instrumentation scope. Span kinds
    map as workflow -> SERVER (2), node -> INTERNAL (1), generation -> CLIENT
    (3), internal -> INTERNAL (1); an unknown kind is UNSPECIFIED (0). Status
    ``ok`` -> ``{"code": 1}``, ``error`` -> ``{"code": 2, "message": ...}``,
    anything else -> ``{}`` (unset). An error span with ``error_type`` or
    ``error_message`` and no ``exception`` event gets one, stamped at the
    span's end. ``flags`` carries ``0x100`` (remoteness of the parent known)
    and, for a remote parent, ``0x200``.

    Args:
        spans: The finished spans; iterated once.
        service_name: The ``service.name`` resource attribute.
        service_version: The ``service.version`` resource attribute, if any.
        resource_attributes: Further resource attributes
            (``deployment.environment.name``...).
        scope_name: The instrumentation scope name.
        scope_version: The instrumentation scope version, if any.

    Returns:
        The request as plain ``dict``/``list``/``str``/``int``/``float``
        values, ready for :func:`json.dumps`. It is freshly built: no part of
        it is shared with another call.

    Raises:
        ValueError: ``resource_attributes`` sets ``service.name`` or
            ``service.version`` (pass ``service_name``/``service_version``).
    """
    resource: dict[str, object] = {"service.name": service_name}
    if service_version is not None:
        resource["service.version"] = service_version
    if resource_attributes:
        reserved = _RESERVED_RESOURCE_KEYS.intersection(resource_attributes)
        if reserved:
            raise ValueError(
                f"resource_attributes must not set {sorted(reserved)}: "
                "pass service_name=/service_version= instead"
            )
        resource.update(resource_attributes)
    scope: dict[str, Any] = {"name": scope_name}
    if scope_version is not None:
        scope["version"] = scope_version
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _key_values(resource)},
                "scopeSpans": [{"scope": scope, "spans": [_span(span) for span in spans]}],
            }
        ]
    }


def _span_count(document: Mapping[str, Any]) -> int:
    """Count the spans in a request built by :func:`spans_to_otlp`."""
    return sum(
        len(scope_spans["spans"])
        for resource_spans in document["resourceSpans"]
        for scope_spans in resource_spans["scopeSpans"]
    )


def write_otlp_json(
    path: str | os.PathLike[str],
    spans: Iterable[SpanRecord],
    **kw: Unpack[OtlpResourceOptions],
) -> int:
    """Write the spans as one OTLP/JSON request to ``path``, atomically.

    The compact UTF-8 JSON is written to a temporary file in the target's
    directory, flushed to disk and moved over ``path`` with :func:`os.replace`:
    a reader sees the old file or the new one, never a partial one. On any
    error the temporary file is removed and the exception propagates. Like
    any :mod:`tempfile` file, the result is readable by its owner only (mode
    ``0o600``). Unencodable lone surrogates in strings are written as ``?``.

    Args:
        path: The destination file.
        spans: The finished spans; iterated once.
        **kw: The resource and scope options of :func:`spans_to_otlp`.

    Returns:
        The number of spans written.

    Raises:
        ValueError: Bad options (see :func:`spans_to_otlp`).
        OSError: The file could not be written.
    """
    document = spans_to_otlp(spans, **kw)
    target = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(target))
    fd, tmp_path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as file:
            json.dump(document, file, **_JSON_OPTIONS)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; the export is an ordinary file
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):  # keep the original error
            os.unlink(tmp_path)
        raise
    return _span_count(document)


# --- OTLP/HTTP ------------------------------------------------------------


class _NoRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would replay a POST as a body-less GET."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> None:
        """Return ``None`` so the 3xx surfaces as an :class:`HTTPError`."""
        return None


class OtlpHttpSender:
    """POST OTLP/JSON trace requests to an OTLP/HTTP receiver.

    Off by default: nothing in the engine builds one unless configured. A
    :meth:`send` retries what the OTLP/HTTP specification calls retryable
    (answers 429, 502, 503 and 504, and network errors and timeouts) with
    exponential backoff, or after the receiver's ``Retry-After`` seconds,
    at most ``max_retries`` times and never past ``retry_window`` seconds
    after the first attempt. What still fails (redirects included) is logged,
    counted in :attr:`failures` and returned as ``False``, never raised. Safe
    to share between threads.

    Args:
        endpoint: The full traces URL, e.g. ``http://127.0.0.1:4318/v1/traces``.
        timeout: Seconds allowed for connecting and for each read.
        headers: Extra request headers (for example an ``Authorization``
            token). ``Content-Type`` is always ``application/json``. Header
            values are never logged.
        max_retries: Retries after the first attempt (0: none).
        backoff: Seconds before the first retry; doubled for each next one,
            up to ``max_backoff``.
        max_backoff: The longest wait between two attempts, ``Retry-After``
            included.
        retry_window: Seconds after the first attempt within which a retry
            may still start; an attempt's own timeout is cut to what is left.
            The container sets it below the exporter's
            ``export_timeout_seconds``.
        sleep: Waits between attempts (tests pass a fake).

    Raises:
        ValueError: The endpoint is not an ``http``/``https`` URL with a host,
            carries credentials, the timeout is not a positive finite number,
            a retry setting is negative or not finite, or a header contains
            a line break.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 5.0,
        retry_window: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"OTLP/HTTP endpoint must be http(s), got {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError(f"OTLP/HTTP endpoint has no host: {endpoint!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("OTLP/HTTP endpoint must not carry credentials: use headers=")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if type(max_retries) is not int or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        for name, seconds in (("backoff", backoff), ("max_backoff", max_backoff),
                              ("retry_window", retry_window)):
            if not (math.isfinite(seconds) and seconds >= 0):
                raise ValueError(
                    f"{name} must be a finite number of seconds >= 0, got {seconds!r}")
        merged: dict[str, str] = {}
        for key, value in (headers or {}).items():
            if any(ch in key or ch in value for ch in "\r\n"):
                raise ValueError(f"header {key!r} contains a line break")
            if key.lower() != "content-type":
                merged[key] = value
        merged["Content-Type"] = "application/json"
        self._endpoint = endpoint
        # For logs: no query string (it may hold a token).
        self._endpoint_for_logs = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self._timeout = float(timeout)
        self._headers: Mapping[str, str] = MappingProxyType(merged)
        self._opener = urllib.request.build_opener(_NoRedirectHandler())
        self._lock = threading.Lock()
        self._failures = 0
        self._rejected_spans = 0
        self._retries = 0
        self._max_retries = max_retries
        self._backoff = float(backoff)
        self._max_backoff = float(max_backoff)
        self._retry_window = float(retry_window)
        self._sleep = sleep

    @property
    def endpoint(self) -> str:
        """The URL requests are POSTed to."""
        return self._endpoint

    @property
    def failures(self) -> int:
        """Sends that failed (network error, timeout or non-2xx answer)."""
        with self._lock:
            return self._failures

    @property
    def retries(self) -> int:
        """Attempts made again after a retryable failure."""
        with self._lock:
            return self._retries

    @property
    def rejected_spans(self) -> int:
        """Spans a receiver accepted the request for but reported as rejected."""
        with self._lock:
            return self._rejected_spans

    def send(
        self,
        spans: Iterable[SpanRecord],
        **resource_kw: Unpack[OtlpResourceOptions],
    ) -> bool:
        """Encode the spans and POST them as one OTLP/JSON request.

        Blocks the calling thread for up to about ``timeout`` seconds per
        network step; call it from an exporter thread, never from a workflow
        node.

        Args:
            spans: The finished spans; iterated once.
            **resource_kw: The resource and scope options of
                :func:`spans_to_otlp`.

        Returns:
            ``True`` if the receiver answered 2xx (a partial success included:
            the OTLP spec forbids retrying it; its rejected spans are logged
            and counted in :attr:`rejected_spans`), ``False`` otherwise.

        Raises:
            ValueError: Bad resource options (see :func:`spans_to_otlp`).
        """
        document = spans_to_otlp(spans, **resource_kw)
        count = _span_count(document)
        body = json.dumps(document, **_JSON_OPTIONS).encode("utf-8", "replace")
        deadline = time.monotonic() + self._retry_window
        delay = self._backoff
        attempt = 0
        while True:
            request = urllib.request.Request(
                self._endpoint, data=body, headers=dict(self._headers), method="POST"
            )
            timeout = self._timeout if attempt == 0 else min(
                self._timeout, max(deadline - time.monotonic(), 0.001))
            retry_after: float | None = None
            try:
                with self._opener.open(request, timeout=timeout) as response:
                    status: int = response.status
                    payload: bytes = response.read()
            except urllib.error.HTTPError as exc:
                detail = _read_error_body(exc)
                error, failed_status = f"HTTP {exc.code} {exc.reason}", exc.code
                retryable = exc.code in _RETRYABLE_STATUS
                if retryable:
                    retry_after = _retry_after(exc.headers.get("Retry-After"))
            except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
                detail, error, failed_status, retryable = None, repr(exc), None, True
            else:
                self._note_partial_success(payload, count)
                _logger.debug("otlp_export_sent", endpoint=self._endpoint_for_logs,
                              spans=count, status=status, attempts=attempt + 1)
                return True
            wait = min(delay if retry_after is None else retry_after, self._max_backoff)
            if (not retryable or attempt >= self._max_retries
                    or time.monotonic() + wait >= deadline):
                return self._fail(count, status=failed_status, error=error, detail=detail,
                                  attempts=attempt + 1)
            _logger.debug("otlp_export_retry", endpoint=self._endpoint_for_logs, spans=count,
                          status=failed_status, error=error, wait=wait)
            with self._lock:
                self._retries += 1
            self._sleep(wait)
            attempt += 1
            delay *= 2

    def _fail(
        self, count: int, *, status: int | None, error: str, detail: str | None, attempts: int
    ) -> bool:
        """Count and log one failed send; always returns ``False``."""
        with self._lock:
            self._failures += 1
        _logger.warning(
            "otlp_export_failed", endpoint=self._endpoint_for_logs, spans=count,
            status=status, error=error, detail=detail, attempts=attempts,
        )
        return False

    def _note_partial_success(self, payload: bytes, count: int) -> None:
        """Log and count spans a 2xx ``ExportTraceServiceResponse`` rejected."""
        if not payload:
            return
        try:
            partial = json.loads(payload).get("partialSuccess") or {}
            rejected = int(partial.get("rejectedSpans") or 0)
            message = partial.get("errorMessage")
        except (ValueError, TypeError, AttributeError):
            return  # not an OTLP/JSON response body (e.g. protobuf): nothing to report
        if rejected > 0:
            with self._lock:
                self._rejected_spans += rejected
            _logger.warning(
                "otlp_export_partially_rejected", endpoint=self._endpoint_for_logs,
                spans=count, rejected_spans=rejected, error=message,
            )


#: Answers the OTLP/HTTP specification lets a client retry.
_RETRYABLE_STATUS: Final = frozenset({429, 502, 503, 504})


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds (an HTTP date is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _read_error_body(exc: urllib.error.HTTPError, limit: int = 512) -> str | None:
    """Read (at most ``limit`` bytes of) an error response's body and close it."""
    try:
        return exc.read(limit).decode("utf-8", "replace") or None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        exc.close()
