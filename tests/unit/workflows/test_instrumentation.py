"""The instrumented risk workflow: node latency, cost, model and prompt usage, request
metrics, approvals, the trace tree, traceparent continuation and node wrapping."""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from app.errors import PolicyViolationError
from app.observability import FailureCategory, ModelPrice, Observability
from app.observability.catalog import NO_TENANT
from app.observability.settings import DEFAULT_PRICE_TABLE
from app.workflows.langgraph import (
    GRAPH_NAME,
    NODE_NAMES,
    LLMCall,
    RiskNodes,
    RiskRequest,
    RiskState,
    WorkflowConfig,
)
from app.workflows.langgraph.instrumentation import (
    InstrumentedRiskWorkflow,
    WorkflowInstrumentation,
    build_instrumented_workflow,
)
from collectors.records import SpanRecord
from tests.unit.workflows.payloads import APPROVE, HIGH_RISK, REJECT, REVIEW

# The shapes of tests/unit/workflows/test_graph.py (scores under seed 0).
AUTO_PATH = tuple(n for n in NODE_NAMES if n != "escalate_for_approval")
ESCALATE_PATH = tuple(n for n in NODE_NAMES if n != "auto_decision")
ASYNC_NODES = frozenset({"risk_scoring", "evaluate"})


def make_request(payload: dict[str, Any], request_id: str, tenant: str = "t1") -> RiskRequest:
    return RiskRequest(
        request_id=request_id, tenant_id=tenant, correlation_id=f"corr-{request_id}",
        payload=payload,
    )


def series(obs: Observability, metric: str) -> list[tuple[dict[str, str], Any]]:
    """``(labels, value)`` of a counter, ``(labels, (count, sum))`` of a histogram."""
    family = obs.metrics.export_metrics()[metric]
    return [
        (s["labels"], (s["count"], s["sum"]) if "count" in s else s["value"])
        for s in family["series"]
    ]


def total(obs: Observability, metric: str, **labels: str) -> Any:
    """Sum of the matching series (a histogram's observation count)."""
    found = 0
    for series_labels, value in series(obs, metric):
        if labels.items() <= series_labels.items():
            found += value[0] if isinstance(value, tuple) else value
    return found


def priced(table: dict[str, ModelPrice], call: LLMCall) -> Decimal:
    """Price x tokens, computed here independently of the cost tracker."""
    price = table[call.model_version]
    return (
        price.input_per_1k * call.input_tokens + price.output_per_1k * call.output_tokens
    ) / 1000


def workflow_span(obs: Observability, request_id: str) -> SpanRecord:
    (root,) = [
        s for s in obs.tracing.finished_spans()
        if s.kind == "workflow" and s.attrs.get("request_id") == request_id
    ]
    return root


# --- node latency -----------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("payload", "path"), [(APPROVE, AUTO_PATH), (REVIEW, ESCALATE_PATH)], ids=["auto", "escalate"]
)
async def test_node_latency_is_recorded_for_every_executed_node(
    obs: Observability, payload: dict[str, Any], path: tuple[str, ...]
) -> None:
    wf = InstrumentedRiskWorkflow(obs)
    await wf.run(make_request(payload, "req-lat", "acme"))
    assert await obs.aflush()

    latencies = {labels["node"]: (labels, value) for labels, value in
                 series(obs, "node_execution_latency")}
    assert set(latencies) == set(path)  # the branch not taken has no series
    for node, (labels, (count, seconds)) in latencies.items():
        assert labels == {"node": node, "status": "ok", "tenant_id": "acme"}
        assert count == 1
        assert seconds >= 0
    # The histogram holds exactly each node span's duration, in seconds.
    root = workflow_span(obs, "req-lat")
    nodes = {s.name: s for s in obs.tracing.finished_spans(trace_id=root.trace_id)
             if s.kind == "node"}
    assert {name: latencies[name][1][1] for name in path} == pytest.approx(
        {name: nodes[name].duration_seconds for name in path}, abs=1e-9
    )
    # Nodes run one after another inside the request.
    (request_latency,) = series(obs, "request_latency")
    assert sum(v[1] for _, v in latencies.values()) <= request_latency[1][1]


# --- cost, model and prompt usage ---------------------------------------------------------


CUSTOM_PRICES = {
    "risk-llm-v2": ModelPrice(input_per_1k=Decimal("1.7"), output_per_1k=Decimal("3.1")),
    "risk-llm-v1": ModelPrice(input_per_1k=Decimal("0.9"), output_per_1k=Decimal("2.3")),
    "risk-llm-mini-v1": ModelPrice(input_per_1k=Decimal("0.11"), output_per_1k=Decimal("0.7")),
}


