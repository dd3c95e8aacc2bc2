"""Tests for :mod:`app.observability.tracing`: spans, W3C ids and context propagation.

Finished spans are read back from the trace collector (``finished_spans``),
which answers after every span the reading thread sent before the call.
Docstrings marked "Regression" describe defects found and fixed.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from app.errors import PolicyViolationError
from app.observability import Observability, Span, SpanContext
from app.observability.catalog import NO_NODE
from app.observability.tracing import START_CLAMPED_ATTRIBUTE, parse_traceparent
from app.observability.validation import TRUNCATION_MARKER
from collectors.outbox import RecordSink, RunOutbox
from collectors.records import SpanRecord

MakeObs = Callable[..., Observability]

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_MASK64 = (1 << 64) - 1
_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
_SPAN = "00f067aa0ba902b7"
#: The name of a generation span of ``risk-llm-v2`` (``{operation} {model}``).
GENERATION = "chat risk-llm-v2"


def _by_name(spans: tuple[SpanRecord, ...]) -> dict[str, SpanRecord]:
    return {span.name: span for span in spans}


def _counter(obs: Observability, metric: str, **labels: str) -> Any:
    for series in obs.metrics.export_metrics()[metric]["series"]:
        if series["labels"] == labels:
            return series["value"]
    return None


# --- W3C ids and traceparent ---------------------------------------------------


def test_trace_and_span_ids_are_w3c_lowercase_hex(obs: Observability) -> None:
    for _ in range(50):
        with obs.tracing.span("workflow", kind="workflow") as root, obs.tracing.span("node"):
            pass
        assert _HEX32.match(root.trace_id_hex)
        assert _HEX16.match(root.span_id_hex)
        assert root.trace_id != 0 and root.span_id != 0

    spans = obs.tracing.finished_spans()
    assert len(spans) == 100
    for span in spans:
        assert _HEX32.match(span.trace_id_hex)
        assert _HEX16.match(span.span_id_hex)
        assert span.parent_span_id_hex is None or _HEX16.match(span.parent_span_id_hex)
    assert len({span.span_id for span in spans}) == 100
    assert len({span.trace_id for span in spans}) == 50


@pytest.mark.asyncio
async def test_trace_id_created_for_a_root_span(obs: Observability) -> None:
    span = await obs.tracing.start_span("workflow", tenant_id="t1", correlation_id="c1")
    assert obs.tracing.current_span() is span
    record = await obs.tracing.end_span(span)

    assert obs.tracing.current_span() is None
    assert record.parent_span_id == 0 and record.parent_span_id_hex is None
    assert record.trace_id == span.trace_id
    (stored,) = obs.tracing.finished_spans(trace_id=span.trace_id_hex)
    assert stored == record
    assert obs.tracing.finished_spans(trace_id=span.trace_id) == (record,)


def test_traceparent_inject_extract_round_trip(obs: Observability) -> None:
    tracing = obs.tracing
    assert tracing.inject() == {}
    with tracing.span("client call") as span:
        carrier = tracing.inject({"other": "kept"})

    assert carrier == {"other": "kept", "traceparent": f"00-{span.trace_id_hex}-"
                                                      f"{span.span_id_hex}-01"}
    remote = tracing.extract({"TraceParent": carrier["traceparent"]})
    assert remote == SpanContext(span.trace_id, span.span_id, True, remote=True)

    token = tracing.attach(remote)
    try:
        assert tracing.current_context() == remote
        assert tracing.current_span() is None
        assert tracing.inject()["traceparent"] == carrier["traceparent"]
        with tracing.span("server handler", kind="workflow") as server:
            pass
    finally:
        tracing.detach(token)

    assert tracing.current_context() is None
    record = _by_name(tracing.finished_spans())["server handler"]
    assert record.trace_id == span.trace_id
    assert record.parent_span_id == span.span_id
    assert record.remote_parent is True
    assert server.trace_id_hex == span.trace_id_hex


def test_extract_from_a_foreign_traceparent(obs: Observability) -> None:
    context = obs.tracing.extract({"traceparent": f"00-{_TRACE}-{_SPAN}-01"})

    assert context is not None
    assert context.trace_id_hex == _TRACE and context.span_id_hex == _SPAN
    assert context.sampled and context.remote
    assert context.traceparent == f"00-{_TRACE}-{_SPAN}-01"


@pytest.mark.parametrize(
    "value",
    [
        f"00-{'0' * 32}-{_SPAN}-01",  # all-zero trace id
        f"00-{_TRACE}-{'0' * 16}-01",  # all-zero span id
        f"ff-{_TRACE}-{_SPAN}-01",  # version ff is invalid
        f"00-{_TRACE.upper()}-{_SPAN}-01",  # uppercase hex
        f"00-{_TRACE}-{_SPAN.upper()}-01",
        f"0A-{_TRACE}-{_SPAN}-01",
        f"00-{_TRACE}-{_SPAN}-0A",
        f"00-{_TRACE[:-1]}-{_SPAN}-01",  # wrong lengths
        f"00-{_TRACE}0-{_SPAN}-01",
        f"00-{_TRACE}-{_SPAN[:-1]}-01",
        f"00-{_TRACE}-{_SPAN}0-01",
        f"0-{_TRACE}-{_SPAN}-01",
        f"00-{_TRACE}-{_SPAN}-1",
        f"00-{_TRACE}-{_SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{_TRACE[:-1]}g-{_SPAN}-01",  # not hex
        f"00_{_TRACE}_{_SPAN}_01",
        f"00-{_TRACE}-{_SPAN}",
        "",
        "garbage",
    ],
)
def test_invalid_traceparent_values_are_rejected(obs: Observability, value: str) -> None:
    assert parse_traceparent(value) is None
    assert obs.tracing.extract({"traceparent": value}) is None


def test_traceparent_parsing_edge_cases(obs: Observability) -> None:
    future = parse_traceparent(f"cc-{_TRACE}-{_SPAN}-01-what-the-future-holds")
    assert future is not None and future.sampled  # higher versions may add fields
    unsampled = parse_traceparent(f"00-{_TRACE}-{_SPAN}-00")
    assert unsampled is not None and not unsampled.sampled
    assert parse_traceparent(None) is None  # type: ignore[arg-type]
    assert obs.tracing.extract({"other": "x"}) is None


# --- nesting, metadata, latency -------------------------------------------------


def test_span_nesting_is_correct(obs: Observability) -> None:
    tracing = obs.tracing
    with tracing.span("workflow", kind="workflow", tenant_id="t1", correlation_id="c1",
                      request_id="r1") as root:
        with tracing.span("validate_input", kind="node") as first:
            assert tracing.current_span() is first
        assert tracing.current_span() is root
        with tracing.span("risk_scoring", kind="node") as node:
            obs.langfuse.log_generation_sync(
                tenant_id="t1", model_version="risk-llm-v2", prompt_version="p1",
                input_tokens=10, output_tokens=5, latency=0.01,
            )
            with tracing.span("post", kind="internal") as inner:
                pass
    assert tracing.current_span() is None

    spans = _by_name(tracing.finished_spans())
    assert set(spans) == {"workflow", "validate_input", "risk_scoring", GENERATION, "post"}
    assert {span.trace_id for span in spans.values()} == {root.trace_id}
    assert spans["workflow"].parent_span_id == 0
    assert spans["validate_input"].parent_span_id == root.span_id
    assert spans["risk_scoring"].parent_span_id == root.span_id
    assert spans[GENERATION].parent_span_id == node.span_id
    assert spans["post"].parent_span_id == node.span_id
    assert spans["post"].span_id == inner.span_id
    assert spans["workflow"].kind == "workflow"
    assert spans["risk_scoring"].kind == "node"
    assert spans[GENERATION].kind == "generation"
    assert first.span_id != node.span_id


def test_metadata_is_attached_and_inherited(obs: Observability) -> None:
    tracing = obs.tracing
    with tracing.span("workflow", tenant_id="t1", correlation_id="c1", request_id="r1",
                      attributes={"channel": "web", "amount": 12.5}) as root:
        root.set_attribute("decision", "approve")
        root.set_attributes({"approval_required": False, "score": 3})
        root.add_event("checkpoint", step=2)
        with tracing.span("node", tenant_id="t2"):
            pass

    spans = _by_name(tracing.finished_spans())
    assert dict(spans["workflow"].attributes) == {
        "tenant_id": "t1", "correlation_id": "c1", "request_id": "r1", "channel": "web",
        "amount": 12.5, "decision": "approve", "approval_required": False, "score": 3,
    }
    (event,) = spans["workflow"].events
    assert event.name == "checkpoint" and event.attributes == (("step", 2),)
    node = spans["node"].attrs
    assert node["tenant_id"] == "t2"  # given explicitly: wins over the parent's
    assert node["correlation_id"] == "c1" and node["request_id"] == "r1"
    assert spans["workflow"].status == "ok"


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("", "x", ValueError),
        ("k", float("nan"), ValueError),
        ("k", float("inf"), ValueError),
        ("k", None, TypeError),
        ("k", [1], TypeError),
        ("k", b"x", TypeError),
    ],
)
def test_bad_attributes_are_refused(
    obs: Observability, key: str, value: Any, error: type[Exception]
) -> None:
    with obs.tracing.span("s") as span:
        with pytest.raises(error, match="attribute"):
            span.set_attribute(key, value)
        with pytest.raises(error, match="attribute"):
            obs.tracing.start_span_sync("t", attributes={key: value})
    assert obs.tracing.current_span() is None
    assert [s.name for s in obs.tracing.finished_spans()] == ["s"]


def test_latency_is_recorded(obs: Observability) -> None:
    before = time.perf_counter_ns()
    span = obs.tracing.start_span_sync("work")
    inner_start = time.perf_counter_ns()
    while time.perf_counter_ns() - inner_start < 2_000_000:  # 2 ms of work, no sleep
        pass
    inner = time.perf_counter_ns() - inner_start
    record = obs.tracing.end_span_sync(span)
    outer = time.perf_counter_ns() - before

    assert inner <= record.duration_ns <= outer
    assert record.duration_seconds == pytest.approx(record.duration_ns / 1e9)
    assert record.end_time >= record.start_time
    assert record.start_time.tzinfo is not None
    assert obs.tracing.finished_spans()[0].duration_ns == record.duration_ns


# --- propagation ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_propagation_across_await(obs: Observability) -> None:
    async def step() -> Span | None:
        await asyncio.sleep(0)
        return obs.tracing.current_span()

    async with obs.tracing.span("workflow") as root:
        assert await step() is root
        await asyncio.sleep(0)
        assert obs.tracing.current_span() is root


@pytest.mark.asyncio
async def test_propagation_into_create_task_children(obs: Observability) -> None:
    tracing = obs.tracing

    async def node(name: str) -> int:
        async with tracing.span(name, kind="node") as span:
            await asyncio.sleep(0)
            return span.span_id

    async with tracing.span("workflow", kind="workflow") as root:
        ids = await asyncio.gather(*(asyncio.create_task(node(f"n{i}")) for i in range(5)))
        assert tracing.current_span() is root  # the children's spans never leak back

    spans = _by_name(tracing.finished_spans())
    for index, span_id in enumerate(ids):
        child = spans[f"n{index}"]
        assert child.span_id == span_id
        assert child.parent_span_id == root.span_id
        assert child.trace_id == root.trace_id


@pytest.mark.asyncio
async def test_propagation_into_threads_via_to_thread(obs: Observability) -> None:
    tracing = obs.tracing

    def blocking_work() -> tuple[Span | None, int]:
        parent = tracing.current_span()
        with tracing.span("in-thread") as span:
            return parent, span.span_id

    async with tracing.span("workflow") as root:
        parent, child_id = await asyncio.to_thread(blocking_work)

    assert parent is root
    child = _by_name(tracing.finished_spans())["in-thread"]
    assert child.span_id == child_id and child.parent_span_id == root.span_id


def test_propagation_into_threads_via_copy_context(obs: Observability) -> None:
    tracing = obs.tracing
    seen: dict[str, Any] = {}

    def copied() -> None:
        seen["copied"] = tracing.current_span()
        with tracing.span("copied-thread"):
            pass

    def plain() -> None:
        seen["plain"] = tracing.current_span()

    with tracing.span("workflow") as root:
        context = contextvars.copy_context()
        with_context = threading.Thread(target=context.run, args=(copied,))
        without = threading.Thread(target=plain)
        with_context.start()
        without.start()
        with_context.join()
        without.join()

    assert seen["copied"] is root
    assert seen["plain"] is None  # a bare thread starts from an empty context
    child = _by_name(tracing.finished_spans())["copied-thread"]
    assert child.parent_span_id == root.span_id


# --- the with / async with forms and errors ------------------------------------------


class _CustomError(Exception):
    pass


def test_exception_in_with_block_marks_error_and_is_reraised_unchanged(
    obs: Observability,
) -> None:
    error = PolicyViolationError("limit exceeded", policy="max_amount")

    with pytest.raises(PolicyViolationError) as caught, obs.tracing.span("node"):
        raise error

    assert caught.value is error
    assert obs.tracing.current_span() is None
    (record,) = obs.tracing.finished_spans()
    assert record.status == "error"
    assert record.error_type == "app.errors.PolicyViolationError"
    assert record.error_message == "limit exceeded"
    (event,) = record.events
    assert event.name == "exception"
    assert dict(event.attributes)["exception.type"] == "app.errors.PolicyViolationError"


@pytest.mark.asyncio
async def test_exception_in_async_with_block(obs: Observability) -> None:
    with pytest.raises(ValueError, match="bad") as caught:
        async with obs.tracing.span("node") as span:
            raise ValueError("bad")

    assert caught.value.__traceback__ is not None
    (record,) = obs.tracing.finished_spans()
    assert record.span_id == span.span_id
    assert (record.status, record.error_type, record.error_message) == ("error", "ValueError",
                                                                        "bad")


def test_custom_exception_class_is_named_with_its_module(obs: Observability) -> None:
    with pytest.raises(_CustomError), obs.tracing.span("node"):
        raise _CustomError("x")

    (record,) = obs.tracing.finished_spans()
    assert record.error_type == f"{__name__}._CustomError"


def test_explicit_status_and_error_on_end(obs: Observability) -> None:
    tracing = obs.tracing
    ok = tracing.end_span_sync(tracing.start_span_sync("a"))
    unset = tracing.end_span_sync(tracing.start_span_sync("b"), status="unset")
    failed = tracing.end_span_sync(tracing.start_span_sync("c"), error=TimeoutError("slow"))
    forced = tracing.end_span_sync(tracing.start_span_sync("d"), status="ok",
                                   error=KeyError("k"))

    assert (ok.status, unset.status, failed.status, forced.status) == (
        "ok", "unset", "error", "ok")
    assert failed.error_type == "TimeoutError" and failed.error_message == "slow"
    assert forced.error_type == "KeyError"


def test_ending_twice_raises(obs: Observability) -> None:
    span = obs.tracing.start_span_sync("once")
    obs.tracing.end_span_sync(span)

    with pytest.raises(RuntimeError, match="already ended"):
        obs.tracing.end_span_sync(span)
    assert len(obs.tracing.finished_spans()) == 1
    with pytest.raises(TypeError, match="Span"):
        obs.tracing.end_span_sync("not a span")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_ending_twice_raises_async(obs: Observability) -> None:
    span = await obs.tracing.start_span("once")
    await obs.tracing.end_span(span)

    with pytest.raises(RuntimeError, match="already ended"):
        await obs.tracing.end_span(span)


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"kind": "nope"}, ValueError, "kind"),
        ({"tenant_id": ""}, ValueError, "tenant_id"),
        ({"tenant_id": 7}, TypeError, "tenant_id"),
        ({"correlation_id": b"c"}, TypeError, "correlation_id"),
        ({"request_id": ""}, ValueError, "request_id"),
    ],
)
def test_start_span_validates_arguments(
    obs: Observability, kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        obs.tracing.start_span_sync("s", **kwargs)
    with pytest.raises(ValueError, match="name"):
        obs.tracing.start_span_sync("")

    assert obs.tracing.current_span() is None
    assert obs.tracing.finished_spans() == ()


# --- sampling ---------------------------------------------------------------------


def test_sampling_is_deterministic_by_trace_id_and_parent_based(make_obs: MakeObs) -> None:
    ratio = 0.5
    bound = round(ratio * (1 << 64))
    first = make_obs(sample_ratio=ratio, id_seed=7)
    second = make_obs(sample_ratio=ratio, id_seed=7)
    decisions: list[tuple[int, bool]] = []
    for obs in (first, second):
        made = []
        for _ in range(200):
            with obs.tracing.span("root") as root, obs.tracing.span("child") as child:
                assert child.sampled is root.sampled  # parent-based
            made.append((root.trace_id, root.sampled))
        decisions.append(made)

    assert decisions[0] == decisions[1]  # same ids, same decisions
    for trace_id, sampled in decisions[0]:
        assert sampled is ((trace_id & _MASK64) < bound)
    kept = {trace_id for trace_id, sampled in decisions[0] if sampled}
    assert 60 < len(kept) < 140
    stored = first.tracing.finished_spans()
    assert {span.trace_id for span in stored} == kept
    assert len(stored) == 2 * len(kept)


@pytest.mark.parametrize(("ratio", "flags", "stored"), [(1.0, "00", 0), (0.0, "01", 2)])
def test_a_remote_parent_decides_sampling(
    make_obs: MakeObs, ratio: float, flags: str, stored: int
) -> None:
    obs = make_obs(sample_ratio=ratio)
    remote = obs.tracing.extract({"traceparent": f"00-{_TRACE}-{_SPAN}-{flags}"})
    assert remote is not None

    with obs.tracing.span("server", parent=remote) as server, obs.tracing.span("node"):
        assert server.sampled is (flags == "01")

    assert len(obs.tracing.finished_spans()) == stored


@pytest.mark.parametrize("batch", [False, True], ids=["plain", "batched"])
def test_a_sampled_out_trace_still_counts_metrics_costs_and_failures(
    make_obs: MakeObs, batch: bool
) -> None:
    obs = make_obs(sample_ratio=0.0)
    with obs.tracing.span("workflow", tenant_id="t1", request_id="r1", batch=batch) as root:
        assert not root.sampled
        obs.metrics.increment("request_count", tenant_id="t1")
        with obs.tracing.span("node", kind="node"):
            obs.langfuse.log_generation_sync(
                tenant_id="t1", model_version="risk-llm-v2", prompt_version="p1",
                input_tokens=1000, output_tokens=1000, latency=0.02,
            )
        obs.costs.add_cost(tenant_id="t1", model_version="risk-llm-v1", input_tokens=1000,
                           output_tokens=0)
        obs.failures.classify(TimeoutError("slow"), tenant_id="t1")
    assert obs.flush()

    assert obs.tracing.finished_spans() == ()
    assert obs.costs.get_tenant_cost("t1") == Decimal("0.0105")
    assert obs.costs.get_request_cost("r1") == Decimal("0.0090")  # the generation's
    assert _counter(obs, "request_count", tenant_id="t1") == 1
    assert _counter(obs, "model_usage_count", model_version="risk-llm-v2", tenant_id="t1") == 1
    assert _counter(obs, "token_usage", tenant_id="t1", model_version="risk-llm-v2",
                    direction="input") == 1000
    assert _counter(obs, "failure_count", category="INFRA_ERROR", tenant_id="t1",
                    node=NO_NODE) == 1
    assert len(obs.audit.events(event="failure.classified")) == 1


# --- batched runs -------------------------------------------------------------------


def test_batched_run_appears_only_after_the_root_ends_all_of_it_exactly(
    obs: Observability,
) -> None:
    tracing = obs.tracing
    root = tracing.start_span_sync("workflow", kind="workflow", tenant_id="t1",
                                   request_id="r1", batch=True)
    for index in range(3):
        with tracing.span(f"node-{index}", kind="node"):
            obs.langfuse.log_generation_sync(
                tenant_id="t1", model_version="risk-llm-v2", prompt_version="p1",
                input_tokens=100, output_tokens=10, latency=0.001,
            )
    assert obs.flush()

    assert tracing.finished_spans() == ()
    assert obs.costs.get_tenant_cost("t1") == 0
    assert obs.metrics.export_metrics()["token_usage"]["series"] == []
    assert obs.health().collectors["metrics"].applied == 0

    tracing.end_span_sync(root)
    assert obs.flush()

    spans = tracing.finished_spans()
    names = sorted(span.name for span in spans)
    assert names == [GENERATION] * 3 + ["node-0", "node-1", "node-2", "workflow"]
    assert len({span.span_id for span in spans}) == 7
    assert obs.costs.get_tenant_cost("t1") == 3 * Decimal("0.00036")
    assert obs.costs.get_request_cost("r1") == 3 * Decimal("0.00036")
    assert _counter(obs, "model_usage_count", model_version="risk-llm-v2", tenant_id="t1") == 3
    assert _counter(obs, "token_usage", tenant_id="t1", model_version="risk-llm-v2",
                    direction="input") == 300
    assert _counter(obs, "prompt_usage_count", prompt_version="p1", tenant_id="t1") == 3
    # Per generation: four usage counters and three GenAI histogram observations.
    health = obs.health().collectors
    assert (health["trace"].applied, health["cost"].applied, health["metrics"].applied) == (
        7, 3, 3 * 7)
    assert obs.health().dropped_total == 0


def test_a_large_batched_run_is_recorded_exactly(obs: Observability) -> None:
    tracing = obs.tracing
    with tracing.span("workflow", kind="workflow", tenant_id="t1", batch=True):
        for index in range(150):  # ~900 records: past the outbox limit, sent early
            with tracing.span(f"node-{index}", kind="node"):
                obs.langfuse.log_generation_sync(
                    tenant_id="t1", model_version="risk-llm-mini-v1", prompt_version="p1",
                    input_tokens=1, output_tokens=1, latency=0.0,
                )
    assert obs.flush()

    assert len(tracing.finished_spans()) == 301
    assert obs.costs.get_tenant_cost("t1") == 150 * Decimal("0.00000075")
    assert _counter(obs, "model_usage_count", model_version="risk-llm-mini-v1",
                    tenant_id="t1") == 150


@pytest.mark.asyncio
async def test_batched_run_collects_descendants_in_tasks_and_threads(
    obs: Observability,
) -> None:
    tracing = obs.tracing

    def in_thread() -> None:
        with tracing.span("thread-node", kind="node"):
            pass

    async def in_task() -> None:
        async with tracing.span("task-node", kind="node"):
            await asyncio.sleep(0)

    async with tracing.span("workflow", kind="workflow", batch=True):
        await asyncio.gather(asyncio.create_task(in_task()), asyncio.to_thread(in_thread))
        assert await obs.aflush()
        assert tracing.finished_spans() == ()
    assert await obs.aflush()

    assert sorted(s.name for s in tracing.finished_spans()) == [
        "task-node", "thread-node", "workflow"]


def test_batched_child_ending_after_the_root_is_recorded(obs: Observability) -> None:
    """A descendant that ends after its batched root must still be recorded.

    Regression: ``tracing.py`` ``end_span_sync`` appends the late child's record
    to the root's outbox, which was closed and sent when the root ended, and
    nothing sends it again: the span is lost and not counted as dropped.
    """
    tracing = obs.tracing
    root = tracing.start_span_sync("workflow", kind="workflow", batch=True)
    child = tracing.start_span_sync("straggler", kind="node")  # e.g. a task not awaited
    tracing.end_span_sync(root)
    tracing.end_span_sync(child)
    assert obs.flush()

    names = sorted(span.name for span in tracing.finished_spans())
    assert names == ["straggler", "workflow"]


# --- isolation ----------------------------------------------------------------------


def test_two_containers_spans_never_mix(make_obs: MakeObs) -> None:
    first, second = make_obs(id_seed=1), make_obs(id_seed=2)

    with first.tracing.span("a-root") as a_root:
        assert second.tracing.current_span() is None
        with second.tracing.span("b-root") as b_root:
            assert first.tracing.current_span() is a_root
            with first.tracing.span("a-child"):
                pass

    assert b_root.parent is None
    assert sorted(s.name for s in first.tracing.finished_spans()) == ["a-child", "a-root"]
    assert [s.name for s in second.tracing.finished_spans()] == ["b-root"]
    assert b_root.trace_id != a_root.trace_id


def test_finished_spans_filter_by_tenant(obs: Observability) -> None:
    for tenant in ("t1", "t2", "t1"):
        with obs.tracing.span("workflow", tenant_id=tenant), obs.tracing.span("node"):
            pass

    t1 = obs.tracing.finished_spans(tenant_id="t1")
    assert len(t1) == 4
    assert all(span.attrs["tenant_id"] == "t1" for span in t1)
    assert len(obs.tracing.finished_spans(tenant_id="t2")) == 2
    assert obs.tracing.finished_spans(tenant_id="t3") == ()


def test_span_buffer_is_bounded_and_counts_evictions(make_obs: MakeObs) -> None:
    obs = make_obs(trace_buffer_size=3)
    for index in range(5):
        with obs.tracing.span(f"s{index}"):
            pass

    assert [s.name for s in obs.tracing.finished_spans()] == ["s2", "s3", "s4"]
    (evicted,) = obs.metrics.export_metrics()["spans_evicted"]["series"]
    assert evicted["value"] == 2


# --- bad argument types -------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": ["node"]}, "kind"),  # unhashable: "unhashable type: 'list'"
        ({"parent": 5}, "parent"),  # AttributeError: 'int' object has no attribute ...
        ({"attributes": [("k", "v")]}, "attributes"),  # AttributeError: no .items()
    ],
    ids=["unhashable-kind", "int-parent", "list-attributes"],
)
def test_start_span_bad_argument_types_raise_type_error_naming_the_field(
    obs: Observability, kwargs: dict[str, Any], field: str
) -> None:
    """Regression: ``tracing.py`` ``start_span_sync`` does not check these types."""
    with pytest.raises(TypeError, match=field):
        obs.tracing.start_span_sync("s", **kwargs)
    assert obs.tracing.current_span() is None


def test_end_span_with_a_bad_status_leaves_the_span_open(obs: Observability) -> None:
    """An invalid ``status`` must be refused *before* the span is marked ended.

    Regression: ``tracing.py`` ``end_span_sync`` sets ``end_ns`` (and records the
    error) before it validates ``status``; the span is then neither recorded
    nor endable again ("already ended") and stays current.
    """
    span = obs.tracing.start_span_sync("node")

    with pytest.raises(ValueError, match="status"):
        obs.tracing.end_span_sync(span, status="finished")

    assert not span.ended
    obs.tracing.end_span_sync(span)
    assert [s.name for s in obs.tracing.finished_spans()] == ["node"]


@pytest.mark.parametrize("batched", [True, False])
def test_a_span_sink_carries_its_work_s_metrics_with_the_run(
    obs: Observability, batched: bool
) -> None:
    """The node wrapper's end: the span and its latency come from one end time."""
    root = obs.tracing.start_span_sync("wf", kind="workflow", tenant_id="t1", batch=batched)
    span = obs.tracing.start_span_sync("policy_check", kind="node")
    assert span.sink is root.sink
    assert type(span.sink) is (RunOutbox if batched else RecordSink)
    record = obs.tracing.end_span_sync(span)
    latency = obs.metrics.histogram("node_execution_latency").labels(
        node="policy_check", tenant_id="t1", status="ok")
    span.sink.add_metric(latency.record(record.duration_seconds))
    if batched:  # still in the run's outbox until the root ends
        assert obs.flush(5.0)
        assert obs.metrics.export_metrics()["node_execution_latency"]["series"] == []
        assert obs.tracing.finished_spans() == ()
    obs.tracing.end_span_sync(root)
    assert obs.flush(5.0)
    (series,) = obs.metrics.export_metrics()["node_execution_latency"]["series"]
    assert series["labels"] == {"node": "policy_check", "tenant_id": "t1", "status": "ok"}
    assert series["count"] == 1
    assert series["sum"] == pytest.approx((record.end_ns - record.start_ns) / 1e9)
    stored = {s.name: s for s in obs.tracing.finished_spans()}
    assert stored["policy_check"].duration_ns == record.end_ns - record.start_ns
    assert stored["policy_check"].parent_span_id == root.span_id


