"""Tests for :mod:`app.observability.otlp`: the OTLP message, its two encodings,
the configuration from settings and ``OTEL_*`` variables, and the HTTP sender.

Validity is checked with the OTLP protobuf schema itself: every OTLP/JSON
document goes through ``google.protobuf.json_format.ParseDict`` into an
``ExportTraceServiceRequest`` with ``ignore_unknown_fields=False``, and every
protobuf body through ``ExportTraceServiceRequest.ParseFromString``.

Why the ids are converted before parsing: OTLP/JSON mandates hex strings for
``traceId``/``spanId``/``parentSpanId``
(https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding), while
protobuf's generic proto3 JSON mapping reads every ``bytes`` field as base64.
Hex digits are all valid base64 characters, so a stock parser does not fail on
a hex id: it silently decodes 32 hex digits into 24 wrong bytes
(``test_stock_proto3_parser_misreads_hex_ids`` pins this). The helper
:func:`_parse` therefore first checks that each id is lowercase hex of the
right length, then re-encodes it as base64 -- in the test only -- and lets
protobuf check everything else (field names, enum integers, int64 strings,
``AnyValue`` shapes).
"""

from __future__ import annotations

import base64
import copy
import enum
import gzip
import json
import math
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog
from google.protobuf.json_format import ParseDict
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

from app.observability.otlp import (
    OtlpConfig,
    OtlpHttpSender,
    build_trace_request,
    resolve_resource,
    spans_to_otlp,
    write_otlp_json,
)
from app.observability.settings import ObservabilitySettings
from collectors.records import SpanEvent, SpanRecord
from tests._http import RecordedRequest, RecordingServer, serving

# --- fixtures: a small trace built by hand --------------------------------

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
REMOTE_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
ROOT_ID = 0x00F067AA0BA902B7  # leading zero: hex must stay 16 digits
NODE_A_ID = 0x1
NODE_B_ID = 0xB7AD6B7169203331
GENERATION_ID = 0x2222222222222222
FAILED_ID = 0x3333333333333333
REMOTE_CHILD_ID = 0x4444444444444444
REMOTE_PARENT_ID = 0x5555555555555555

T0 = 1_717_000_000_000_000_000  # ns since the epoch (2024-05-29), beyond 2**53


def _record(**overrides: Any) -> SpanRecord:
    """A finished ok node span; keyword arguments replace fields."""
    fields: dict[str, Any] = {
        "trace_id": TRACE_ID,
        "span_id": NODE_A_ID,
        "parent_span_id": ROOT_ID,
        "name": "node",
        "kind": "node",
        "start_ns": T0,
        "end_ns": T0 + 1_000,
        "status": "ok",
        "error_type": None,
        "error_message": None,
        "attributes": (),
    }
    fields.update(overrides)
    return SpanRecord(**fields)


#: What ``LangfuseClient`` records on a generation span (GenAI names and ours).
_GENERATION_ATTRIBUTES: tuple[tuple[str, Any], ...] = (
    ("tenant_id", "acme"), ("correlation_id", "corr-1"),
    ("gen_ai.operation.name", "chat"), ("gen_ai.provider.name", "simulated"),
    ("gen_ai.request.model", "risk-llm-2024-05"), ("gen_ai.response.model", "risk-llm-2024-05"),
    ("gen_ai.usage.input_tokens", 812), ("gen_ai.usage.output_tokens", 64),
    ("gen_ai.usage.cost.amount", 0.012345), ("gen_ai.usage.cost.currency", "USD"),
    ("request_id", "req-1"), ("prompt_version", "v3"), ("event_id", "evt-9"), ("priced", True),
)


def _trace() -> tuple[SpanRecord, ...]:
    """A workflow root, two node children, a generation under the first node,
    an error span carrying its own exception event, and a span whose parent is
    remote (a different trace, continued from an incoming traceparent)."""
    common = (("tenant_id", "acme"), ("correlation_id", "corr-1"))
    return (
        _record(
            span_id=ROOT_ID, parent_span_id=0, name="risk_workflow", kind="workflow",
            start_ns=T0, end_ns=T0 + 9_000_000,
            attributes=(*common, ("request_id", "req-1"), ("approved", True)),
        ),
        _record(
            span_id=NODE_A_ID, parent_span_id=ROOT_ID, name="score_risk", kind="node",
            start_ns=T0 + 1_000, end_ns=T0 + 5_000_000,
            attributes=(*common, ("node", "score_risk"), ("risk_score", 0.73)),
        ),
        _record(
            span_id=GENERATION_ID, parent_span_id=NODE_A_ID, name="chat risk-llm-2024-05",
            kind="generation", start_ns=T0 + 2_000, end_ns=T0 + 4_000_000,
            attributes=_GENERATION_ATTRIBUTES,
            events=(SpanEvent("first_token", T0 + 3_000, (("latency_ms", 1.5),)),),
        ),
        _record(
            span_id=NODE_B_ID, parent_span_id=ROOT_ID, name="check_policy", kind="node",
            start_ns=T0 + 5_000_000, end_ns=T0 + 8_000_000, status="error",
            error_type="PolicyViolationError", error_message="exposure above limit",
            attributes=(*common, ("node", "check_policy")),
        ),
        _record(
            span_id=FAILED_ID, parent_span_id=NODE_B_ID, name="load_limits", kind="internal",
            start_ns=T0 + 6_000_000, end_ns=T0 + 7_000_000, status="error",
            error_type="TimeoutError", error_message="limits store timed out",
            attributes=common,
            events=(
                SpanEvent(
                    "exception", T0 + 6_500_000,
                    (
                        ("exception.type", "TimeoutError"),
                        ("exception.message", "limits store timed out"),
                        ("exception.escaped", True),
                    ),
                ),
            ),
        ),
        _record(
            trace_id=REMOTE_TRACE_ID, span_id=REMOTE_CHILD_ID, parent_span_id=REMOTE_PARENT_ID,
            name="risk_workflow", kind="workflow", start_ns=T0 + 10_000_000,
            end_ns=T0 + 12_000_000, status="unset", attributes=common, remote_parent=True,
        ),
    )


