"""The workflow's nodes: each takes the graph state and returns a partial update.

The nodes are methods of :class:`RiskNodes`, which holds their dependencies.
``risk_scoring`` and ``evaluate`` are coroutines; the others are plain
functions, which LangGraph runs in its executor under ``ainvoke``. Nodes build
no pydantic model beyond the state's own records, and never log: the
instrumentation wraps them from outside (see ``build_risk_graph``'s
``node_wrapper``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Literal, Protocol, runtime_checkable

from langgraph.types import interrupt
from pydantic import ValidationError

from app.errors import (
    InfrastructureError,
    InputValidationError,
    PolicyViolationError,
    WorkflowError,
)
from app.workflows.langgraph.config import WorkflowConfig
from app.workflows.langgraph.guardrails import GuardrailSuite
from app.workflows.langgraph.llm import SimulatedLLM
from app.workflows.langgraph.policies import PolicyEngine
from app.workflows.langgraph.registry import ModelRegistry
from app.workflows.langgraph.state import (
    Decision,
    LLMCall,
    RiskGraphState,
    RiskState,
    RiskStateUpdate,
    Transaction,
)

__all__ = (
    "DecisionEvaluator",
    "RiskNodes",
    "Route",
    "parse_approval_answer",
)

Route = Literal["auto_decision", "escalate_for_approval"]


@runtime_checkable
class DecisionEvaluator(Protocol):
    """Judges a finished decision; injected into the ``evaluate`` node."""

    async def evaluate_decision(self, state: RiskState) -> Any:
        """Evaluate the decision of one run.

        Args:
            state: The validated state after the decision.

        Returns:
            Anything; it is stored as ``RiskState.evaluation``.
        """
        ...


class RiskNodes:
    """The node functions of the risk workflow and the routing after ``decide``.

    Args:
        config: Thresholds, canary share, seed, pins, interrupt mode.
        llm: The scoring model.
        registry: Model and prompt versions.
        policies: The policy rules.
        guardrails: The checks on the model's output.
        evaluator: Optional judge called by ``evaluate``.
        remaining_budget: Tenant id -> what is left of its budget (``None``: no
            budget); with ``config.refuse_over_budget``, a tenant with nothing
            left is refused before the model is called.
    """

    __slots__ = (
        "_approve_threshold",
        "_canary_share",
        "_evaluator",
        "_guardrails",
        "_high_risk_threshold",
        "_interrupt_for_approval",
        "_llm",
        "_pins",
        "_policies",
        "_registry",
        "_reject_threshold",
        "_remaining_budget",
        "_seed",
    )

    def __init__(
        self,
        *,
        config: WorkflowConfig,
        llm: SimulatedLLM,
        registry: ModelRegistry,
        policies: PolicyEngine,
        guardrails: GuardrailSuite,
        evaluator: DecisionEvaluator | None = None,
        remaining_budget: Callable[[str], Decimal | None] | None = None,
    ) -> None:
        self._approve_threshold = config.approve_threshold
        # Asked before each model call when the config refuses tenants over budget.
        self._remaining_budget = remaining_budget if config.refuse_over_budget else None
        self._reject_threshold = config.reject_threshold
        self._high_risk_threshold = config.high_risk_threshold
        self._canary_share = config.canary_share
        self._seed = config.seed
        self._pins = config.pinned_versions
        self._interrupt_for_approval = config.interrupt_for_approval
        self._llm = llm
        self._registry = registry
        self._policies = policies
        self._guardrails = guardrails
        self._evaluator = evaluator

    def validate_input(self, state: RiskGraphState) -> RiskStateUpdate:
        """Parse the raw payload into a :class:`Transaction`.

        Args:
            state: The graph state.

        Returns:
            ``transaction``.

        Raises:
            InputValidationError: Naming the first invalid field. The payload's
                values are left out of the message (the description may hold
                personal data), so the pydantic error is not chained.
        """
        try:
            transaction = Transaction.model_validate(state["payload"])
        except ValidationError as exc:
            raise _input_error(exc) from None
        return {"transaction": transaction}

    async def risk_scoring(self, state: RiskGraphState) -> RiskStateUpdate:
        """Score the transaction with the model and prompt selected for the request.

        Args:
            state: The graph state.

        Returns:
            ``risk_score``, ``risk_rationale``, ``risk_confidence`` and
            ``llm_call`` (the key the instrumentation logs as a generation).

        Raises:
            InfrastructureError: If the model call fails.
            PolicyViolationError: The tenant's budget is spent (only with
                ``refuse_over_budget``); nothing is spent on the model.
            WorkflowError: If no transaction was validated before.
        """
        transaction = _require_transaction(state, "risk_scoring")
        request_id = state["request_id"]
        if self._remaining_budget is not None:
            remaining = self._remaining_budget(state["tenant_id"])
            if remaining is not None and remaining <= 0:
                raise PolicyViolationError(
                    f"tenant {state['tenant_id']!r} has spent its budget for this period",
                    policy="budget",
                )
        selection = self._registry.select(
            request_id,
            state["tenant_id"],
            canary_share=self._canary_share,
            seed=self._seed,
            pins=self._pins,
        )
        started = time.perf_counter()
        try:
            response = await self._llm.score(
                transaction, request_id, selection.model.name, selection.prompt
            )
        except InfrastructureError as exc:
            # The failed call is still a generation (status error) in the trace.
            exc.llm_call = LLMCall(  # type: ignore[attr-defined]
                model_version=selection.model.name, prompt_version=selection.prompt.id,
                input_tokens=0, output_tokens=0,
                latency_seconds=time.perf_counter() - started,
            )
            raise
        return {
            "risk_score": response.risk_score,
            "risk_rationale": response.rationale,
            "risk_confidence": response.confidence,
            "llm_call": LLMCall(
                model_version=response.model_version,
                prompt_version=response.prompt_version,
                input_tokens=response.input_tokens,
                output_tokens=response.output_tokens,
                latency_seconds=response.latency_seconds,
            ),
        }

    def policy_check(self, state: RiskGraphState) -> RiskStateUpdate:
        """Apply the policy rules.

        Args:
            state: The graph state.

        Returns:
            ``policy_results``, and ``errors`` extended by the failed soft rules.

        Raises:
            PolicyViolationError: On a hard breach.
            WorkflowError: If no transaction was validated before.
        """
        results = self._policies.evaluate(_require_transaction(state, "policy_check"))
        failed = [f"policy {r.name} failed: {r.detail}" for r in results if not r.passed]
        update: RiskStateUpdate = {"policy_results": results}
        if failed:
            update["errors"] = [*state.get("errors", ()), *failed]
        return update

    def guardrail_check(self, state: RiskGraphState) -> RiskStateUpdate:
        """Check the model's output.

        Args:
            state: The graph state.

        Returns:
            ``guardrail_results``, and ``errors`` extended by the failed checks.

        Raises:
            WorkflowError: If the transaction or the score is missing.
        """
        transaction = _require_transaction(state, "guardrail_check")
        risk_score = state.get("risk_score")
        confidence = state.get("risk_confidence")
        if risk_score is None or confidence is None:
            raise WorkflowError("guardrail_check ran before risk_scoring")
        results = self._guardrails.check(
            transaction,
            risk_score=risk_score,
            rationale=state.get("risk_rationale") or "",
            confidence=confidence,
        )
        failed = [f"guardrail {r.name} failed: {r.detail}" for r in results if not r.passed]
        update: RiskStateUpdate = {"guardrail_results": results}
        if failed:
            update["errors"] = [*state.get("errors", ()), *failed]
        return update

    def decide(self, state: RiskGraphState) -> RiskStateUpdate:
        """Turn the score and the checks into a decision.

        Below ``approve_threshold``: approve; above ``reject_threshold``:
        reject; in between, or whenever a soft policy or a guardrail failed:
        review. At or above ``high_risk_threshold`` the case is high risk.

        Args:
            state: The graph state.

        Returns:
            ``decision`` and ``high_risk``.

        Raises:
            WorkflowError: If there is no score.
        """
        risk_score = state.get("risk_score")
        if risk_score is None:
            raise WorkflowError("decide ran before risk_scoring")
        decision: Decision
        if risk_score < self._approve_threshold:
            decision = "approve"
        elif risk_score > self._reject_threshold:
            decision = "reject"
        else:
            decision = "review"
        if any(not r.passed for r in state.get("policy_results", ())) or any(
            not r.passed for r in state.get("guardrail_results", ())
        ):
            decision = "review"
        return {"decision": decision, "high_risk": risk_score >= self._high_risk_threshold}

    def route_after_decide(self, state: RiskGraphState) -> Route:
        """Send reviews and high-risk cases to approval, the rest to auto decision.

        Args:
            state: The graph state.

        Returns:
            The next node's name.

        Raises:
            WorkflowError: If ``decide`` left no decision.
        """
        decision = state.get("decision")
        if decision is None:
            raise WorkflowError("routing after decide found no decision")
        if decision == "review" or state.get("high_risk", False):
            return "escalate_for_approval"
        return "auto_decision"

    def auto_decision(self, state: RiskGraphState) -> RiskStateUpdate:
        """Keep the automatic decision.

        Args:
            state: The graph state.

        Returns:
            ``approval_required`` set to ``False``.
        """
        return {"approval_required": False}

    def escalate_for_approval(self, state: RiskGraphState) -> RiskStateUpdate:
        """Hand the case to a human.

        By default it only marks the case. With ``interrupt_for_approval`` the
        run pauses in :func:`langgraph.types.interrupt`; it resumes with
        ``Command(resume={"decision": "approve" | "reject", "reviewer": str})``
        and the human's decision replaces the automatic one. A malformed
        answer does not fail the run: the node asks again (a new interrupt
        whose value carries ``problem``), since LangGraph replays the answers
        already given to earlier interrupts of the node on every resume.

        Args:
            state: The graph state.

        Returns:
            ``approval_required``, plus ``decision`` and ``reviewer`` when a
            human answered.
        """
        if not self._interrupt_for_approval:
            return {"approval_required": True}
        question: dict[str, Any] = {
            "request_id": state["request_id"],
            "tenant_id": state["tenant_id"],
            "proposed_decision": state.get("decision"),
            "risk_score": state.get("risk_score"),
            "high_risk": state.get("high_risk", False),
            "reasons": list(state.get("errors", ())),
        }
        while True:
            answer = interrupt(question)
            try:
                decision, reviewer = parse_approval_answer(answer)
            except InputValidationError as exc:
                question = {**question, "problem": str(exc)}
                continue
            return {"approval_required": True, "decision": decision, "reviewer": reviewer}

    async def evaluate(self, state: RiskGraphState) -> RiskStateUpdate:
        """Let the injected evaluator judge the decision; a no-op without one.

        Args:
            state: The graph state.

        Returns:
            ``evaluation``, or nothing when no evaluator is injected.
        """
        if self._evaluator is None:
            return {}
        result = await self._evaluator.evaluate_decision(RiskState.model_validate(state))
        return {"evaluation": result}

    def finalize(self, state: RiskGraphState) -> RiskStateUpdate:
        """Set the final status.

        Args:
            state: The graph state.

        Returns:
            ``status``: ``escalated`` when a human still has to look at the case,
            ``completed`` otherwise.
        """
        if state.get("approval_required", False) and state.get("reviewer") is None:
            return {"status": "escalated"}
        return {"status": "completed"}


def _require_transaction(state: RiskGraphState, node: str) -> Transaction:
    transaction = state.get("transaction")
    if transaction is None:
        raise WorkflowError(f"{node} ran before validate_input")
    return transaction


def _input_error(exc: ValidationError) -> InputValidationError:
    problems = exc.errors(include_url=False, include_input=False, include_context=False)
    locations = [".".join(str(part) for part in p["loc"]) or "payload" for p in problems]
    detail = "; ".join(f"{loc}: {p['msg']}" for loc, p in zip(locations, problems, strict=True))
    return InputValidationError(f"invalid field {locations[0]!r}: {detail}", field=locations[0])


def parse_approval_answer(answer: object) -> tuple[Decision, str]:
    """Read a human's answer to an approval interrupt.

    Args:
        answer: ``{"decision": "approve" | "reject", "reviewer": <non-empty str>}``.

    Returns:
        The decision and the reviewer.

    Raises:
        InputValidationError: Naming ``decision`` or ``reviewer``.
    """
    if not isinstance(answer, Mapping):
        raise InputValidationError(
            "approval answer must be a mapping with 'decision' and 'reviewer'", field="decision"
        )
    decision = answer.get("decision")
    if decision == "approve" or decision == "reject":
        reviewer = answer.get("reviewer")
        if not isinstance(reviewer, str) or not reviewer.strip():
            raise InputValidationError("approval answer needs a reviewer", field="reviewer")
        return decision, reviewer
    raise InputValidationError("approval decision must be 'approve' or 'reject'", field="decision")
