"""Domain rules beside the workflow: state models, registry, simulated LLM,
policies, guardrails and configuration."""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from app.errors import InfrastructureError, PolicyViolationError
from app.workflows.langgraph import (
    DEFAULT_REGISTRY,
    GuardrailSuite,
    LLMCall,
    LLMResponse,
    ModelRegistry,
    ModelVersion,
    PolicyEngine,
    PromptVersion,
    SimulatedLLM,
    Transaction,
    VersionPin,
    WorkflowConfig,
)
from app.workflows.langgraph._reference import (
    ALLOWED_CURRENCIES,
    ISO_COUNTRIES,
    stable_fraction,
    to_usd,
)
from app.workflows.langgraph.guardrails import find_pii, luhn_valid
from app.workflows.langgraph.llm import count_tokens


def make_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "applicant_id": "app-1",
        "amount": "120.50",
        "currency": "USD",
        "country": "US",
        "merchant_category": "retail",
        "account_age_days": 400,
        "prior_chargebacks": 0,
        "channel": "web",
        "description": "birthday present",
    }
    payload.update(overrides)
    return payload


def make_tx(**overrides: Any) -> Transaction:
    return Transaction.model_validate(make_payload(**overrides))


# --- Transaction -------------------------------------------------------------


def test_transaction_parses_a_valid_payload() -> None:
    tx = make_tx(amount=99.99)
    assert tx.amount == Decimal("99.99")
    assert tx.currency == "USD"
    assert tx.channel == "web"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", "0"),
        ("amount", "-5"),
        ("amount", "1.001"),
        ("amount", "NaN"),
        ("currency", "usd"),
        ("currency", "XYZ"),
        ("currency", "US"),
        ("country", "us"),
        ("country", "XX"),
        ("country", "USA"),
        ("merchant_category", ""),
        ("merchant_category", "Retail Store"),
        ("account_age_days", -1),
        ("prior_chargebacks", -2),
        ("channel", "fax"),
        ("description", "x" * 2001),
        ("applicant_id", ""),
    ],
)
def test_transaction_rejects_invalid_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as excinfo:
        make_tx(**{field: value})
    assert excinfo.value.errors()[0]["loc"] == (field,)


def test_transaction_rejects_unknown_and_missing_fields() -> None:
    with pytest.raises(ValidationError) as excinfo:
        Transaction.model_validate(make_payload(iban="DE00"))
    assert excinfo.value.errors()[0]["loc"] == ("iban",)
    payload = make_payload()
    del payload["country"]
    with pytest.raises(ValidationError) as excinfo:
        Transaction.model_validate(payload)
    assert excinfo.value.errors()[0]["type"] == "missing"


def test_transaction_and_llm_call_are_frozen() -> None:
    tx = make_tx()
    with pytest.raises(ValidationError):
        tx.amount = Decimal("1")
    call = LLMCall(
        model_version="m", prompt_version="p", input_tokens=1, output_tokens=2, latency_seconds=0
    )
    assert call.provider == "simulated"
    with pytest.raises(ValidationError):
        call.input_tokens = 5


def test_reference_data_is_complete() -> None:
    assert len(ISO_COUNTRIES) == 249
    assert {"US", "DE", "KP", "AX"} <= ISO_COUNTRIES
    assert "XX" not in ISO_COUNTRIES
    for currency in ALLOWED_CURRENCIES:
        assert to_usd(Decimal("1"), currency) > 0
    with pytest.raises(ValueError, match="unsupported currency"):
        to_usd(Decimal("1"), "XYZ")


# --- stable hashing and the registry -----------------------------------------


