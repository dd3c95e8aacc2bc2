"""Assembly of the risk workflow on LangGraph's ``StateGraph``.

::

    validate_input -> risk_scoring -> policy_check -> guardrail_check -> decide
        -> auto_decision | escalate_for_approval -> evaluate -> finalize -> END
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeAlias

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from app.workflows.langgraph.config import WorkflowConfig
from app.workflows.langgraph.guardrails import GuardrailSuite
from app.workflows.langgraph.llm import SimulatedLLM
from app.workflows.langgraph.nodes import DecisionEvaluator, RiskNodes
from app.workflows.langgraph.policies import PolicyEngine
from app.workflows.langgraph.registry import DEFAULT_REGISTRY, ModelRegistry
from app.workflows.langgraph.state import (
    GuardrailResult,
    LLMCall,
    PolicyResult,
    RiskGraphState,
    Transaction,
)
from collectors.logs import get_logger

__all__ = (
    "GRAPH_NAME",
    "NODE_NAMES",
    "NodeWrapper",
    "RiskGraph",
    "build_risk_graph",
)

_logger = get_logger(__name__)

#: The compiled workflow; its input and output are :class:`RiskGraphState`.
RiskGraph: TypeAlias = CompiledStateGraph[RiskGraphState, None, RiskGraphState, RiskGraphState]
#: ``node_wrapper(name, fn)`` returns what LangGraph runs instead of ``fn``.
NodeWrapper: TypeAlias = Callable[[str, Callable[..., Any]], Callable[..., Any]]

GRAPH_NAME = "risk_workflow"
#: Every node, in execution order (``auto_decision`` and
#: ``escalate_for_approval`` are the two branches after ``decide``).
NODE_NAMES: tuple[str, ...] = (
    "validate_input",
    "risk_scoring",
    "policy_check",
    "guardrail_check",
    "decide",
    "auto_decision",
    "escalate_for_approval",
    "evaluate",
    "finalize",
)

# Types stored in checkpoints, allowed back in by the default interrupt-mode saver.
_CHECKPOINT_TYPES: tuple[type, ...] = (Transaction, LLMCall, PolicyResult, GuardrailResult)


def build_risk_graph(
    *,
    config: WorkflowConfig | None = None,
    llm: SimulatedLLM | None = None,
    evaluator: DecisionEvaluator | None = None,
    node_wrapper: NodeWrapper | None = None,
    checkpointer: BaseCheckpointSaver[Any] | None = None,
    registry: ModelRegistry | None = None,
    remaining_budget: Callable[[str], Decimal | None] | None = None,
) -> RiskGraph:
    """Build and compile the risk workflow.

    Args:
        config: Workflow configuration; defaults to ``WorkflowConfig()``.
        llm: The scoring model; by default a :class:`SimulatedLLM` made from
            ``config.seed``, ``config.llm_latency_seconds`` and
            ``config.infra_failure_rate`` (an explicit one keeps its own).
        evaluator: Judge called by the ``evaluate`` node; without one that
            node does nothing.
        node_wrapper: Applied once per node as ``node_wrapper(name, fn)`` while
            the graph is built; LangGraph runs what it returns. It must keep a
            coroutine function a coroutine function and a plain function plain
            (LangGraph runs plain nodes in its executor under ``ainvoke``).
        checkpointer: LangGraph checkpointer. In ``interrupt_for_approval``
            mode an :class:`~langgraph.checkpoint.memory.InMemorySaver` is made
            when none is given, since a paused run must be stored to resume.
        registry: Model and prompt versions; defaults to the shipped registry.
        remaining_budget: Tenant id -> what is left of its budget
            (``obs.costs.remaining_budget``); used only with
            ``config.refuse_over_budget``.

    Returns:
        The compiled graph, named ``risk_workflow``.

    Raises:
        ValueError: If a tenant pins an unregistered version.
        TypeError: If ``node_wrapper`` turns an async node sync or the reverse.
    """
    config = config if config is not None else WorkflowConfig()
    registry = registry if registry is not None else DEFAULT_REGISTRY
    registry.validate_pins(config.pinned_versions)
    if llm is None:
        llm = SimulatedLLM(
            seed=config.seed,
            latency_seconds=config.llm_latency_seconds,
            infra_failure_rate=config.infra_failure_rate,
        )
    nodes = RiskNodes(
        config=config,
        llm=llm,
        registry=registry,
        policies=PolicyEngine(
            sanctioned_countries=config.sanctioned_countries,
            amount_cap_usd=config.amount_cap_usd,
            review_amount_usd=config.review_amount_usd,
            elevated_risk_countries=config.elevated_risk_countries,
        ),
        guardrails=GuardrailSuite(min_confidence=config.min_confidence),
        evaluator=evaluator,
        remaining_budget=remaining_budget,
    )

    builder = StateGraph(RiskGraphState)
    for name, fn in _node_functions(nodes):
        action = fn if node_wrapper is None else _wrap(node_wrapper, name, fn)
        builder.add_node(name, action, input_schema=RiskGraphState)
    builder.add_edge(START, "validate_input")
    builder.add_edge("validate_input", "risk_scoring")
    builder.add_edge("risk_scoring", "policy_check")
    builder.add_edge("policy_check", "guardrail_check")
    builder.add_edge("guardrail_check", "decide")
    builder.add_conditional_edges(
        "decide", nodes.route_after_decide, ["auto_decision", "escalate_for_approval"]
    )
    builder.add_edge("auto_decision", "evaluate")
    builder.add_edge("escalate_for_approval", "evaluate")
    builder.add_edge("evaluate", "finalize")
    builder.add_edge("finalize", END)

    if config.interrupt_for_approval and checkpointer is None:
        checkpointer = InMemorySaver(
            serde=JsonPlusSerializer(allowed_msgpack_modules=_CHECKPOINT_TYPES)
        )
    graph = builder.compile(checkpointer=checkpointer, name=GRAPH_NAME)
    _logger.debug(
        "risk_graph_built",
        wrapped=node_wrapper is not None,
        checkpointer=type(checkpointer).__name__ if checkpointer is not None else None,
        interrupt_for_approval=config.interrupt_for_approval,
    )
    return graph


def _node_functions(nodes: RiskNodes) -> tuple[tuple[str, Callable[..., Any]], ...]:
    functions: tuple[tuple[str, Callable[..., Any]], ...] = (
        ("validate_input", nodes.validate_input),
        ("risk_scoring", nodes.risk_scoring),
        ("policy_check", nodes.policy_check),
        ("guardrail_check", nodes.guardrail_check),
        ("decide", nodes.decide),
        ("auto_decision", nodes.auto_decision),
        ("escalate_for_approval", nodes.escalate_for_approval),
        ("evaluate", nodes.evaluate),
        ("finalize", nodes.finalize),
    )
    return functions


def _wrap(node_wrapper: NodeWrapper, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    wrapped = node_wrapper(name, fn)
    if not callable(wrapped):
        raise TypeError(f"node_wrapper returned a non-callable for node {name!r}")
    if _is_async(wrapped) != _is_async(fn):
        kind = "coroutine function" if _is_async(fn) else "plain function"
        raise TypeError(f"node_wrapper must keep node {name!r} a {kind}")
    return wrapped


def _is_async(fn: Callable[..., Any]) -> bool:
    # The same test LangGraph applies to decide between func and afunc.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - a callable object's async __call__
    )