@pytest.mark.asyncio
async def test_cost_per_request_and_tenant_is_the_price_table_times_the_tokens(
    make_obs: Callable[..., Observability],
) -> None:
    obs = make_obs(price_table=CUSTOM_PRICES, id_seed=7)
    wf = InstrumentedRiskWorkflow(obs, config=WorkflowConfig(canary_share=0.5))
    runs = [("acme", f"req-{i}", p) for i, p in enumerate([APPROVE, REVIEW, REJECT, HIGH_RISK])]
    runs += [("globex", f"req-g{i}", p) for i, p in enumerate([APPROVE, REVIEW])]
    states = {rid: (tenant, await wf.run(make_request(p, rid, tenant))) for tenant, rid, p in runs}
    assert await obs.aflush()

    expected: dict[str, Decimal] = {}
    for rid, (_, state) in states.items():
        assert state.llm_call is not None
        expected[rid] = priced(CUSTOM_PRICES, state.llm_call)
        assert obs.costs.get_request_cost(rid) == expected[rid] > 0
    models = {state.llm_call.model_version for _, state in states.values() if state.llm_call}
    assert models == {"risk-llm-v1", "risk-llm-v2"}  # both rows of the table are exercised
    for tenant in ("acme", "globex"):
        assert obs.costs.get_tenant_cost(tenant) == sum(
            (expected[rid] for rid, (t, _) in states.items() if t == tenant), Decimal(0)
        )
    assert obs.costs.get_total_cost() == sum(expected.values(), Decimal(0))
    # The same cost is on each generation span (GenAI conventions: a float and a currency).
    for rid, cost in expected.items():
        root = workflow_span(obs, rid)
        (generation,) = [s for s in obs.tracing.finished_spans(trace_id=root.trace_id)
                         if s.kind == "generation"]
        assert generation.attrs["gen_ai.usage.cost.amount"] == float(cost)
        assert generation.attrs["gen_ai.usage.cost.currency"] == "USD"


@pytest.mark.asyncio
async def test_model_and_prompt_usage_are_counted(obs: Observability) -> None:
    wf = InstrumentedRiskWorkflow(obs, config=WorkflowConfig(canary_share=0.5))
    states: list[RiskState] = [
        await wf.run(make_request(APPROVE, f"req-{i}", "acme")) for i in range(12)
    ]
    assert await obs.aflush()

    calls = [s.llm_call for s in states if s.llm_call is not None]
    assert len(calls) == 12
    models = Counter(c.model_version for c in calls)
    prompts = Counter(c.prompt_version for c in calls)
    assert len(models) == 2 and len(prompts) == 2  # default and canary versions both ran
    assert {labels["model_version"]: value for labels, value in
            series(obs, "model_usage_count")} == models
    assert {labels["prompt_version"]: value for labels, value in
            series(obs, "prompt_usage_count")} == prompts
    assert all(labels["tenant_id"] == "acme" for labels, _ in series(obs, "model_usage_count"))
    assert total(obs, "token_usage", direction="input") == sum(c.input_tokens for c in calls)
    assert total(obs, "token_usage", direction="output") == sum(c.output_tokens for c in calls)


# --- request metrics and approvals ---------------------------------------------------------


@pytest.mark.asyncio
async def test_request_metrics_reflect_the_executions(obs: Observability) -> None:
    wf = InstrumentedRiskWorkflow(obs)
    for i, payload in enumerate([APPROVE, REJECT, APPROVE]):
        await wf.run(make_request(payload, f"a-{i}", "acme"))
    await wf.run(make_request(REVIEW, "g-0", "globex"))
    assert await obs.aflush()

    assert dict((labels["tenant_id"], v) for labels, v in series(obs, "request_count")) == {
        "acme": 3, "globex": 1,
    }
    executions = {
        (labels["tenant_id"], labels["status"], labels["workflow"]): v
        for labels, v in series(obs, "workflow_execution_count")
    }
    assert executions == {("acme", "ok", GRAPH_NAME): 3, ("globex", "ok", GRAPH_NAME): 1}
    latency = {
        (labels["tenant_id"], labels["status"]): count
        for labels, (count, _) in series(obs, "request_latency")
    }
    assert latency == {("acme", "ok"): 3, ("globex", "ok"): 1}
    assert series(obs, "failure_count") == []
    assert total(obs, "node_execution_latency", node="validate_input") == 4


