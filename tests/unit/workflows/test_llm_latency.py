"""The simulated LLM's latency: a seeded log-normal around a median, awaited per call."""

from __future__ import annotations

import asyncio
import math
import statistics
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.workflows.langgraph import DEFAULT_REGISTRY, SimulatedLLM, Transaction
from app.workflows.langgraph.llm import MAX_LATENCY_SPREAD

_TX = Transaction.model_validate({
    "applicant_id": "app-1", "amount": "120.50", "currency": "USD", "country": "US",
    "merchant_category": "retail", "account_age_days": 400, "prior_chargebacks": 0,
    "channel": "web", "description": "birthday present",
})
_PROMPT = DEFAULT_REGISTRY.prompt("risk_scoring/v3")


def test_the_draws_are_a_log_normal_around_the_median() -> None:
    llm = SimulatedLLM(seed=5, latency_seconds=0.2, latency_spread=0.5)
    draws = [llm.latency_for(f"req-{i}") for i in range(4_000)]
    logs = [math.log(d / 0.2) for d in draws]

    assert statistics.median(draws) == pytest.approx(0.2, rel=0.05)
    assert statistics.pstdev(logs) == pytest.approx(0.5, rel=0.05)
    assert min(draws) >= 0.2 * math.exp(-4 * 0.5)
    assert max(draws) <= 0.2 * math.exp(4 * 0.5)
    assert len(set(draws)) > 3_900  # a spread, not a handful of values


def test_the_draws_are_deterministic_per_seed_and_request() -> None:
    one = SimulatedLLM(seed=5, latency_seconds=0.2, latency_spread=0.5)
    same = SimulatedLLM(seed=5, latency_seconds=0.2, latency_spread=0.5)
    other = SimulatedLLM(seed=6, latency_seconds=0.2, latency_spread=0.5)
    ids = [f"req-{i}" for i in range(50)]

    assert [one.latency_for(i) for i in ids] == [same.latency_for(i) for i in ids]
    assert [one.latency_for(i) for i in ids] != [other.latency_for(i) for i in ids]


@settings(max_examples=200, deadline=None)
@given(
    median=st.floats(min_value=0.0, max_value=60.0),
    spread=st.floats(min_value=0.0, max_value=MAX_LATENCY_SPREAD),
    request_id=st.text(max_size=40),
)
def test_a_draw_is_finite_and_within_four_deviations(
    median: float, spread: float, request_id: str
) -> None:
    draw = SimulatedLLM(latency_seconds=median, latency_spread=spread).latency_for(request_id)

    assert math.isfinite(draw)
    assert median * math.exp(-4 * spread) * (1 - 1e-9) <= draw
    assert draw <= median * math.exp(4 * spread) * (1 + 1e-9)


def test_no_spread_is_the_median_every_time() -> None:
    llm = SimulatedLLM(latency_seconds=0.25)
    assert {llm.latency_for(f"req-{i}") for i in range(20)} == {0.25}


@pytest.mark.asyncio
async def test_each_call_awaits_its_own_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:  # the simulation's only await
        slept.append(delay)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    llm = SimulatedLLM(seed=2, latency_seconds=0.1, latency_spread=0.8)
    responses = [await llm.score(_TX, f"req-{i}", "risk-llm-v2", _PROMPT) for i in range(5)]

    assert slept == [llm.latency_for(f"req-{i}") for i in range(5)]
    assert [r.latency_seconds for r in responses] == slept
    assert len(set(slept)) == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"latency_spread": -0.1},
        {"latency_spread": math.nan},
        {"latency_spread": math.inf},
        {"latency_spread": MAX_LATENCY_SPREAD + 0.01},
    ],
)
def test_a_bad_spread_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="latency_spread"):
        SimulatedLLM(latency_seconds=0.1, **kwargs)
