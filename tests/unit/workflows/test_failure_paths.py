"""Every failure path of the instrumented workflow, end to end: classified once, audited,
marked on the spans, and the original exception reaches the caller. Interrupts, high-risk
routing and cancellation are not classified failures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from app.errors import (
    InfrastructureError,
    InputValidationError,
    PolicyViolationError,
    WorkflowError,
)
from app.observability import FailureCategory, ModelPrice, Observability
from app.observability.catalog import NO_NODE
from app.workflows.langgraph import (
    LLMResponse,
    PromptVersion,
    RiskRequest,
    SimulatedLLM,
    Transaction,
    WorkflowConfig,
)
from app.workflows.langgraph.instrumentation import InstrumentedRiskWorkflow
from collectors.records import SpanRecord
from tests.unit.workflows.payloads import APPROVE, HIGH_RISK, REVIEW

TENANT = "acme"


def make_request(payload: dict[str, Any], request_id: str = "req-1") -> RiskRequest:
    return RiskRequest(
        request_id=request_id, tenant_id=TENANT, correlation_id=f"corr-{request_id}",
        payload=payload,
    )


def series(obs: Observability, metric: str) -> list[tuple[dict[str, str], Any]]:
    family = obs.metrics.export_metrics()[metric]
    return [(s["labels"], s.get("count", s.get("value"))) for s in family["series"]]


def spans_by_name(obs: Observability) -> dict[str, SpanRecord]:
    spans = obs.tracing.finished_spans()
    assert len({s.name for s in spans}) == len(spans)
    return {s.name: s for s in spans}


def qualname(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@pytest.fixture
def classified(obs: Observability, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every exception handed to ``obs.failures.classify`` (the real one still runs)."""
    seen: list[Any] = []
    real = obs.failures.classify

    def spy(exc: BaseException, **kwargs: Any) -> FailureCategory:
        seen.append(exc)
        return real(exc, **kwargs)

    monkeypatch.setattr(obs.failures, "classify", spy)
    yield seen


class BrokenLLM(SimulatedLLM):
    """Raises one prebuilt exception object from the scoring call."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    async def score(
        self, transaction: Transaction, request_id: str, model_version: str, prompt: PromptVersion
    ) -> LLMResponse:
        raise self.error


class BlockedLLM(SimulatedLLM):
    """Waits forever in the scoring call, after saying it got there."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def score(
        self, transaction: Transaction, request_id: str, model_version: str, prompt: PromptVersion
    ) -> LLMResponse:
        self.entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