@pytest.mark.asyncio
async def test_approval_required_increments_the_counter(obs: Observability) -> None:
    wf = InstrumentedRiskWorkflow(obs)
    expected = 0
    for i, (payload, needs_approval) in enumerate(
        [(APPROVE, False), (REVIEW, True), (REJECT, False), (HIGH_RISK, True), (REVIEW, True)]
    ):
        state = await wf.run(make_request(payload, f"req-{i}", "acme"))
        assert state.approval_required is needs_approval
        expected += needs_approval
        assert await obs.aflush()
        assert total(obs, "approval_required_count", tenant_id="acme") == expected
        assert workflow_span(obs, f"req-{i}").attrs["approval_required"] is needs_approval
    assert expected == 3


# --- the trace tree --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_one_run_is_one_trace_workflow_nodes_generation(obs: Observability) -> None:
    wf = InstrumentedRiskWorkflow(obs)
    state = await wf.run(make_request(REVIEW, "req-tree", "acme"))
    assert await obs.aflush()
    assert state.llm_call is not None

    root = workflow_span(obs, "req-tree")
    spans = obs.tracing.finished_spans(trace_id=root.trace_id)
    assert set(spans) == set(obs.tracing.finished_spans())  # nothing outside this trace
    assert len({s.span_id for s in spans}) == len(spans)
    assert {s.trace_id for s in spans} == {root.trace_id}

    (workflow,) = [s for s in spans if s.kind == "workflow"]
    assert workflow == root
    assert (root.name, root.parent_span_id, root.status) == (GRAPH_NAME, 0, "ok")
    assert root.attrs["decision"] == "review"

    nodes = sorted((s for s in spans if s.kind == "node"), key=lambda s: s.start_ns)
    assert tuple(s.name for s in nodes) == ESCALATE_PATH  # in execution order
    assert all(s.parent_span_id == root.span_id and s.status == "ok" for s in nodes)
    assert all(root.start_ns <= s.start_ns <= s.end_ns <= root.end_ns for s in nodes)

    (generation,) = [s for s in spans if s.kind == "generation"]
    scoring = next(s for s in nodes if s.name == "risk_scoring")
    assert generation.parent_span_id == scoring.span_id
    call = state.llm_call
    assert generation.name == f"chat {call.model_version}"
    assert generation.status == "ok"
    assert generation.attrs["gen_ai.operation.name"] == "chat"
    assert generation.attrs["gen_ai.provider.name"] == call.provider
    assert generation.attrs["gen_ai.request.model"] == call.model_version
    assert generation.attrs["gen_ai.response.model"] == call.model_version
    assert generation.attrs["prompt_version"] == call.prompt_version
    assert generation.attrs["gen_ai.usage.input_tokens"] == call.input_tokens > 0
    assert generation.attrs["gen_ai.usage.output_tokens"] == call.output_tokens > 0
    assert generation.attrs["gen_ai.usage.cost.amount"] == float(
        priced(dict(DEFAULT_PRICE_TABLE), call))
    assert generation.attrs["event_id"].startswith("gen-")
    # The generation sits inside its node, ending no later than the node.
    assert scoring.start_ns <= generation.start_ns <= generation.end_ns <= scoring.end_ns
    assert len(spans) == len(ESCALATE_PATH) + 2

    for span in spans:
        assert span.attrs["tenant_id"] == "acme"
        assert span.attrs["correlation_id"] == "corr-req-tree"
        assert span.attrs["request_id"] == "req-tree"


TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@pytest.mark.asyncio
async def test_a_traceparent_continues_the_callers_trace(obs: Observability) -> None:
    wf = InstrumentedRiskWorkflow(obs)
    await wf.run(make_request(APPROVE, "req-tp"),
                 parent_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert await obs.aflush()

    root = workflow_span(obs, "req-tp")
    assert root.trace_id_hex == TRACE_ID
    assert root.parent_span_id_hex == PARENT_ID
    assert root.remote_parent is True
    spans = obs.tracing.finished_spans(trace_id=TRACE_ID)
    assert len(spans) == len(AUTO_PATH) + 2  # workflow, nodes, generation
    assert [s for s in spans if s.parent_span_id == int(PARENT_ID, 16)] == [root]


@pytest.mark.asyncio
async def test_an_invalid_traceparent_starts_a_new_trace(obs: Observability) -> None:
    wf = InstrumentedRiskWorkflow(obs)
    await wf.run(make_request(APPROVE, "req-bad-tp"),
                 parent_headers={"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"})
    assert await obs.aflush()
    root = workflow_span(obs, "req-bad-tp")
    assert root.parent_span_id == 0 and root.remote_parent is False
    assert root.trace_id != 0


@pytest.mark.asyncio
async def test_an_unsampled_caller_stores_no_spans_but_every_metric_and_cost(
    obs: Observability,
) -> None:
    wf = InstrumentedRiskWorkflow(obs)
    state = await wf.run(make_request(APPROVE, "req-unsampled"),
                         parent_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    assert await obs.aflush()
    assert obs.tracing.finished_spans() == ()
    assert total(obs, "request_count") == 1
    assert total(obs, "node_execution_latency") == len(AUTO_PATH)
    assert total(obs, "model_usage_count") == 1
    assert state.llm_call is not None
    assert obs.costs.get_request_cost("req-unsampled") == priced(
        dict(DEFAULT_PRICE_TABLE), state.llm_call
    )


# --- wrapping -------------------------------------------------------------------------------


def test_wrapped_nodes_keep_their_calling_convention(obs: Observability) -> None:
    graph = InstrumentedRiskWorkflow(obs).graph
    bare = InstrumentedRiskWorkflow(obs, instrument=False).graph
    for name in NODE_NAMES:
        bound: Any = graph.nodes[name].bound
        original = getattr(RiskNodes, name)
        if name in ASYNC_NODES:
            assert bound.func is None
            wrapper = bound.afunc
            assert inspect.iscoroutinefunction(wrapper)
        else:
            wrapper = bound.func
            assert wrapper is not None and not inspect.iscoroutinefunction(wrapper)
        assert wrapper.__wrapped__.__func__ is original  # the bound node method
        assert wrapper.__name__ == name
        assert list(inspect.signature(wrapper).parameters) == ["state"]
        bare_bound: Any = bare.nodes[name].bound
        bare_fn = bare_bound.afunc if name in ASYNC_NODES else bare_bound.func
        assert not hasattr(bare_fn, "__wrapped__")  # control: the bare graph is not wrapped


@pytest.mark.asyncio
async def test_wrap_node_outside_a_run_records_and_reraises(obs: Observability) -> None:
    instrumentation = WorkflowInstrumentation(obs)
    error = PolicyViolationError("no", policy="sanctions")

    def sync_node(state: dict[str, Any]) -> dict[str, Any]:
        return {"seen": state["x"]}

    async def async_node(state: dict[str, Any]) -> dict[str, Any]:
        raise error

    wrapped_sync = instrumentation.wrap_node("plain", sync_node)
    wrapped_async = instrumentation.wrap_node("coro", async_node)
    assert wrapped_sync.__wrapped__ is sync_node  # type: ignore[attr-defined]
    assert wrapped_async.__wrapped__ is async_node  # type: ignore[attr-defined]
    assert not inspect.iscoroutinefunction(wrapped_sync)
    assert inspect.iscoroutinefunction(wrapped_async)

    assert wrapped_sync({"x": 1}) == {"seen": 1}
    with pytest.raises(PolicyViolationError) as excinfo:
        await wrapped_async({})
    assert excinfo.value is error
    assert await obs.aflush()

    # Outside a run there is no tenant: the series say tenant_id="unknown".
    assert {(labels["node"], labels["tenant_id"], labels["status"]) for labels, _ in
            series(obs, "node_execution_latency")} == {
        ("plain", NO_TENANT, "ok"), ("coro", NO_TENANT, "error")}
    assert series(obs, "failure_count") == [
        ({"category": FailureCategory.POLICY_VIOLATION.value, "tenant_id": NO_TENANT,
          "node": "coro"}, 1)
    ]
    spans = {s.name: s for s in obs.tracing.finished_spans()}
    assert spans["plain"].parent_span_id == 0 and spans["plain"].status == "ok"
    assert spans["coro"].status == "error"
    assert spans["coro"].error_type == "app.errors.PolicyViolationError"


@pytest.mark.asyncio
async def test_the_uninstrumented_baseline_records_nothing(obs: Observability) -> None:
    wf = build_instrumented_workflow(obs, WorkflowConfig(seed=3), instrument=False)
    assert wf.instrumentation is None and wf.config.seed == 3
    state = await wf.run(make_request(APPROVE, "req-bare"))
    assert state.status == "completed"
    assert await obs.aflush()
    assert obs.tracing.finished_spans() == ()
    for metric in ("request_count", "node_execution_latency", "model_usage_count"):
        assert series(obs, metric) == []
    assert obs.costs.get_request_cost("req-bare") is None

    instrumented = build_instrumented_workflow(obs, WorkflowConfig(seed=3))
    assert isinstance(instrumented.instrumentation, WorkflowInstrumentation)
    again = await instrumented.run(make_request(APPROVE, "req-bare"))
    assert again.model_dump() == state.model_dump()  # instrumentation changes no result
