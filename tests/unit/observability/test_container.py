"""Tests for :class:`app.observability.Observability`: the container and its lifecycle."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from app.observability import (
    AuditLogger,
    CostTracker,
    EvaluationService,
    FailureClassifier,
    FlushResult,
    LangfuseClient,
    MetricsCollector,
    Observability,
    ObservabilitySettings,
    PipelineHealth,
    PipelineState,
    TracingService,
)
from app.observability.metrics import DROP_REASONS
from collectors.base import CollectorState

MakeObs = Callable[..., Observability]
COLLECTORS = {"metrics", "cost", "trace", "audit"}


def _record_one_of_everything(obs: Observability, tenant: str = "t1") -> None:
    obs.metrics.increment("request_count", tenant_id=tenant)
    obs.costs.add_cost(tenant_id=tenant, model_version="risk-llm-v2", input_tokens=10,
                       output_tokens=10)
    with obs.tracing.span("workflow", tenant_id=tenant):
        pass
    obs.audit.log("decision.made", tenant_id=tenant)


def test_defaults_work() -> None:
    obs = Observability()
    try:
        assert obs.state is PipelineState.RUNNING
        assert obs.settings == ObservabilitySettings()
        assert isinstance(obs.metrics, MetricsCollector)
        assert isinstance(obs.tracing, TracingService)
        assert isinstance(obs.langfuse, LangfuseClient)
        assert isinstance(obs.evaluation, EvaluationService)
        assert isinstance(obs.costs, CostTracker)
        assert isinstance(obs.failures, FailureClassifier)
        assert isinstance(obs.audit, AuditLogger)
        assert obs.metrics_server is None

        obs.metrics.increment("request_count", tenant_id="t1")
        obs.metrics.observe_latency("node_execution_latency", 0.012, node="risk_scoring",
                                    tenant_id="t1", status="ok")
        cost = obs.costs.add_cost(tenant_id="t1", model_version="risk-llm-v2",
                                  input_tokens=100, output_tokens=50, request_id="r1")
        assert obs.flush(timeout=5.0)

        assert obs.costs.get_tenant_cost("t1") == cost == Decimal("0.0006")
        exported = obs.metrics.export_metrics()
        assert exported["request_count"]["series"][0]["value"] == 1
        assert exported["node_execution_latency"]["series"][0]["count"] == 1
    finally:
        result = obs.close()
    assert result.complete and obs.state is PipelineState.CLOSED


@pytest.mark.asyncio
async def test_async_span_contract_and_aflush(obs: Observability) -> None:
    span = await obs.tracing.start_span("workflow", tenant_id="t1", correlation_id="c1")
    await obs.tracing.end_span(span)

    result = await obs.aflush(timeout=5.0)

    assert isinstance(result, FlushResult) and result.complete and not result.timed_out
    assert result.pending == 0 and result.dead == ()
    assert len(obs.tracing.finished_spans(tenant_id="t1")) == 1


def test_two_containers_are_fully_independent(make_obs: MakeObs) -> None:
    first, second = make_obs(), make_obs(budgets={"t1": Decimal("0.0001")})
    _record_one_of_everything(first)
    first.failures.register(KeyError, first.failures.category_of(TimeoutError()))
    assert first.flush() and second.flush()

    assert second.costs.get_total_cost() == 0
    assert second.tracing.finished_spans() == ()
    assert second.audit.events() == ()
    exported = second.metrics.export_metrics()
    assert exported["request_count"]["series"] == []
    assert exported["cost_usd"]["series"] == []
    assert second.failures.category_of(KeyError()).value == "UNEXPECTED_ERROR"
    assert first.audit.events(event="budget.threshold_crossed") == ()  # budgets are per container
    second.close()
    assert first.state is PipelineState.RUNNING
    first.metrics.increment("request_count", tenant_id="t1")
    assert first.metrics.export_metrics()["request_count"]["series"][0]["value"] == 2


def test_with_block() -> None:
    settings = ObservabilitySettings(drain_at_exit=False)
    with Observability(settings, start=False) as obs:
        assert obs.state is PipelineState.RUNNING
        _record_one_of_everything(obs)
    assert obs.state is PipelineState.CLOSED
    assert obs.costs.get_tenant_cost("t1") == Decimal("0.00009")  # drained on exit
    assert len(obs.audit.events()) == 1


@pytest.mark.asyncio
async def test_async_with_block() -> None:
    async with Observability(ObservabilitySettings(drain_at_exit=False)) as obs:
        _record_one_of_everything(obs)
        assert (await obs.aflush()).complete
    assert obs.state is PipelineState.CLOSED
    assert len(obs.tracing.finished_spans()) == 1


def test_state_transitions_created_running_closed() -> None:
    obs = Observability(ObservabilitySettings(drain_at_exit=False), start=False)
    try:
        assert obs.state is PipelineState.CREATED
        assert obs.state.value == "created"
        obs.metrics.increment("request_count", tenant_id="t1")  # queued until start

        assert obs.start() is obs
        assert obs.state is PipelineState.RUNNING
        obs.start()  # idempotent while running
        assert obs.metrics.export_metrics()["request_count"]["series"][0]["value"] == 1
    finally:
        obs.close()
    assert obs.state is PipelineState.CLOSED

    with pytest.raises(RuntimeError, match="closed"):
        obs.start()
    with pytest.raises(RuntimeError, match="closed"), obs:
        pass  # pragma: no cover


def test_recording_after_close_raises_nothing_and_counts_dropped_closed(
    obs: Observability,
) -> None:
    obs.close()

    _record_one_of_everything(obs)
    obs.langfuse.log_generation_sync(
        tenant_id="t1", model_version="risk-llm-v2", prompt_version="p1", input_tokens=1,
        output_tokens=1, latency=0.1,
    )
    obs.failures.classify(TimeoutError())
    obs.evaluation.evaluate_decision_sync({"tenant_id": "t1", "risk_score": 0.2})
    obs.costs.reset()

    health = obs.health()
    dropped = {name: dict(stats.dropped) for name, stats in health.collectors.items()}
    assert dropped == {
        # increment; a generation's 4 usage counters and 3 GenAI histograms; failure; quality
        "metrics": {"closed": 1 + 7 + 1 + 1},
        "cost": {"closed": 1 + 1 + 1},  # add_cost, generation, reset
        "trace": {"closed": 2},  # span, generation span
        "audit": {"closed": 1 + 1 + 1},  # log, failure, evaluation
    }
    assert health.dropped_total == 18
    assert obs.costs.get_total_cost() == 0  # reads still answer after close
    exported = obs.metrics.export_metrics()["records_dropped"]["series"]
    # Every (collector, reason) is exported, at 0 until it drops something.
    assert [s for s in exported if s["value"]] == [
        {"labels": {"collector": c, "reason": "closed"}, "value": n}
        for c, n in sorted((c, d["closed"]) for c, d in dropped.items())
    ]
    assert len(exported) == len(dropped) * len(DROP_REASONS)


def test_close_is_idempotent(obs: Observability) -> None:
    _record_one_of_everything(obs)

    first = obs.close(timeout=5.0)
    second = obs.close()

    assert first.complete and second.complete
    assert first.dropped == second.dropped == 0
    assert obs.flush().complete  # a closed pipeline has nothing pending
    assert len(obs.tracing.finished_spans()) == 1


def test_health_fields(obs: Observability) -> None:
    _record_one_of_everything(obs)
    assert obs.flush()

    health = obs.health()

    assert isinstance(health, PipelineHealth)
    assert health.state is PipelineState.RUNNING
    assert health.healthy
    assert health.dropped_total == 0
    assert set(health.collectors) == COLLECTORS
    for name, stats in health.collectors.items():
        assert stats.name == name
        assert stats.state is CollectorState.RUNNING
        assert stats.alive
        assert stats.queue_depth == 0
        assert stats.queue_capacity == obs.settings.queue_maxsize
        assert stats.applied == 1
        assert dict(stats.dropped) == {}
        assert stats.dropped_total == 0
        assert stats.handler_errors == 0
        assert stats.last_error is None
        assert stats.last_flush is not None and stats.last_flush.tzinfo is not None

    obs.close()
    closed = obs.health()
    assert closed.state is PipelineState.CLOSED and not closed.healthy
    assert {s.state for s in closed.collectors.values()} == {CollectorState.STOPPED}
    assert not any(s.alive for s in closed.collectors.values())


def test_tenant_isolation_under_concurrent_recording(obs: Observability) -> None:
    tenants = [f"tenant-{i}" for i in range(12)]
    per_tenant = 40
    errors: list[BaseException] = []
    start = threading.Barrier(len(tenants))

    def worker(tenant: str) -> None:
        try:
            start.wait()
            for n in range(per_tenant):
                obs.costs.add_cost(tenant_id=tenant, model_version="risk-llm-v1",
                                   input_tokens=1000, output_tokens=0, request_id=f"{tenant}-{n}")
                with obs.tracing.span("workflow", tenant_id=tenant), obs.tracing.span("node"):
                    pass
                obs.audit.log("decision.made", tenant_id=tenant, n=n)
                obs.metrics.increment("request_count", tenant_id=tenant)
        except BaseException as exc:  # reported on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in tenants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert obs.flush()

    requests = {s["labels"]["tenant_id"]: s["value"]
                for s in obs.metrics.export_metrics()["request_count"]["series"]}
    for tenant in tenants:
        assert obs.costs.get_tenant_cost(tenant) == per_tenant * Decimal("0.0015")
        spans = obs.tracing.finished_spans(tenant_id=tenant)
        assert len(spans) == 2 * per_tenant
        assert {span.attrs["tenant_id"] for span in spans} == {tenant}
        traces = {span.trace_id for span in spans}
        assert len(traces) == per_tenant
        events = obs.audit.events(tenant_id=tenant)
        assert [e.data["n"] for e in events] == list(range(per_tenant))
        assert {e.data["tenant_id"] for e in events} == {tenant}
        assert requests[tenant] == per_tenant
    all_traces = [span.trace_id for span in obs.tracing.finished_spans()]
    assert len(set(all_traces)) == len(tenants) * per_tenant  # no trace shared by tenants
    assert obs.costs.get_total_cost() == len(tenants) * per_tenant * Decimal("0.0015")
    assert obs.health().dropped_total == 0


def test_flush_before_start_is_incomplete_and_bounded() -> None:
    obs = Observability(ObservabilitySettings(drain_at_exit=False), start=False)
    try:
        result: Any = obs.flush(timeout=0.1)
        assert not result and not result.complete
    finally:
        obs.close()


def test_settings_are_validated() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ObservabilitySettings(sample_ratio=1.5)
    with pytest.raises(ValidationError):
        ObservabilitySettings(latency_buckets=(0.2, 0.1))
    with pytest.raises(ValidationError):
        ObservabilitySettings(budgets={"t1": Decimal(-1)})
    with pytest.raises(ValidationError):
        ObservabilitySettings(unknown_field=1)  # type: ignore[call-arg]


def test_health_lists_tenants_over_budget_and_exporters(make_obs: Any) -> None:
    from decimal import Decimal

    obs = make_obs(budgets={"t1": Decimal("0.001"), "t2": Decimal("100")})
    obs.costs.add_cost(tenant_id="t1", model_version="risk-llm-v2", input_tokens=1000,
                       output_tokens=0)
    obs.costs.add_cost(tenant_id="t2", model_version="risk-llm-v2", input_tokens=1000,
                       output_tokens=0)
    health = obs.health()
    assert health.over_budget == ("t1",)
    assert health.exporters == ()
    assert health.healthy
