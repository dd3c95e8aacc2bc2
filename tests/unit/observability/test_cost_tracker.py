"""Tests for :mod:`app.observability.cost_tracker`: exact Decimal costs and budgets.

Cost reads (``get_tenant_cost``...) are answered by the cost collector after
every record the reader sent before; budget events travel on from the cost
collector to the metrics and audit collectors, so those reads flush first.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from decimal import Context, Decimal
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from app.observability import CostEstimate, Observability
from app.observability.settings import DEFAULT_PRICE_TABLE

MakeObs = Callable[..., Observability]

MODELS = ("risk-llm-v2", "risk-llm-v1", "risk-llm-mini-v1")


def _add(obs: Observability, **overrides: Any) -> Decimal:
    arguments: dict[str, Any] = {
        "tenant_id": "t1", "model_version": "risk-llm-v2", "input_tokens": 1000,
        "output_tokens": 500,
    }
    arguments.update(overrides)
    return obs.costs.add_cost(**arguments)


def _counter(obs: Observability, metric: str, **labels: str) -> Any:
    for series in obs.metrics.export_metrics()[metric]["series"]:
        if series["labels"] == labels:
            return series["value"]
    return None


# --- the specification's list ----------------------------------------------


def test_cost_accumulates_per_tenant(obs: Observability) -> None:
    first = _add(obs, tenant_id="t1")
    second = _add(obs, tenant_id="t1", model_version="risk-llm-v1")
    other = _add(obs, tenant_id="t2", input_tokens=1, output_tokens=1)

    assert first == Decimal("0.006")  # 1000 x 0.003/1k + 500 x 0.006/1k
    assert second == Decimal("0.0025")
    assert obs.costs.get_tenant_cost("t1") == Decimal("0.0085")
    assert obs.costs.get_tenant_cost("t2") == other == Decimal("0.000009")
    assert obs.costs.get_tenant_cost("nobody") == Decimal(0)
    assert obs.costs.get_total_cost() == Decimal("0.008509")
    assert all(isinstance(v, Decimal) for v in (first, second, other))


def test_cost_per_model_is_tracked(obs: Observability) -> None:
    _add(obs, tenant_id="t1", model_version="risk-llm-v2")
    _add(obs, tenant_id="t2", model_version="risk-llm-v2")
    _add(obs, tenant_id="t2", model_version="risk-llm-mini-v1")

    assert obs.costs.get_model_cost("risk-llm-v2") == Decimal("0.012")
    assert obs.costs.get_model_cost("risk-llm-mini-v1") == Decimal("0.00045")
    assert obs.costs.get_model_cost("risk-llm-v1") == 0
    snapshot = obs.costs.snapshot()
    assert snapshot.by_tenant_model == {
        ("t1", "risk-llm-v2"): Decimal("0.006"),
        ("t2", "risk-llm-v2"): Decimal("0.006"),
        ("t2", "risk-llm-mini-v1"): Decimal("0.00045"),
    }
    assert snapshot.by_model == {"risk-llm-v2": Decimal("0.012"),
                                 "risk-llm-mini-v1": Decimal("0.00045")}


def test_cost_per_request(obs: Observability) -> None:
    _add(obs, request_id="r1")
    _add(obs, request_id="r1", model_version="risk-llm-v1")
    _add(obs, request_id="r2")
    _add(obs)  # no request

    assert obs.costs.get_request_cost("r1") == Decimal("0.0085")
    assert obs.costs.get_request_cost("r2") == Decimal("0.006")
    assert obs.costs.get_request_cost("r3") is None
    assert obs.costs.snapshot().requests_tracked == 2


def test_per_request_costs_are_bounded(make_obs: MakeObs) -> None:
    obs = make_obs(max_tracked_requests=2)
    for request in ("r1", "r2", "r3"):
        _add(obs, request_id=request)

    assert obs.costs.get_request_cost("r1") is None
    assert obs.costs.get_request_cost("r3") == Decimal("0.006")
    snapshot = obs.costs.snapshot()
    assert (snapshot.requests_tracked, snapshot.requests_evicted) == (2, 1)
    assert snapshot.total == Decimal("0.018")  # eviction forgets the request, not the money


def test_reset_works_and_is_ordered_with_costs(obs: Observability) -> None:
    _add(obs, tenant_id="t1", request_id="r1")
    _add(obs, tenant_id="t2", model_version="mystery")
    obs.costs.reset()  # no flush: the reset queues behind the two costs
    _add(obs, tenant_id="t1", model_version="risk-llm-v1")

    assert obs.costs.get_tenant_cost("t1") == Decimal("0.0025")
    assert obs.costs.get_tenant_cost("t2") == 0
    assert obs.costs.get_request_cost("r1") is None
    assert obs.costs.get_total_cost() == Decimal("0.0025")
    snapshot = obs.costs.snapshot()
    assert snapshot.unpriced == {}
    assert list(snapshot.usage) == ["t1"]
    assert snapshot.usage["t1"].generations == 1

    obs.costs.reset()
    assert obs.costs.get_total_cost() == 0
    assert obs.flush()
    assert obs.metrics.export_metrics()["cost_usd"]["series"] == []


def test_reset_is_never_dropped_for_a_full_queue() -> None:
    from app.observability import ObservabilitySettings

    obs = Observability(ObservabilitySettings(queue_maxsize=1, drain_at_exit=False),
                        start=False)
    try:
        _add(obs)
        _add(obs)  # dropped: the queue is full
        obs.costs.reset()  # a control record: still queued, in order
        obs.start()
        assert obs.flush()
        assert obs.costs.get_total_cost() == 0
        assert obs.health().collectors["cost"].dropped == {"queue_full": 1}
    finally:
        obs.close()


# --- exactness, as a property ------------------------------------------------


_usage = st.tuples(
    st.sampled_from(("t1", "t2", "t3", "t4")),
    st.sampled_from(MODELS),
    st.integers(min_value=0, max_value=10**7),
    st.integers(min_value=0, max_value=10**7),
)


def test_costs_are_exact_in_any_order(make_obs: MakeObs) -> None:
    obs = make_obs()

    @settings(max_examples=40, deadline=None)
    @given(usages=st.lists(_usage, max_size=40), order=st.randoms(use_true_random=False))
    def check(usages: list[tuple[str, str, int, int]], order: random.Random) -> None:
        totals: list[Decimal] = []
        for permutation in (usages, order.sample(usages, len(usages))):
            obs.costs.reset()
            results = [
                obs.costs.add_cost(tenant_id=tenant, model_version=model, input_tokens=i,
                                   output_tokens=o)
                for tenant, model, i, o in permutation
            ]
            snapshot = obs.costs.snapshot()
            total = obs.costs.get_total_cost()
            assert sum(results, Decimal(0)) == total == snapshot.total
            assert sum(snapshot.by_tenant.values(), Decimal(0)) == total
            assert sum(snapshot.by_model.values(), Decimal(0)) == total
            for tenant in {u[0] for u in usages}:
                expected = sum((r for r, u in zip(results, permutation, strict=True)
                                if u[0] == tenant), Decimal(0))
                assert obs.costs.get_tenant_cost(tenant) == expected
            totals.append(total)
        assert totals[0] == totals[1]

    check()


def test_costs_are_exact_under_concurrency(obs: Observability) -> None:
    returned: list[Decimal] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        mine = [_add(obs, tenant_id=f"t{index % 3}", model_version=MODELS[index % 3],
                     input_tokens=n, output_tokens=n + 1) for n in range(500)]
        with lock:
            returned.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert obs.costs.get_total_cost() == sum(returned, Decimal(0))
    assert obs.costs.snapshot().usage["t0"].generations == 1_000


def test_estimate_cost_prices_without_recording(obs: Observability) -> None:
    assert obs.costs.estimate_cost("risk-llm-v2", 1000, 500) == CostEstimate(Decimal("0.006"),
                                                                             True)
    assert obs.costs.estimate_cost("mystery", 1000, 500) == CostEstimate(Decimal(0), False)
    assert obs.costs.get_total_cost() == 0
    assert obs.costs.priced_models == frozenset(MODELS)


# --- unpriced models -------------------------------------------------------------


def test_unpriced_model_is_flagged_and_counted_never_a_silent_zero(obs: Observability) -> None:
    with structlog.testing.capture_logs() as logs:
        cost = _add(obs, model_version="mystery-llm", request_id="r1")
        _add(obs, model_version="mystery-llm")

    assert cost == 0
    snapshot = obs.costs.snapshot()
    assert snapshot.unpriced == {"mystery-llm": 2}
    assert snapshot.usage["t1"].generations == 2
    assert snapshot.usage["t1"].input_tokens == 2000
    assert obs.costs.get_request_cost("r1") == 0
    assert _counter(obs, "unpriced_generations", model_version="mystery-llm") == 2
    warnings = [log for log in logs if log["event"] == "observability.unpriced_model"]
    assert len(warnings) == 1  # rate-limited
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["model_version"] == "mystery-llm"


def test_unpriced_policy_raise(make_obs: MakeObs) -> None:
    obs = make_obs(unpriced_policy="raise")

    with pytest.raises(ValueError, match="model_version 'mystery-llm' has no price"):
        _add(obs, model_version="mystery-llm")

    assert _add(obs, model_version="mystery-llm", cost=Decimal("0.5")) == Decimal("0.5")
    assert _add(obs) == Decimal("0.006")
    assert obs.costs.get_total_cost() == Decimal("0.506")
    assert obs.costs.snapshot().unpriced == {}


# --- explicit costs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("cost", "expected"),
    [
        (Decimal("0.125"), Decimal("0.125")),
        (Decimal(0), Decimal(0)),
        (2, Decimal(2)),
        (Decimal("0.0042"), Decimal("0.0042")),
    ],
)
def test_explicit_cost_override(obs: Observability, cost: Any, expected: Decimal) -> None:
    result = _add(obs, cost=cost)

    assert result == expected and isinstance(result, Decimal)
    assert obs.costs.get_tenant_cost("t1") == expected


@pytest.mark.parametrize(
    ("cost", "error"),
    [
        (Decimal("NaN"), ValueError),
        (Decimal("sNaN"), ValueError),
        (Decimal("Infinity"), ValueError),
        (Decimal("-0.01"), ValueError),
        (-1, ValueError),
        (math.nan, TypeError),  # a float is never exact money
        (0.1, TypeError),
        ("abc", TypeError),
        ("0.0042", TypeError),
        (Decimal("1000.01"), ValueError),  # above max_cost_per_call_usd
        (Decimal("9E+999999"), ValueError),  # would overflow the store's sums
        (True, TypeError),
        (b"1", TypeError),
        ([1], TypeError),
        (1j, TypeError),
    ],
)
def test_explicit_cost_validation(obs: Observability, cost: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="cost"):
        _add(obs, cost=cost)

    assert obs.costs.get_total_cost() == 0
    assert obs.health().collectors["cost"].applied == 0


@pytest.mark.parametrize(
    ("overrides", "error", "field"),
    [
        ({"tenant_id": ""}, ValueError, "tenant_id"),
        ({"tenant_id": None}, TypeError, "tenant_id"),
        ({"model_version": ""}, ValueError, "model_version"),
        ({"model_version": b"m"}, TypeError, "model_version"),
        ({"input_tokens": -1}, ValueError, "input_tokens"),
        ({"input_tokens": 1.0}, TypeError, "input_tokens"),
        ({"output_tokens": -5}, ValueError, "output_tokens"),
        ({"output_tokens": "5"}, TypeError, "output_tokens"),
        ({"output_tokens": False}, TypeError, "output_tokens"),
        ({"request_id": ""}, ValueError, "request_id"),
        ({"request_id": 1}, TypeError, "request_id"),
    ],
)
def test_bad_usage_is_refused(
    obs: Observability, overrides: dict[str, Any], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        _add(obs, **overrides)
    assert obs.costs.get_total_cost() == 0


def test_reads_validate_their_ids(obs: Observability) -> None:
    with pytest.raises(ValueError, match="tenant_id"):
        obs.costs.get_tenant_cost("")
    with pytest.raises(TypeError, match="request_id"):
        obs.costs.get_request_cost(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model_version"):
        obs.costs.get_model_cost(1)  # type: ignore[arg-type]


# --- budgets ---------------------------------------------------------------------


def _crossings(obs: Observability) -> list[tuple[str, str]]:
    return [(e.data["tenant_id"], e.data["threshold"])  # type: ignore[misc]
            for e in obs.audit.events(event="budget.threshold_crossed")]


def test_budget_thresholds_emit_once_per_crossing(make_obs: MakeObs) -> None:
    obs = make_obs(budgets={"t1": Decimal("0.01")})
    small = {"model_version": "risk-llm-v2", "input_tokens": 1000, "output_tokens": 0}

    for _ in range(2):  # 0.003 each: 60 %
        _add(obs, tenant_id="t1", **small)
    assert obs.flush()
    assert _crossings(obs) == []
    _add(obs, tenant_id="t1", **small)  # 0.009: 90 %
    assert obs.flush()
    assert _crossings(obs) == [("t1", "0.8")]

    _add(obs, tenant_id="t1", **small)  # 0.012: 120 %
    _add(obs, tenant_id="t1", **small)  # 0.015: still over, no new event
    _add(obs, tenant_id="t2", **small)  # no budget
    assert obs.flush()

    assert _crossings(obs) == [("t1", "0.8"), ("t1", "1.0")]
    (event,) = obs.audit.events(event="budget.threshold_crossed", tenant_id="t1")[1:]
    assert event.data["budget_usd"] == "0.01"
    assert Decimal(str(event.data["spent_usd"])) == Decimal("0.012")
    assert _counter(obs, "budget_threshold_crossed", tenant_id="t1", threshold="0.8") == 1
    assert _counter(obs, "budget_threshold_crossed", tenant_id="t1", threshold="1.0") == 1
    budgets = obs.costs.snapshot().budgets
    assert list(budgets) == ["t1"]
    status = budgets["t1"]
    assert status.over_budget
    assert status.spent == Decimal("0.015")
    assert status.fraction == Decimal("1.5")
    assert status.thresholds_crossed == (Decimal("0.8"), Decimal("1.0"))


def test_one_jump_crosses_every_threshold_it_passes(make_obs: MakeObs) -> None:
    obs = make_obs(budgets={"t1": Decimal("0.001"), "t2": Decimal("100")})

    _add(obs, tenant_id="t1")  # 0.006: 600 % at once
    _add(obs, tenant_id="t2")
    assert obs.flush()

    assert _crossings(obs) == [("t1", "0.8"), ("t1", "1.0")]
    budgets = obs.costs.snapshot().budgets
    assert budgets["t1"].over_budget and not budgets["t2"].over_budget
    assert budgets["t2"].thresholds_crossed == ()
    assert budgets["t2"].fraction == Decimal("0.00006")


def test_reaching_a_threshold_exactly_counts_as_crossing(make_obs: MakeObs) -> None:
    obs = make_obs(budgets={"t1": Decimal("0.006")})

    _add(obs, tenant_id="t1")  # exactly 100 %
    assert obs.flush()

    assert _crossings(obs) == [("t1", "0.8"), ("t1", "1.0")]
    assert obs.costs.snapshot().budgets["t1"].over_budget


def test_reset_rearms_budget_thresholds(make_obs: MakeObs) -> None:
    obs = make_obs(budgets={"t1": Decimal("0.005")})
    _add(obs, tenant_id="t1")
    obs.costs.reset()
    _add(obs, tenant_id="t1")
    assert obs.flush()

    assert _crossings(obs) == [("t1", "0.8"), ("t1", "1.0")] * 2
    assert _counter(obs, "budget_threshold_crossed", tenant_id="t1", threshold="1.0") == 2
    assert obs.costs.snapshot().budgets["t1"].spent == Decimal("0.006")


# --- the price cache ---------------------------------------------------------------


def _fresh_price(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """The table price computed from scratch, as ``estimate_cost`` did before its cache."""
    rates = DEFAULT_PRICE_TABLE[model]
    ctx = Context(prec=28)
    return ctx.add(ctx.multiply(rates.input_per_1k.scaleb(-3), input_tokens),
                   ctx.multiply(rates.output_per_1k.scaleb(-3), output_tokens))


def test_table_prices_are_exact(obs: Observability) -> None:
    @settings(max_examples=200, deadline=None)
    @given(model=st.sampled_from(MODELS), input_tokens=st.integers(0, 10_000_000),
           output_tokens=st.integers(0, 10_000_000))
    def check(model: str, input_tokens: int, output_tokens: int) -> None:
        expected = _fresh_price(model, input_tokens, output_tokens)
        estimate = obs.costs.estimate_cost(model, input_tokens, output_tokens)
        assert type(estimate) is CostEstimate and estimate == (expected, True)
        assert str(estimate.cost) == str(expected)  # same digits and exponent

    check()


def test_a_bool_is_not_a_token_count(obs: Observability) -> None:
    """``True == 1``: the type checks refuse it at every door."""
    _add(obs, input_tokens=1, output_tokens=0)
    with pytest.raises(TypeError, match="input_tokens"):
        _add(obs, input_tokens=True, output_tokens=0)
    with pytest.raises(TypeError, match="input_tokens"):
        obs.langfuse.log_generation_sync(
            tenant_id="t1", model_version="risk-llm-v2", prompt_version="p1",
            input_tokens=True, output_tokens=0, latency=0.0,
        )
    assert obs.flush()
    assert obs.costs.get_total_cost() == Decimal("0.000003")
