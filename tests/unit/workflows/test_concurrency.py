"""Concurrent instrumented runs: tenants stay isolated, and after a flush every total is
exact -- requests, executions, node latencies, failures and Decimal costs, none dropped."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import InfrastructureError, InputValidationError, PolicyViolationError
from app.observability import FailureCategory, Observability, ObservabilitySettings
from app.observability.settings import DEFAULT_PRICE_TABLE
from app.workflows.langgraph import (
    DEFAULT_REGISTRY,
    NODE_NAMES,
    RiskRequest,
    RiskState,
    SimulatedLLM,
    Transaction,
    VersionPin,
    WorkflowConfig,
)
from app.workflows.langgraph.instrumentation import InstrumentedRiskWorkflow
from tests.unit.workflows.payloads import APPROVE, HIGH_RISK, REJECT, REVIEW

AUTO = {n: "ok" for n in NODE_NAMES if n != "escalate_for_approval"}
ESCALATE = {n: "ok" for n in NODE_NAMES if n != "auto_decision"}


@dataclass(frozen=True)
class Kind:
    """A kind of request and everything its run must record."""

    payload: dict[str, Any]
    nodes: dict[str, str]  # node -> status of its latency series
    error: type[Exception] | None = None
    failure: FailureCategory | None = None
    approval: bool = False
    billed: bool = True  # the model answered, so the request has a cost
    infra: bool = False  # run on the workflow whose model always fails


KINDS: dict[str, Kind] = {
    "approve": Kind(APPROVE, AUTO),
    "reject": Kind(REJECT, AUTO),
    "review": Kind(REVIEW, ESCALATE, approval=True),
    "high_risk": Kind(HIGH_RISK, ESCALATE, failure=FailureCategory.HIGH_RISK, approval=True),
    "invalid": Kind({**APPROVE, "amount": "-3"}, {"validate_input": "error"},
                    InputValidationError, FailureCategory.VALIDATION_ERROR, billed=False),
    "policy": Kind({**APPROVE, "country": "IR"},
                   {"validate_input": "ok", "risk_scoring": "ok", "policy_check": "error"},
                   PolicyViolationError, FailureCategory.POLICY_VIOLATION),
    "infra": Kind(APPROVE, {"validate_input": "ok", "risk_scoring": "error"},
                  InfrastructureError, FailureCategory.INFRA_ERROR, billed=False, infra=True),
}


def make_config(**overrides: Any) -> WorkflowConfig:
    # REJECT scores 0.78-0.87 depending on the request's jitter and the model's bias, so
    # the high-risk line goes above it; HIGH_RISK scores 1.0 whatever the draw.
    return WorkflowConfig(high_risk_threshold=0.9, **overrides)


def make_request(payload: dict[str, Any], request_id: str, tenant: str) -> RiskRequest:
    return RiskRequest(
        request_id=request_id, tenant_id=tenant, correlation_id=f"corr-{request_id}",
        payload=payload,
    )


async def independent_cost(request: RiskRequest, config: WorkflowConfig) -> Decimal:
    """Price x tokens of the request's model call, without the workflow or the tracker."""
    selection = DEFAULT_REGISTRY.select(
        request.request_id, request.tenant_id, canary_share=config.canary_share,
        seed=config.seed, pins=config.pinned_versions,
    )
    response = await SimulatedLLM(seed=config.seed).score(
        Transaction.model_validate(request.payload), request.request_id,
        selection.model.name, selection.prompt,
    )
    price = DEFAULT_PRICE_TABLE[response.model_version]
    return (
        price.input_per_1k * response.input_tokens + price.output_per_1k * response.output_tokens
    ) / 1000


def counters(obs: Observability, metric: str, *keys: str) -> Counter[tuple[str, ...]]:
    """A counter's values (a histogram's counts) summed by the given labels."""
    found: Counter[tuple[str, ...]] = Counter()
    for s in obs.metrics.export_metrics()[metric]["series"]:
        found[tuple(s["labels"].get(k, "") for k in keys)] += s.get("count", s.get("value"))
    return found