# --- classified failures -------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("payload", "config", "exc_type", "category", "node", "ran_before", "source", "details"),
    [
        pytest.param(
            {**APPROVE, "amount": "-3"}, WorkflowConfig(), InputValidationError,
            FailureCategory.VALIDATION_ERROR, "validate_input", (), "nodes.py",
            {"field": "amount"}, id="invalid-input",
        ),
        pytest.param(
            {**APPROVE, "country": "IR"}, WorkflowConfig(), PolicyViolationError,
            FailureCategory.POLICY_VIOLATION, "policy_check",
            ("validate_input", "risk_scoring"), "policies.py", {"policy": "sanctions"},
            id="policy-breach",
        ),
        pytest.param(
            APPROVE, WorkflowConfig(infra_failure_rate=1.0), InfrastructureError,
            FailureCategory.INFRA_ERROR, "risk_scoring", ("validate_input",), "llm.py", {},
            id="infra-fault",
        ),
    ],
)
async def test_a_failure_is_classified_once_and_reaches_the_caller_unchanged(
    obs: Observability,
    classified: list[Any],
    payload: dict[str, Any],
    config: WorkflowConfig,
    exc_type: type[Exception],
    category: FailureCategory,
    node: str,
    ran_before: tuple[str, ...],
    source: str,
    details: dict[str, str],
) -> None:
    wf = InstrumentedRiskWorkflow(obs, config=config)
    with pytest.raises(exc_type) as excinfo:
        await wf.run(make_request(payload))

    # The original exception object: exact type, its details, raised where it was raised.
    error = excinfo.value
    assert type(error) is exc_type
    assert {key: getattr(error, key) for key in details} == details
    assert any(Path(entry.path).name == source for entry in excinfo.traceback)
    assert len(classified) == 1 and classified[0] is error  # the node classified this object
    assert await obs.aflush()

    # Counted exactly once: by the node, not again by the workflow level.
    assert series(obs, "failure_count") == [
        ({"category": category.value, "node": node, "tenant_id": TENANT}, 1)
    ]
    (event,) = obs.audit.events(event="failure.classified")
    assert {k: event.data[k] for k in
            ("category", "tenant_id", "node", "correlation_id", "request_id", "error_type")} == {
        "category": category.value, "tenant_id": TENANT, "node": node,
        "correlation_id": "corr-req-1", "request_id": "req-1", "error_type": qualname(exc_type),
    }

    spans = spans_by_name(obs)
    generations = [span for span in spans.values() if span.kind == "generation"]
    assert {n for n, span in spans.items() if span.kind != "generation"} == {
        "risk_workflow", node, *ran_before}
    if "risk_scoring" in ran_before:  # the model answered: one successful generation
        (generation,) = generations
        assert (generation.status, generation.parent_span_id) == (
            "ok", spans["risk_scoring"].span_id)
    elif node == "risk_scoring":  # the model call failed: still a generation, an error
        (generation,) = generations
        assert generation.name.startswith("chat ")
        assert (generation.status, generation.error_type) == ("error", qualname(exc_type))
        assert generation.attrs["error.type"] == qualname(exc_type)
        assert generation.attrs["priced"] is False
        assert generation.parent_span_id == spans["risk_scoring"].span_id
        # Its duration is observed under the error type; no usage is counted or billed.
        assert [labels["error_type"] for labels, _ in
                series(obs, "gen_ai_client_operation_duration")] == [qualname(exc_type)]
        assert series(obs, "model_usage_count") == []
    else:
        assert generations == []
    failed = spans[node]
    assert (failed.status, failed.error_type) == ("error", qualname(exc_type))
    assert failed.attrs["failure_category"] == category.value
    assert [e.name for e in failed.events] == ["exception"]
    assert all(spans[n].status == "ok" and spans[n].error_type is None for n in ran_before)
    root = spans["risk_workflow"]
    assert (root.status, root.error_type) == ("error", qualname(exc_type))
    assert root.attrs["failure_category"] == category.value
    assert failed.parent_span_id == root.span_id

    assert series(obs, "request_count") == [({"tenant_id": TENANT}, 1)]
    assert [(labels["status"], n) for labels, n in series(obs, "workflow_execution_count")] == [
        ("error", 1)
    ]
    assert [(labels["status"], n) for labels, n in series(obs, "request_latency")] == [
        ("error", 1)
    ]
    assert sorted((labels["node"], labels["status"], n) for labels, n in
                  series(obs, "node_execution_latency")) == sorted(
        [(node, "error", 1), *((n, "ok", 1) for n in ran_before)]
    )
    assert series(obs, "approval_required_count") == []
    # Only a model call that answered is billed (the policy check runs after scoring).
    cost = obs.costs.get_request_cost("req-1")
    assert (cost is not None and cost > 0) == ("risk_scoring" in ran_before)


@pytest.mark.asyncio
async def test_the_exact_exception_object_from_the_model_reaches_the_caller(
    obs: Observability, classified: list[Any]
) -> None:
    error = InfrastructureError("model endpoint down")
    wf = InstrumentedRiskWorkflow(obs, llm=BrokenLLM(error))
    with pytest.raises(InfrastructureError) as excinfo:
        await wf.run(make_request(APPROVE))
    assert excinfo.value is error
    assert classified == [error]
    assert await obs.aflush()
    assert series(obs, "failure_count") == [
        ({"category": "INFRA_ERROR", "node": "risk_scoring", "tenant_id": TENANT}, 1)
    ]


