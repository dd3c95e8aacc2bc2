"""The optional ``ObservabilityCallbackHandler`` on a graph built without a node wrapper:
node latencies, a consistent span tree, failures classified once, interrupts left alone,
and no per-run state left behind."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphRecursionError
from langgraph.types import Command

from app.errors import PolicyViolationError
from app.observability import FailureCategory, Observability
from app.observability.catalog import NO_NODE
from app.workflows.langgraph import (
    GRAPH_NAME,
    NODE_NAMES,
    ObservabilityCallbackHandler,
    RiskGraph,
    RiskRequest,
    WorkflowConfig,
    build_risk_graph,
    initial_graph_state,
    langsmith_tracing_disabled,
)
from collectors.records import SpanRecord
from tests.unit.workflows.payloads import APPROVE, REVIEW

POLICY_BREACH = {**APPROVE, "country": "IR"}
AUTO_PATH = tuple(n for n in NODE_NAMES if n != "escalate_for_approval")


def make_request(payload: dict[str, Any], request_id: str, tenant: str = "t1") -> RiskRequest:
    return RiskRequest(
        request_id=request_id, tenant_id=tenant, correlation_id=f"corr-{request_id}",
        payload=payload,
    )


def run_config(
    request: RiskRequest, handler: ObservabilityCallbackHandler, **extra: Any
) -> RunnableConfig:
    """What the runner passes, plus the handler (the graph is never rebuilt)."""
    config: dict[str, Any] = {
        "callbacks": [handler],
        "recursion_limit": 25,
        "metadata": {
            "tenant_id": request.tenant_id,
            "correlation_id": request.correlation_id,
            "request_id": request.request_id,
        },
    }
    metadata = extra.pop("metadata", {})
    config["metadata"].update(metadata)
    config.update(extra)
    return config  # type: ignore[return-value]


async def invoke(
    graph: RiskGraph, request: RiskRequest, handler: ObservabilityCallbackHandler, **extra: Any
) -> Any:
    with langsmith_tracing_disabled():
        return await graph.ainvoke(
            initial_graph_state(request), config=run_config(request, handler, **extra)
        )


def latencies(obs: Observability) -> dict[tuple[str, str, str], tuple[int, float]]:
    family = obs.metrics.export_metrics()["node_execution_latency"]
    return {
        (s["labels"]["node"], s["labels"]["status"], s["labels"].get("tenant_id", "")):
        (s["count"], s["sum"])
        for s in family["series"]
    }


def failures(obs: Observability) -> list[tuple[dict[str, str], int]]:
    family = obs.metrics.export_metrics()["failure_count"]
    return [(s["labels"], s["value"]) for s in family["series"]]


def tree(obs: Observability, request_id: str) -> tuple[SpanRecord, dict[str, SpanRecord]]:
    """The workflow span of a request and its trace's other spans by name."""
    (root,) = [s for s in obs.tracing.finished_spans()
               if s.kind == "workflow" and s.attrs.get("request_id") == request_id]
    others = [s for s in obs.tracing.finished_spans(trace_id=root.trace_id) if s != root]
    assert len({s.name for s in others}) == len(others)
    return root, {s.name: s for s in others}


@pytest.fixture
def graph() -> RiskGraph:
    return build_risk_graph(config=WorkflowConfig())  # no node_wrapper