def test_current_sink_is_the_run_outbox_inside_a_batched_run(obs: Observability) -> None:
    tracing = obs.tracing
    assert tracing.current_sink() is tracing.direct_sink  # no span: straight through
    with tracing.span("plain") as plain:
        assert plain.sink is tracing.direct_sink is tracing.current_sink()
    with tracing.span("wf", kind="workflow", batch=True) as root:
        assert type(root.sink) is RunOutbox and root.sink.open
        assert tracing.current_sink() is root.sink
        with tracing.span("node", kind="node") as node:
            assert node.sink is root.sink is tracing.current_sink()
            with tracing.span("inner", batch=True) as inner:  # a nested run of its own
                assert type(inner.sink) is RunOutbox and inner.sink is not root.sink
            assert inner.sink.open is False  # it ended: its records left
        assert root.sink.open
    assert root.sink.open is False
    remote = tracing.extract({"traceparent": f"00-{_TRACE}-{_SPAN}-01"})
    assert remote is not None
    token = tracing.attach(remote)
    try:
        assert tracing.current_sink() is tracing.direct_sink  # a remote parent has no sink
    finally:
        tracing.detach(token)


def test_early_sends_from_many_threads_never_duplicate_or_lose_a_record(
    obs: Observability,
) -> None:
    """Nodes of one run on several threads fill the outbox past its limit again and again."""
    root = obs.tracing.start_span_sync("wf", kind="workflow", tenant_id="t1", batch=True)
    latency = obs.metrics.histogram("node_execution_latency").labels(
        node="n", tenant_id="t1", status="ok")
    barrier = threading.Barrier(8)

    def node_spans() -> None:
        barrier.wait()
        for _ in range(250):
            span = obs.tracing.start_span_sync("n", kind="node")
            record = obs.tracing.end_span_sync(span)
            span.sink.add_metric(latency.record(record.duration_seconds))

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(node_spans,))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert obs.flush(10.0)
    early = len(obs.tracing.finished_spans())
    assert 0 < early < 8 * 250  # 4,000 records: sent early, the rest still in the outbox
    obs.tracing.end_span_sync(root)
    assert obs.flush(10.0)
    spans = obs.tracing.finished_spans()
    assert len(spans) == 8 * 250 + 1
    assert len({span.span_id for span in spans}) == len(spans)
    (series,) = obs.metrics.export_metrics()["node_execution_latency"]["series"]
    assert series["count"] == 8 * 250
    assert obs.health().dropped_total == 0


