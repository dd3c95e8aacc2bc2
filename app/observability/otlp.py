"""OTLP export of finished spans: one protobuf message, two encodings, an HTTP sender.

:func:`build_trace_request` turns :class:`~collectors.records.SpanRecord`
objects into one OTLP ``ExportTraceServiceRequest`` protobuf message (the
``opentelemetry-proto`` classes). Both wire encodings come from that one
message:

* **binary protobuf** (``http/protobuf``, the default): the message's
  ``SerializeToString()``. The OTLP specification makes it the encoding every
  OTLP/HTTP receiver must accept (Arize Phoenix takes nothing else);
* **OTLP/JSON** (``http/json``, and the ``traces.otlp.json`` file):
  :func:`spans_to_otlp`, protobuf's ``json_format`` with the two changes the
  OTLP/JSON rules make to proto3 JSON
  (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding):
  ``traceId``/``spanId``/``parentSpanId`` are lowercase **hex**, not base64,
  and enums (``kind``, ``status.code``) are integers. As in proto3 JSON,
  field names are lowerCamelCase and 64-bit integers are decimal strings.

Span attributes are passed through as recorded (generation spans already
carry the OpenTelemetry GenAI names, ``gen_ai.*``), except the deprecated
``gen_ai.system``, which is never sent. The encoder adds the OpenInference
attributes that LLM-aware backends such as Arize Phoenix read
(``openinference.span.kind``, and for generations ``llm.model_name``,
``llm.provider`` and ``llm.token_count.*``), derived from the ``gen_ai.*``
ones; an attribute the record already carries wins.

:class:`OtlpConfig` resolves the exporter configuration once, from the
settings and the standard ``OTEL_*`` environment variables (explicit
settings win). :class:`OtlpHttpSender` POSTs requests to an OTLP/HTTP
receiver; it uses only the standard library for HTTP, is off unless
something constructs it, and reports network failures as ``False`` instead
of raising. :func:`write_otlp_json` writes the OTLP/JSON document to a file
atomically.

Nothing here touches a collector's store: callers pass spans they already hold
(for example a snapshot read from the trace collector), so these functions may
run on any thread.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import math
import os
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict, Unpack, cast, get_args
from urllib.parse import unquote, urlsplit

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import (
    SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK,
    SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK,
    Span,
    Status,
)

from app.observability._http import no_redirect_opener, read_error_body
from app.observability.validation import preview
from collectors.logs import get_logger
from collectors.records import AttributeValue, SpanRecord

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

    from app.observability.settings import ObservabilitySettings

__all__ = (
    "OtlpCompression",
    "OtlpConfig",
    "OtlpHttpSender",
    "OtlpProtocol",
    "OtlpResourceOptions",
    "build_trace_request",
    "resolve_resource",
    "spans_to_otlp",
    "write_otlp_json",
)

_logger = get_logger(__name__)

#: The OTLP/HTTP encodings (``OTEL_EXPORTER_OTLP_PROTOCOL`` values); gRPC is not offered.
OtlpProtocol = Literal["http/protobuf", "http/json"]
#: Request body compression (``OTEL_EXPORTER_OTLP_COMPRESSION`` values).
OtlpCompression = Literal["gzip", "none"]

_PROTOCOLS: Final[tuple[str, ...]] = get_args(OtlpProtocol)
_COMPRESSIONS: Final[tuple[str, ...]] = get_args(OtlpCompression)
_CONTENT_TYPES: Final[Mapping[str, str]] = MappingProxyType({
    "http/protobuf": "application/x-protobuf",
    "http/json": "application/json",
})

#: A workflow run serves one risk request (SERVER); a generation calls a model
#: (CLIENT); nodes and plain internal spans are INTERNAL.
_SPAN_KINDS: Final[Mapping[str, Span.SpanKind.ValueType]] = MappingProxyType({
    "workflow": Span.SPAN_KIND_SERVER,
    "node": Span.SPAN_KIND_INTERNAL,
    "generation": Span.SPAN_KIND_CLIENT,
    "internal": Span.SPAN_KIND_INTERNAL,
})

#: OpenInference span kinds (what Phoenix groups and renders spans by).
_OPENINFERENCE_KINDS: Final[Mapping[str, str]] = MappingProxyType({
    "workflow": "CHAIN",
    "node": "CHAIN",
    "generation": "LLM",
})

#: Replaced by ``gen_ai.provider.name`` in the GenAI conventions; never sent.
_DEPRECATED_KEYS: Final = frozenset({"gen_ai.system"})

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

#: Keys that :func:`build_trace_request` owns through its keyword arguments.
_RESERVED_RESOURCE_KEYS: Final = frozenset({"service.name", "service.version"})

#: Strict JSON: no NaN/Infinity literals (json_format writes non-finite doubles
#: as the proto3 JSON strings ``"NaN"``/``"Infinity"``/``"-Infinity"``).
_JSON_OPTIONS: Final[Mapping[str, Any]] = MappingProxyType({
    "ensure_ascii": False,
    "separators": (",", ":"),
    "allow_nan": False,
})

_ID_FIELDS: Final = ("traceId", "spanId", "parentSpanId")


class OtlpResourceOptions(TypedDict, total=False):
    """The keyword arguments of :func:`build_trace_request` besides the spans.

    :func:`spans_to_otlp`, :func:`write_otlp_json` and
    :meth:`OtlpHttpSender.send` pass them through.
    """

    service_name: str
    service_version: str | None
    resource_attributes: Mapping[str, AttributeValue] | None
    scope_name: str
    scope_version: str | None


# --- encoding -------------------------------------------------------------


def _set_text(message: Any, name: str, value: str) -> None:
    """Set a protobuf ``string`` field; lone surrogates (not UTF-8) become ``?``."""
    try:
        setattr(message, name, value)
    except UnicodeEncodeError:
        setattr(message, name, value.encode("utf-8", "replace").decode("utf-8"))


def _set_any_value(target: AnyValue, value: object) -> None:
    """Set one attribute value on an ``AnyValue``.

    Exact built-in types take the fast path; subclasses (``StrEnum``,
    ``IntEnum``) are normalised to their base type; an int outside int64 and
    anything else (``Decimal``, ``None``...) become the ``stringValue`` of
    ``str(value)``.
    """
    if isinstance(value, str):
        _set_text(target, "string_value", str.__str__(value))
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        number = int(value)
        if _INT64_MIN <= number <= _INT64_MAX:
            target.int_value = number
        else:
            target.string_value = str(number)
    elif isinstance(value, float):
        target.double_value = float(value)
    else:
        _set_text(target, "string_value", str(value))


def _add_key_values(
    target: RepeatedCompositeFieldContainer[KeyValue], attributes: Mapping[str, object]
) -> None:
    """Append a mapping's items as ``KeyValue`` messages (keys are unique)."""
    for key, value in attributes.items():
        item = target.add()
        _set_text(item, "key", key)
        _set_any_value(item.value, value)