def test_stable_fraction_is_process_independent() -> None:
    # Golden value: Python's salted hash() would differ between test runs.
    assert stable_fraction("canary", 0, "req-1") == 0.7153791191231129
    values = [stable_fraction("canary", 0, f"req-{i}") for i in range(200)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert stable_fraction("jitter", 0, "req-1") != stable_fraction("canary", 0, "req-1")
    assert stable_fraction("canary", 1, "req-1") != stable_fraction("canary", 0, "req-1")


def test_registry_ships_the_versions() -> None:
    assert set(DEFAULT_REGISTRY.models) == {"risk-llm-v2", "risk-llm-v1", "risk-llm-mini-v1"}
    assert set(DEFAULT_REGISTRY.prompts) == {"risk_scoring/v3", "risk_scoring/v2"}
    prompt = DEFAULT_REGISTRY.prompt("risk_scoring/v3")
    assert prompt.id == "risk_scoring/v3"
    rendered = prompt.render(
        {
            "amount": "10.00",
            "currency": "EUR",
            "country": "FR",
            "merchant_category": "books",
            "account_age_days": 3,
            "prior_chargebacks": 0,
            "channel": "web",
            "description": "{not a placeholder}",
        }
    )
    assert "10.00 EUR" in rendered
    assert "{not a placeholder}" in rendered
    assert '{"risk_score"' in rendered
    with pytest.raises(ValueError, match="unknown model"):
        DEFAULT_REGISTRY.model("gpt-x")
    with pytest.raises(ValueError, match="unknown prompt"):
        DEFAULT_REGISTRY.prompt("risk_scoring/v9")


def test_registry_refuses_duplicates_and_unknown_defaults() -> None:
    model = ModelVersion(name="m", description="d")
    prompt = PromptVersion(name="p", version="v1", template="t")
    with pytest.raises(ValueError, match="registered twice"):
        ModelRegistry(models=[model, model], prompts=[prompt])
    with pytest.raises(ValueError, match="unknown model"):
        ModelRegistry(models=[model], prompts=[prompt])


def test_canary_share_selects_a_stable_fraction_of_requests() -> None:
    ids = [f"req-{i}" for i in range(4000)]
    first = [DEFAULT_REGISTRY.select(i, "t", canary_share=0.10, seed=7, pins={}).route for i in ids]
    again = [DEFAULT_REGISTRY.select(i, "t", canary_share=0.10, seed=7, pins={}).route for i in ids]
    assert first == again
    share = first.count("canary") / len(ids)
    assert 0.08 < share < 0.12
    canary = DEFAULT_REGISTRY.select(
        ids[first.index("canary")], "t", canary_share=0.10, seed=7, pins={}
    )
    assert (canary.model.name, canary.prompt.id) == ("risk-llm-v1", "risk_scoring/v2")
    default = DEFAULT_REGISTRY.select(
        ids[first.index("default")], "t", canary_share=0.10, seed=7, pins={}
    )
    assert (default.model.name, default.prompt.id) == ("risk-llm-v2", "risk_scoring/v3")
    assert all(
        DEFAULT_REGISTRY.select(i, "t", canary_share=0.0, seed=7, pins={}).route == "default"
        for i in ids[:200]
    )
    assert all(
        DEFAULT_REGISTRY.select(i, "t", canary_share=1.0, seed=7, pins={}).route == "canary"
        for i in ids[:200]
    )


def test_tenant_pins_override_the_canary() -> None:
    pins = {"acme": VersionPin(model_version="risk-llm-mini-v1")}
    for i in range(50):
        selection = DEFAULT_REGISTRY.select(f"r{i}", "acme", canary_share=1.0, seed=0, pins=pins)
        assert selection.route == "pinned"
        assert selection.model.name == "risk-llm-mini-v1"
        assert selection.prompt.id == "risk_scoring/v3"
    with pytest.raises(ValueError, match="tenant 'bad'"):
        DEFAULT_REGISTRY.validate_pins({"bad": VersionPin(prompt_version="nope/v1")})
    DEFAULT_REGISTRY.validate_pins(pins)


# --- SimulatedLLM --------------------------------------------------------------


def _score(
    llm: SimulatedLLM, tx: Transaction, request_id: str = "req-1", model: str = "risk-llm-v2"
) -> LLMResponse:
    return asyncio.run(llm.score(tx, request_id, model, DEFAULT_REGISTRY.prompt("risk_scoring/v3")))


def test_llm_is_deterministic_per_seed_and_request() -> None:
    tx = make_tx()
    first = _score(SimulatedLLM(seed=3), tx)
    assert _score(SimulatedLLM(seed=3), tx) == first
    assert _score(SimulatedLLM(seed=4), tx).risk_score != first.risk_score
    assert _score(SimulatedLLM(seed=3), tx, request_id="req-2").risk_score != first.risk_score
    assert 0.0 <= first.risk_score <= 1.0
    assert 0.0 <= first.confidence <= 1.0
    assert first.model_version == "risk-llm-v2"
    assert first.prompt_version == "risk_scoring/v3"
    assert first.latency_seconds == 0.0


def test_llm_score_follows_the_features() -> None:
    llm = SimulatedLLM()
    low = _score(llm, make_tx())
    high = _score(
        llm,
        make_tx(
            amount="9000",
            account_age_days=3,
            prior_chargebacks=3,
            merchant_category="gambling",
            channel="api",
        ),
    )
    assert low.risk_score < 0.3
    assert high.risk_score > 0.9
    for model in DEFAULT_REGISTRY.models:
        assert 0.0 <= _score(llm, make_tx(), model=model).risk_score <= 1.0
    with pytest.raises(ValueError, match="unknown model"):
        _score(llm, make_tx(), model="gpt-x")


def test_llm_token_counts_come_from_prompt_and_rationale() -> None:
    llm = SimulatedLLM()
    prompt = DEFAULT_REGISTRY.prompt("risk_scoring/v3")
    tx = make_tx(description="call me at jane.doe@example.com about card 4111 1111 1111 1111")
    response = _score(llm, tx)
    rendered = prompt.render(
        {name: getattr(tx, name) for name in type(tx).model_fields if name != "applicant_id"}
    )
    assert response.input_tokens == count_tokens(rendered)
    assert response.output_tokens == count_tokens(response.rationale)
    longer = _score(llm, make_tx(description="word " * 50))
    shorter = _score(llm, make_tx(description=""))
    assert longer.input_tokens == shorter.input_tokens + 50
    assert "jane.doe" not in response.rationale
    assert find_pii(response.rationale, description=tx.description) == []


def test_count_tokens() -> None:
    assert count_tokens("") == 0
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("a  b\tc") == 3


def test_llm_infra_faults_are_deterministic() -> None:
    tx = make_tx()
    with pytest.raises(InfrastructureError, match="simulated model endpoint failure"):
        _score(SimulatedLLM(infra_failure_rate=1.0), tx)
    half = SimulatedLLM(seed=1, infra_failure_rate=0.5)

    def fails(request_id: str) -> bool:
        try:
            _score(half, tx, request_id=request_id)
        except InfrastructureError:
            return True
        return False

    outcomes = [fails(f"r{i}") for i in range(200)]
    assert outcomes == [fails(f"r{i}") for i in range(200)]
    assert 60 < sum(outcomes) < 140
    never = SimulatedLLM(seed=1, infra_failure_rate=0.0)
    assert [_score(never, tx, request_id=f"r{i}").model_version for i in range(100)] == [
        "risk-llm-v2"
    ] * 100


def test_llm_zero_latency_never_suspends() -> None:
    coro = SimulatedLLM().score(
        make_tx(), "req-1", "risk-llm-v2", DEFAULT_REGISTRY.prompt("risk_scoring/v3")
    )
    with pytest.raises(StopIteration) as excinfo:
        coro.send(None)
    assert excinfo.value.value.risk_score >= 0.0


@pytest.mark.asyncio
async def test_llm_latency_awaits_asyncio_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    response = await SimulatedLLM(latency_seconds=0.25).score(
        make_tx(), "req-1", "risk-llm-v2", DEFAULT_REGISTRY.prompt("risk_scoring/v3")
    )
    assert slept == [0.25]
    assert response.latency_seconds == 0.25


@pytest.mark.parametrize(
    "kwargs",
    [
        {"latency_seconds": -1.0},
        {"latency_seconds": math.inf},
        {"infra_failure_rate": 1.5},
        {"infra_failure_rate": -0.1},
    ],
)
def test_llm_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimulatedLLM(**kwargs)


# --- policies --------------------------------------------------------------------


def test_sanctioned_country_is_a_hard_breach() -> None:
    with pytest.raises(PolicyViolationError) as excinfo:
        PolicyEngine().evaluate(make_tx(country="KP"))
    assert excinfo.value.policy == "sanctions"


def test_amount_cap_is_a_hard_breach_after_conversion() -> None:
    engine = PolicyEngine(amount_cap_usd=Decimal("50000"), review_amount_usd=Decimal("10000"))
    with pytest.raises(PolicyViolationError) as excinfo:
        engine.evaluate(make_tx(amount="48000", currency="GBP"))  # 60 960 USD
    assert excinfo.value.policy == "amount_cap"
    results = engine.evaluate(make_tx(amount="48000", currency="SEK"))  # 4 608 USD
    assert all(r.passed for r in results)


def test_clean_transaction_passes_every_policy() -> None:
    results = PolicyEngine().evaluate(make_tx())
    assert [r.name for r in results] == [
        "sanctions",
        "amount_cap",
        "large_amount",
        "new_account_high_value",
        "chargeback_history",
        "elevated_risk_country",
    ]
    assert all(r.passed for r in results)


@pytest.mark.parametrize(
    ("overrides", "failed"),
    [
        ({"amount": "15000"}, {"large_amount"}),
        ({"amount": "2500", "account_age_days": 10}, {"new_account_high_value"}),
        ({"amount": "1500", "account_age_days": 10}, set()),
        ({"prior_chargebacks": 3}, {"chargeback_history"}),
        ({"prior_chargebacks": 2}, set()),
        ({"country": "VE"}, {"elevated_risk_country"}),
    ],
)
def test_soft_policies(overrides: dict[str, Any], failed: set[str]) -> None:
    results = PolicyEngine().evaluate(make_tx(**overrides))
    assert {r.name for r in results if not r.passed} == failed


def test_policy_engine_rejects_inconsistent_limits() -> None:
    with pytest.raises(ValueError):
        PolicyEngine(amount_cap_usd=Decimal("100"), review_amount_usd=Decimal("1000"))
    with pytest.raises(ValueError):
        PolicyEngine(amount_cap_usd=Decimal("0"))


# --- guardrails ------------------------------------------------------------------

_GOOD_RATIONALE = "Risk 0.20: small amount, old account, no chargebacks."


def _guardrails(
    tx: Transaction | None = None,
    *,
    risk_score: float = 0.2,
    rationale: str = _GOOD_RATIONALE,
    confidence: float = 0.8,
) -> dict[str, Any]:
    results = GuardrailSuite().check(
        tx or make_tx(), risk_score=risk_score, rationale=rationale, confidence=confidence
    )
    return {r.name: r for r in results}


def test_guardrails_pass_a_sound_answer() -> None:
    results = _guardrails()
    assert list(results) == [
        "score_range",
        "rationale_present",
        "no_pii_echo",
        "consistency",
        "confidence_floor",
    ]
    assert all(r.passed and 0.0 <= r.score <= 1.0 for r in results.values())


@pytest.mark.parametrize("score", [1.5, -0.1, math.nan, math.inf])
def test_guardrail_score_range(score: float) -> None:
    results = _guardrails(risk_score=score)
    assert not results["score_range"].passed
    assert results["score_range"].score == 0.0
    assert not results["consistency"].passed


@pytest.mark.parametrize("rationale", ["", "   ", "too short"])
def test_guardrail_rationale_present(rationale: str) -> None:
    assert not _guardrails(rationale=rationale)["rationale_present"].passed


@pytest.mark.parametrize(
    ("rationale", "kind"),
    [
        ("The applicant jane.doe@example.com looks fine overall.", "email"),
        ("Card 4111 1111 1111 1111 was used before, looks fine.", "card_number"),
        ("Card 4111-1111-1111-1111 was used before, looks fine.", "card_number"),
        ("Note says: please rush my order today, looks fine.", "description_echo"),
    ],
)
def test_guardrail_detects_echoed_pii(rationale: str, kind: str) -> None:
    tx = make_tx(description="Please rush my order today")
    result = _guardrails(tx, rationale=rationale)["no_pii_echo"]
    assert not result.passed
    assert kind in result.detail
    assert "jane" not in result.detail and "4111" not in result.detail


def test_guardrail_ignores_numbers_that_are_not_cards() -> None:
    rationale = "Amount 1234567890123 units and 4111 1111 1111 1112 is not Luhn-valid."
    assert _guardrails(rationale=rationale)["no_pii_echo"].passed
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")


def test_guardrail_consistency_both_ways() -> None:
    risky = make_tx(account_age_days=5, prior_chargebacks=2, merchant_category="gambling")
    low = _guardrails(risky, risk_score=0.1)["consistency"]
    assert not low.passed and 0.0 <= low.score < 1.0
    assert _guardrails(risky, risk_score=0.6)["consistency"].passed
    clean_high = _guardrails(make_tx(), risk_score=0.95)["consistency"]
    assert not clean_high.passed and 0.0 <= clean_high.score < 1.0


def test_guardrail_confidence_floor() -> None:
    result = _guardrails(confidence=0.4)["confidence_floor"]
    assert not result.passed and result.score == pytest.approx(0.4)
    assert _guardrails(confidence=0.5)["confidence_floor"].passed


def test_guardrail_suite_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError, match="min_confidence"):
        GuardrailSuite(min_confidence=1.5)


# --- configuration -----------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    config = WorkflowConfig()
    assert config.recursion_limit == 25
    assert config.canary_share == pytest.approx(0.10)
    assert config.interrupt_for_approval is False
    with pytest.raises(ValidationError, match="thresholds"):
        WorkflowConfig(approve_threshold=0.8, reject_threshold=0.5)
    with pytest.raises(ValidationError, match="thresholds"):
        WorkflowConfig(high_risk_threshold=0.6)
    with pytest.raises(ValidationError):
        WorkflowConfig(canary_share=1.5)
    with pytest.raises(ValidationError):
        WorkflowConfig(recursion_limit=3)
    with pytest.raises(ValidationError, match="review_amount_usd"):
        WorkflowConfig(review_amount_usd=Decimal("2"), amount_cap_usd=Decimal("1"))
    with pytest.raises(ValidationError):
        config.seed = 5
