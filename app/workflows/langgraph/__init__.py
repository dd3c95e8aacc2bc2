"""The risk workflow on LangGraph: domain, nodes, graph factory and runner.

Typical use::

    config = WorkflowConfig()
    graph = build_risk_graph(config=config, node_wrapper=instrument)
    state = await run_risk_workflow(graph, request, config=config)

For a compiled graph that cannot be rebuilt with a ``node_wrapper``, the
optional (off by default, costlier) :class:`ObservabilityCallbackHandler` goes
in the run's ``config["callbacks"]`` instead.
"""

from __future__ import annotations

from app.workflows.langgraph.callbacks import ObservabilityCallbackHandler
from app.workflows.langgraph.config import WorkflowConfig
from app.workflows.langgraph.graph import (
    GRAPH_NAME,
    NODE_NAMES,
    NodeWrapper,
    RiskGraph,
    build_risk_graph,
)
from app.workflows.langgraph.guardrails import GuardrailSuite
from app.workflows.langgraph.llm import LLMResponse, SimulatedLLM
from app.workflows.langgraph.nodes import DecisionEvaluator, RiskNodes, parse_approval_answer
from app.workflows.langgraph.policies import PolicyEngine
from app.workflows.langgraph.registry import (
    DEFAULT_REGISTRY,
    ModelRegistry,
    ModelVersion,
    PromptVersion,
    VersionPin,
    VersionSelection,
)
from app.workflows.langgraph.runner import (
    langsmith_tracing_disabled,
    resume_risk_workflow,
    run_risk_workflow,
    run_risk_workflow_sync,
)
from app.workflows.langgraph.state import (
    GuardrailResult,
    LLMCall,
    PolicyResult,
    RiskGraphState,
    RiskRequest,
    RiskState,
    RiskStateUpdate,
    Transaction,
    initial_graph_state,
)

__all__ = (
    "DEFAULT_REGISTRY",
    "GRAPH_NAME",
    "NODE_NAMES",
    "DecisionEvaluator",
    "GuardrailResult",
    "GuardrailSuite",
    "LLMCall",
    "LLMResponse",
    "ModelRegistry",
    "ModelVersion",
    "NodeWrapper",
    "ObservabilityCallbackHandler",
    "PolicyEngine",
    "PolicyResult",
    "PromptVersion",
    "RiskGraph",
    "RiskGraphState",
    "RiskNodes",
    "RiskRequest",
    "RiskState",
    "RiskStateUpdate",
    "SimulatedLLM",
    "Transaction",
    "VersionPin",
    "VersionSelection",
    "WorkflowConfig",
    "build_risk_graph",
    "initial_graph_state",
    "langsmith_tracing_disabled",
    "parse_approval_answer",
    "resume_risk_workflow",
    "run_risk_workflow",
    "run_risk_workflow_sync",
)
