"""Running the compiled workflow: one request in, one validated state out.

LangSmith tracing is switched off for every run, whatever ``LANGSMITH_TRACING``,
``LANGCHAIN_TRACING_V2`` or the API keys say, without touching ``os.environ``.
What decides it (langchain-core 1.x, langsmith 0.x): LangGraph's callback
manager asks ``langchain_core.tracers.context._tracing_v2_is_enabled()``, which
is true when the ``tracing_v2_callback_var`` context variable holds a tracer
(``tracing_v2_enabled()``), else returns ``langsmith.utils.tracing_is_enabled()``.
That function reads the ``enabled`` context variable first and the environment
only when it is unset. :func:`langsmith_tracing_disabled` sets both context
variables for the duration of the run; context variables are per task and
copied into the tasks and executor threads LangGraph starts, so nothing
global changes.

One legacy case: with ``LANGCHAIN_TRACING`` or ``LANGCHAIN_HANDLER`` set (the
retired v1 tracer), langchain-core raises ``RuntimeError`` whenever v2 tracing
is off. There the context variable holds a tracer that drops every run, which
keeps langchain-core satisfied and still sends nothing anywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import langsmith
from langchain_core.runnables import RunnableConfig
from langchain_core.tracers.base import BaseTracer
from langchain_core.tracers.context import tracing_v2_callback_var
from langchain_core.tracers.langchain import LangChainTracer
from langchain_core.tracers.schemas import Run
from langchain_core.utils.env import env_var_is_set
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import Command

from app.errors import WorkflowError
from app.workflows.langgraph.config import WorkflowConfig
from app.workflows.langgraph.graph import RiskGraph
from app.workflows.langgraph.nodes import parse_approval_answer
from app.workflows.langgraph.state import RiskRequest, RiskState, initial_graph_state

__all__ = (
    "langsmith_tracing_disabled",
    "resume_risk_workflow",
    "run_risk_workflow",
    "run_risk_workflow_sync",
)

_INTERRUPT_KEY = "__interrupt__"


class _DroppingTracer(BaseTracer):
    """A tracer that keeps nothing, for environments asking for the v1 tracer."""

    def _persist_run(self, run: Run) -> None:
        """Drop the finished run."""


@contextmanager
def langsmith_tracing_disabled() -> Iterator[None]:
    """Switch LangSmith tracing off in the current context.

    Yields:
        Nothing; tracing is off until the block exits, in this context and in
        every task or executor thread started from it.
    """
    ambient: LangChainTracer | None = None
    if env_var_is_set("LANGCHAIN_TRACING") or env_var_is_set("LANGCHAIN_HANDLER"):
        # The context variable is annotated LangChainTracer but any tracer works.
        ambient = cast(LangChainTracer, _DroppingTracer())
    token = tracing_v2_callback_var.set(ambient)
    try:
        with langsmith.tracing_context(enabled=False):
            yield
    finally:
        tracing_v2_callback_var.reset(token)


async def run_risk_workflow(
    graph: RiskGraph, request: RiskRequest, *, config: WorkflowConfig
) -> RiskState:
    """Run one request through the workflow.

    Args:
        graph: From :func:`~app.workflows.langgraph.graph.build_risk_graph`.
        request: The request.
        config: Supplies ``recursion_limit``.

    Returns:
        The validated final state; ``status`` is ``awaiting_approval`` when the
        run paused for a human (interrupt mode).

    Raises:
        InputValidationError: If the payload is invalid.
        PolicyViolationError: On a hard policy breach.
        InfrastructureError: If the model call fails.
        WorkflowError: If the graph misbehaves or returns no state.
    """
    with langsmith_tracing_disabled():
        result = await graph.ainvoke(
            initial_graph_state(request), config=_run_config(graph, request, config)
        )
    return _to_state(result)


async def resume_risk_workflow(
    graph: RiskGraph, request: RiskRequest, resume: Any, *, config: WorkflowConfig
) -> RiskState:
    """Resume a run paused for approval with the human's answer.

    Args:
        graph: The graph the run paused in (same checkpointer).
        request: The paused request; its ``request_id`` is the thread id.
        resume: The answer, ``{"decision": "approve" | "reject", "reviewer": str}``.
        config: Supplies ``recursion_limit``.

    Returns:
        The validated final state.

    Raises:
        InputValidationError: If the answer is malformed; it is checked before
            anything is sent, so the run stays paused and can be resumed again.
        WorkflowError: If the graph has no checkpointer.
    """
    if not isinstance(graph.checkpointer, BaseCheckpointSaver):
        raise WorkflowError("cannot resume: the graph has no checkpointer")
    parse_approval_answer(resume)
    with langsmith_tracing_disabled():
        result = await graph.ainvoke(
            Command(resume=resume), config=_run_config(graph, request, config)
        )
    return _to_state(result)


def run_risk_workflow_sync(
    graph: RiskGraph, request: RiskRequest, *, config: WorkflowConfig
) -> RiskState:
    """Run one request from synchronous code, in a fresh event loop.

    Args:
        graph: From :func:`~app.workflows.langgraph.graph.build_risk_graph`.
        request: The request.
        config: Supplies ``recursion_limit``.

    Returns:
        The validated final state.

    Raises:
        RuntimeError: If called from a running event loop (await
            :func:`run_risk_workflow` there instead).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_risk_workflow(graph, request, config=config))
    raise RuntimeError(
        "run_risk_workflow_sync cannot run inside an event loop; await run_risk_workflow"
    )


def _run_config(graph: RiskGraph, request: RiskRequest, config: WorkflowConfig) -> RunnableConfig:
    run_config: RunnableConfig = {
        "recursion_limit": config.recursion_limit,
        "metadata": {
            "tenant_id": request.tenant_id,
            "correlation_id": request.correlation_id,
            "request_id": request.request_id,
        },
    }
    if isinstance(graph.checkpointer, BaseCheckpointSaver):
        run_config["configurable"] = {"thread_id": request.request_id}
    return run_config


def _to_state(result: Any) -> RiskState:
    if not isinstance(result, dict):
        raise WorkflowError(f"the graph returned {type(result).__name__}, not a state")
    values = dict(result)
    if values.pop(_INTERRUPT_KEY, None):
        values["status"] = "awaiting_approval"
    return RiskState.model_validate(values)