# --- helpers -------------------------------------------------------------

_HEX_IDS = {"traceId": 32, "spanId": 16, "parentSpanId": 16}


def _hex_to_base64(doc: dict[str, Any]) -> dict[str, Any]:
    """Copy an OTLP/JSON document, re-encoding its hex ids as proto3 base64.

    Asserts first that each id is lowercase hex of the OTLP length.
    """
    doc = copy.deepcopy(doc)
    for resource_spans in doc["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans.get("spans", ()):
                for field, digits in _HEX_IDS.items():
                    if field in span:
                        value = span[field]
                        assert re.fullmatch(f"[0-9a-f]{{{digits}}}", value), (field, value)
                        span[field] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
    return doc


def _parse(doc: dict[str, Any]) -> ExportTraceServiceRequest:
    """Parse an OTLP/JSON document with the OTLP protobuf schema, strictly."""
    message = ExportTraceServiceRequest()
    ParseDict(_hex_to_base64(doc), message, ignore_unknown_fields=False)
    return message


def _only_spans(message: ExportTraceServiceRequest) -> dict[bytes, Span]:
    """The spans of a one-resource, one-scope request, keyed by span id."""
    assert len(message.resource_spans) == 1
    assert len(message.resource_spans[0].scope_spans) == 1
    return {span.span_id: span for span in message.resource_spans[0].scope_spans[0].spans}


def _id(value: int, size: int = 8) -> bytes:
    return value.to_bytes(size, "big")


def _value(any_value: AnyValue) -> object:
    """The Python value of a protobuf ``AnyValue``."""
    kind = any_value.WhichOneof("value")
    assert kind is not None
    return getattr(any_value, kind)


def _attrs(key_values: Any) -> dict[str, object]:
    """Protobuf ``KeyValue`` list -> dict, asserting keys are unique."""
    pairs: list[KeyValue] = list(key_values)
    result = {kv.key: _value(kv.value) for kv in pairs}
    assert len(result) == len(pairs), "duplicate attribute keys"
    return result


def _json_spans(doc: dict[str, Any]) -> list[dict[str, Any]]:
    # proto3 JSON leaves an empty list out.
    spans: list[dict[str, Any]] = doc["resourceSpans"][0]["scopeSpans"][0].get("spans", [])
    return spans


# --- the document ----------------------------------------------------------


def test_document_is_strict_json_in_the_otlp_shape() -> None:
    doc = spans_to_otlp(_trace())

    text = json.dumps(doc, allow_nan=False)  # raises on anything not plain JSON
    assert json.loads(text) == doc
    assert set(doc) == {"resourceSpans"}
    (resource_spans,) = doc["resourceSpans"]
    assert set(resource_spans) == {"resource", "scopeSpans"}
    (scope_spans,) = resource_spans["scopeSpans"]
    assert set(scope_spans) == {"scope", "spans"}
    spans = scope_spans["spans"]
    assert len(spans) == 6
    root = spans[0]
    assert root["traceId"] == "0af7651916cd43dd8448eb211c80319c"
    assert root["spanId"] == "00f067aa0ba902b7"
    assert "parentSpanId" not in root
    assert spans[1]["spanId"] == "0000000000000001"
    assert spans[1]["parentSpanId"] == "00f067aa0ba902b7"
    assert root["startTimeUnixNano"] == str(T0)
    assert root["endTimeUnixNano"] == str(T0 + 9_000_000)
    assert all(type(span["kind"]) is int for span in spans)  # enums as integers


def test_stock_proto3_parser_misreads_hex_ids() -> None:
    """Why ``_parse`` converts ids: the stock mapping reads hex as base64."""
    doc = spans_to_otlp([_trace()[0]])

    naive = ExportTraceServiceRequest()
    ParseDict(doc, naive, ignore_unknown_fields=False)

    span = naive.resource_spans[0].scope_spans[0].spans[0]
    assert len(span.trace_id) == 24  # 32 hex digits taken as base64, not 16 bytes
    assert span.trace_id != _id(TRACE_ID, 16)
    assert _only_spans(_parse(doc))[_id(ROOT_ID)].trace_id == _id(TRACE_ID, 16)


def test_round_trip_through_the_otlp_protobuf_schema() -> None:
    records = _trace()
    spans = _only_spans(_parse(spans_to_otlp(records)))

    assert set(spans) == {_id(record.span_id) for record in records}
    for record in records:
        span = spans[_id(record.span_id)]
        assert span.trace_id == _id(record.trace_id, 16)
        assert span.parent_span_id == (_id(record.parent_span_id) if record.parent_span_id
                                       else b"")
        assert span.name == record.name
        assert span.start_time_unix_nano == record.start_ns
        assert span.end_time_unix_nano == record.end_ns
        for key, value in record.attributes:
            assert _attrs(span.attributes)[key] == value

    # Parent links form the tree: root <- A <- generation, root <- B <- failed.
    assert spans[_id(NODE_A_ID)].parent_span_id == _id(ROOT_ID)
    assert spans[_id(GENERATION_ID)].parent_span_id == _id(NODE_A_ID)
    assert spans[_id(NODE_B_ID)].parent_span_id == _id(ROOT_ID)
    assert spans[_id(FAILED_ID)].parent_span_id == _id(NODE_B_ID)
    assert spans[_id(REMOTE_CHILD_ID)].parent_span_id == _id(REMOTE_PARENT_ID)
    assert spans[_id(REMOTE_CHILD_ID)].trace_id == _id(REMOTE_TRACE_ID, 16)

    assert spans[_id(ROOT_ID)].kind == Span.SPAN_KIND_SERVER
    assert spans[_id(NODE_A_ID)].kind == Span.SPAN_KIND_INTERNAL
    assert spans[_id(NODE_B_ID)].kind == Span.SPAN_KIND_INTERNAL
    assert spans[_id(GENERATION_ID)].kind == Span.SPAN_KIND_CLIENT
    assert spans[_id(FAILED_ID)].kind == Span.SPAN_KIND_INTERNAL

    assert spans[_id(ROOT_ID)].status.code == Status.STATUS_CODE_OK
    assert spans[_id(NODE_B_ID)].status.code == Status.STATUS_CODE_ERROR
    assert spans[_id(NODE_B_ID)].status.message == "exposure above limit"
    assert spans[_id(REMOTE_CHILD_ID)].status.code == Status.STATUS_CODE_UNSET

    generation = spans[_id(GENERATION_ID)]
    (first_token,) = generation.events
    assert first_token.name == "first_token"
    assert first_token.time_unix_nano == T0 + 3_000
    assert _attrs(first_token.attributes) == {"latency_ms": 1.5}


def test_flags_say_whether_the_parent_is_remote() -> None:
    spans = _only_spans(_parse(spans_to_otlp(_trace())))

    assert spans[_id(REMOTE_CHILD_ID)].flags == (
        SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK | SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
    ) == 0x300
    for span_id in (ROOT_ID, NODE_A_ID, GENERATION_ID):
        assert spans[_id(span_id)].flags == SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK == 0x100


def test_resource_and_scope() -> None:
    doc = spans_to_otlp(
        _trace(), service_name="risk-api", service_version="0.7.0",
        resource_attributes={"deployment.environment.name": "staging", "host.cpus": 8},
        scope_name="risk.tracing", scope_version="1.2",
    )

    resource_spans = _parse(doc).resource_spans[0]
    assert _attrs(resource_spans.resource.attributes) == {
        "service.name": "risk-api", "service.version": "0.7.0",
        "deployment.environment.name": "staging", "host.cpus": 8,
    }
    scope = resource_spans.scope_spans[0].scope
    assert (scope.name, scope.version) == ("risk.tracing", "1.2")


def test_default_resource_and_scope() -> None:
    resource_spans = _parse(spans_to_otlp(_trace())).resource_spans[0]

    assert _attrs(resource_spans.resource.attributes) == {"service.name": "ai-risk-engine"}
    assert resource_spans.scope_spans[0].scope.name == "ai-risk-engine.observability"
    assert resource_spans.scope_spans[0].scope.version == ""


@pytest.mark.parametrize("key", ["service.name", "service.version"])
def test_resource_attributes_may_not_override_service_keywords(key: str) -> None:
    with pytest.raises(ValueError, match="service_name=/service_version="):
        spans_to_otlp(_trace(), resource_attributes={key: "x"})


# --- GenAI and OpenInference attributes ---------------------------------------


def test_generation_span_passes_gen_ai_through_and_adds_openinference() -> None:
    spans = _only_spans(_parse(spans_to_otlp(_trace())))

    generation = spans[_id(GENERATION_ID)]
    assert generation.name == "chat risk-llm-2024-05"
    assert generation.kind == Span.SPAN_KIND_CLIENT
    assert _attrs(generation.attributes) == {
        **dict(_GENERATION_ATTRIBUTES),
        "openinference.span.kind": "LLM",
        "llm.model_name": "risk-llm-2024-05",
        "llm.provider": "simulated",
        "llm.token_count.prompt": 812,
        "llm.token_count.completion": 64,
        "llm.token_count.total": 876,
    }


def test_cost_travels_as_a_number() -> None:
    (span,) = [s for s in _json_spans(spans_to_otlp(_trace())) if s["kind"] == 3]

    values = {kv["key"]: kv["value"] for kv in span["attributes"]}
    assert values["gen_ai.usage.cost.amount"] == {"doubleValue": 0.012345}
    assert values["gen_ai.usage.input_tokens"] == {"intValue": "812"}


def test_deprecated_gen_ai_system_is_never_sent() -> None:
    record = _record(kind="generation", attributes=(
        ("gen_ai.system", "openai"), ("gen_ai.provider.name", "openai"),
    ))

    (span,) = _only_spans(_parse(spans_to_otlp([record]))).values()
    attrs = _attrs(span.attributes)
    assert "gen_ai.system" not in attrs
    assert attrs["llm.provider"] == attrs["gen_ai.provider.name"] == "openai"


def test_openinference_names_never_override_the_records_own() -> None:
    record = _record(kind="generation", attributes=(
        ("gen_ai.request.model", "m-1"), ("gen_ai.response.model", "m-1-2024-06-01"),
        ("gen_ai.usage.input_tokens", 5), ("llm.token_count.total", 99),
        ("openinference.span.kind", "EMBEDDING"),
    ))

    (span,) = _only_spans(_parse(spans_to_otlp([record]))).values()
    attrs = _attrs(span.attributes)  # also asserts the keys are unique
    assert attrs["llm.model_name"] == "m-1-2024-06-01"  # the response model first
    assert attrs["llm.token_count.prompt"] == 5
    assert attrs["llm.token_count.total"] == 99
    assert attrs["openinference.span.kind"] == "EMBEDDING"
    assert "llm.token_count.completion" not in attrs  # no output tokens recorded


def test_failed_generation_keeps_error_type_and_is_an_llm_span() -> None:
    record = _record(
        kind="generation", name="chat risk-llm-v2", status="error",
        error_type="TimeoutError", error_message="model timed out",
        attributes=(("gen_ai.request.model", "risk-llm-v2"), ("error.type", "TimeoutError")),
    )

    (span,) = _only_spans(_parse(spans_to_otlp([record]))).values()
    attrs = _attrs(span.attributes)
    assert attrs["error.type"] == "TimeoutError"
    assert attrs["openinference.span.kind"] == "LLM"
    assert attrs["llm.model_name"] == "risk-llm-v2"
    assert span.status.code == Status.STATUS_CODE_ERROR
    assert span.status.message == "model timed out"


@pytest.mark.parametrize(("kind", "openinference"),
                         [("workflow", "CHAIN"), ("node", "CHAIN"), ("internal", None)])
def test_only_generation_spans_get_llm_names(kind: str, openinference: str | None) -> None:
    record = _record(kind=kind, attributes=(
        ("gen_ai.request.model", "m-1"), ("gen_ai.usage.input_tokens", 5),
    ))

    (span,) = _only_spans(_parse(spans_to_otlp([record]))).values()
    attrs = _attrs(span.attributes)
    assert attrs.get("openinference.span.kind") == openinference
    assert not [key for key in attrs if key.startswith("llm.")]


# --- attributes, status, events ----------------------------------------------


class _Color(enum.StrEnum):
    RED = "red"


class _Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", {"stringValue": "text"}),
        ("", {"stringValue": ""}),
        ("übung ✓", {"stringValue": "übung ✓"}),
        (True, {"boolValue": True}),
        (False, {"boolValue": False}),
        (0, {"intValue": "0"}),
        (-42, {"intValue": "-42"}),
        (2**63 - 1, {"intValue": str(2**63 - 1)}),
        (-(2**63), {"intValue": str(-(2**63))}),
        (2**63, {"stringValue": str(2**63)}),  # beyond int64
        (0.25, {"doubleValue": 0.25}),
        (math.nan, {"doubleValue": "NaN"}),
        (math.inf, {"doubleValue": "Infinity"}),
        (-math.inf, {"doubleValue": "-Infinity"}),
        (Decimal("0.012300"), {"stringValue": "0.012300"}),
        (None, {"stringValue": "None"}),
        (_Color.RED, {"stringValue": "red"}),
        (_Level.HIGH, {"intValue": "3"}),
    ],
)
def test_attribute_value_encoding(value: object, expected: dict[str, object]) -> None:
    record = _record(kind="internal", attributes=(("k", value),))  # off-type on purpose

    doc = spans_to_otlp([record])

    (span,) = _json_spans(doc)
    assert span["attributes"] == [{"key": "k", "value": expected}]
    assert type(next(iter(span["attributes"][0]["value"].values()))) is type(
        next(iter(expected.values()))
    )
    _parse(json.loads(json.dumps(doc, allow_nan=False)))  # strict JSON, valid OTLP