# --- explicit start and end times -------------------------------------------------------


def test_a_child_that_would_start_before_its_parent_is_clamped_and_says_so(
    obs: Observability,
) -> None:
    tracing = obs.tracing
    root = tracing.start_span_sync("wf", start_ns=time.time_ns() - 5_000_000_000)
    early = tracing.start_span_sync("early", start_ns=root.start_ns - 1_000_000)
    tracing.end_span_sync(early)
    inside = tracing.start_span_sync("inside", start_ns=root.start_ns + 1_000)
    tracing.end_span_sync(inside)
    future = tracing.start_span_sync("future", start_ns=time.time_ns() + 10**12)
    tracing.end_span_sync(future)
    tracing.end_span_sync(root)

    spans = _by_name(tracing.finished_spans())
    assert spans["early"].start_ns == root.start_ns
    assert spans["early"].attrs[START_CLAMPED_ATTRIBUTE] is True
    assert spans["inside"].start_ns == root.start_ns + 1_000
    assert START_CLAMPED_ATTRIBUTE not in spans["inside"].attrs
    assert spans["future"].start_ns <= spans["future"].end_ns  # never starts in the future
    assert START_CLAMPED_ATTRIBUTE not in spans["wf"].attrs  # a root is never clamped
    assert spans["wf"].duration_ns >= 5_000_000_000


