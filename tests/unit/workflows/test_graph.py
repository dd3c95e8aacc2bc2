"""The risk workflow on the real LangGraph: routing, failures, node wrapping,
interrupts, determinism and LangSmith staying off."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

import langsmith
import pytest
from langchain_core.runnables import RunnableConfig
from langchain_core.tracers.base import BaseTracer
from langchain_core.tracers.context import tracing_v2_callback_var
from langchain_core.tracers.schemas import Run
from langgraph.config import get_config
from langgraph.types import Command
from langsmith import utils as ls_utils

from app.errors import (
    InfrastructureError,
    InputValidationError,
    PolicyViolationError,
    WorkflowError,
)
from app.workflows.langgraph import (
    NODE_NAMES,
    LLMResponse,
    PromptVersion,
    RiskGraph,
    RiskGraphState,
    RiskRequest,
    RiskState,
    SimulatedLLM,
    Transaction,
    VersionPin,
    WorkflowConfig,
    build_risk_graph,
    initial_graph_state,
    langsmith_tracing_disabled,
    resume_risk_workflow,
    run_risk_workflow,
    run_risk_workflow_sync,
)
from tests.unit.workflows.payloads import APPROVE, HIGH_RISK, REJECT, REVIEW


def make_request(
    payload: dict[str, Any], request_id: str = "req-1", tenant: str = "t1"
) -> RiskRequest:
    return RiskRequest(
        request_id=request_id,
        tenant_id=tenant,
        correlation_id=f"corr-{request_id}",
        payload=payload,
    )


async def run(
    payload: dict[str, Any],
    config: WorkflowConfig | None = None,
    request_id: str = "req-1",
    tenant: str = "t1",
    **build: Any,
) -> RiskState:
    config = config or WorkflowConfig()
    graph = build_risk_graph(config=config, **build)
    return await run_risk_workflow(graph, make_request(payload, request_id, tenant), config=config)


async def ainvoke_raw(graph: RiskGraph, payload: dict[str, Any]) -> Any:
    """Call ``graph.ainvoke`` itself, so its own exceptions surface."""
    with langsmith_tracing_disabled():
        return await graph.ainvoke(
            initial_graph_state(make_request(payload)), config={"recursion_limit": 25}
        )


class RecordingWrapper:
    """A node_wrapper that keeps sync nodes sync and async nodes async."""

    def __init__(self) -> None:
        self.originals: dict[str, Callable[..., Any]] = {}
        self.returned: dict[str, Callable[..., Any]] = {}
        self.calls: list[str] = []
        self.tracing: dict[str, object] = {}
        self.configs: dict[str, dict[str, Any]] = {}

    def _record(self, name: str) -> None:
        self.calls.append(name)
        self.tracing[name] = ls_utils.tracing_is_enabled()
        self.configs[name] = dict(get_config())

    def __call__(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        wrapped: Callable[..., Any]
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_node(state: Any) -> Any:
                self._record(name)
                return await fn(state)

            wrapped = async_node
        else:

            @functools.wraps(fn)
            def sync_node(state: Any) -> Any:
                self._record(name)
                return fn(state)

            wrapped = sync_node
        self.originals[name] = fn
        self.returned[name] = wrapped
        return wrapped


class StubEvaluator:
    def __init__(self) -> None:
        self.seen: list[RiskState] = []

    async def evaluate_decision(self, state: RiskState) -> dict[str, float]:
        self.seen.append(state)
        return {"quality": 0.9}


class LeakyLLM(SimulatedLLM):
    """Echoes an e-mail address into its rationale."""

    async def score(
        self, transaction: Transaction, request_id: str, model_version: str, prompt: PromptVersion
    ) -> LLMResponse:
        response = await super().score(transaction, request_id, model_version, prompt)
        return dataclasses.replace(
            response, rationale=response.rationale + " Contact jane@example.com."
        )


# --- paths -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_payload_scores_match_their_paths() -> None:
    scores = {
        name: (await run(payload)).risk_score
        for name, payload in [("approve", APPROVE), ("review", REVIEW), ("reject", REJECT)]
    }
    assert scores["approve"] is not None and scores["approve"] < 0.3
    assert scores["review"] is not None and 0.3 <= scores["review"] <= 0.7
    assert scores["reject"] is not None and 0.75 < scores["reject"] < 0.85


@pytest.mark.asyncio
async def test_approve_path() -> None:
    state = await run(APPROVE)
    assert state.decision == "approve"
    assert state.approval_required is False
    assert state.high_risk is False
    assert state.status == "completed"
    assert state.errors == []
    assert state.transaction is not None and state.transaction.country == "US"
    assert state.llm_call is not None
    assert (state.llm_call.model_version, state.llm_call.prompt_version) == (
        "risk-llm-v2",
        "risk_scoring/v3",
    )
    assert state.llm_call.input_tokens > 0 and state.llm_call.output_tokens > 0
    assert all(r.passed for r in state.policy_results)
    assert len(state.guardrail_results) == 5 and all(r.passed for r in state.guardrail_results)
    assert state.evaluation is None
    assert state.risk_rationale is not None and "jane" not in state.risk_rationale


@pytest.mark.asyncio
async def test_reject_below_high_risk_is_automatic() -> None:
    state = await run(REJECT)
    assert state.decision == "reject"
    assert state.high_risk is False
    assert state.approval_required is False
    assert state.status == "completed"


@pytest.mark.asyncio
async def test_review_routes_to_approval() -> None:
    state = await run(REVIEW)
    assert state.decision == "review"
    assert state.high_risk is False
    assert state.errors == []
    assert state.approval_required is True
    assert state.status == "escalated"


@pytest.mark.asyncio
async def test_high_risk_routes_to_approval() -> None:
    state = await run(HIGH_RISK)
    assert state.risk_score is not None and state.risk_score >= 0.85
    assert state.high_risk is True
    assert state.decision == "review"  # soft policies failed too
    assert state.approval_required is True
    assert state.status == "escalated"
    assert any("new_account_high_value" in e for e in state.errors)
    assert any("chargeback_history" in e for e in state.errors)


@pytest.mark.asyncio
async def test_high_risk_reject_still_goes_to_approval() -> None:
    config = WorkflowConfig(high_risk_threshold=0.75)
    state = await run(REJECT, config)
    assert state.decision == "reject"
    assert state.high_risk is True
    assert state.approval_required is True


@pytest.mark.asyncio
async def test_guardrail_failure_forces_review() -> None:
    state = await run(APPROVE, llm=LeakyLLM())
    assert state.risk_score is not None and state.risk_score < 0.3
    assert state.decision == "review"
    assert state.approval_required is True
    failed = [r.name for r in state.guardrail_results if not r.passed]
    assert failed == ["no_pii_echo"]
    assert state.errors == ["guardrail no_pii_echo failed: found email"]


@pytest.mark.asyncio
async def test_soft_policy_failure_turns_approve_into_review() -> None:
    state = await run({**APPROVE, "country": "VE"})
    assert state.risk_score is not None and state.risk_score < 0.3
    assert state.decision == "review"
    assert state.errors == ["policy elevated_risk_country failed: country VE"]


@pytest.mark.asyncio
async def test_canary_and_pinned_versions_reach_the_llm_call() -> None:
    canary = await run(APPROVE, WorkflowConfig(canary_share=1.0))
    assert canary.llm_call is not None
    assert (canary.llm_call.model_version, canary.llm_call.prompt_version) == (
        "risk-llm-v1",
        "risk_scoring/v2",
    )
    pinned_config = WorkflowConfig(
        canary_share=1.0, pinned_versions={"acme": VersionPin(model_version="risk-llm-mini-v1")}
    )
    pinned = await run(APPROVE, pinned_config, tenant="acme")
    assert pinned.llm_call is not None
    assert (pinned.llm_call.model_version, pinned.llm_call.prompt_version) == (
        "risk-llm-mini-v1",
        "risk_scoring/v3",
    )


def test_unknown_pinned_version_fails_the_build() -> None:
    config = WorkflowConfig(pinned_versions={"acme": VersionPin(model_version="gpt-x")})
    with pytest.raises(ValueError, match="tenant 'acme'"):
        build_risk_graph(config=config)


# --- determinism ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_same_input_and_seed_give_the_same_state() -> None:
    config = WorkflowConfig(seed=11)
    first = await run(REVIEW, config)
    graph = build_risk_graph(config=config)
    second = await run_risk_workflow(graph, make_request(REVIEW), config=config)
    third = await run_risk_workflow(graph, make_request(REVIEW), config=config)
    assert first.model_dump() == second.model_dump() == third.model_dump()
    other_seed = await run(REVIEW, WorkflowConfig(seed=12))
    assert other_seed.risk_score != first.risk_score


@pytest.mark.asyncio
async def test_concurrent_runs_on_one_graph_match_sequential_runs() -> None:
    config = WorkflowConfig(canary_share=0.5)
    graph = build_risk_graph(config=config)
    payloads = [APPROVE, REVIEW, REJECT, HIGH_RISK] * 5
    requests = [make_request(p, f"req-{i}") for i, p in enumerate(payloads)]
    sequential = [await run_risk_workflow(graph, r, config=config) for r in requests]
    concurrent = await asyncio.gather(
        *(run_risk_workflow(graph, r, config=config) for r in requests)
    )
    assert [s.model_dump() for s in concurrent] == [s.model_dump() for s in sequential]
    assert {s.llm_call.model_version for s in sequential if s.llm_call} == {
        "risk-llm-v1",
        "risk-llm-v2",
    }


def test_graph_channels_mirror_the_state_model() -> None:
    assert set(get_type_hints(RiskGraphState)) == set(RiskState.model_fields)
    initial = initial_graph_state(make_request(APPROVE))
    assert (
        RiskState.model_validate(initial).model_dump()
        == RiskState(
            request_id="req-1", tenant_id="t1", correlation_id="corr-req-1", payload=APPROVE
        ).model_dump()
    )


# --- failures raised from ainvoke ------------------------------------------------------


@pytest.mark.asyncio
async def test_invalid_input_raises_input_validation_error() -> None:
    graph = build_risk_graph()
    with pytest.raises(InputValidationError) as excinfo:
        await ainvoke_raw(graph, {**APPROVE, "amount": "-3"})
    assert excinfo.value.field == "amount"
    assert "amount" in str(excinfo.value)


@pytest.mark.asyncio
async def test_input_error_does_not_leak_the_payload() -> None:
    graph = build_risk_graph()
    secret = "jane@example.com " * 200
    with pytest.raises(InputValidationError) as excinfo:
        await ainvoke_raw(graph, {**APPROVE, "description": secret})
    assert excinfo.value.field == "description"
    assert "jane" not in str(excinfo.value)
    assert excinfo.value.__cause__ is None


@pytest.mark.asyncio
async def test_policy_breach_raises_policy_violation() -> None:
    graph = build_risk_graph()
    with pytest.raises(PolicyViolationError) as excinfo:
        await ainvoke_raw(graph, {**APPROVE, "country": "IR"})
    assert excinfo.value.policy == "sanctions"
    with pytest.raises(PolicyViolationError) as excinfo:
        await ainvoke_raw(graph, {**APPROVE, "amount": "2000000"})
    assert excinfo.value.policy == "amount_cap"


@pytest.mark.asyncio
async def test_infra_fault_raises_infrastructure_error() -> None:
    graph = build_risk_graph(config=WorkflowConfig(infra_failure_rate=1.0))
    with pytest.raises(InfrastructureError, match="simulated model endpoint failure"):
        await ainvoke_raw(graph, APPROVE)


@pytest.mark.asyncio
async def test_runner_raises_the_same_project_errors() -> None:
    config = WorkflowConfig(infra_failure_rate=1.0)
    graph = build_risk_graph(config=config)
    with pytest.raises(InfrastructureError):
        await run_risk_workflow(graph, make_request(APPROVE), config=config)
    with pytest.raises(InputValidationError):
        await run_risk_workflow(graph, make_request({"amount": "1"}), config=config)


# --- node_wrapper ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_node_wrapper_is_applied_to_every_node() -> None:
    wrapper = RecordingWrapper()
    config = WorkflowConfig()
    graph = build_risk_graph(config=config, node_wrapper=wrapper)
    assert tuple(wrapper.originals) == NODE_NAMES
    assert tuple(graph.builder.nodes) == NODE_NAMES
    async_nodes = {"risk_scoring", "evaluate"}
    for name in NODE_NAMES:
        original, returned = wrapper.originals[name], wrapper.returned[name]
        assert inspect.iscoroutinefunction(original) == (name in async_nodes)
        assert inspect.iscoroutinefunction(returned) == (name in async_nodes)
        runnable: Any = graph.builder.nodes[name].runnable
        if name in async_nodes:
            assert runnable.func is None and runnable.afunc is returned
        else:
            assert runnable.func is returned

    state = await run_risk_workflow(graph, make_request(APPROVE), config=config)
    assert state.decision == "approve"
    assert wrapper.calls == [n for n in NODE_NAMES if n != "escalate_for_approval"]

    wrapper.calls.clear()
    await run_risk_workflow(graph, make_request(REVIEW, "req-2"), config=config)
    assert wrapper.calls == [n for n in NODE_NAMES if n != "auto_decision"]


@pytest.mark.asyncio
async def test_runner_passes_recursion_limit_and_metadata() -> None:
    wrapper = RecordingWrapper()
    config = WorkflowConfig(recursion_limit=40)
    graph = build_risk_graph(config=config, node_wrapper=wrapper)
    await run_risk_workflow(graph, make_request(APPROVE, "req-9", "acme"), config=config)
    for name in ("validate_input", "risk_scoring", "finalize"):
        seen = wrapper.configs[name]
        assert seen["recursion_limit"] == 40
        assert seen["metadata"]["tenant_id"] == "acme"
        assert seen["metadata"]["correlation_id"] == "corr-req-9"
        assert seen["metadata"]["request_id"] == "req-9"


def test_node_wrapper_must_keep_the_calling_convention() -> None:
    def make_sync(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        return lambda state: fn(state)

    with pytest.raises(TypeError, match="risk_scoring"):
        build_risk_graph(node_wrapper=make_sync)


# --- evaluator -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_injected_evaluator_receives_the_validated_state() -> None:
    evaluator = StubEvaluator()
    state = await run(REVIEW, evaluator=evaluator)
    assert state.evaluation == {"quality": 0.9}
    assert len(evaluator.seen) == 1
    seen = evaluator.seen[0]
    assert isinstance(seen, RiskState)
    assert seen.decision == "review"
    assert seen.approval_required is True
    assert seen.transaction is not None


# --- interrupt mode --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_interrupt_mode_pauses_and_resumes_with_command() -> None:
    config = WorkflowConfig(interrupt_for_approval=True)
    graph = build_risk_graph(config=config)
    request = make_request(REVIEW, "req-int")
    paused = await run_risk_workflow(graph, request, config=config)
    assert paused.status == "awaiting_approval"
    assert paused.decision == "review"
    assert paused.approval_required is False

    thread: RunnableConfig = {"configurable": {"thread_id": "req-int"}, "recursion_limit": 25}
    snapshot = await graph.aget_state(thread)
    assert snapshot.next == ("escalate_for_approval",)
    assert snapshot.interrupts[0].value["request_id"] == "req-int"
    assert snapshot.interrupts[0].value["proposed_decision"] == "review"

    with langsmith_tracing_disabled():
        result = await graph.ainvoke(
            Command(resume={"decision": "approve", "reviewer": "alice"}), config=thread
        )
    resumed = RiskState.model_validate(result)
    assert resumed.decision == "approve"
    assert resumed.reviewer == "alice"
    assert resumed.approval_required is True
    assert resumed.status == "completed"
    assert paused.transaction is not None and resumed.transaction is not None
    assert resumed.transaction.amount == paused.transaction.amount


@pytest.mark.asyncio
async def test_resume_helper_checks_the_answer_before_sending() -> None:
    config = WorkflowConfig(interrupt_for_approval=True)
    graph = build_risk_graph(config=config)
    request = make_request(HIGH_RISK, "req-hr")
    assert (await run_risk_workflow(graph, request, config=config)).status == "awaiting_approval"
    with pytest.raises(InputValidationError) as excinfo:
        await resume_risk_workflow(graph, request, {"decision": "maybe"}, config=config)
    assert excinfo.value.field == "decision"
    with pytest.raises(InputValidationError) as excinfo:
        await resume_risk_workflow(graph, request, {"decision": "reject"}, config=config)
    assert excinfo.value.field == "reviewer"
    state = await resume_risk_workflow(
        graph, request, {"decision": "reject", "reviewer": "bob"}, config=config
    )
    assert (state.decision, state.reviewer, state.status) == ("reject", "bob", "completed")
    assert state.high_risk is True


@pytest.mark.asyncio
async def test_malformed_command_answer_asks_again() -> None:
    config = WorkflowConfig(interrupt_for_approval=True)
    graph = build_risk_graph(config=config)
    await run_risk_workflow(graph, make_request(REVIEW, "req-bad"), config=config)
    thread: RunnableConfig = {"configurable": {"thread_id": "req-bad"}, "recursion_limit": 25}
    with langsmith_tracing_disabled():
        again = await graph.ainvoke(Command(resume="yes please"), config=thread)
    (question,) = again["__interrupt__"]
    assert "approval answer must be a mapping" in question.value["problem"]
    assert again.get("status") == "received"
    with langsmith_tracing_disabled():
        done = await graph.ainvoke(
            Command(resume={"decision": "approve", "reviewer": "carol"}), config=thread
        )
    assert (done["decision"], done["reviewer"], done["status"]) == (
        "approve",
        "carol",
        "completed",
    )


@pytest.mark.asyncio
async def test_interrupt_mode_lets_automatic_decisions_through() -> None:
    config = WorkflowConfig(interrupt_for_approval=True)
    state = await run(APPROVE, config)
    assert (state.decision, state.status) == ("approve", "completed")


@pytest.mark.asyncio
async def test_resume_needs_a_checkpointer() -> None:
    config = WorkflowConfig()
    graph = build_risk_graph(config=config)
    with pytest.raises(WorkflowError, match="checkpointer"):
        await resume_risk_workflow(graph, make_request(REVIEW), {}, config=config)


# --- sync runner -------------------------------------------------------------------------


def test_sync_runner() -> None:
    config = WorkflowConfig()
    state = run_risk_workflow_sync(
        build_risk_graph(config=config), make_request(APPROVE), config=config
    )
    assert (state.decision, state.status) == ("approve", "completed")


@pytest.mark.asyncio
async def test_sync_runner_refuses_a_running_loop() -> None:
    config = WorkflowConfig()
    with pytest.raises(RuntimeError, match="inside an event loop"):
        run_risk_workflow_sync(
            build_risk_graph(config=config), make_request(APPROVE), config=config
        )


# --- LangSmith stays off ---------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.usefixtures("langsmith_env")
async def test_langsmith_stays_off_whatever_the_environment(
    network_attempts: list[object],
) -> None:
    assert ls_utils.tracing_is_enabled() is True  # the environment does ask for tracing
    wrapper = RecordingWrapper()
    config = WorkflowConfig()
    graph = build_risk_graph(config=config, node_wrapper=wrapper)
    state = await run_risk_workflow(graph, make_request(REVIEW), config=config)
    assert state.status == "escalated"
    assert network_attempts == []
    assert set(wrapper.tracing) == set(NODE_NAMES) - {"auto_decision"}
    assert set(wrapper.tracing.values()) == {False}  # sync (executor) and async nodes alike
    assert ls_utils.tracing_is_enabled() is True  # nothing global was changed


class RecordingTracer(BaseTracer):
    """Collects the runs it is given instead of sending them anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.persisted: list[Run] = []

    def _persist_run(self, run: Run) -> None:
        self.persisted.append(run)


