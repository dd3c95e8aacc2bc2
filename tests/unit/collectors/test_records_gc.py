"""Records are shaped for CPython's garbage collector (see ``collectors.records``).

Plain, shallow tuples are untracked by the cyclic GC once a collection finds
them alive, so the spans kept in the trace ring and the records waiting in a
queue are never promoted to the oldest generation (where, as ``NamedTuple``
objects, they used to trigger full collections).
"""

from __future__ import annotations

import gc

from app.observability import Observability
from collectors.records import SpanRecord, as_span_record, flat_attributes, paired_attributes


def _workflow_like_run(obs: Observability, request: int) -> None:
    root = obs.tracing.start_span_sync(
        "risk_assessment", kind="workflow", tenant_id="t1", correlation_id=f"c{request}",
        request_id=f"r{request}", batch=True,
    )
    for node in ("validate_input", "risk_scoring", "decide"):
        span = obs.tracing.start_child_span(node, "node")
        obs.tracing.finish(span, None, None, "node_execution_latency",
                           (("node", node), ("status", "ok"), ("tenant_id", "t1")))
    obs.langfuse.log_generation_sync(
        tenant_id="t1", model_version="risk-llm-v2", prompt_version="risk_scoring/v3",
        input_tokens=10, output_tokens=5, latency=0.01,
    )
    root.set_attribute("decision", "approve")
    obs.tracing.end_span_sync(root)


def test_stored_spans_are_untracked_by_the_garbage_collector(obs: Observability) -> None:
    for request in range(20):
        _workflow_like_run(obs, request)
    assert obs.flush(5.0)
    gc.collect()
    gc.collect()  # one nesting level (record -> flat attributes) per collection at most
    tracked = obs.pipeline.collectors["trace"].query(
        lambda store: [gc.is_tracked(span) for span in store.spans]
    )
    assert len(tracked) == 20 * 5
    assert not any(tracked)
    # The premise: the NamedTuple view of the same span would stay tracked.
    view = obs.tracing.finished_spans()[0]
    gc.collect()
    assert type(view) is SpanRecord and gc.is_tracked(view)


def test_read_spans_have_paired_attributes(obs: Observability) -> None:
    _workflow_like_run(obs, 1)
    assert obs.flush(5.0)
    spans = {span.name: span for span in obs.tracing.finished_spans()}
    assert spans["risk_assessment"].attributes == (
        ("tenant_id", "t1"), ("correlation_id", "c1"), ("request_id", "r1"),
        ("decision", "approve"),
    )
    assert spans["decide"].attributes == (
        ("tenant_id", "t1"), ("correlation_id", "c1"), ("request_id", "r1"),
    )
    assert spans["decide"].attrs["tenant_id"] == "t1"


def test_flat_and_paired_attributes_round_trip() -> None:
    pairs = (("a", 1), ("b", "x"), ("c", True))
    flat = flat_attributes(pairs)
    assert flat == ("a", 1, "b", "x", "c", True)
    assert paired_attributes(flat) == pairs
    assert paired_attributes(pairs) is pairs
    assert paired_attributes(()) == ()
    record = (1, 2, 0, "n", "node", 10, 20, "ok", None, None, flat, (), False)
    assert as_span_record(record).attributes == pairs


def test_metric_records_share_the_validated_label_tuple() -> None:
    obs = Observability(start=False)
    try:
        obs.metrics.increment("request_count", tenant_id="t1")
        obs.metrics.increment("request_count", tenant_id="t1")
        queued = list(obs.pipeline.collectors["metrics"]._queue._queue)
        assert len(queued) == 2 and type(queued[0]) is tuple
        assert queued[0][1] == (("tenant_id", "t1"),)
        assert queued[0][1] is queued[1][1]  # one label tuple, built once
    finally:
        obs.close()