def test_explicit_end_times_are_kept_and_checked(obs: Observability) -> None:
    tracing = obs.tracing
    span = tracing.start_span_sync("s", start_ns=1_700_000_000_000_000_000)
    with pytest.raises(ValueError, match="end_ns"):
        tracing.end_span_sync(span, end_ns=span.start_ns - 1)
    with pytest.raises(ValueError, match="end_ns"):
        tracing.end_span_sync(span, end_ns=float(span.start_ns + 1))  # type: ignore[arg-type]
    assert not span.ended and tracing.current_span() is span
    record = tracing.end_span_sync(span, end_ns=span.start_ns + 1_234)
    assert record.duration_ns == 1_234
    assert span.now_ns() >= span.start_ns
    with pytest.raises(ValueError, match="start_ns"):
        tracing.start_span_sync("bad", start_ns=-1)
    with pytest.raises(ValueError, match="start_ns"):
        tracing.start_span_sync("bad", start_ns="0")  # type: ignore[arg-type]
    assert tracing.current_span() is None
    assert [s.duration_ns for s in tracing.finished_spans()] == [1_234]


def test_now_ns_is_the_span_clock(obs: Observability) -> None:
    with obs.tracing.span("s") as span:
        first = span.now_ns()
        second = span.now_ns()
        assert span.start_ns <= first <= second
        record = obs.tracing.end_span_sync(span, end_ns=second)
    assert record.end_ns == second