def test_duplicate_attribute_keys_keep_the_last_value() -> None:
    record = _record(kind="internal",
                     attributes=(("tenant_id", "a"), ("node", "n"), ("tenant_id", "b")))

    (span,) = _json_spans(spans_to_otlp([record]))
    assert span["attributes"] == [
        {"key": "tenant_id", "value": {"stringValue": "b"}},
        {"key": "node", "value": {"stringValue": "n"}},
    ]


def test_error_span_gets_an_exception_event_at_its_end() -> None:
    spans = _only_spans(_parse(spans_to_otlp(_trace())))

    (event,) = spans[_id(NODE_B_ID)].events
    assert event.name == "exception"
    assert event.time_unix_nano == T0 + 8_000_000
    assert _attrs(event.attributes) == {
        "exception.type": "PolicyViolationError",
        "exception.message": "exposure above limit",
    }


def test_existing_exception_event_is_not_duplicated() -> None:
    spans = _only_spans(_parse(spans_to_otlp(_trace())))

    failed = spans[_id(FAILED_ID)]
    (event,) = failed.events
    assert event.time_unix_nano == T0 + 6_500_000
    assert _attrs(event.attributes)["exception.escaped"] is True
    assert failed.status.code == Status.STATUS_CODE_ERROR


@pytest.mark.parametrize(
    ("error_type", "error_message", "status", "event_attrs"),
    [
        ("ValueError", None, {"code": 2, "message": "ValueError"},
         [{"key": "exception.type", "value": {"stringValue": "ValueError"}}]),
        (None, "boom", {"code": 2, "message": "boom"},
         [{"key": "exception.message", "value": {"stringValue": "boom"}}]),
        (None, None, {"code": 2}, None),
    ],
)
def test_error_status_and_event_with_partial_error_details(
    error_type: str | None,
    error_message: str | None,
    status: dict[str, object],
    event_attrs: list[dict[str, object]] | None,
) -> None:
    record = _record(status="error", error_type=error_type, error_message=error_message)

    (span,) = _json_spans(spans_to_otlp([record]))
    assert span["status"] == status
    if event_attrs is None:
        assert "events" not in span
    else:
        assert span["events"] == [
            {"timeUnixNano": str(record.end_ns), "name": "exception", "attributes": event_attrs}
        ]