async def run_mix(
    obs: Observability, plan: list[tuple[str, str]], config: WorkflowConfig
) -> dict[str, tuple[RiskRequest, Kind, RiskState | BaseException]]:
    """Run ``(tenant, kind)`` pairs all at once; return each request's outcome by id."""
    normal = InstrumentedRiskWorkflow(obs, config=config)
    failing = InstrumentedRiskWorkflow(
        obs, config=config.model_copy(update={"infra_failure_rate": 1.0})
    )
    requests = [
        (make_request(KINDS[kind].payload, f"req-{i:03d}-{tenant}", tenant), KINDS[kind])
        for i, (tenant, kind) in enumerate(plan)
    ]
    outcomes = await asyncio.gather(
        *((failing if kind.infra else normal).run(request) for request, kind in requests),
        return_exceptions=True,
    )
    assert await obs.aflush()
    return {
        request.request_id: (request, kind, outcome)
        for (request, kind), outcome in zip(requests, outcomes, strict=True)
    }


async def check_exact_totals(
    obs: Observability,
    runs: dict[str, tuple[RiskRequest, Kind, RiskState | BaseException]],
    config: WorkflowConfig,
) -> None:
    """Every total the runs must have produced, computed from the plan alone."""
    requests: Counter[tuple[str, ...]] = Counter()
    executions: Counter[tuple[str, ...]] = Counter()
    nodes: Counter[tuple[str, ...]] = Counter()
    failures: Counter[tuple[str, ...]] = Counter()
    approvals: Counter[tuple[str, ...]] = Counter()
    tenant_costs: defaultdict[str, Decimal] = defaultdict(Decimal)
    expected_costs: dict[str, Decimal] = {}
    for request_id, (request, kind, outcome) in runs.items():
        tenant = request.tenant_id
        if kind.error is None:
            assert isinstance(outcome, RiskState), outcome
            assert outcome.approval_required is kind.approval
        else:
            assert type(outcome) is kind.error
        requests[(tenant,)] += 1
        executions[(tenant, "ok" if kind.error is None else "error")] += 1
        for node, status in kind.nodes.items():
            nodes[(node, status, tenant)] += 1
        if kind.failure is not None:
            failures[(kind.failure.value, tenant)] += 1
        approvals[(tenant,)] += kind.approval
        if kind.billed:
            expected_costs[request_id] = await independent_cost(request, config)
            tenant_costs[tenant] += expected_costs[request_id]

    assert counters(obs, "request_count", "tenant_id") == requests
    assert counters(obs, "workflow_execution_count", "tenant_id", "status") == executions
    assert counters(obs, "request_latency", "tenant_id", "status") == executions
    assert counters(obs, "node_execution_latency", "node", "status", "tenant_id") == nodes
    assert counters(obs, "failure_count", "category", "tenant_id") == failures
    assert counters(obs, "approval_required_count", "tenant_id") == +approvals
    assert sum(counters(obs, "model_usage_count", "model_version").values()) == len(
        expected_costs
    )

    recorded = {rid: obs.costs.get_request_cost(rid) for rid in runs}
    assert {rid: c for rid, c in recorded.items() if c is not None} == expected_costs
    expected_total = sum(expected_costs.values(), Decimal(0))
    assert obs.costs.get_total_cost() == expected_total
    assert sum((c for c in recorded.values() if c is not None), Decimal(0)) == expected_total
    snapshot = obs.costs.snapshot()
    assert dict(snapshot.by_tenant) == dict(tenant_costs)

    workflows = [s for s in obs.tracing.finished_spans() if s.kind == "workflow"]
    assert len(workflows) == len(runs)
    assert len({s.trace_id for s in workflows}) == len(runs)  # one trace per request
    assert obs.health().dropped_total == 0


