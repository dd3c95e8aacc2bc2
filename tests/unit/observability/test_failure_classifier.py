"""Tests for :mod:`app.observability.failure_classifier`: the failure taxonomy."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

import pydantic
import pytest
from langgraph.errors import GraphRecursionError, InvalidUpdateError

from app.errors import (
    HighRiskError,
    InfrastructureError,
    InputValidationError,
    PolicyViolationError,
    RiskEngineError,
    WorkflowError,
)
from app.observability import FailureCategory, FailureClassifier, Observability
from app.observability.catalog import NO_NODE, NO_TENANT
from app.observability.validation import TRUNCATION_MARKER

MakeObs = Callable[..., Observability]
C = FailureCategory


class _Amount(pydantic.BaseModel):
    amount: float


def _validation_error() -> pydantic.ValidationError:
    try:
        _Amount.model_validate({"amount": "lots"})
    except pydantic.ValidationError as exc:
        return exc
    raise AssertionError("validation should have failed")  # pragma: no cover


class _MyHighRisk(HighRiskError):
    pass


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("cannot print me")


def _failure_counts(obs: Observability) -> dict[tuple[tuple[str, str], ...], Any]:
    return {tuple(sorted(s["labels"].items())): s["value"]
            for s in obs.metrics.export_metrics()["failure_count"]["series"]}


# --- every mapping ------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "category"),
    [
        (InputValidationError("amount must be positive", field="amount"), C.VALIDATION_ERROR),
        (_validation_error(), C.VALIDATION_ERROR),
        (PolicyViolationError("sanctioned country", policy="sanctions"), C.POLICY_VIOLATION),
        (HighRiskError("score 0.97"), C.HIGH_RISK),
        (_MyHighRisk("inherits its parent's category"), C.HIGH_RISK),
        (WorkflowError("no route"), C.WORKFLOW_ERROR),
        (GraphRecursionError("recursion limit"), C.WORKFLOW_ERROR),
        (InvalidUpdateError("two writers"), C.WORKFLOW_ERROR),
        (InfrastructureError("model endpoint down"), C.INFRA_ERROR),
        (TimeoutError("slow"), C.INFRA_ERROR),
        (concurrent.futures.TimeoutError(), C.INFRA_ERROR),  # asyncio's is the same class
        (ConnectionError("reset"), C.INFRA_ERROR),
        (ConnectionRefusedError(), C.INFRA_ERROR),
        (BrokenPipeError(), C.INFRA_ERROR),
        (OSError("disk"), C.INFRA_ERROR),
        (FileNotFoundError("x"), C.INFRA_ERROR),
        (ValueError("plain"), C.UNEXPECTED_ERROR),
        (KeyError("k"), C.UNEXPECTED_ERROR),
        (RuntimeError("r"), C.UNEXPECTED_ERROR),
        (RecursionError("plain recursion"), C.UNEXPECTED_ERROR),
        (RiskEngineError("base class only"), C.UNEXPECTED_ERROR),
        (Exception("e"), C.UNEXPECTED_ERROR),
        (KeyboardInterrupt(), C.UNEXPECTED_ERROR),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else value,
)
def test_each_exception_maps_correctly(exc: BaseException, category: FailureCategory) -> None:
    classifier = FailureClassifier()

    assert classifier.category_of(exc) is category
    assert classifier.category_of(type(exc)) is category
    assert classifier.classify(exc) is category  # no sinks: classifies only


def test_unknown_is_unexpected_error() -> None:
    class Strange(ArithmeticError):
        pass

    assert FailureClassifier().category_of(Strange()) is C.UNEXPECTED_ERROR


def test_category_values_are_the_specification_names() -> None:
    assert [c.value for c in FailureCategory] == [
        "VALIDATION_ERROR", "POLICY_VIOLATION", "HIGH_RISK", "WORKFLOW_ERROR", "INFRA_ERROR",
        "UNEXPECTED_ERROR",
    ]


# --- registration ---------------------------------------------------------------


def test_registration_overrides_the_subclass_only() -> None:
    class GatewayTimeout(TimeoutError):
        pass

    class SlowGatewayTimeout(GatewayTimeout):
        pass

    classifier = FailureClassifier()
    assert classifier.category_of(GatewayTimeout()) is C.INFRA_ERROR  # cached before

    classifier.register(GatewayTimeout, C.WORKFLOW_ERROR)

    assert classifier.category_of(GatewayTimeout()) is C.WORKFLOW_ERROR
    assert classifier.category_of(SlowGatewayTimeout()) is C.WORKFLOW_ERROR
    assert classifier.category_of(TimeoutError()) is C.INFRA_ERROR  # the parent is unchanged
    assert classifier.category_of(OSError()) is C.INFRA_ERROR


def test_most_specific_registration_wins() -> None:
    class Special(_MyHighRisk):
        pass

    classifier = FailureClassifier()
    classifier.register(_MyHighRisk, C.POLICY_VIOLATION)
    classifier.register(Special, C.UNEXPECTED_ERROR)

    assert classifier.category_of(Special()) is C.UNEXPECTED_ERROR
    assert classifier.category_of(_MyHighRisk()) is C.POLICY_VIOLATION
    assert classifier.category_of(HighRiskError()) is C.HIGH_RISK


@pytest.mark.parametrize(
    ("exc_type", "category"),
    [(ValueError(), C.HIGH_RISK), (int, C.HIGH_RISK), ("ValueError", C.HIGH_RISK),
     (ValueError, "HIGH_RISK")],
)
def test_register_refuses_bad_arguments(exc_type: Any, category: Any) -> None:
    with pytest.raises(TypeError):
        FailureClassifier().register(exc_type, category)


def test_registries_of_two_instances_are_independent(make_obs: MakeObs) -> None:
    first, second = make_obs(), make_obs()

    first.failures.register(KeyError, C.VALIDATION_ERROR)

    assert first.failures.category_of(KeyError()) is C.VALIDATION_ERROR
    assert second.failures.category_of(KeyError()) is C.UNEXPECTED_ERROR
    assert FailureClassifier().category_of(KeyError()) is C.UNEXPECTED_ERROR


# --- recording -----------------------------------------------------------------------


def test_classify_counts_and_emits_an_audit_event(obs: Observability) -> None:
    error = PolicyViolationError("sanctioned country", policy="sanctions")

    category = obs.failures.classify(error, tenant_id="t1", node="policy_check",
                                     correlation_id="c1", request_id="r1")
    obs.failures.classify(TimeoutError("slow"))

    assert category is C.POLICY_VIOLATION
    assert _failure_counts(obs) == {
        (("category", "POLICY_VIOLATION"), ("node", "policy_check"), ("tenant_id", "t1")): 1,
        # Every series has every label: no tenant is "unknown", no node "none".
        (("category", "INFRA_ERROR"), ("node", NO_NODE), ("tenant_id", NO_TENANT)): 1,
    }
    first, second = obs.audit.events(event="failure.classified")
    assert dict(first.fields) == {
        "category": "POLICY_VIOLATION", "error_type": "app.errors.PolicyViolationError",
        "message": "sanctioned country", "tenant_id": "t1", "node": "policy_check",
        "correlation_id": "c1", "request_id": "r1",
    }
    assert second.data["category"] == "INFRA_ERROR"
    assert second.data["tenant_id"] is None
    assert obs.audit.events(tenant_id="t1") == (first,)


def test_record_counts_a_known_category(obs: Observability) -> None:
    obs.failures.record(C.HIGH_RISK, tenant_id="t1", reason="routed to approval")
    obs.failures.record("HIGH_RISK", tenant_id="t1")

    assert _failure_counts(obs) == {
        (("category", "HIGH_RISK"), ("node", NO_NODE), ("tenant_id", "t1")): 2}
    events = obs.audit.events(event="failure.classified")
    assert [e.data["message"] for e in events] == ["routed to approval", None]
    assert events[0].data["error_type"] is None


@pytest.mark.parametrize(
    ("category", "error"),
    [("NOT_A_CATEGORY", ValueError), (None, TypeError), (3, TypeError)],
)
def test_record_refuses_an_unknown_category(
    obs: Observability, category: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="category"):
        obs.failures.record(category)

    assert _failure_counts(obs) == {}
    assert obs.audit.events() == ()


def test_classify_refuses_a_non_exception(obs: Observability) -> None:
    with pytest.raises(TypeError, match="exception"):
        obs.failures.classify("boom")  # type: ignore[arg-type]

    assert _failure_counts(obs) == {}


def test_classify_survives_an_exception_that_cannot_be_printed(obs: Observability) -> None:
    assert obs.failures.classify(_Unprintable()) is C.UNEXPECTED_ERROR

    (event,) = obs.audit.events(event="failure.classified")
    assert event.data["message"] == "<unprintable _Unprintable>"
    assert _failure_counts(obs) == {
        (("category", "UNEXPECTED_ERROR"), ("node", NO_NODE), ("tenant_id", NO_TENANT)): 1}


def test_long_messages_are_truncated_visibly(make_obs: MakeObs) -> None:
    obs = make_obs(limits={"max_attribute_length": 100})
    obs.failures.classify(WorkflowError("x" * 2_000))
    obs.failures.classify(WorkflowError("y" * 100))  # at the limit: kept whole

    long, exact = obs.audit.events()
    assert long.data["message"] == "x" * 100 + TRUNCATION_MARKER.format(n=1_900)
    assert exact.data["message"] == "y" * 100