@pytest.mark.asyncio
async def test_an_unknown_exception_is_unexpected_and_counted_once(
    obs: Observability, classified: list[Any]
) -> None:
    error = KeyError("surprise")
    wf = InstrumentedRiskWorkflow(obs, llm=BrokenLLM(error))
    with pytest.raises(KeyError) as excinfo:
        await wf.run(make_request(APPROVE))
    assert excinfo.value is error
    assert len(classified) == 1
    assert await obs.aflush()
    assert series(obs, "failure_count") == [
        ({"category": "UNEXPECTED_ERROR", "node": "risk_scoring", "tenant_id": TENANT}, 1)
    ]
    assert spans_by_name(obs)["risk_scoring"].error_type == "KeyError"


@pytest.mark.asyncio
async def test_a_failure_outside_any_node_is_classified_at_the_workflow_level(
    obs: Observability, classified: list[Any]
) -> None:
    wf = InstrumentedRiskWorkflow(obs)  # no checkpointer: nothing to resume
    request = make_request(REVIEW)
    with pytest.raises(WorkflowError, match="checkpointer") as excinfo:
        await wf.resume(request, {"decision": "approve", "reviewer": "alice"})
    assert classified == [excinfo.value]
    assert await obs.aflush()
    # Outside any node: node="none" (every series has every declared label).
    assert series(obs, "failure_count") == [
        ({"category": "WORKFLOW_ERROR", "tenant_id": TENANT, "node": NO_NODE}, 1)
    ]
    (event,) = obs.audit.events(event="failure.classified")
    assert (event.data["node"], event.data["request_id"]) == (None, "req-1")
    (root,) = obs.tracing.finished_spans()
    assert (root.kind, root.status) == ("workflow", "error")
    assert root.error_type == qualname(WorkflowError)


# --- high risk, interrupts, cancellation ----------------------------------------------------


@pytest.mark.asyncio
async def test_high_risk_is_routed_to_approval_and_counted(
    obs: Observability, classified: list[Any]
) -> None:
    wf = InstrumentedRiskWorkflow(obs)
    state = await wf.run(make_request(HIGH_RISK, "req-hr"))
    assert (state.high_risk, state.approval_required, state.status) == (True, True, "escalated")
    await wf.run(make_request(REVIEW, "req-review"))  # escalated too, but not high risk
    assert await obs.aflush()

    assert classified == []  # no exception involved
    assert series(obs, "failure_count") == [
        ({"category": "HIGH_RISK", "tenant_id": TENANT, "node": NO_NODE}, 1)]
    (event,) = obs.audit.events(event="failure.classified")
    assert (event.data["category"], event.data["tenant_id"], event.data["request_id"]) == (
        "HIGH_RISK", TENANT, "req-hr",
    )
    assert series(obs, "approval_required_count") == [({"tenant_id": TENANT}, 2)]
    assert [(labels["status"], n) for labels, n in series(obs, "workflow_execution_count")] == [
        ("ok", 2)
    ]
    assert {s.status for s in obs.tracing.finished_spans()} == {"ok"}


