"""``EvaluationService``: deterministic quality scores for a risk decision.

Scores are pure functions of the decision's inputs (no clock, no randomness),
each in ``[0, 1]`` and rounded to six decimals, so the same state always gets
the same scores:

* ``confidence_score`` -- the model's own confidence when the state has one,
  else how far the risk score sits from the undecided middle (``|r - 0.5| * 2``);
* ``policy_alignment_score`` -- the share of policies passed, halved when the
  decision approves despite a failed policy;
* ``guardrail_score`` -- the mean guardrail score (or the share passed);
* ``overall_quality_score`` -- ``0.4 confidence + 0.3 policy + 0.3 guardrail``,
  halved when there is no decision.

The result is stored in the workflow state it is given, observed in the
``quality_score`` histogram and emitted as an ``evaluation.completed`` audit
event.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.observability.audit import AuditLogger
from app.observability.catalog import NO_TENANT
from app.observability.metrics import MetricsCollector

__all__ = ("EvaluationResult", "EvaluationService")


class EvaluationResult(BaseModel):
    """The four quality scores of one decision."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    confidence_score: float = Field(ge=0, le=1)
    policy_alignment_score: float = Field(ge=0, le=1)
    guardrail_score: float = Field(ge=0, le=1)
    overall_quality_score: float = Field(ge=0, le=1)


def _get(state: Any, name: str, default: Any = None) -> Any:
    if isinstance(state, Mapping):
        return state.get(name, default)
    return getattr(state, name, default)


def _float(value: int | float) -> float:
    """``float(value)``; an int beyond the float range becomes +-inf, not OverflowError."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _clamp(value: float) -> float:
    if not math.isfinite(value):
        return 0.0
    return round(min(1.0, max(0.0, value)), 6)


def _items(field: str, results: Any) -> list[Any]:
    """The entries of a results field as a list (``None`` or empty: no entries)."""
    if not results:
        return []
    try:
        return list(results)
    except TypeError:
        raise TypeError(
            f"{field} must be a list of results, got {type(results).__name__}"
        ) from None


def _passed_share(items: Iterable[Any]) -> tuple[float, bool]:
    items = list(items)
    if not items:
        return 1.0, False
    passed = sum(1 for r in items if bool(_get(r, "passed", False)))
    return passed / len(items), passed < len(items)


class EvaluationService:
    """Scores risk decisions.

    Args:
        audit: Where ``evaluation.completed`` events go.
        metrics: Where ``quality_score`` is observed.
    """

    def __init__(
        self, *, audit: AuditLogger | None = None, metrics: MetricsCollector | None = None
    ) -> None:
        self._audit = audit
        self._metrics = metrics

    def score(self, state: Any) -> EvaluationResult:
        """Compute the scores of ``state`` without side effects.

        Args:
            state: A workflow state (mapping or object) with ``risk_score``,
                ``decision``, ``policy_results`` and ``guardrail_results``;
                an optional ``confidence``.

        Raises:
            TypeError: ``risk_score`` or ``confidence`` is not a number.
        """
        risk = _get(state, "risk_score")
        confidence = _get(state, "confidence")
        if confidence is None:  # the workflow's RiskState names it ``risk_confidence``
            confidence = _get(state, "risk_confidence")
        for field, value in (("risk_score", risk), ("confidence", confidence)):
            if value is not None and (isinstance(value, bool) or
                                      not isinstance(value, int | float)):
                raise TypeError(f"{field} must be a number, got {type(value).__name__}")
        if confidence is not None:
            confidence_score = _clamp(_float(confidence))
        elif risk is not None:
            confidence_score = _clamp(abs(_float(risk) - 0.5) * 2.0)
        else:
            confidence_score = 0.0
        decision = _get(state, "decision")
        policy_share, policy_failed = _passed_share(
            _items("policy_results", _get(state, "policy_results"))
        )
        if decision == "approve" and policy_failed:
            policy_share /= 2.0
        guardrails = _items("guardrail_results", _get(state, "guardrail_results"))
        if guardrails:
            scores = [_get(g, "score") for g in guardrails]
            if all(isinstance(s, int | float) and not isinstance(s, bool) for s in scores):
                guardrail_score = sum(_float(s) for s in scores) / len(scores)
            else:
                guardrail_score = _passed_share(guardrails)[0]
        else:
            guardrail_score = 1.0
        overall = 0.4 * confidence_score + 0.3 * policy_share + 0.3 * guardrail_score
        if decision is None:
            overall /= 2.0
        return EvaluationResult(
            confidence_score=confidence_score,
            policy_alignment_score=_clamp(policy_share),
            guardrail_score=_clamp(guardrail_score),
            overall_quality_score=_clamp(overall),
        )

    async def evaluate_decision(self, state: Any) -> EvaluationResult:
        """Score ``state``, store the result in it, count and audit it.

        The result is written to ``state["evaluation"]`` for a mapping or
        ``state.evaluation`` for an object that has that attribute.
        """
        return self.evaluate_decision_sync(state)

    def evaluate_decision_sync(self, state: Any) -> EvaluationResult:
        """Sync form of :meth:`evaluate_decision`."""
        result = self.score(state)
        tenant_id = _get(state, "tenant_id")
        # Observed before the state is touched: a refused label leaves the state as it was.
        if self._metrics is not None:
            self._metrics.observe(
                "quality_score", result.overall_quality_score,
                tenant_id=NO_TENANT if tenant_id is None else tenant_id,
            )
        if isinstance(state, MutableMapping):
            state["evaluation"] = result
        elif hasattr(state, "evaluation"):
            # A frozen state refuses the assignment: the caller keeps the returned result.
            with contextlib.suppress(AttributeError, TypeError, ValueError):
                state.evaluation = result
        if self._audit is not None:
            self._audit.log(
                "evaluation.completed",
                tenant_id=tenant_id,
                request_id=_get(state, "request_id"),
                correlation_id=_get(state, "correlation_id"),
                decision=_get(state, "decision"),
                **result.model_dump(),
            )
        return result