@pytest.mark.parametrize(
    ("status", "expected"), [("ok", {"code": 1}), ("unset", None), ("weird", None)]
)
def test_non_error_status_mapping(status: str, expected: dict[str, object] | None) -> None:
    record = _record(status=status, error_type="Ignored", error_message="ignored")

    (span,) = _json_spans(spans_to_otlp([record]))
    assert span.get("status") == expected  # an unset status is left out, as proto3 JSON does
    assert "events" not in span  # only error spans get an exception event


def test_unknown_kind_is_unspecified() -> None:
    (span,) = _json_spans(spans_to_otlp([_record(kind="batch")]))

    assert "kind" not in span  # UNSPECIFIED (0) is the proto3 default
    (message_span,) = _only_spans(_parse(spans_to_otlp([_record(kind="batch")]))).values()
    assert message_span.kind == Span.SPAN_KIND_UNSPECIFIED == 0


def test_accepts_any_iterable_and_no_spans() -> None:
    records = _trace()

    from_generator = spans_to_otlp(record for record in records)
    assert from_generator == spans_to_otlp(list(records))
    assert len(_json_spans(from_generator)) == len(records)

    empty = spans_to_otlp([])
    assert _json_spans(empty) == []
    assert len(_parse(empty).resource_spans[0].scope_spans[0].spans) == 0


