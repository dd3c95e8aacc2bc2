"""Configuration of the risk workflow."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.workflows.langgraph.policies import (
    DEFAULT_ELEVATED_RISK_COUNTRIES,
    DEFAULT_SANCTIONED_COUNTRIES,
)
from app.workflows.langgraph.registry import VersionPin

__all__ = ("WorkflowConfig",)

_Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class WorkflowConfig(BaseModel):
    """Everything that tunes the workflow; immutable once built.

    Attributes:
        approve_threshold: A score below this is approved.
        reject_threshold: A score above this is rejected; scores from
            ``approve_threshold`` to ``reject_threshold`` inclusive go to review.
        high_risk_threshold: A score at or above this is high risk and goes to
            human approval whatever the decision.
        canary_share: Share of requests routed to the canary model and prompt.
        seed: Seed of every deterministic draw (canary, jitter, faults).
        infra_failure_rate: Share of requests whose model call fails.
        llm_latency_seconds: Simulated model latency; ``0`` never awaits.
        recursion_limit: LangGraph's step limit for one run (at least the 8
            steps of the longest path).
        interrupt_for_approval: Pause escalated runs for a human (needs a
            checkpointer; one in memory is made when none is given).
        pinned_versions: Model/prompt versions pinned per tenant id.
        sanctioned_countries: Hard policy ``sanctions``.
        elevated_risk_countries: Soft policy ``elevated_risk_country``.
        amount_cap_usd: Hard policy ``amount_cap``.
        review_amount_usd: Soft policy ``large_amount``.
        min_confidence: Guardrail ``confidence_floor``.
        refuse_over_budget: Before the model is called, ask the tenant's
            remaining budget (``obs.costs.remaining_budget``, injected as
            ``remaining_budget``) and refuse a tenant with nothing left with a
            ``PolicyViolationError`` (policy ``budget``, category
            POLICY_VIOLATION), so nothing more is spent.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    approve_threshold: _Fraction = 0.3
    reject_threshold: _Fraction = 0.7
    high_risk_threshold: _Fraction = 0.85
    canary_share: _Fraction = 0.10
    seed: int = 0
    infra_failure_rate: _Fraction = 0.0
    llm_latency_seconds: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    # The longest path through the graph takes 8 supersteps.
    recursion_limit: Annotated[int, Field(ge=8)] = 25
    interrupt_for_approval: bool = False
    pinned_versions: dict[str, VersionPin] = Field(default_factory=dict)
    sanctioned_countries: frozenset[str] = DEFAULT_SANCTIONED_COUNTRIES
    elevated_risk_countries: frozenset[str] = DEFAULT_ELEVATED_RISK_COUNTRIES
    amount_cap_usd: Annotated[Decimal, Field(gt=0)] = Decimal("1000000")
    review_amount_usd: Annotated[Decimal, Field(gt=0)] = Decimal("10000")
    min_confidence: _Fraction = 0.5
    refuse_over_budget: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.approve_threshold <= self.reject_threshold <= self.high_risk_threshold:
            raise ValueError(
                "thresholds must satisfy approve_threshold <= reject_threshold "
                "<= high_risk_threshold"
            )
        if self.review_amount_usd > self.amount_cap_usd:
            raise ValueError("review_amount_usd must not exceed amount_cap_usd")
        return self