@pytest.mark.asyncio
async def test_an_interrupt_is_not_a_failure_and_the_run_resumes(
    obs: Observability, classified: list[Any]
) -> None:
    wf = InstrumentedRiskWorkflow(obs, config=WorkflowConfig(interrupt_for_approval=True))
    request = make_request(REVIEW, "req-int")
    paused = await wf.run(request)
    assert paused.status == "awaiting_approval"
    assert await obs.aflush()

    assert classified == []
    assert series(obs, "failure_count") == []
    assert obs.audit.events(event="failure.classified") == ()
    assert [(labels["status"], n) for labels, n in series(obs, "workflow_execution_count")] == [
        ("interrupted", 1)
    ]
    spans = spans_by_name(obs)
    assert {s.status for s in spans.values()} == {"ok"}
    assert spans["escalate_for_approval"].attrs["interrupted"] is True
    assert spans["escalate_for_approval"].error_type is None
    assert "finalize" not in spans

    resumed = await wf.resume(request, {"decision": "approve", "reviewer": "alice"})
    assert (resumed.status, resumed.decision, resumed.reviewer) == ("completed", "approve", "alice")
    assert await obs.aflush()
    assert series(obs, "failure_count") == []
    assert classified == []
    assert series(obs, "approval_required_count") == [({"tenant_id": TENANT}, 1)]
    statuses = {labels["status"]: n for labels, n in series(obs, "workflow_execution_count")}
    assert statuses == {"interrupted": 1, "ok": 1}
    assert {s.status for s in obs.tracing.finished_spans()} == {"ok"}


@pytest.mark.asyncio
async def test_a_paused_and_resumed_high_risk_request_is_one_high_risk_failure(
    obs: Observability,
) -> None:
    """BUG (instrumentation.py, ``end_run``): HIGH_RISK is recorded whenever a run's
    final state has ``high_risk``; the paused run and its resumption both do."""
    wf = InstrumentedRiskWorkflow(obs, config=WorkflowConfig(interrupt_for_approval=True))
    request = make_request(HIGH_RISK, "req-hr-int")
    assert (await wf.run(request)).status == "awaiting_approval"
    resumed = await wf.resume(request, {"decision": "reject", "reviewer": "bob"})
    assert (resumed.status, resumed.high_risk) == ("completed", True)
    assert await obs.aflush()
    assert series(obs, "failure_count") == [
        ({"category": "HIGH_RISK", "tenant_id": TENANT, "node": NO_NODE}, 1)]
    assert len(obs.audit.events(event="failure.classified")) == 1


@pytest.mark.asyncio
async def test_a_paused_and_resumed_request_is_one_request(obs: Observability) -> None:
    """BUG (instrumentation.py, ``end_run``): ``resume`` counts ``request_count``
    again, so one request received counts twice."""
    wf = InstrumentedRiskWorkflow(obs, config=WorkflowConfig(interrupt_for_approval=True))
    request = make_request(REVIEW, "req-once")
    await wf.run(request)
    await wf.resume(request, {"decision": "approve", "reviewer": "alice"})
    assert await obs.aflush()
    assert series(obs, "request_count") == [({"tenant_id": TENANT}, 1)]


@pytest.mark.asyncio
async def test_a_cancelled_run_is_closed_but_not_classified(
    obs: Observability, classified: list[Any]
) -> None:
    llm = BlockedLLM()
    wf = InstrumentedRiskWorkflow(obs, llm=llm)
    task = asyncio.ensure_future(wf.run(make_request(APPROVE, "req-cancel")))
    await llm.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await obs.aflush()

    assert classified == []
    assert series(obs, "failure_count") == []
    # The run's outbox was still sent: one request, one execution, every span ended.
    assert series(obs, "request_count") == [({"tenant_id": TENANT}, 1)]
    ((labels, executions),) = series(obs, "workflow_execution_count")
    assert executions == 1 and labels["status"] != "ok"
    spans = spans_by_name(obs)
    assert set(spans) == {"risk_workflow", "validate_input", "risk_scoring"}
    assert spans["risk_scoring"].error_type == "asyncio.exceptions.CancelledError"
    assert spans["risk_workflow"].status == "error"
    assert obs.health().dropped_total == 0


