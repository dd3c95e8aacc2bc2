"""Workflow state: the request, the validated transaction and what the nodes add.

Two views of one state:

* :class:`RiskState` (pydantic) is the validated record at the boundaries: the
  runner returns it and the injected evaluator receives it.
* :class:`RiskGraphState` (a ``TypedDict``) is what LangGraph's channels carry
  between nodes. Nodes read it as a plain mapping and return a
  :class:`RiskStateUpdate`, so no pydantic model is rebuilt for every node
  (LangGraph would call ``RiskState(**values)`` before each node if the graph
  were declared over the pydantic model).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.workflows.langgraph._reference import ALLOWED_CURRENCIES, ISO_COUNTRIES

__all__ = (
    "ALLOWED_CURRENCIES",
    "CHANNELS",
    "Channel",
    "Decision",
    "GuardrailResult",
    "LLMCall",
    "PolicyResult",
    "RiskGraphState",
    "RiskRequest",
    "RiskState",
    "RiskStateUpdate",
    "Transaction",
    "WorkflowStatus",
    "initial_graph_state",
)

Decision = Literal["approve", "reject", "review"]
Channel = Literal["web", "mobile", "branch", "api"]
CHANNELS: tuple[Channel, ...] = ("web", "mobile", "branch", "api")

#: ``received``: not finished; ``awaiting_approval``: paused on a human
#: (interrupt mode); ``escalated``: finished, a human must still look at it;
#: ``completed``: finished with a final decision.
WorkflowStatus = Literal["received", "awaiting_approval", "escalated", "completed"]

_Identifier = Annotated[str, Field(min_length=1, max_length=128)]
_Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class RiskRequest(BaseModel):
    """One request to score: identifiers plus the raw, unvalidated payload.

    Attributes:
        request_id: Unique id of the request; also the checkpoint thread id.
        tenant_id: The tenant the request belongs to.
        correlation_id: Id joining this request to the caller's logs.
        payload: Raw applicant/transaction input, parsed by ``validate_input``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: _Identifier
    tenant_id: _Identifier
    correlation_id: _Identifier
    payload: dict[str, Any]


class Transaction(BaseModel):
    """The validated transaction the workflow scores.

    Attributes:
        applicant_id: Who applies; opaque identifier.
        amount: Positive amount in ``currency`` (at most two decimals).
        currency: ISO 4217 code from :data:`ALLOWED_CURRENCIES`.
        country: ISO 3166-1 alpha-2 code, upper case.
        merchant_category: Lower-case snake_case category (``retail``, ``gambling``).
        account_age_days: Age of the applicant's account in days.
        prior_chargebacks: Chargebacks on record for the applicant.
        channel: Where the request came from.
        description: Free text; may contain PII, so it is fed to the prompt but
            never copied into logs, errors or the rationale.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    applicant_id: _Identifier
    amount: Annotated[Decimal, Field(gt=0, max_digits=18, decimal_places=2)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
    merchant_category: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    account_age_days: Annotated[int, Field(ge=0)]
    prior_chargebacks: Annotated[int, Field(ge=0)]
    channel: Channel
    description: Annotated[str, Field(max_length=2000)] = ""

    @field_validator("currency")
    @classmethod
    def _currency_accepted(cls, value: str) -> str:
        if value not in ALLOWED_CURRENCIES:
            raise ValueError(f"currency must be one of {', '.join(sorted(ALLOWED_CURRENCIES))}")
        return value

    @field_validator("country")
    @classmethod
    def _country_assigned(cls, value: str) -> str:
        if value not in ISO_COUNTRIES:
            raise ValueError("country must be an assigned ISO 3166-1 alpha-2 code")
        return value


class LLMCall(BaseModel):
    """What one model call cost; the instrumentation logs it as a generation.

    Attributes:
        model_version: Registry name of the model, e.g. ``risk-llm-v2``.
        prompt_version: Registry id of the prompt, e.g. ``risk_scoring/v3``.
        input_tokens: Tokens in the rendered prompt.
        output_tokens: Tokens in the model's rationale.
        latency_seconds: Simulated model latency.
        provider: Who served the call.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_version: str
    prompt_version: str
    input_tokens: Annotated[int, Field(ge=0)]
    output_tokens: Annotated[int, Field(ge=0)]
    latency_seconds: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    provider: str = "simulated"


