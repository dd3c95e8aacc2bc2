"""Tests for :mod:`collectors.records`: one named, immutable type per kind of record.

Records are ``NamedTuple`` objects read by field name; mappings travel as
``(key, value)`` pairs, so a record shares nothing mutable with its producer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from app.observability import Observability
from collectors.records import (
    AuditRecord,
    Batch,
    CostRecord,
    MetricRecord,
    SpanEvent,
    SpanRecord,
    ns_to_datetime,
)

T0 = 1_700_000_000_123_456_789  # ns since the epoch


def _span(**overrides: object) -> SpanRecord:
    fields: dict[str, object] = {
        "trace_id": 0xABC, "span_id": 0x12, "parent_span_id": 0, "name": "n", "kind": "node",
        "start_ns": T0, "end_ns": T0 + 1_500_000_000, "status": "ok", "error_type": None,
        "error_message": None, "attributes": (("tenant_id", "t1"), ("n", 3)),
    }
    fields.update(overrides)
    return SpanRecord(**fields)  # type: ignore[arg-type]


def _workflow_like_run(obs: Observability, request: int) -> None:
    tracing = obs.tracing
    root = tracing.start_span_sync(
        "risk_assessment", kind="workflow", tenant_id="t1", correlation_id=f"c{request}",
        request_id=f"r{request}", batch=True,
    )
    for node in ("validate_input", "risk_scoring", "decide"):
        span = tracing.start_span_sync(node, kind="node")
        tracing.end_span_sync(span)
    obs.langfuse.log_generation_sync(
        tenant_id="t1", model_version="risk-llm-v2", prompt_version="risk_scoring/v3",
        input_tokens=10, output_tokens=5, latency=0.01,
    )
    root.set_attribute("decision", "approve")
    tracing.end_span_sync(root)


def test_read_spans_are_span_records_with_paired_attributes(obs: Observability) -> None:
    _workflow_like_run(obs, 1)
    assert obs.flush(5.0)
    spans = {span.name: span for span in obs.tracing.finished_spans()}
    assert len(spans) == 5
    assert all(type(span) is SpanRecord for span in spans.values())
    assert spans["risk_assessment"].attributes == (
        ("tenant_id", "t1"), ("correlation_id", "c1"), ("request_id", "r1"),
        ("decision", "approve"),
    )
    assert spans["decide"].attributes == (
        ("tenant_id", "t1"), ("correlation_id", "c1"), ("request_id", "r1"),
    )
    assert spans["decide"].attrs["tenant_id"] == "t1"
    root = spans["risk_assessment"]
    assert spans["decide"].parent_span_id == root.span_id
    assert spans["decide"].trace_id == root.trace_id


def test_span_record_views() -> None:
    span = _span(parent_span_id=0x34)
    assert span.trace_id_hex == "0" * 29 + "abc"
    assert span.span_id_hex == "0000000000000012"
    assert span.parent_span_id_hex == "0000000000000034"
    assert _span().parent_span_id_hex is None  # a root span
    assert span.duration_ns == 1_500_000_000
    assert span.duration_seconds == 1.5
    assert span.start_time == ns_to_datetime(T0)
    assert span.start_time.tzinfo is UTC and span.end_time.tzinfo is UTC
    assert span.end_time - span.start_time == (
        datetime.fromtimestamp(1.5, UTC) - datetime.fromtimestamp(0, UTC)
    )
    assert span.events == () and span.remote_parent is False  # defaults


def test_records_are_immutable_and_their_mappings_read_only() -> None:
    span = _span()
    with pytest.raises(AttributeError):
        span.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        span.attrs["tenant_id"] = "t2"  # type: ignore[index]
    assert span.attrs == {"tenant_id": "t1", "n": 3}
    audit = AuditRecord("decision_made", T0, (("tenant_id", "t1"), ("score", 0.5)))
    with pytest.raises(TypeError):
        audit.data["tenant_id"] = "t2"  # type: ignore[index]
    assert dict(audit.data) == {"tenant_id": "t1", "score": 0.5}
    assert audit.time == ns_to_datetime(T0)
    record = MetricRecord("request_count", (("tenant_id", "t1"),), 1)
    with pytest.raises(AttributeError):
        record.value = 2  # type: ignore[misc]


def test_records_are_read_by_field_name() -> None:
    cost = CostRecord(
        event_id="gen-1", tenant_id="t1", request_id=None, model_version="m",
        prompt_version="p/v1", input_tokens=10, output_tokens=5, cost=Decimal("0.25"),
        priced=True, time_ns=T0,
    )
    assert (cost.event_id, cost.prompt_version, cost.cost) == ("gen-1", "p/v1", Decimal("0.25"))
    assert cost.time == ns_to_datetime(T0) and cost.time.tzinfo is UTC
    event = SpanEvent("exception", T0)
    assert event.attributes == ()
    assert SpanRecord._fields[:3] == ("trace_id", "span_id", "parent_span_id")
    assert MetricRecord._fields == ("metric", "labels", "value")


def test_a_batch_carries_its_records_in_order() -> None:
    records = tuple(MetricRecord("request_count", (("tenant_id", "t1"),), i) for i in range(3))
    batch = Batch(records)
    assert batch.records == records
    assert [r.value for r in batch.records] == [0, 1, 2]


def test_metric_records_of_one_child_share_its_validated_label_tuple() -> None:
    obs = Observability(start=False)
    try:
        child = obs.metrics.counter("request_count").labels(tenant_id="t1")
        first, second = child.record(1), child.record(2)
        assert type(first) is MetricRecord
        assert first.labels == (("tenant_id", "t1"),)
        assert first.labels is second.labels is child.labels  # validated and built once
        assert obs.metrics.counter("request_count").labels(tenant_id="t1") is child
    finally:
        obs.close()