@pytest.mark.asyncio
async def test_a_failing_generation_log_still_ends_the_node_span(
    make_obs: Callable[..., Observability],
) -> None:
    """BUG (instrumentation.py, ``wrap_node``/``_after_node``): ``_after_node`` runs
    outside the ``try``, so when logging the generation raises (here the cost policy
    ``"raise"`` for a model missing from the price table) the ``risk_scoring`` span
    never ends and its latency is never recorded."""
    only_v1 = {"risk-llm-v1": ModelPrice(input_per_1k=Decimal(1), output_per_1k=Decimal(1))}
    obs = make_obs(unpriced_policy="raise", price_table=only_v1)
    wf = InstrumentedRiskWorkflow(obs, config=WorkflowConfig(canary_share=0.0))  # risk-llm-v2
    # Whether a missing price may fail the request is the cost policy's call; the
    # node's own telemetry must not depend on it.
    with contextlib.suppress(ValueError):
        await wf.run(make_request(APPROVE, "req-unpriced"))
    assert await obs.aflush()
    assert "risk_scoring" in {s.name for s in obs.tracing.finished_spans()}
    assert "risk_scoring" in {labels["node"] for labels, _ in
                              series(obs, "node_execution_latency")}


@pytest.mark.asyncio
async def test_a_resumed_run_continues_the_paused_runs_trace(obs: Observability) -> None:
    wf = InstrumentedRiskWorkflow(obs, config=WorkflowConfig(interrupt_for_approval=True))
    request = make_request(REVIEW, "req-trace")
    await wf.run(request)
    await wf.resume(request, {"decision": "approve", "reviewer": "alice"})
    assert await obs.aflush()

    roots = [s for s in obs.tracing.finished_spans() if s.kind == "workflow"]
    assert len(roots) == 2
    paused, resumed = roots
    assert resumed.trace_id == paused.trace_id
    assert resumed.parent_span_id == paused.span_id
    assert dict(resumed.attributes)["resumed"] is True
    assert "resumed" not in dict(paused.attributes)
    trace = obs.tracing.finished_spans(trace_id=paused.trace_id)
    assert {s.name for s in trace} >= {"escalate_for_approval", "finalize", "risk_scoring"}


@pytest.mark.asyncio
async def test_a_resume_follows_a_given_traceparent_and_forgets_the_pause(
    obs: Observability,
) -> None:
    wf = InstrumentedRiskWorkflow(obs, config=WorkflowConfig(interrupt_for_approval=True))
    request = make_request(REVIEW, "req-tp")
    await wf.run(request)
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await wf.resume(request, {"decision": "approve", "reviewer": "alice"},
                    parent_headers={"traceparent": caller})
    assert await obs.aflush()

    paused, resumed = [s for s in obs.tracing.finished_spans() if s.kind == "workflow"]
    assert f"{resumed.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{resumed.parent_span_id:016x}" == "b7ad6b7169203331"
    assert resumed.trace_id != paused.trace_id
    assert wf.instrumentation is not None
    assert wf.instrumentation._paused == {}  # the pause is not kept for a second resume


@pytest.mark.asyncio
async def test_paused_traces_kept_for_resume_are_bounded_oldest_out_first(
    obs: Observability, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.workflows.langgraph.instrumentation as instrumentation

    monkeypatch.setattr(instrumentation, "_PAUSED_TRACES", 2)
    wf = InstrumentedRiskWorkflow(obs, config=WorkflowConfig(interrupt_for_approval=True))
    requests = [make_request(REVIEW, f"req-bound-{i}") for i in range(3)]
    for request in requests:
        await wf.run(request)
    for request in (requests[0], requests[2]):
        await wf.resume(request, {"decision": "approve", "reviewer": "alice"})
    assert await obs.aflush()

    by_request: dict[str, list[SpanRecord]] = {}
    for span in obs.tracing.finished_spans():
        if span.kind == "workflow":
            by_request.setdefault(str(dict(span.attributes)["request_id"]), []).append(span)
    first_paused, first_resumed = by_request["req-bound-0"]
    last_paused, last_resumed = by_request["req-bound-2"]
    assert first_resumed.trace_id != first_paused.trace_id  # forgotten: a new trace
    assert first_resumed.parent_span_id == 0
    assert last_resumed.trace_id == last_paused.trace_id