@pytest.mark.asyncio
async def test_ambient_tracer_receives_no_runs(network_attempts: list[object]) -> None:
    tracer = RecordingTracer()
    graph = build_risk_graph()
    token = tracing_v2_callback_var.set(tracer)  # type: ignore[arg-type]
    try:
        await graph.ainvoke(initial_graph_state(make_request(APPROVE)))
        assert len(tracer.persisted) == 1  # control: an ambient tracer does see a raw run
        config = WorkflowConfig()
        await run_risk_workflow(graph, make_request(APPROVE), config=config)
    finally:
        tracing_v2_callback_var.reset(token)
    assert len(tracer.persisted) == 1
    assert network_attempts == []


@pytest.mark.asyncio
async def test_legacy_v1_tracing_variable_does_not_break_the_run(
    monkeypatch: pytest.MonkeyPatch, network_attempts: list[object]
) -> None:
    monkeypatch.setenv("LANGCHAIN_TRACING", "true")
    ls_utils.get_env_var.cache_clear()  # type: ignore[attr-defined]
    try:
        wrapper = RecordingWrapper()
        config = WorkflowConfig()
        graph = build_risk_graph(config=config, node_wrapper=wrapper)
        # Control: switching tracing off through langsmith's context alone makes
        # langchain-core refuse the legacy variable.
        with (
            langsmith.tracing_context(enabled=False),
            pytest.raises(RuntimeError, match="LangChainTracerV1"),
        ):
            await graph.ainvoke(initial_graph_state(make_request(APPROVE)))
        state = await run_risk_workflow(graph, make_request(APPROVE), config=config)
        assert state.status == "completed"
        monkeypatch.setenv("LANGCHAIN_TRACING_V2", "true")
        monkeypatch.setenv("LANGSMITH_API_KEY", "x")
        ls_utils.get_env_var.cache_clear()  # type: ignore[attr-defined]
        state = await run_risk_workflow(graph, make_request(REVIEW, "req-2"), config=config)
        assert state.status == "escalated"
    finally:
        monkeypatch.undo()
        ls_utils.get_env_var.cache_clear()  # type: ignore[attr-defined]
    assert set(wrapper.tracing.values()) == {False}
    assert len(wrapper.calls) == 2 * (len(NODE_NAMES) - 1)
    assert network_attempts == []