def test_documents_share_no_mutable_parts() -> None:
    first = spans_to_otlp(_trace())
    _json_spans(first)[0]["status"]["code"] = 99
    _json_spans(first)[0]["attributes"].clear()

    second = spans_to_otlp(_trace())
    assert _json_spans(second)[0]["status"] == {"code": 1}
    assert _json_spans(second)[0]["attributes"]


def test_many_spans_export_in_one_document() -> None:
    root = _trace()[0]
    records = [
        _record(span_id=i + 2, parent_span_id=ROOT_ID, name=f"node-{i}", kind="internal",
                attributes=(("tenant_id", "acme"), ("i", i)))
        for i in range(5_000)
    ]

    spans = _only_spans(_parse(spans_to_otlp([root, *records])))
    assert len(spans) == 5_001
    assert _attrs(spans[_id(4_999 + 2)].attributes) == {"tenant_id": "acme", "i": 4_999}


# --- write_otlp_json ---------------------------------------------------------


def test_write_otlp_json_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "traces.json"
    records = _trace()

    written = write_otlp_json(target, records, service_version="0.7.0")

    assert written == len(records)
    text = target.read_text(encoding="utf-8")
    assert "\n" not in text and ", " not in text  # compact
    doc = json.loads(text)
    assert doc == spans_to_otlp(records, service_version="0.7.0")
    assert len(_only_spans(_parse(doc))) == len(records)
    assert [p.name for p in tmp_path.iterdir()] == ["traces.json"]


def test_write_otlp_json_writes_utf8_and_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "traces.json"
    target.write_text("old", encoding="utf-8")
    record = _record(attributes=(("note", "Prüfung ✓"),))

    assert write_otlp_json(str(target), [record]) == 1

    raw = target.read_bytes()
    assert "Prüfung ✓".encode() in raw
    assert _json_spans(json.loads(raw))[0]["attributes"][0]["value"] == {
        "stringValue": "Prüfung ✓"
    }
    assert [p.name for p in tmp_path.iterdir()] == ["traces.json"]


def test_write_otlp_json_counts_zero_spans(tmp_path: Path) -> None:
    target = tmp_path / "empty.json"

    assert write_otlp_json(target, iter(())) == 0
    assert _json_spans(json.loads(target.read_text(encoding="utf-8"))) == []


def test_failed_write_leaves_no_temp_file_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "traces.json"
    target.write_text("previous export", encoding="utf-8")
    calls: list[object] = []

    def failing_dump(obj: object, fp: Any, **kwargs: object) -> None:
        calls.append(obj)
        fp.write('{"resourceSpans": [')  # a partial document reaches the temp file
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(json, "dump", failing_dump)

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_otlp_json(target, _trace())

    assert len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["traces.json"]
    assert target.read_text(encoding="utf-8") == "previous export"


def test_write_otlp_json_rejects_bad_options_before_touching_disk(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"service\.name"):
        write_otlp_json(tmp_path / "t.json", _trace(), resource_attributes={"service.name": "x"})

    assert list(tmp_path.iterdir()) == []


# --- OtlpHttpSender ----------------------------------------------------------


class _Receiver(RecordingServer):
    """A loopback OTLP/HTTP stand-in that records requests."""

    def __init__(self) -> None:
        super().__init__()
        self.body = b"{}"

    @property
    def url(self) -> str:
        return self.base_url + "/v1/traces"


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    with serving(_Receiver()) as server:
        yield server


def test_send_posts_binary_protobuf_by_default(receiver: _Receiver) -> None:
    receiver.content_type = "application/x-protobuf"
    receiver.body = ExportTraceServiceResponse().SerializeToString()
    sender = OtlpHttpSender(receiver.url, headers={"Authorization": "Bearer t0ken"})
    records = _trace()

    assert sender.send(records, service_version="0.7.0") is True

    assert (sender.protocol, sender.failures) == ("http/protobuf", 0)
    (_, path, headers, body), = receiver.requests
    assert path == "/v1/traces"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert "Content-Encoding" not in headers
    assert headers["Authorization"] == "Bearer t0ken"
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    assert message == build_trace_request(records, service_version="0.7.0")
    spans = _only_spans(message)
    assert spans[_id(GENERATION_ID)].parent_span_id == _id(NODE_A_ID)
    assert spans[_id(GENERATION_ID)].kind == Span.SPAN_KIND_CLIENT
    assert _attrs(spans[_id(GENERATION_ID)].attributes)["llm.token_count.total"] == 876


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_send_gzip_compresses_the_body(receiver: _Receiver, protocol: str) -> None:
    sender = OtlpHttpSender(receiver.url, protocol=protocol, compression="gzip")
    records = _trace()

    assert sender.send(records) is True

    (_, _, headers, body), = receiver.requests
    assert headers["Content-Encoding"] == "gzip"
    raw = gzip.decompress(body)
    message = ExportTraceServiceRequest()
    if protocol == "http/protobuf":
        message.ParseFromString(raw)
    else:
        message = _parse(json.loads(raw))
    assert message == build_trace_request(records)
    assert len(body) < len(raw)