class PolicyResult(BaseModel):
    """The outcome of one policy rule.

    Attributes:
        name: Policy identifier (``sanctions``, ``large_amount``...).
        passed: Whether the transaction satisfies the rule.
        detail: Why, without any PII.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    passed: bool
    detail: str = ""


class GuardrailResult(BaseModel):
    """The outcome of one check on the model's output.

    Attributes:
        name: Guardrail identifier (``score_range``, ``no_pii_echo``...).
        passed: Whether the output is acceptable.
        score: How well the output satisfies the check, in ``[0, 1]``.
        detail: Why, without any PII.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    passed: bool
    score: _Fraction
    detail: str = ""


class RiskState(BaseModel):
    """The validated state of one workflow run.

    Attributes:
        request_id: From the request.
        tenant_id: From the request.
        correlation_id: From the request.
        payload: The raw input, as received.
        transaction: The validated input, once ``validate_input`` ran.
        risk_score: The model's risk score in ``[0, 1]``.
        risk_rationale: The model's explanation.
        risk_confidence: The model's confidence in ``[0, 1]``.
        llm_call: Model/prompt versions and token usage of the scoring call.
        policy_results: Every policy evaluated, hard ones included.
        guardrail_results: Every guardrail evaluated.
        decision: ``approve``, ``reject`` or ``review``.
        approval_required: Whether the case went to a human.
        high_risk: Whether the score reached the high-risk threshold.
        reviewer: Who decided, when a human resumed an interrupted run.
        evaluation: Whatever the injected evaluator returned.
        errors: Non-fatal problems (failed soft policies and guardrails).
        status: Where the run stands, see :data:`WorkflowStatus`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: _Identifier
    tenant_id: _Identifier
    correlation_id: _Identifier
    payload: dict[str, Any]
    transaction: Transaction | None = None
    risk_score: _Fraction | None = None
    risk_rationale: str | None = None
    risk_confidence: _Fraction | None = None
    llm_call: LLMCall | None = None
    policy_results: list[PolicyResult] = Field(default_factory=list)
    guardrail_results: list[GuardrailResult] = Field(default_factory=list)
    decision: Decision | None = None
    approval_required: bool = False
    high_risk: bool = False
    reviewer: str | None = None
    evaluation: Any | None = None
    errors: list[str] = Field(default_factory=list)
    status: WorkflowStatus = "received"


class RiskStateUpdate(TypedDict, total=False):
    """A partial update returned by a node; every key is optional."""

    transaction: Transaction | None
    risk_score: float | None
    risk_rationale: str | None
    risk_confidence: float | None
    llm_call: LLMCall | None
    policy_results: list[PolicyResult]
    guardrail_results: list[GuardrailResult]
    decision: Decision | None
    approval_required: bool
    high_risk: bool
    reviewer: str | None
    evaluation: Any | None
    errors: list[str]
    status: WorkflowStatus


class _RiskGraphIdentity(TypedDict):
    request_id: str
    tenant_id: str
    correlation_id: str
    payload: dict[str, Any]


class RiskGraphState(_RiskGraphIdentity, RiskStateUpdate):
    """The LangGraph channel schema: the identity keys are always present.

    Its keys are exactly :class:`RiskState`'s fields; every channel keeps the
    last value written (no reducers), so re-running a thread starts clean.
    """


def initial_graph_state(request: RiskRequest) -> RiskGraphState:
    """Build the graph input for a request, every channel at its default.

    Args:
        request: The request to run.

    Returns:
        The input to pass to ``graph.ainvoke``.
    """
    return RiskGraphState(
        request_id=request.request_id,
        tenant_id=request.tenant_id,
        correlation_id=request.correlation_id,
        payload=request.payload,
        transaction=None,
        risk_score=None,
        risk_rationale=None,
        risk_confidence=None,
        llm_call=None,
        policy_results=[],
        guardrail_results=[],
        decision=None,
        approval_required=False,
        high_risk=False,
        reviewer=None,
        evaluation=None,
        errors=[],
        status="received",
    )