# --- bounded text -------------------------------------------------------------------


def test_long_text_attributes_and_error_messages_are_truncated_visibly(
    make_obs: MakeObs,
) -> None:
    obs = make_obs(limits={"max_attribute_length": 32})
    marker = TRUNCATION_MARKER.format(n=100 - 32)
    with pytest.raises(ValueError), obs.tracing.span("s", attributes={"long": "a" * 100}) as s:
        s.set_attribute("also", "b" * 100)
        s.add_event("e", text="c" * 100)
        raise ValueError("d" * 100)

    (record,) = obs.tracing.finished_spans()
    assert record.attrs["long"] == "a" * 32 + marker
    assert record.attrs["also"] == "b" * 32 + marker
    assert record.error_message == "d" * 32 + marker
    event, exception = record.events
    assert dict(event.attributes)["text"] == "c" * 32 + marker
    assert dict(exception.attributes)["exception.message"] == "d" * 32 + marker
    short = obs.tracing.end_span_sync(obs.tracing.start_span_sync("t", attributes={"k": "x"}))
    assert short.attrs["k"] == "x"


def test_ids_past_the_limit_are_refused(make_obs: MakeObs) -> None:
    obs = make_obs(limits={"max_id_length": 8})
    with pytest.raises(ValueError, match=r"tenant_id.*longer than 8"):
        obs.tracing.start_span_sync("s", tenant_id="t" * 9)
    with pytest.raises(ValueError, match=r"span name.*longer than 8"):
        obs.tracing.start_span_sync("s" * 9)
    assert obs.tracing.current_span() is None


def test_the_retired_entry_points_are_gone(obs: Observability) -> None:
    for name in ("record_finished", "record_finished_span", "start_child_span", "finish",
                 "send_outbox", "current_outbox"):
        assert not hasattr(obs.tracing, name), name
    assert not hasattr(Span, "outbox")


def test_a_span_cannot_be_constructed_directly() -> None:
    with pytest.raises(TypeError, match="start_span"):
        Span()


def test_a_root_span_started_with_attributes_and_ids_records_them_all(
    obs: Observability,
) -> None:
    span = obs.tracing.start_span_sync(
        "job", kind="internal", tenant_id="t1", attributes={"attempt": 2}
    )
    assert obs.tracing.current_span() is span
    record = obs.tracing.end_span_sync(span)

    assert obs.tracing.current_span() is None
    assert record.parent_span_id == 0
    assert dict(record.attributes) == {"tenant_id": "t1", "attempt": 2}
    assert span.attributes == {"attempt": 2}