def _add_openinference(kind: str, attrs: dict[str, object]) -> None:
    """Add the OpenInference attributes Phoenix reads, derived from ``gen_ai.*``.

    ``setdefault`` throughout: a key the record carries wins.
    """
    span_kind = _OPENINFERENCE_KINDS.get(kind)
    if span_kind is None:
        return
    attrs.setdefault("openinference.span.kind", span_kind)
    if kind != "generation":
        return
    model = attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model")
    if model is not None:
        attrs.setdefault("llm.model_name", model)
    provider = attrs.get("gen_ai.provider.name")
    if provider is not None:
        attrs.setdefault("llm.provider", provider)
    prompt = attrs.get("gen_ai.usage.input_tokens")
    completion = attrs.get("gen_ai.usage.output_tokens")
    if type(prompt) is int:
        attrs.setdefault("llm.token_count.prompt", prompt)
    if type(completion) is int:
        attrs.setdefault("llm.token_count.completion", completion)
    if type(prompt) is int and type(completion) is int:
        attrs.setdefault("llm.token_count.total", prompt + completion)


def _add_event(target: Span, name: str, time_ns: int, attributes: Mapping[str, object]) -> None:
    event = target.events.add()
    event.time_unix_nano = time_ns
    _set_text(event, "name", name)
    _add_key_values(event.attributes, attributes)