def test_json_and_protobuf_encode_the_same_message() -> None:
    records = _trace()
    proto_body, proto_count = OtlpHttpSender("http://127.0.0.1:1/v1/traces").encode(records)
    json_body, json_count = OtlpHttpSender(
        "http://127.0.0.1:1/v1/traces", protocol="http/json").encode(records)

    from_proto = ExportTraceServiceRequest()
    from_proto.ParseFromString(proto_body)
    assert from_proto == _parse(json.loads(json_body))
    assert proto_count == json_count == len(records)


def test_send_posts_valid_otlp_json(receiver: _Receiver) -> None:
    sender = OtlpHttpSender(receiver.url, protocol="http/json",
                            headers={"Authorization": "Bearer t0ken"})
    records = _trace()

    assert sender.send(records, service_version="0.7.0") is True

    assert sender.failures == 0
    (_, path, headers, body), = receiver.requests
    assert path == "/v1/traces"
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer t0ken"
    doc = json.loads(body.decode("utf-8"))
    assert doc == spans_to_otlp(records, service_version="0.7.0")
    spans = _only_spans(_parse(doc))
    assert spans[_id(GENERATION_ID)].parent_span_id == _id(NODE_A_ID)
    assert spans[_id(GENERATION_ID)].kind == Span.SPAN_KIND_CLIENT


@pytest.mark.parametrize(("protocol", "content_type"),
                         [("http/protobuf", "application/x-protobuf"),
                          ("http/json", "application/json")])
def test_send_always_sets_the_protocols_content_type(
    receiver: _Receiver, protocol: str, content_type: str
) -> None:
    sender = OtlpHttpSender(receiver.url, protocol=protocol,
                            headers={"content-type": "text/plain", "Content-Encoding": "br"})

    assert sender.send(_trace()) is True

    (_, _, headers, _), = receiver.requests
    content_types = [v for k, v in headers.items() if k.lower() == "content-type"]
    assert content_types == [content_type]
    assert not [k for k in headers if k.lower() == "content-encoding"]


def test_send_server_error_is_false_counted_and_logged(receiver: _Receiver) -> None:
    receiver.status = 500
    receiver.body = b'{"code": 13, "message": "collector broke"}'
    sender = OtlpHttpSender(receiver.url, headers={"Authorization": "Bearer secret"})

    with structlog.testing.capture_logs() as logs:
        assert sender.send(_trace()) is False

    assert sender.failures == 1
    assert len(receiver.requests) == 1
    (entry,) = [e for e in logs if e["event"] == "otlp_export_failed"]
    assert entry["log_level"] == "warning"
    assert entry["status"] == 500
    assert entry["spans"] == 6
    assert "collector broke" in entry["detail"]
    assert "secret" not in repr(logs)


def test_send_redirect_is_a_failure(receiver: _Receiver) -> None:
    receiver.status = 307
    receiver.extra_headers = {"Location": receiver.url.replace("/v1/traces", "/elsewhere")}
    sender = OtlpHttpSender(receiver.url)

    assert sender.send(_trace()) is False

    assert sender.failures == 1
    assert [request.path for request in receiver.requests] == ["/v1/traces"]  # not followed


def test_send_partial_success_is_true_and_counted(receiver: _Receiver) -> None:
    receiver.body = (
        b'{"partialSuccess": {"rejectedSpans": "2", "errorMessage": "too old"}}'
    )
    sender = OtlpHttpSender(receiver.url)

    with structlog.testing.capture_logs() as logs:
        assert sender.send(_trace()) is True

    assert sender.failures == 0
    assert sender.rejected_spans == 2
    (entry,) = [e for e in logs if e["event"] == "otlp_export_partially_rejected"]
    assert (entry["rejected_spans"], entry["error"]) == (2, "too old")


def test_send_partial_success_in_a_protobuf_answer_is_counted(receiver: _Receiver) -> None:
    answer = ExportTraceServiceResponse()
    answer.partial_success.rejected_spans = 3
    answer.partial_success.error_message = "bad span"
    receiver.content_type = "application/x-protobuf"
    receiver.body = answer.SerializeToString()
    sender = OtlpHttpSender(receiver.url)

    with structlog.testing.capture_logs() as logs:
        assert sender.send(_trace()) is True

    assert sender.rejected_spans == 3
    (entry,) = [e for e in logs if e["event"] == "otlp_export_partially_rejected"]
    assert (entry["rejected_spans"], entry["error"]) == (3, "bad span")


def test_send_ignores_an_answer_body_that_is_not_otlp(receiver: _Receiver) -> None:
    receiver.content_type = "text/plain"
    receiver.body = b"\xff\xfenot protobuf"
    sender = OtlpHttpSender(receiver.url)

    assert sender.send(_trace()) is True
    assert (sender.rejected_spans, sender.failures) == (0, 0)


def test_send_failures_accumulate(receiver: _Receiver) -> None:
    receiver.status = 503
    sender = OtlpHttpSender(receiver.url, max_retries=0)

    results = [sender.send(_trace()) for _ in range(3)]

    assert results == [False, False, False]
    assert sender.failures == 3


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_send_to_unreachable_port_is_false_without_raising() -> None:
    waits: list[float] = []
    sender = OtlpHttpSender(f"http://127.0.0.1:{_unused_port()}/v1/traces", timeout=2.0,
                            sleep=waits.append)

    with structlog.testing.capture_logs() as logs:
        assert sender.send(_trace()) is False

    assert sender.failures == 1
    assert (sender.retries, waits) == (3, [0.5, 1.0, 2.0])  # a network error is retried
    (entry,) = [e for e in logs if e["event"] == "otlp_export_failed"]
    assert (entry["status"], entry["attempts"]) == (None, 4)