@pytest.fixture
def classified(obs: Observability, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    seen: list[Any] = []
    real = obs.failures.classify

    def spy(exc: BaseException, **kwargs: Any) -> FailureCategory:
        seen.append(exc)
        return real(exc, **kwargs)

    monkeypatch.setattr(obs.failures, "classify", spy)
    yield seen


def test_it_is_an_inline_async_langchain_handler(obs: Observability) -> None:
    handler = ObservabilityCallbackHandler(obs)
    assert isinstance(handler, AsyncCallbackHandler)
    assert handler.run_inline is True
    assert inspect.iscoroutinefunction(handler.on_chain_start)
    assert (handler.open_runs, handler.callback_errors) == (0, 0)


@pytest.mark.asyncio
async def test_node_latencies_and_the_span_tree(obs: Observability, graph: RiskGraph) -> None:
    handler = ObservabilityCallbackHandler(obs)
    result = await invoke(graph, make_request(APPROVE, "req-cb", "acme"), handler)
    assert result["status"] == "completed"
    assert (handler.open_runs, handler.callback_errors) == (0, 0)
    assert await obs.aflush()

    # Exactly the graph's nodes: a routing function or a node's inner runnables are no node.
    found = latencies(obs)
    assert set(found) == {(n, "ok", "acme") for n in AUTO_PATH}
    assert all(count == 1 for count, _ in found.values())

    root, nodes = tree(obs, "req-cb")
    assert (root.name, root.parent_span_id, root.status) == (GRAPH_NAME, 0, "ok")
    assert set(nodes) == set(AUTO_PATH)
    for name, span in nodes.items():
        assert span.kind == "node" and span.status == "ok"
        assert span.parent_span_id == root.span_id
        assert root.start_ns <= span.start_ns <= span.end_ns <= root.end_ns
        assert found[(name, "ok", "acme")][1] == pytest.approx(span.duration_seconds, abs=1e-6)
    ordered = sorted(nodes.values(), key=lambda s: s.start_ns)
    assert tuple(s.name for s in ordered) == AUTO_PATH
    for span in (root, *nodes.values()):
        assert span.attrs["tenant_id"] == "acme"
        assert span.attrs["correlation_id"] == "corr-req-cb"
        assert span.attrs["request_id"] == "req-cb"
    assert failures(obs) == []


@pytest.mark.asyncio
async def test_a_node_failure_is_classified_once(
    obs: Observability, graph: RiskGraph, classified: list[Any]
) -> None:
    handler = ObservabilityCallbackHandler(obs)
    with pytest.raises(PolicyViolationError) as excinfo:
        await invoke(graph, make_request(POLICY_BREACH, "req-pv"), handler)
    assert classified == [excinfo.value]  # by the node, not again by the workflow
    assert (handler.open_runs, handler.callback_errors) == (0, 0)
    assert await obs.aflush()

    assert failures(obs) == [
        ({"category": "POLICY_VIOLATION", "node": "policy_check", "tenant_id": "t1"}, 1)
    ]
    (event,) = obs.audit.events(event="failure.classified")
    assert (event.data["tenant_id"], event.data["node"], event.data["request_id"]) == (
        "t1", "policy_check", "req-pv",
    )
    assert set(latencies(obs)) == {
        ("validate_input", "ok", "t1"), ("risk_scoring", "ok", "t1"),
        ("policy_check", "error", "t1"),
    }
    root, nodes = tree(obs, "req-pv")
    assert set(nodes) == {"validate_input", "risk_scoring", "policy_check"}
    failed = nodes["policy_check"]
    assert failed.status == "error"
    assert failed.attrs["error_type"] == "app.errors.PolicyViolationError"
    assert failed.attrs["failure_category"] == "POLICY_VIOLATION"
    assert root.status == "error"
    assert root.attrs["failure_category"] == "POLICY_VIOLATION"


@pytest.mark.asyncio
async def test_a_failure_of_the_graph_itself_is_classified_at_the_workflow(
    obs: Observability, graph: RiskGraph, classified: list[Any]
) -> None:
    handler = ObservabilityCallbackHandler(obs)
    with pytest.raises(GraphRecursionError) as excinfo:
        await invoke(graph, make_request(APPROVE, "req-rec"), handler, recursion_limit=3)
    assert classified == [excinfo.value]
    assert (handler.open_runs, handler.callback_errors) == (0, 0)
    assert await obs.aflush()
    assert failures(obs) == [
        ({"category": "WORKFLOW_ERROR", "tenant_id": "t1", "node": NO_NODE}, 1)]  # no node
    root, nodes = tree(obs, "req-rec")
    assert root.status == "error"
    assert root.attrs["error_type"] == "langgraph.errors.GraphRecursionError"
    assert {s.status for s in nodes.values()} == {"ok"}  # the nodes that ran were fine


@pytest.mark.asyncio
async def test_an_interrupt_is_not_a_failure(obs: Observability, classified: list[Any]) -> None:
    graph = build_risk_graph(config=WorkflowConfig(interrupt_for_approval=True))
    handler = ObservabilityCallbackHandler(obs)
    request = make_request(REVIEW, "req-int")
    thread = {"configurable": {"thread_id": "req-int"}}
    paused = await invoke(graph, request, handler, **thread)
    assert "__interrupt__" in paused
    assert (handler.open_runs, handler.callback_errors) == (0, 0)
    with langsmith_tracing_disabled():
        done = await graph.ainvoke(
            Command(resume={"decision": "approve", "reviewer": "alice"}),
            config=run_config(request, handler, **thread),
        )
    assert (done["status"], done["reviewer"]) == ("completed", "alice")
    assert (handler.open_runs, handler.callback_errors) == (0, 0)
    assert await obs.aflush()

    assert classified == []
    assert failures(obs) == []
    escalations = [s for s in obs.tracing.finished_spans() if s.name == "escalate_for_approval"]
    assert [s.attrs.get("interrupted") for s in escalations] == [True, None]
    assert {s.status for s in obs.tracing.finished_spans()} == {"ok"}
    assert latencies(obs)[("escalate_for_approval", "ok", "t1")][0] == 2


@pytest.mark.asyncio
async def test_a_traceparent_in_the_metadata_continues_the_callers_trace(
    obs: Observability, graph: RiskGraph
) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    handler = ObservabilityCallbackHandler(obs)
    await invoke(graph, make_request(APPROVE, "req-tp"), handler,
                 metadata={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert await obs.aflush()
    root, nodes = tree(obs, "req-tp")
    assert (root.trace_id_hex, root.parent_span_id_hex, root.remote_parent) == (
        trace_id, parent_id, True,
    )
    assert len(nodes) == len(AUTO_PATH)
    assert {s.parent_span_id for s in nodes.values()} == {root.span_id}


@pytest.mark.asyncio
async def test_unsampled_runs_store_no_spans_but_record_latencies(
    make_obs: Callable[..., Observability], graph: RiskGraph
) -> None:
    obs = make_obs(sample_ratio=0.0)
    handler = ObservabilityCallbackHandler(obs)
    await invoke(graph, make_request(APPROVE, "req-unsampled"), handler)
    assert await obs.aflush()
    assert obs.tracing.finished_spans() == ()
    assert len(latencies(obs)) == len(AUTO_PATH)
    assert (handler.open_runs, handler.callback_errors) == (0, 0)


@pytest.mark.asyncio
async def test_one_handler_serves_concurrent_runs(obs: Observability, graph: RiskGraph) -> None:
    handler = ObservabilityCallbackHandler(obs)
    requests = [
        make_request(POLICY_BREACH if i % 4 == 3 else APPROVE, f"req-{i}", f"t{i % 3}")
        for i in range(24)
    ]
    outcomes = await asyncio.gather(
        *(invoke(graph, request, handler) for request in requests), return_exceptions=True
    )
    assert sum(isinstance(o, PolicyViolationError) for o in outcomes) == 6
    assert (handler.open_runs, handler.callback_errors) == (0, 0)
    assert await obs.aflush()

    assert sum(value for _, value in failures(obs)) == 6
    assert sum(count for count, _ in latencies(obs).values()) == 18 * len(AUTO_PATH) + 6 * 3
    for request in requests:
        root, nodes = tree(obs, request.request_id)
        assert {s.parent_span_id for s in nodes.values()} == {root.span_id}
        assert {s.attrs["request_id"] for s in nodes.values()} == {request.request_id}
        assert {s.attrs["tenant_id"] for s in nodes.values()} == {request.tenant_id}
    assert obs.health().dropped_total == 0


@pytest.mark.asyncio
async def test_a_problem_in_the_handler_never_hurts_the_run(
    obs: Observability, graph: RiskGraph
) -> None:
    handler = ObservabilityCallbackHandler(obs)
    # A label longer than the metrics accept: recording a node fails inside the handler.
    request = make_request(APPROVE, "req-long")
    result = await invoke(graph, request, handler, metadata={"tenant_id": "t" * 1_000})
    assert result["status"] == "completed"
    assert handler.open_runs == 0
    assert await obs.aflush()
    assert latencies(obs) == {}  # refused: label too long
    assert handler.callback_errors == len(AUTO_PATH)  # counted, one warning logged
    _, nodes = tree(obs, "req-long")
    assert set(nodes) == set(AUTO_PATH)  # the spans were still recorded