def _fill_span(target: Span, span: SpanRecord) -> None:
    """Encode one finished span into ``target``."""
    target.trace_id = span.trace_id.to_bytes(16, "big")
    target.span_id = span.span_id.to_bytes(8, "big")
    if span.parent_span_id:
        target.parent_span_id = span.parent_span_id.to_bytes(8, "big")
    target.flags = SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK | (
        SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK if span.remote_parent else 0
    )
    _set_text(target, "name", span.name)
    kind = span.kind
    target.kind = _SPAN_KINDS.get(kind, Span.SPAN_KIND_UNSPECIFIED)
    target.start_time_unix_nano = span.start_ns
    target.end_time_unix_nano = span.end_ns

    # One dict per span: it makes keys unique (last value wins, as in
    # ``SpanRecord.attrs``) and is where the OpenInference names are added.
    attrs: dict[str, object] = {
        key: value for key, value in span.attributes if key not in _DEPRECATED_KEYS
    }
    _add_openinference(kind, attrs)
    _add_key_values(target.attributes, attrs)

    for event in span.events:
        _add_event(target, event.name, event.time_ns, dict(event.attributes))
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
        _add_event(target, "exception", span.end_ns, exc_attrs)

    if span.status == "ok":
        target.status.code = Status.STATUS_CODE_OK
    elif span.status == "error":
        target.status.code = Status.STATUS_CODE_ERROR
        message = span.error_message or span.error_type
        if message:
            _set_text(target.status, "message", message)