def test_send_timeout_is_false_without_raising() -> None:
    # A socket that listens but never accepts: the kernel completes the
    # handshake, the request is buffered, and no answer ever comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        sender = OtlpHttpSender(f"http://127.0.0.1:{port}/v1/traces", timeout=0.2,
                                max_retries=0)

        assert sender.send(_trace()) is False

    assert sender.failures == 1


class _Answers(_Receiver):
    """A receiver that answers with the given statuses in turn, then 200."""

    def __init__(self, *statuses: int, retry_after: str | None = None) -> None:
        super().__init__()
        self.statuses = list(statuses)
        if retry_after is not None:
            self.extra_headers = {"Retry-After": retry_after}

    def answer(self, request: RecordedRequest) -> tuple[int, bytes]:
        self.status = self.statuses.pop(0) if self.statuses else 200
        return super().answer(request)


@pytest.fixture
def answers() -> Iterator[Callable[..., _Answers]]:
    with ExitStack() as stack:
        def start(*statuses: int, retry_after: str | None = None) -> _Answers:
            return stack.enter_context(serving(_Answers(*statuses, retry_after=retry_after)))

        yield start


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_a_retryable_answer_is_retried_with_exponential_backoff(
    answers: Callable[..., _Answers], status: int
) -> None:
    receiver = answers(status, status)
    waits: list[float] = []
    sender = OtlpHttpSender(receiver.url, sleep=waits.append)

    assert sender.send(_trace()) is True

    assert len(receiver.requests) == 3
    assert (sender.retries, sender.failures, waits) == (2, 0, [0.5, 1.0])
    assert receiver.requests[0].body == receiver.requests[2].body  # the same body again


def test_retry_after_seconds_are_honoured_up_to_the_longest_backoff(
    answers: Callable[..., _Answers],
) -> None:
    receiver = answers(503, 503, retry_after="7")
    waits: list[float] = []
    sender = OtlpHttpSender(receiver.url, max_backoff=5.0, sleep=waits.append)

    assert sender.send(_trace()) is True
    assert waits == [5.0, 5.0]

    receiver = answers(429, retry_after="0.25")
    waits.clear()
    assert OtlpHttpSender(receiver.url, sleep=waits.append).send(_trace()) is True
    assert waits == [0.25]


@pytest.mark.parametrize("status", [400, 401, 404, 413, 500])
def test_a_non_retryable_answer_fails_at_once(
    answers: Callable[..., _Answers], status: int
) -> None:
    receiver = answers(status)
    waits: list[float] = []
    sender = OtlpHttpSender(receiver.url, sleep=waits.append)

    assert sender.send(_trace()) is False
    assert (len(receiver.requests), sender.retries, sender.failures, waits) == (1, 0, 1, [])


def test_retries_stop_at_max_retries_and_at_the_retry_window(
    answers: Callable[..., _Answers],
) -> None:
    receiver = answers(*[503] * 10)
    waits: list[float] = []
    sender = OtlpHttpSender(receiver.url, max_retries=2, sleep=waits.append)
    with structlog.testing.capture_logs() as logs:
        assert sender.send(_trace()) is False
    assert (len(receiver.requests), sender.retries, sender.failures) == (3, 2, 1)
    (entry,) = [e for e in logs if e["event"] == "otlp_export_failed"]
    assert (entry["status"], entry["attempts"]) == (503, 3)

    # A window shorter than the first backoff: no retry would start in time.
    receiver = answers(503)
    sender = OtlpHttpSender(receiver.url, retry_window=0.1, sleep=waits.append)
    assert sender.send(_trace()) is False
    assert (len(receiver.requests), sender.retries) == (1, 0)


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_retries", -1), ("max_retries", 1.5), ("backoff", -0.1), ("max_backoff", math.inf),
     ("retry_window", math.nan)],
)
def test_sender_refuses_bad_retry_settings(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        OtlpHttpSender("http://127.0.0.1:4318/v1/traces", **{option: value})


@pytest.mark.parametrize(
    "endpoint",
    [
        "ftp://127.0.0.1:4318/v1/traces",
        "file:///tmp/traces.json",
        "grpc://127.0.0.1:4317",
        "127.0.0.1:4318/v1/traces",
        "http:///v1/traces",
        "http://user:pass@127.0.0.1:4318/v1/traces",
    ],
)
def test_sender_refuses_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        OtlpHttpSender(endpoint)


@pytest.mark.parametrize("timeout", [0.0, -1.0, math.nan, math.inf])
def test_sender_refuses_bad_timeouts(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        OtlpHttpSender("http://127.0.0.1:4318/v1/traces", timeout=timeout)


def test_sender_refuses_header_injection() -> None:
    with pytest.raises(ValueError, match="line break"):
        OtlpHttpSender("http://127.0.0.1:4318/v1/traces", headers={"X-A": "1\r\nX-B: 2"})
    with pytest.raises(ValueError, match="not a valid HTTP header name"):
        OtlpHttpSender("http://127.0.0.1:4318/v1/traces", headers={"X-A: 1\r\nX-B": "2"})


@pytest.mark.parametrize(("option", "value"),
                         [("protocol", "grpc"), ("protocol", "http/protobuf "),
                          ("compression", "zstd")])
def test_sender_refuses_unknown_protocols_and_compressions(option: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{option} must be one of"):
        OtlpHttpSender("http://127.0.0.1:4318/v1/traces", **{option: value})


def test_https_endpoint_is_accepted() -> None:
    sender = OtlpHttpSender("https://otel.example.com/v1/traces")

    assert sender.endpoint == "https://otel.example.com/v1/traces"
    assert sender.failures == 0


# --- OtlpConfig: settings and OTEL_* variables ---------------------------------


def test_no_endpoint_anywhere_means_no_exporter() -> None:
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "a=b", "OTEL_SERVICE_NAME": "x"}

    assert OtlpConfig.resolve(ObservabilitySettings(), env) is None


def test_defaults_with_an_explicit_endpoint() -> None:
    config = OtlpConfig.resolve(
        ObservabilitySettings(otlp_endpoint="http://127.0.0.1:4318/v1/traces"), {})

    assert config is not None
    assert (config.endpoint, config.protocol, config.compression, config.timeout) == (
        "http://127.0.0.1:4318/v1/traces", "http/protobuf", "none", 5.0)
    assert dict(config.headers) == {}
    assert config.resource["service_name"] == "ai-risk-engine"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
         "http://collector:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"},
         "http://collector:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://gw.example/otlp"},
         "https://gw.example/otlp/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/custom"},
         "http://collector:4318/custom"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318",
          "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/v1/traces"},
         "http://traces:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://b:1"},
         "http://b:1/v1/traces"),  # an empty variable is unset
    ],
)
def test_endpoint_from_the_environment(env: dict[str, str], expected: str) -> None:
    config = OtlpConfig.resolve(ObservabilitySettings(), env)

    assert config is not None
    assert config.endpoint == expected


