"""LangSmith stays off through ``InstrumentedRiskWorkflow`` whatever the environment says:
no tracer inside the nodes and no network attempt, while our own observability records."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from langchain_core.tracers.base import BaseTracer
from langchain_core.tracers.context import _tracing_v2_is_enabled, tracing_v2_callback_var
from langchain_core.tracers.langchain import LangChainTracer
from langchain_core.tracers.schemas import Run
from langgraph.config import get_config
from langsmith import utils as ls_utils

from app.errors import PolicyViolationError
from app.observability import Observability
from app.workflows.langgraph import (
    LLMResponse,
    PromptVersion,
    RiskRequest,
    SimulatedLLM,
    Transaction,
    WorkflowConfig,
)
from app.workflows.langgraph.instrumentation import InstrumentedRiskWorkflow
from tests.unit.workflows.payloads import APPROVE, REVIEW


def make_request(payload: dict[str, Any], request_id: str, tenant: str = "t1") -> RiskRequest:
    return RiskRequest(
        request_id=request_id, tenant_id=tenant, correlation_id=f"corr-{request_id}",
        payload=payload,
    )


class SpyLLM(SimulatedLLM):
    """Notes, from inside the ``risk_scoring`` node, whether anything would trace."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[object, object, tuple[str, ...]]] = []

    async def score(
        self, transaction: Transaction, request_id: str, model_version: str, prompt: PromptVersion
    ) -> LLMResponse:
        callbacks: Any = get_config().get("callbacks")
        handlers = tuple(type(h).__name__ for h in getattr(callbacks, "handlers", ()) or ())
        assert not any(isinstance(h, LangChainTracer) for h in getattr(callbacks, "handlers", ()))
        self.seen.append((ls_utils.tracing_is_enabled(), _tracing_v2_is_enabled(), handlers))
        return await super().score(transaction, request_id, model_version, prompt)


class RecordingTracer(BaseTracer):
    """Keeps the runs it is given instead of sending them anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.persisted: list[Run] = []

    def _persist_run(self, run: Run) -> None:
        self.persisted.append(run)


def test_the_network_guard_sees_an_attempt(network_attempts: list[object]) -> None:
    """Control: the guard below would notice a connection."""
    with pytest.raises(OSError, match="network disabled"):
        socket.create_connection(("api.smith.langchain.com", 443), timeout=1)
    with pytest.raises(OSError, match="network disabled"):
        socket.getaddrinfo("api.smith.langchain.com", 443)
    assert len(network_attempts) == 2


@pytest.mark.asyncio
@pytest.mark.usefixtures("langsmith_env")
async def test_instrumented_runs_never_trace_to_langsmith(
    obs: Observability, network_attempts: list[object]
) -> None:
    # Control: the environment does ask for LangSmith tracing.
    assert ls_utils.tracing_is_enabled() is True
    assert _tracing_v2_is_enabled() is True
    llm = SpyLLM()
    wf = InstrumentedRiskWorkflow(obs, llm=llm)

    assert (await wf.run(make_request(APPROVE, "req-1"))).status == "completed"
    assert (await wf.run(make_request(REVIEW, "req-2"))).status == "escalated"
    with pytest.raises(PolicyViolationError):
        await wf.run(make_request({**APPROVE, "country": "IR"}, "req-3"))
    await asyncio.gather(*(wf.run(make_request(APPROVE, f"req-c{i}", f"t{i}")) for i in range(8)))
    assert await obs.aflush()

    assert network_attempts == []
    assert len(llm.seen) == 11
    assert {(enabled, v2) for enabled, v2, _ in llm.seen} == {(False, False)}
    assert not any("Tracer" in name for _, _, handlers in llm.seen for name in handlers)
    assert ls_utils.tracing_is_enabled() is True  # nothing global was changed
    # Our own observability still saw every run.
    requests = obs.metrics.export_metrics()["request_count"]["series"]
    assert sum(s["value"] for s in requests) == 11
    assert len([s for s in obs.tracing.finished_spans() if s.kind == "workflow"]) == 11


@pytest.mark.asyncio
@pytest.mark.usefixtures("langsmith_env")
async def test_paused_and_resumed_runs_never_trace_to_langsmith(
    obs: Observability, network_attempts: list[object]
) -> None:
    llm = SpyLLM()
    wf = InstrumentedRiskWorkflow(obs, llm=llm, config=WorkflowConfig(interrupt_for_approval=True))
    request = make_request(REVIEW, "req-int")
    assert (await wf.run(request)).status == "awaiting_approval"
    resumed = await wf.resume(request, {"decision": "approve", "reviewer": "alice"})
    assert resumed.status == "completed"
    assert await obs.aflush()
    assert network_attempts == []
    assert [(enabled, v2) for enabled, v2, _ in llm.seen] == [(False, False)]
    assert len([s for s in obs.tracing.finished_spans() if s.kind == "workflow"]) == 2


@pytest.mark.asyncio
async def test_the_legacy_v1_variable_neither_breaks_nor_traces(
    obs: Observability, monkeypatch: pytest.MonkeyPatch, network_attempts: list[object]
) -> None:
    monkeypatch.setenv("LANGCHAIN_TRACING", "true")
    monkeypatch.setenv("LANGCHAIN_TRACING_V2", "true")
    monkeypatch.setenv("LANGCHAIN_API_KEY", "lsv2-not-a-real-key")
    ls_utils.get_env_var.cache_clear()  # type: ignore[attr-defined]
    try:
        llm = SpyLLM()
        wf = InstrumentedRiskWorkflow(obs, llm=llm)
        assert (await wf.run(make_request(APPROVE, "req-v1"))).status == "completed"
    finally:
        monkeypatch.undo()
        ls_utils.get_env_var.cache_clear()  # type: ignore[attr-defined]
    assert network_attempts == []
    assert [enabled for enabled, _, _ in llm.seen] == [False]
    assert await obs.aflush()
    assert obs.costs.get_request_cost("req-v1") is not None


@pytest.mark.asyncio
async def test_an_ambient_tracer_receives_nothing_from_instrumented_runs(
    obs: Observability, network_attempts: list[object]
) -> None:
    tracer = RecordingTracer()
    llm = SpyLLM()
    wf = InstrumentedRiskWorkflow(obs, llm=llm)
    token = tracing_v2_callback_var.set(tracer)  # type: ignore[arg-type]
    try:
        await wf.run(make_request(APPROVE, "req-ambient"))
    finally:
        tracing_v2_callback_var.reset(token)
    assert tracer.persisted == []
    assert llm.seen == [(False, False, ())]
    assert network_attempts == []