def build_trace_request(
    spans: Iterable[SpanRecord],
    *,
    service_name: str = "ai-risk-engine",
    service_version: str | None = None,
    resource_attributes: Mapping[str, AttributeValue] | None = None,
    scope_name: str = "ai-risk-engine.observability",
    scope_version: str | None = None,
) -> ExportTraceServiceRequest:
    """Build one OTLP ``ExportTraceServiceRequest`` message from finished spans.

    All spans go under one resource and one instrumentation scope. Span kinds
    map as workflow -> SERVER, node -> INTERNAL, generation -> CLIENT,
    internal -> INTERNAL; an unknown kind is UNSPECIFIED. Status ``ok`` -> OK,
    ``error`` -> ERROR with the error message (or type), anything else ->
    unset. An error span with ``error_type`` or ``error_message`` and no
    ``exception`` event gets one, stamped at the span's end. ``flags``
    carries ``0x100`` (remoteness of the parent known) and, for a remote
    parent, ``0x200``. Workflow and node spans are OpenInference ``CHAIN``
    spans, generations ``LLM`` spans (see the module docstring).

    Args:
        spans: The finished spans; iterated once.
        service_name: The ``service.name`` resource attribute.
        service_version: The ``service.version`` resource attribute, if any.
        resource_attributes: Further resource attributes
            (``deployment.environment.name``...).
        scope_name: The instrumentation scope name.
        scope_version: The instrumentation scope version, if any.

    Returns:
        A new message; ``SerializeToString()`` gives the protobuf body.

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
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    _add_key_values(resource_spans.resource.attributes, resource)
    scope_spans = resource_spans.scope_spans.add()
    _set_text(scope_spans.scope, "name", scope_name)
    if scope_version is not None:
        _set_text(scope_spans.scope, "version", scope_version)
    add = scope_spans.spans.add
    for span in spans:
        _fill_span(add(), span)
    return request


def _span_count(request: ExportTraceServiceRequest) -> int:
    return sum(
        len(scope_spans.spans)
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
    )


def _to_otlp_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """The OTLP/JSON form of a request: proto3 JSON with hex ids and integer enums."""
    document: dict[str, Any] = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in document.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                for name in _ID_FIELDS:
                    value = span.get(name)
                    if value is not None:
                        span[name] = base64.b64decode(value).hex()
    return document


def spans_to_otlp(
    spans: Iterable[SpanRecord], **kw: Unpack[OtlpResourceOptions]
) -> dict[str, Any]:
    """Build the OTLP/JSON form of :func:`build_trace_request`'s message.

    Fields at their default value (an unset status, a zero count) are left
    out, as proto3 JSON does; receivers read them as their defaults.

    Args:
        spans: The finished spans; iterated once.
        **kw: The resource and scope options of :func:`build_trace_request`.

    Returns:
        The request as plain ``dict``/``list``/``str``/``int``/``float``
        values, ready for :func:`json.dumps`. It is freshly built: no part of
        it is shared with another call.

    Raises:
        ValueError: Bad options (see :func:`build_trace_request`).
    """
    return _to_otlp_json(build_trace_request(spans, **kw))


def write_otlp_json(
    path: str | os.PathLike[str],
    spans: Iterable[SpanRecord],
    **kw: Unpack[OtlpResourceOptions],
) -> int:
    """Write the spans as one OTLP/JSON request to ``path``, atomically.

    The compact UTF-8 JSON is written to a temporary file in the target's
    directory, flushed to disk and moved over ``path`` with :func:`os.replace`:
    a reader sees the old file or the new one, never a partial one. On any
    error the temporary file is removed and the exception propagates. The
    file is an ordinary ``0o644`` file. Unencodable lone surrogates in strings
    are written as ``?``.

    Args:
        path: The destination file.
        spans: The finished spans; iterated once.
        **kw: The resource and scope options of :func:`build_trace_request`.

    Returns:
        The number of spans written.

    Raises:
        ValueError: Bad options (see :func:`build_trace_request`).
        OSError: The file could not be written.
    """
    request = build_trace_request(spans, **kw)
    document = _to_otlp_json(request)
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
    return _span_count(request)


# --- configuration ----------------------------------------------------------

#: An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _env(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of ``names`` set to a non-empty value, as ``(name, value)``.

    The OTel specification reads an empty variable as unset.
    """
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _parse_pairs(variable: str, text: str) -> dict[str, str]:
    """Parse ``key1=value1,key2=value2`` (values URL-decoded), as OTel specifies.

    Errors name the variable and the entry's position, never its value (a
    header value may be a secret).
    """
    pairs: dict[str, str] = {}
    for index, entry in enumerate(text.split(","), start=1):
        if not entry.strip():
            continue
        key, sep, value = entry.partition("=")
        key = unquote(key.strip())
        if not sep or not key:
            raise ValueError(f"{variable}: entry {index} is not KEY=VALUE")
        pairs[key] = unquote(value.strip())
    return pairs


def _traces_url(base: str) -> str:
    """``OTEL_EXPORTER_OTLP_ENDPOINT`` is a base URL: the traces path is appended."""
    return base.rstrip("/") + "/v1/traces"