def test_explicit_settings_win_over_the_environment() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Basic%20env,X-Tenant=acme",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_SERVICE_NAME": "env-service",
    }
    settings = ObservabilitySettings(
        otlp_endpoint="http://explicit:4318/v1/traces", otlp_protocol="http/protobuf",
        otlp_compression="none", otlp_headers={"authorization": "Bearer explicit"},
        otlp_timeout_seconds=1.0, service_name="explicit-service",
    )

    config = OtlpConfig.resolve(settings, env)

    assert config is not None
    assert (config.endpoint, config.protocol, config.compression, config.timeout) == (
        "http://explicit:4318/v1/traces", "http/protobuf", "none", 1.0)
    assert dict(config.headers) == {"X-Tenant": "acme", "authorization": "Bearer explicit"}
    assert config.resource["service_name"] == "explicit-service"


def test_environment_fills_what_the_settings_leave_unset() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "GZIP",
        "OTEL_EXPORTER_OTLP_HEADERS": " Authorization = Basic%20dXNlcjpwdw%3D%3D , x-a=1=2 ,",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_SERVICE_NAME": "env-service",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=staging,team=risk%20ops",
    }

    config = OtlpConfig.resolve(ObservabilitySettings(), env)

    assert config is not None
    assert (config.protocol, config.compression, config.timeout) == ("http/json", "gzip", 2.5)
    assert dict(config.headers) == {"Authorization": "Basic dXNlcjpwdw==", "x-a": "1=2"}
    assert config.resource["service_name"] == "env-service"
    assert dict(config.resource["resource_attributes"] or {}) == {
        "deployment.environment.name": "staging", "team": "risk ops"}


def test_traces_specific_variables_win_over_the_general_ones() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=general",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "b=traces",
    }

    config = OtlpConfig.resolve(ObservabilitySettings(), env)

    assert config is not None
    assert config.protocol == "http/protobuf"
    assert dict(config.headers) == {"b": "traces"}


def test_headers_never_appear_in_the_configs_repr() -> None:
    config = OtlpConfig.resolve(ObservabilitySettings(), {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20s3cr3t",
    })

    assert config is not None
    assert "s3cr3t" not in repr(config)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL must be one of"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/xml",
         "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL must be one of"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd",
         "OTEL_EXPORTER_OTLP_COMPRESSION must be one of 'gzip', 'none'"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization", "entry 1 is not KEY=VALUE"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,=s3cr3t", "entry 2 is not KEY=VALUE"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon", "milliseconds"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-5", "milliseconds"),
    ],
)
def test_malformed_variables_are_clear_errors(variable: str, value: str, message: str) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318", variable: value}

    with pytest.raises(ValueError, match=message) as caught:
        OtlpConfig.resolve(ObservabilitySettings(), env)
    assert "s3cr3t" not in str(caught.value)


def test_malformed_resource_attributes_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="OTEL_RESOURCE_ATTRIBUTES: entry 2"):
        resolve_resource(ObservabilitySettings(), {"OTEL_RESOURCE_ATTRIBUTES": "a=1,b"})


def test_resource_service_name_and_version_from_resource_attributes() -> None:
    env = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,service.version=9.9,k=v"}

    resource = resolve_resource(ObservabilitySettings(), env)
    assert (resource["service_name"], resource["service_version"]) == ("from-attrs", "9.9")
    assert dict(resource["resource_attributes"] or {}) == {"k": "v"}

    # OTEL_SERVICE_NAME wins over service.name in OTEL_RESOURCE_ATTRIBUTES ...
    resource = resolve_resource(ObservabilitySettings(), {**env, "OTEL_SERVICE_NAME": "svc"})
    assert resource["service_name"] == "svc"
    # ... and explicit settings win over both; their attributes over the variable's.
    resource = resolve_resource(ObservabilitySettings(
        service_name="mine", service_version="1.0", otlp_resource_attributes={"k": "mine"},
    ), env)
    assert (resource["service_name"], resource["service_version"]) == ("mine", "1.0")
    assert dict(resource["resource_attributes"] or {}) == {"k": "mine"}


def test_settings_refuse_service_keys_in_resource_attributes() -> None:
    with pytest.raises(ValueError, match="service_name/service_version"):
        ObservabilitySettings(otlp_resource_attributes={"service.name": "x"})


def test_resolved_resource_is_accepted_by_the_encoder() -> None:
    env = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=a,deployment.environment.name=prod"}

    request = build_trace_request(_trace(), **resolve_resource(ObservabilitySettings(), env))

    assert _attrs(request.resource_spans[0].resource.attributes) == {
        "service.name": "a", "service.version": "0.7.0",
        "deployment.environment.name": "prod",
    }