# --- tenant isolation -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_concurrent_tenants_see_nothing_of_each_other(obs: Observability) -> None:
    # Each tenant has its own model, so a leak would also show in model usage.
    config = make_config(pinned_versions={
        "tenant-a": VersionPin(model_version="risk-llm-v2"),
        "tenant-b": VersionPin(model_version="risk-llm-v1"),
        "tenant-c": VersionPin(model_version="risk-llm-mini-v1"),
    })
    plans = {
        "tenant-a": ["approve", "review", "policy", "approve"],
        "tenant-b": ["reject", "high_risk", "invalid", "review"],
        "tenant-c": ["approve", "infra", "review", "reject"],
    }
    # Interleaved: A, B, C, A, B, C...
    plan = [(tenant, kinds[i]) for i in range(4) for tenant, kinds in plans.items()]
    runs = await run_mix(obs, plan, config)
    await check_exact_totals(obs, runs, config)

    pinned = {"tenant-a": "risk-llm-v2", "tenant-b": "risk-llm-v1", "tenant-c": "risk-llm-mini-v1"}
    assert set(counters(obs, "model_usage_count", "tenant_id", "model_version")) == set(
        pinned.items()
    )
    assert set(obs.costs.snapshot().by_tenant_model) == set(pinned.items())
    all_spans = obs.tracing.finished_spans()
    all_events = obs.audit.events()
    for tenant in pinned:
        own = {rid for rid, (request, _, _) in runs.items() if request.tenant_id == tenant}
        assert len(own) == 4
        expected_cost = sum(
            (obs.costs.get_request_cost(rid) or Decimal(0) for rid in own), Decimal(0)
        )
        assert obs.costs.get_tenant_cost(tenant) == expected_cost > 0

        spans = obs.tracing.finished_spans(tenant_id=tenant)
        assert spans and {s.attrs["request_id"] for s in spans} == own
        assert {s.attrs["correlation_id"] for s in spans} == {f"corr-{rid}" for rid in own}
        traces = {s.trace_id for s in spans}
        # Every span of this tenant's traces is this tenant's, and vice versa.
        assert [s for s in all_spans if s.trace_id in traces] == list(spans)

        events = obs.audit.events(tenant_id=tenant)
        assert events and {e.data["request_id"] for e in events} <= own
        assert all(e.data.get("tenant_id") == tenant for e in all_events
                   if e.data.get("request_id") in own)
        assert {e.data["category"] for e in events if e.event == "failure.classified"} == {
            failure.value for kind in plans[tenant]
            if (failure := KINDS[kind].failure) is not None
        }


# --- 200 at once ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_200_concurrent_runs_give_exact_totals(obs: Observability) -> None:
    tenants = ("t-0", "t-1", "t-2", "t-3", "t-4")
    kinds = tuple(KINDS)
    # 5 tenants x 7 kinds are co-prime: every tenant gets every kind.
    plan = [(tenants[i % len(tenants)], kinds[i % len(kinds)]) for i in range(200)]
    assert len(set(plan)) == len(tenants) * len(kinds)
    config = make_config(canary_share=0.3)
    runs = await run_mix(obs, plan, config)

    failed = [o for _, _, o in runs.values() if isinstance(o, BaseException)]
    succeeded = sum(1 for _, kind in plan if KINDS[kind].error is None)
    assert len(failed) == len(plan) - succeeded > 0
    await check_exact_totals(obs, runs, config)
    assert counters(obs, "workflow_execution_count", "status") == Counter(
        {("ok",): succeeded, ("error",): len(failed)}
    )
    models = counters(obs, "model_usage_count", "model_version")
    assert set(models) == {("risk-llm-v1",), ("risk-llm-v2",)}  # canary and default both ran


@settings(
    max_examples=12, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    plan=st.lists(
        st.tuples(st.sampled_from(("x", "y", "z")), st.sampled_from(tuple(KINDS))),
        min_size=1, max_size=24,
    ),
    canary_share=st.sampled_from((0.0, 0.5, 1.0)),
)
def test_any_mix_of_concurrent_runs_gives_exact_totals(
    plan: list[tuple[str, str]], canary_share: float
) -> None:
    config = make_config(canary_share=canary_share)

    async def scenario() -> None:
        with Observability(ObservabilitySettings(drain_at_exit=False)) as obs:
            runs = await run_mix(obs, plan, config)
            await check_exact_totals(obs, runs, config)

    asyncio.run(scenario())