def _check_choice(source: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        allowed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{source} must be one of {allowed}, got {preview(value)}")
    return value


def _explicit(settings: ObservabilitySettings, name: str) -> bool:
    """Whether a settings field was given explicitly (not left at its default)."""
    return name in settings.model_fields_set


def resolve_resource(
    settings: ObservabilitySettings, environ: Mapping[str, str] | None = None
) -> OtlpResourceOptions:
    """The resource of exported spans: the settings, then ``OTEL_*`` variables.

    ``service.name`` is ``settings.service_name`` when set explicitly, else
    ``OTEL_SERVICE_NAME``, else ``service.name`` from
    ``OTEL_RESOURCE_ATTRIBUTES``, else the settings' default. Resource
    attributes are those of ``OTEL_RESOURCE_ATTRIBUTES`` updated with
    ``settings.otlp_resource_attributes``.

    Args:
        settings: The container's settings.
        environ: The environment (default :data:`os.environ`).

    Returns:
        The keyword arguments for :func:`build_trace_request`.

    Raises:
        ValueError: ``OTEL_RESOURCE_ATTRIBUTES`` is malformed.
    """
    env = os.environ if environ is None else environ
    attributes: dict[str, str] = {}
    found = _env(env, "OTEL_RESOURCE_ATTRIBUTES")
    if found is not None:
        attributes = _parse_pairs(*found)
    env_name = attributes.pop("service.name", None)
    env_version = attributes.pop("service.version", None)
    attributes.update(settings.otlp_resource_attributes)
    service_name = settings.service_name
    if not _explicit(settings, "service_name"):
        found = _env(env, "OTEL_SERVICE_NAME")
        service_name = found[1] if found is not None else env_name or service_name
    service_version: str | None = settings.service_version
    if not _explicit(settings, "service_version") and env_version:
        service_version = env_version
    return OtlpResourceOptions(
        service_name=service_name,
        service_version=service_version,
        resource_attributes=MappingProxyType(attributes),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class OtlpConfig:
    """The effective configuration of the OTLP/HTTP span exporter.

    Built once, by :meth:`resolve`, when the container is constructed.
    ``headers`` is left out of ``repr``: it may hold credentials.
    """

    endpoint: str
    protocol: OtlpProtocol = "http/protobuf"
    compression: OtlpCompression = "none"
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 5.0
    resource: OtlpResourceOptions = field(default_factory=lambda: OtlpResourceOptions())

    @classmethod
    def resolve(
        cls, settings: ObservabilitySettings, environ: Mapping[str, str] | None = None
    ) -> OtlpConfig | None:
        """Combine the settings with the standard OpenTelemetry variables.

        A setting given explicitly wins over its variable; a traces-specific
        variable (``OTEL_EXPORTER_OTLP_TRACES_*``) wins over the general one:

        * endpoint: ``settings.otlp_endpoint`` (the full traces URL), else
          ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as is), else
          ``OTEL_EXPORTER_OTLP_ENDPOINT`` with ``/v1/traces`` appended;
          none of them: no exporter (``None``);
        * ``OTEL_EXPORTER_OTLP_HEADERS``: ``key=value`` pairs, comma
          separated, values URL-decoded; ``settings.otlp_headers`` override
          them name by name (case-insensitively);
        * ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``http/protobuf`` (default) or
          ``http/json``; anything else (``grpc``) is an error;
        * ``OTEL_EXPORTER_OTLP_COMPRESSION``: ``gzip`` or ``none`` (default);
        * ``OTEL_EXPORTER_OTLP_TIMEOUT``: milliseconds;
        * the resource: :func:`resolve_resource`.

        Args:
            settings: The container's settings.
            environ: The environment (default :data:`os.environ`).

        Returns:
            The configuration, or ``None`` when no endpoint is configured.

        Raises:
            ValueError: A variable is malformed or names an unsupported value;
                the message names the variable and never quotes a header.
        """
        env = os.environ if environ is None else environ
        endpoint = settings.otlp_endpoint
        if endpoint is None:
            found = _env(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            if found is not None:
                endpoint = found[1]
            else:
                found = _env(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
                if found is not None:
                    endpoint = _traces_url(found[1])
        if endpoint is None:
            return None

        protocol: str | None = settings.otlp_protocol
        if protocol is None:
            found = _env(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
            protocol = "http/protobuf" if found is None else _check_choice(
                *found, _PROTOCOLS)
        compression: str | None = settings.otlp_compression
        if compression is None:
            found = _env(env, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
                         "OTEL_EXPORTER_OTLP_COMPRESSION")
            compression = "none" if found is None else _check_choice(
                found[0], found[1].lower(), _COMPRESSIONS)

        headers: dict[str, str] = {}
        found = _env(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
        if found is not None:
            headers = _parse_pairs(*found)
        explicit = {key: value.get_secret_value() for key, value in settings.otlp_headers.items()}
        lowered = {key.lower() for key in explicit}
        headers = {key: value for key, value in headers.items() if key.lower() not in lowered}
        headers.update(explicit)

        timeout = settings.otlp_timeout_seconds
        if not _explicit(settings, "otlp_timeout_seconds"):
            found = _env(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
            if found is not None:
                timeout = _timeout_ms(*found)
        return cls(
            endpoint=endpoint,
            protocol=cast(OtlpProtocol, protocol),
            compression=cast(OtlpCompression, compression),
            headers=MappingProxyType(headers),
            timeout=timeout,
            resource=resolve_resource(settings, env),
        )


def _timeout_ms(variable: str, text: str) -> float:
    try:
        milliseconds = float(text)
    except ValueError:
        raise ValueError(f"{variable} must be a number of milliseconds, got {preview(text)}"
                         ) from None
    if not (math.isfinite(milliseconds) and milliseconds > 0):
        raise ValueError(f"{variable} must be a positive number of milliseconds, got {text}")
    return milliseconds / 1000


# --- OTLP/HTTP ------------------------------------------------------------


class OtlpHttpSender:
    """POST OTLP trace requests to an OTLP/HTTP receiver.

    Off by default: nothing in the engine builds one unless configured. The
    body is binary protobuf (``http/protobuf``, the default) or OTLP/JSON
    (``http/json``), optionally gzip-compressed (``Content-Encoding: gzip``).
    A :meth:`send` retries what the OTLP/HTTP specification calls retryable
    (answers 429, 502, 503 and 504, and network errors and timeouts) with
    exponential backoff, or after the receiver's ``Retry-After`` seconds,
    at most ``max_retries`` times and never past ``retry_window`` seconds
    after the first attempt. What still fails (redirects included) is logged,
    counted in :attr:`failures` and returned as ``False``, never raised. Safe
    to share between threads.

    Args:
        endpoint: The full traces URL, e.g. ``http://127.0.0.1:4318/v1/traces``.
        protocol: ``"http/protobuf"`` or ``"http/json"``.
        compression: ``"gzip"`` or ``"none"``.
        timeout: Seconds allowed for connecting and for each read.
        headers: Extra request headers (for example an ``Authorization``
            token). ``Content-Type`` and ``Content-Encoding`` follow
            ``protocol`` and ``compression``. Header values are never logged.
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
            carries credentials, the protocol or compression is unknown, the
            timeout is not a positive finite number, a retry setting is
            negative or not finite, or a header name is not an HTTP token or
            a header contains a line break.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        protocol: str = "http/protobuf",
        compression: str = "none",
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
        _check_choice("protocol", protocol, _PROTOCOLS)
        _check_choice("compression", compression, _COMPRESSIONS)
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
            if not _HEADER_NAME.match(key):
                raise ValueError(f"header name {preview(key)} is not a valid HTTP header name")
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {key!r} contains a line break")
            if key.lower() not in ("content-type", "content-encoding"):
                merged[key] = value
        merged["Content-Type"] = _CONTENT_TYPES[protocol]
        if compression == "gzip":
            merged["Content-Encoding"] = "gzip"
        self._endpoint = endpoint
        self._protocol = protocol
        self._gzip = compression == "gzip"
        # For logs: no query string (it may hold a token).
        self._endpoint_for_logs = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self._timeout = float(timeout)
        self._headers: Mapping[str, str] = MappingProxyType(merged)
        self._opener = no_redirect_opener()
        self._lock = threading.Lock()
        self._failures = 0
        self._rejected_spans = 0
        self._retries = 0
        self._max_retries = max_retries
        self._backoff = float(backoff)
        self._max_backoff = float(max_backoff)
        self._retry_window = float(retry_window)
        self._sleep = sleep

    @classmethod
    def from_config(
        cls, config: OtlpConfig, *, max_retries: int = 3, retry_window: float = 10.0
    ) -> OtlpHttpSender:
        """A sender for a resolved :class:`OtlpConfig`."""
        return cls(
            config.endpoint, protocol=config.protocol, compression=config.compression,
            timeout=config.timeout, headers=config.headers, max_retries=max_retries,
            retry_window=retry_window,
        )

    @property
    def endpoint(self) -> str:
        """The URL requests are POSTed to."""
        return self._endpoint

    @property
    def protocol(self) -> str:
        """``http/protobuf`` or ``http/json``."""
        return self._protocol

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

    def encode(
        self, spans: Iterable[SpanRecord], **resource_kw: Unpack[OtlpResourceOptions]
    ) -> tuple[bytes, int]:
        """The request body :meth:`send` would POST for ``spans``, and its span count.

        Raises:
            ValueError: Bad resource options (see :func:`build_trace_request`).
        """
        request = build_trace_request(spans, **resource_kw)
        if self._protocol == "http/json":
            body = json.dumps(_to_otlp_json(request), **_JSON_OPTIONS).encode("utf-8", "replace")
        else:
            body = request.SerializeToString()
        if self._gzip:
            body = gzip.compress(body, compresslevel=6)
        return body, _span_count(request)

    def send(
        self,
        spans: Iterable[SpanRecord],
        **resource_kw: Unpack[OtlpResourceOptions],
    ) -> bool:
        """Encode the spans and POST them as one OTLP request.

        Blocks the calling thread for up to about ``timeout`` seconds per
        network step; call it from an exporter thread, never from a workflow
        node.

        Args:
            spans: The finished spans; iterated once.
            **resource_kw: The resource and scope options of
                :func:`build_trace_request`.

        Returns:
            ``True`` if the receiver answered 2xx (a partial success included:
            the OTLP spec forbids retrying it; its rejected spans are logged
            and counted in :attr:`rejected_spans`), ``False`` otherwise.

        Raises:
            ValueError: Bad resource options (see :func:`build_trace_request`).
        """
        body, count = self.encode(spans, **resource_kw)
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
                    content_type: str = response.headers.get("Content-Type", "")
                    payload: bytes = response.read()
            except urllib.error.HTTPError as exc:
                detail = read_error_body(exc)
                error, failed_status = f"HTTP {exc.code} {exc.reason}", exc.code
                retryable = exc.code in _RETRYABLE_STATUS
                if retryable:
                    retry_after = _retry_after(exc.headers.get("Retry-After"))
            except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
                detail, error, failed_status, retryable = None, repr(exc), None, True
            else:
                self._note_partial_success(payload, content_type, count)
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

    def _note_partial_success(self, payload: bytes, content_type: str, count: int) -> None:
        """Log and count spans a 2xx ``ExportTraceServiceResponse`` rejected.

        The response is decoded by its ``Content-Type``: JSON, or protobuf.
        A body that is neither is ignored (some receivers answer plain text).
        """
        if not payload:
            return
        rejected, message = 0, ""
        if "json" in content_type.lower():
            try:
                partial = json.loads(payload).get("partialSuccess") or {}
                rejected = int(partial.get("rejectedSpans") or 0)
                message = str(partial.get("errorMessage") or "")
            except (ValueError, TypeError, AttributeError):
                return
        else:
            response = ExportTraceServiceResponse()
            try:
                response.ParseFromString(payload)
            except DecodeError:
                return
            rejected = response.partial_success.rejected_spans
            message = response.partial_success.error_message
        if rejected > 0:
            with self._lock:
                self._rejected_spans += rejected
            _logger.warning(
                "otlp_export_partially_rejected", endpoint=self._endpoint_for_logs,
                spans=count, rejected_spans=rejected, error=message or None,
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

