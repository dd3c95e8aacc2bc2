"""Tests for :mod:`app.observability.evaluation`: deterministic quality scores."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from app.observability import EvaluationResult, EvaluationService, Observability
from app.observability.catalog import NO_TENANT
from app.workflows.langgraph.state import GuardrailResult, PolicyResult

MakeObs = Callable[..., Observability]

SCORES = ("confidence_score", "policy_alignment_score", "guardrail_score",
          "overall_quality_score")


def _state(**overrides: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "tenant_id": "t1",
        "request_id": "r1",
        "correlation_id": "c1",
        "risk_score": 0.9,
        "decision": "reject",
        "policy_results": [{"passed": True}, {"passed": True}],
        "guardrail_results": [{"passed": True, "score": 1.0}, {"passed": True, "score": 0.5}],
    }
    state.update(overrides)
    return state


class _MutableState(BaseModel):
    model_config = ConfigDict(validate_assignment=True)

    tenant_id: str
    risk_score: float | None = None
    risk_confidence: float | None = None
    decision: str | None = None
    policy_results: list[PolicyResult] = []
    guardrail_results: list[GuardrailResult] = []
    evaluation: EvaluationResult | None = None


class _FrozenState(_MutableState):
    model_config = ConfigDict(frozen=True)


# --- the formula -------------------------------------------------------------


def test_scores_follow_the_documented_formula() -> None:
    result = EvaluationService().score(_state())

    assert result == EvaluationResult(
        confidence_score=0.8,  # |0.9 - 0.5| x 2
        policy_alignment_score=1.0,
        guardrail_score=0.75,
        overall_quality_score=0.845,  # 0.4 x 0.8 + 0.3 x 1 + 0.3 x 0.75
    )


def test_model_confidence_wins_over_the_risk_distance() -> None:
    service = EvaluationService()

    assert service.score(_state(confidence=0.3)).confidence_score == 0.3
    # the workflow's RiskState calls it risk_confidence
    assert service.score(_state(risk_confidence=0.3)).confidence_score == 0.3


def test_approving_despite_a_failed_policy_halves_policy_alignment() -> None:
    service = EvaluationService()
    policies = [{"passed": True}, {"passed": False}, {"passed": True}, {"passed": True}]

    rejected = service.score(_state(decision="reject", policy_results=policies))
    approved = service.score(_state(decision="approve", policy_results=policies))

    assert rejected.policy_alignment_score == 0.75
    assert approved.policy_alignment_score == 0.375


def test_no_decision_halves_the_overall_score() -> None:
    service = EvaluationService()
    decided = service.score(_state())
    undecided = service.score(_state(decision=None))

    assert undecided.overall_quality_score == pytest.approx(decided.overall_quality_score / 2)


def test_guardrails_without_scores_use_the_share_passed() -> None:
    result = EvaluationService().score(_state(guardrail_results=[
        {"passed": True}, {"passed": False, "score": "n/a"}, {"passed": True}, {"passed": True},
    ]))

    assert result.guardrail_score == 0.75


def test_an_empty_state_scores_without_error() -> None:
    result = EvaluationService().score({})

    assert result == EvaluationResult(confidence_score=0.0, policy_alignment_score=1.0,
                                      guardrail_score=1.0, overall_quality_score=0.3)


def test_a_read_only_mapping_is_read() -> None:
    service = EvaluationService()

    assert service.score(MappingProxyType(_state())) == service.score(_state())


def test_pydantic_results_are_read() -> None:
    state = _MutableState(
        tenant_id="t1", risk_score=0.9, decision="reject",
        policy_results=[PolicyResult(name="p", passed=True, detail="ok")],
        guardrail_results=[GuardrailResult(name="g", passed=True, score=0.5, detail="ok")],
    )

    assert EvaluationService().score(state).guardrail_score == 0.5


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"risk_score": "0.9"}, "risk_score"),
        ({"risk_score": True}, "risk_score"),
        ({"confidence": [0.5]}, "confidence"),
        ({"policy_results": 5}, "policy_results"),
        ({"guardrail_results": 1.5}, "guardrail_results"),
    ],
)
def test_wrong_types_raise_type_error_naming_the_field(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(TypeError, match=field):
        EvaluationService().score(_state(**overrides))


# --- determinism and bounds, as properties ---------------------------------------

_number = st.one_of(
    st.none(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
)
_result = st.fixed_dictionaries(
    {},
    optional={"passed": st.one_of(st.booleans(), st.none(), st.integers()),
              "score": st.one_of(_number, st.text(max_size=3))},
)
_states = st.fixed_dictionaries(
    {},
    optional={
        "risk_score": _number,
        "confidence": _number,
        "decision": st.one_of(st.none(), st.sampled_from(["approve", "reject", "review"]),
                              st.text(max_size=5)),
        "policy_results": st.one_of(st.none(), st.lists(_result, max_size=6)),
        "guardrail_results": st.one_of(st.none(), st.lists(_result, max_size=6)),
    },
)


@settings(max_examples=150, deadline=None)
@given(state=_states)
def test_scores_are_deterministic_and_within_bounds(state: dict[str, Any]) -> None:
    first = EvaluationService().score(state)
    second = EvaluationService().score(dict(state))

    assert first == second
    for name in SCORES:
        value = getattr(first, name)
        assert isinstance(value, float)
        assert 0.0 <= value <= 1.0
        assert math.isfinite(value)
        assert round(value, 6) == value


# --- side effects: state, audit, metrics ----------------------------------------------


@pytest.mark.asyncio
async def test_result_is_stored_in_a_dict_state_and_audited(obs: Observability) -> None:
    state = _state()

    result = await obs.evaluation.evaluate_decision(state)

    assert state["evaluation"] is result
    (event,) = obs.audit.events(event="evaluation.completed")
    assert dict(event.fields) == {
        "tenant_id": "t1", "request_id": "r1", "correlation_id": "c1", "decision": "reject",
        **result.model_dump(),
    }
    assert obs.audit.events(tenant_id="t1") == (event,)


def test_result_is_stored_in_a_pydantic_state(obs: Observability) -> None:
    state = _MutableState(tenant_id="t1", risk_score=0.2, risk_confidence=0.9,
                          decision="approve")

    result = obs.evaluation.evaluate_decision_sync(state)

    assert state.evaluation == result
    assert result.confidence_score == 0.9


def test_a_frozen_state_is_left_alone(obs: Observability) -> None:
    state = _FrozenState(tenant_id="t1", risk_score=0.2, decision="approve")

    result = obs.evaluation.evaluate_decision_sync(state)

    assert state.evaluation is None
    assert result.confidence_score == 0.6
    assert len(obs.audit.events(event="evaluation.completed")) == 1


def test_quality_score_histogram_is_observed(obs: Observability) -> None:
    obs.evaluation.evaluate_decision_sync(_state())
    obs.evaluation.evaluate_decision_sync(_state(decision=None))
    obs.evaluation.evaluate_decision_sync(_state(tenant_id=None))

    series = {tuple(s["labels"].items()): s
              for s in obs.metrics.export_metrics()["quality_score"]["series"]}
    assert series[(("tenant_id", "t1"),)]["count"] == 2
    assert series[(("tenant_id", "t1"),)]["sum"] == pytest.approx(0.845 + 0.4225)
    # No tenant: recorded under tenant_id="unknown" (every series has its declared labels).
    assert series[(("tenant_id", NO_TENANT),)]["count"] == 1
    assert set(series) == {(("tenant_id", "t1"),), (("tenant_id", NO_TENANT),)}


def test_a_refused_tenant_label_leaves_the_state_untouched(obs: Observability) -> None:
    state = _state(tenant_id="x" * 1_000)

    with pytest.raises(ValueError, match="tenant_id"):
        obs.evaluation.evaluate_decision_sync(state)

    assert "evaluation" not in state
    assert obs.audit.events() == ()


def test_a_service_without_sinks_only_scores() -> None:
    state = _state()

    result = EvaluationService().evaluate_decision_sync(state)

    assert state["evaluation"] is result
