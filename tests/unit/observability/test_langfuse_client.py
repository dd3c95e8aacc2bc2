"""Tests for :mod:`app.observability.langfuse_client`: in-process generation logging.

One ``log_generation`` feeds three stores: the cost store (priced usage),
the metrics (usage counters and the GenAI client histograms) and the trace (a
``generation`` span named ``{operation} {model}`` with ``gen_ai.*`` attributes).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import structlog

from app.observability import Generation, Observability
from app.observability.otlp import spans_to_otlp
from app.observability.tracing import START_CLAMPED_ATTRIBUTE
from collectors.outbox import RunOutbox

MakeObs = Callable[..., Observability]


def _generation(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "tenant_id": "t1",
        "model_version": "risk-llm-v2",
        "prompt_version": "risk-prompt-v3",
        "input_tokens": 1200,
        "output_tokens": 300,
        "latency": 0.25,
    }
    arguments.update(overrides)
    return arguments


def _counter(obs: Observability, metric: str, **labels: str) -> Any:
    for series in obs.metrics.export_metrics()[metric]["series"]:
        if series["labels"] == labels:
            return series["value"]
    return None


def _nothing_recorded(obs: Observability) -> None:
    assert obs.flush()
    assert obs.tracing.finished_spans() == ()
    assert obs.costs.get_total_cost() == 0
    exported = obs.metrics.export_metrics()
    for metric in ("model_usage_count", "prompt_usage_count", "token_usage",
                   "gen_ai_client_operation_duration", "gen_ai_client_token_usage"):
        assert exported[metric]["series"] == []
    health = obs.health()
    assert health.healthy and health.dropped_total == 0


#: The GenAI labels of a default generation of ``_generation()``.
GEN_AI = {
    "gen_ai_operation_name": "chat", "gen_ai_provider_name": "simulated",
    "gen_ai_request_model": "risk-llm-v2", "gen_ai_response_model": "risk-llm-v2",
}


def _histogram(obs: Observability, metric: str, **labels: str) -> Any:
    for series in obs.metrics.export_metrics()[metric]["series"]:
        if series["labels"] == labels:
            return series
    return None


@pytest.mark.asyncio
async def test_generation_log_is_recorded(obs: Observability) -> None:
    # The node started a second ago: the 0.25 s call fits inside it, nothing is clamped.
    async with obs.tracing.span("risk_scoring", kind="node", tenant_id="t1",
                                correlation_id="c1", request_id="r1",
                                start_ns=time.time_ns() - 1_000_000_000) as node:
        generation = await obs.langfuse.log_generation(
            **_generation(event_id="evt-1", metadata={"temperature": 0.0, "attempt": 1})
        )

    assert isinstance(generation, Generation)
    assert generation.event_id == "evt-1"
    assert generation.trace_id == node.trace_id
    spans = {span.name: span for span in obs.tracing.finished_spans()}
    record = spans["chat risk-llm-v2"]
    assert record.kind == "generation"
    assert record.status == "ok" and record.error_type is None
    assert record.span_id == generation.span_id
    assert record.parent_span_id == node.span_id
    assert record.start_ns >= node.start_ns
    # It started ``latency`` before the call was logged and ended as it was logged.
    assert abs(record.duration_ns - 250_000_000) < 50_000_000
    assert dict(record.attributes) == {
        "tenant_id": "t1",
        "correlation_id": "c1",
        "request_id": "r1",
        "temperature": 0.0,
        "attempt": 1,
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "simulated",
        "gen_ai.request.model": "risk-llm-v2",
        "gen_ai.response.model": "risk-llm-v2",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cost.amount": 0.0054,
        "gen_ai.usage.cost.currency": "USD",
        "prompt_version": "risk-prompt-v3",
        "event_id": "evt-1",
        "priced": True,
    }
    for retired in ("cost_usd", "model_version", "input_tokens", "output_tokens", "provider"):
        assert retired not in record.attrs
    assert type(record.attrs["gen_ai.usage.cost.amount"]) is float


def test_operation_provider_and_response_model_name_the_span(obs: Observability) -> None:
    obs.langfuse.log_generation_sync(**_generation(
        operation="text_completion", provider="anthropic", response_model="risk-llm-v2-0613"))

    (span,) = obs.tracing.finished_spans()
    assert span.name == "text_completion risk-llm-v2"
    assert span.attrs["gen_ai.operation.name"] == "text_completion"
    assert span.attrs["gen_ai.provider.name"] == "anthropic"
    assert span.attrs["gen_ai.request.model"] == "risk-llm-v2"
    assert span.attrs["gen_ai.response.model"] == "risk-llm-v2-0613"
    labels = {"gen_ai_operation_name": "text_completion", "gen_ai_provider_name": "anthropic",
              "gen_ai_request_model": "risk-llm-v2",
              "gen_ai_response_model": "risk-llm-v2-0613"}
    assert _histogram(obs, "gen_ai_client_operation_duration", **labels,
                      error_type="none")["count"] == 1


def test_a_call_longer_than_its_parent_has_run_is_clamped_to_the_parent_start(
    obs: Observability,
) -> None:
    with obs.tracing.span("risk_scoring", kind="node", tenant_id="t1") as node:
        obs.langfuse.log_generation_sync(**_generation(latency=3600.0))

    spans = {span.name: span for span in obs.tracing.finished_spans()}
    generation = spans["chat risk-llm-v2"]
    assert generation.start_ns == node.start_ns  # a child never starts before its parent
    assert generation.attrs[START_CLAMPED_ATTRIBUTE] is True
    assert generation.end_ns <= spans["risk_scoring"].end_ns
    assert START_CLAMPED_ATTRIBUTE not in spans["risk_scoring"].attrs
    # The metric keeps the latency the caller measured.
    series = _histogram(obs, "gen_ai_client_operation_duration", **GEN_AI, error_type="none")
    assert series["sum"] == 3600.0


def test_a_failed_call_is_a_generation_span_with_an_error_and_costs_nothing(
    obs: Observability,
) -> None:
    with obs.tracing.span("risk_scoring", kind="node", tenant_id="t1", request_id="r1",
                          start_ns=time.time_ns() - 1_000_000_000):
        generation = obs.langfuse.log_generation_sync(
            **_generation(error=TimeoutError("the model did not answer"), output_tokens=0))

    assert (generation.cost, generation.priced) == (Decimal(0), False)
    spans = {span.name: span for span in obs.tracing.finished_spans()}
    span = spans["chat risk-llm-v2"]
    assert span.kind == "generation" and span.status == "error"
    assert span.error_type == "TimeoutError"
    assert span.error_message == "the model did not answer"
    assert span.attrs["error.type"] == "TimeoutError"
    assert span.attrs["gen_ai.usage.cost.amount"] == 0.0 and span.attrs["priced"] is False
    assert [event.name for event in span.events] == ["exception"]
    assert spans["risk_scoring"].status == "ok"  # the caller decides about its own span
    assert obs.costs.get_tenant_cost("t1") == 0 and obs.costs.get_request_cost("r1") is None
    exported = obs.metrics.export_metrics()
    for metric in ("model_usage_count", "prompt_usage_count", "token_usage",
                   "gen_ai_client_token_usage"):
        assert exported[metric]["series"] == []
    (duration,) = exported["gen_ai_client_operation_duration"]["series"]
    assert duration["labels"] == {**GEN_AI, "error_type": "TimeoutError"}
    assert (duration["count"], duration["sum"]) == (1, 0.25)


def test_a_failed_call_is_held_to_the_same_argument_rules(obs: Observability) -> None:
    with pytest.raises(ValueError, match="input_tokens"):
        obs.langfuse.log_generation_sync(**_generation(error=TimeoutError(), input_tokens=-1))
    with pytest.raises(TypeError, match="error"):
        obs.langfuse.log_generation_sync(**_generation(error="timeout"))
    _nothing_recorded(obs)


def test_generation_without_a_parent_starts_its_own_trace(obs: Observability) -> None:
    first = obs.langfuse.log_generation_sync(**_generation())
    second = obs.langfuse.log_generation_sync(**_generation())

    assert first.event_id != second.event_id
    assert first.event_id.startswith("gen-")
    (a, b) = obs.tracing.finished_spans()
    assert a.parent_span_id == 0 and b.parent_span_id == 0
    assert a.trace_id != b.trace_id


def test_cost_is_computed_exactly(obs: Observability) -> None:
    generation = obs.langfuse.log_generation_sync(**_generation(request_id="r1"))

    # 1200 x 0.0030/1k + 300 x 0.0060/1k
    assert generation.cost == Decimal("0.0054")
    assert generation.priced is True
    assert obs.costs.get_tenant_cost("t1") == Decimal("0.0054")
    assert obs.costs.get_request_cost("r1") == Decimal("0.0054")
    assert obs.costs.get_model_cost("risk-llm-v2") == Decimal("0.0054")
    usage = obs.costs.snapshot().usage["t1"]
    assert (usage.generations, usage.input_tokens, usage.output_tokens) == (1, 1200, 300)


def test_metrics_are_updated(obs: Observability) -> None:
    obs.langfuse.log_generation_sync(**_generation())
    obs.langfuse.log_generation_sync(**_generation(prompt_version="risk-prompt-v4",
                                                   input_tokens=10, output_tokens=0))

    assert _counter(obs, "model_usage_count", model_version="risk-llm-v2", tenant_id="t1") == 2
    assert _counter(obs, "prompt_usage_count", prompt_version="risk-prompt-v3",
                    tenant_id="t1") == 1
    assert _counter(obs, "prompt_usage_count", prompt_version="risk-prompt-v4",
                    tenant_id="t1") == 1
    assert _counter(obs, "token_usage", tenant_id="t1", model_version="risk-llm-v2",
                    direction="input") == 1210
    assert _counter(obs, "token_usage", tenant_id="t1", model_version="risk-llm-v2",
                    direction="output") == 300
    (cost,) = obs.metrics.export_metrics()["cost_usd"]["series"]
    assert cost["value"] == Decimal("0.0054") + Decimal("0.00003")
    duration = _histogram(obs, "gen_ai_client_operation_duration", **GEN_AI, error_type="none")
    assert (duration["count"], duration["sum"]) == (2, 0.5)
    tokens_in = _histogram(obs, "gen_ai_client_token_usage", **GEN_AI,
                           gen_ai_token_type="input")
    tokens_out = _histogram(obs, "gen_ai_client_token_usage", **GEN_AI,
                            gen_ai_token_type="output")
    assert (tokens_in["count"], tokens_in["sum"]) == (2, 1210)
    assert (tokens_out["count"], tokens_out["sum"]) == (2, 300)
    assert tokens_in["buckets"]["1024.0"] == 1 and tokens_in["buckets"]["4096.0"] == 2


def test_the_same_event_logged_twice_is_billed_once(obs: Observability) -> None:
    first = obs.langfuse.log_generation_sync(**_generation(event_id="evt-7", request_id="r1"))
    again = obs.langfuse.log_generation_sync(**_generation(event_id="evt-7", request_id="r1"))

    assert first.event_id == again.event_id == "evt-7"
    assert obs.costs.get_tenant_cost("t1") == Decimal("0.0054")
    assert obs.costs.get_request_cost("r1") == Decimal("0.0054")


def test_explicit_cost_overrides_the_price_table(obs: Observability) -> None:
    generation = obs.langfuse.log_generation_sync(
        **_generation(model_version="external-model", estimated_cost=Decimal("0.125"))
    )

    assert generation.cost == Decimal("0.125") and generation.priced
    assert obs.costs.get_tenant_cost("t1") == Decimal("0.125")
    assert obs.costs.snapshot().unpriced == {}


def test_unpriced_model_is_flagged_never_a_silent_zero(obs: Observability) -> None:
    generation = obs.langfuse.log_generation_sync(**_generation(model_version="mystery-llm"))

    assert generation.cost == 0 and generation.priced is False
    (span,) = obs.tracing.finished_spans()
    assert span.attrs["priced"] is False
    assert obs.costs.snapshot().unpriced == {"mystery-llm": 1}
    assert _counter(obs, "unpriced_generations", model_version="mystery-llm") == 1


def test_unpriced_model_raises_under_the_raise_policy(make_obs: MakeObs) -> None:
    obs = make_obs(unpriced_policy="raise")

    with pytest.raises(ValueError, match="model_version 'mystery-llm'"):
        obs.langfuse.log_generation_sync(**_generation(model_version="mystery-llm"))
    _nothing_recorded(obs)


def test_generation_span_exports_gen_ai_attributes(obs: Observability) -> None:
    obs.langfuse.log_generation_sync(**_generation(provider="anthropic"))

    document = spans_to_otlp(obs.tracing.finished_spans())
    (span,) = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    attributes = {kv["key"]: kv["value"] for kv in span["attributes"]}
    assert span["kind"] == 3  # CLIENT
    assert attributes["gen_ai.request.model"] == {"stringValue": "risk-llm-v2"}
    assert attributes["gen_ai.usage.input_tokens"] == {"intValue": "1200"}
    assert attributes["gen_ai.usage.output_tokens"] == {"intValue": "300"}
    assert attributes["gen_ai.provider.name"] == {"stringValue": "anthropic"}
    assert attributes["gen_ai.operation.name"] == {"stringValue": "chat"}
    assert attributes["gen_ai.usage.cost.amount"] == {"doubleValue": 0.0054}
    assert attributes["gen_ai.usage.cost.currency"] == {"stringValue": "USD"}
    assert span["name"] == "chat risk-llm-v2"


def test_metadata_cannot_overwrite_the_engine_attributes(obs: Observability) -> None:
    obs.langfuse.log_generation_sync(**_generation(metadata={
        "tenant_id": "other", "gen_ai.usage.cost.amount": 0.0, "gen_ai.request.model": "x",
        "event_id": "forged", "priced": False,
    }))

    (span,) = obs.tracing.finished_spans()
    assert span.attrs["tenant_id"] == "t1"
    assert span.attrs["gen_ai.usage.cost.amount"] == 0.0054
    assert span.attrs["gen_ai.request.model"] == "risk-llm-v2"
    assert span.attrs["event_id"] != "forged" and span.attrs["priced"] is True
    assert [key for key, _ in span.attributes].count("tenant_id") == 1
    assert obs.tracing.finished_spans(tenant_id="other") == ()  # never another tenant's span


@pytest.mark.parametrize(
    ("overrides", "error", "field"),
    [
        ({"tenant_id": ""}, ValueError, "tenant_id"),
        ({"tenant_id": None}, TypeError, "tenant_id"),
        ({"model_version": 3}, TypeError, "model_version"),
        ({"prompt_version": ""}, ValueError, "prompt_version"),
        ({"input_tokens": -1}, ValueError, "input_tokens"),
        ({"output_tokens": 1.5}, TypeError, "output_tokens"),
        ({"output_tokens": True}, TypeError, "output_tokens"),
        ({"latency": -0.1}, ValueError, "latency"),
        ({"latency": math.nan}, ValueError, "latency"),
        ({"latency": math.inf}, ValueError, "latency"),
        ({"latency": 1e300}, ValueError, "latency"),
        ({"latency": 10**400}, ValueError, "latency"),
        ({"latency": "0.1"}, TypeError, "latency"),
        ({"estimated_cost": Decimal("NaN")}, ValueError, "cost"),
        ({"estimated_cost": -1}, ValueError, "cost"),
        ({"event_id": ""}, ValueError, "event_id"),
        ({"request_id": ""}, ValueError, "request_id"),
        ({"operation": ""}, ValueError, "operation"),
        ({"operation": None}, TypeError, "operation"),
        ({"provider": 1}, TypeError, "provider"),
        ({"response_model": ""}, ValueError, "response_model"),
        ({"tenant_id": "t\n1"}, ValueError, "tenant_id.*control character"),
        ({"model_version": "m" * 257}, ValueError, "model_version.*longer than 256"),
        ({"input_tokens": 10_000_001}, ValueError, "input_tokens"),
        ({"estimated_cost": Decimal("1000.01")}, ValueError, "cost"),
        ({"estimated_cost": 0.5}, TypeError, "cost"),
        ({"metadata": [("k", "v")]}, TypeError, "metadata"),
        # A bad metadata entry is named by its key.
        ({"metadata": {"k": None}}, TypeError, "attribute k "),
        ({"metadata": {"k": [1, 2]}}, TypeError, "attribute k "),
        ({"metadata": {"k": math.nan}}, ValueError, "attribute k "),
        ({"metadata": {"": "v"}}, ValueError, "attribute key"),
    ],
)
def test_bad_input_raises_and_records_nothing(
    obs: Observability, overrides: dict[str, Any], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        obs.langfuse.log_generation_sync(**_generation(**overrides))

    _nothing_recorded(obs)


def test_batched_run_carries_generations_to_the_root_end(obs: Observability) -> None:
    with obs.tracing.span("workflow", kind="workflow", tenant_id="t1", batch=True):
        generation = obs.langfuse.log_generation_sync(**_generation())
        assert obs.flush()
        assert obs.costs.get_tenant_cost("t1") == 0
        assert obs.tracing.finished_spans() == ()
    assert obs.flush()

    assert obs.costs.get_tenant_cost("t1") == generation.cost
    assert len(obs.tracing.finished_spans()) == 2


def test_generations_count_toward_the_outbox_limit(obs: Observability) -> None:
    """A run that only logs generations is still sent early once it reaches the limit."""
    limit = inspect.signature(RunOutbox).parameters["limit"].default
    # Each generation adds its cost, then its span together with its seven metric
    # records (usage counters and the GenAI histograms): nine records.
    per_call = 9
    calls = limit // per_call + 1  # the last one's span and metrics reach the limit
    root = obs.tracing.start_span_sync("wf", kind="workflow", tenant_id="t1", batch=True)
    assert type(root.sink) is RunOutbox
    generations = [
        obs.langfuse.log_generation_sync(
            tenant_id="t1", model_version="risk-llm-v2", prompt_version="p/v1",
            input_tokens=1, output_tokens=1, latency=0.0,
        )
        for _ in range(calls)
    ]
    assert (calls - 1) * per_call + 1 < limit <= calls * per_call
    assert obs.flush(5.0)
    # Sent early, before the run ends: every cost and every span.
    assert obs.costs.get_tenant_cost("t1") == sum(g.cost for g in generations)
    assert len(obs.tracing.finished_spans()) == calls
    obs.tracing.end_span_sync(root)
    assert obs.flush(5.0)
    assert len(obs.tracing.finished_spans()) == calls + 1
    assert _counter(obs, "model_usage_count", model_version="risk-llm-v2",
                    tenant_id="t1") == calls


# --- where the records go ----------------------------------------------------------


def test_a_generation_after_its_run_ended_goes_straight_through(obs: Observability) -> None:
    """A task of the run that outlived its root: nothing waits for a close that happened."""
    root = obs.tracing.start_span_sync("wf", kind="workflow", tenant_id="t1", request_id="r1",
                                       batch=True)
    node = obs.tracing.start_span_sync("risk_scoring", kind="node")
    assert node.sink is root.sink
    obs.tracing.end_span_sync(root)  # the root ends first; the node is still current
    assert obs.tracing.current_span() is node
    generation = obs.langfuse.log_generation_sync(**_generation())

    assert obs.flush()
    spans = {span.name: span for span in obs.tracing.finished_spans()}
    assert set(spans) == {"wf", "chat risk-llm-v2"}
    assert spans["chat risk-llm-v2"].parent_span_id == node.span_id
    assert obs.costs.get_request_cost("r1") == generation.cost
    assert _counter(obs, "token_usage", tenant_id="t1", model_version="risk-llm-v2",
                    direction="input") == 1200
    obs.tracing.end_span_sync(node)
    assert obs.flush()
    assert len(obs.tracing.finished_spans()) == 3
    assert obs.health().dropped_total == 0


@pytest.mark.parametrize("ratio", [1.0, 0.0], ids=["sampled", "sampled-out"])
def test_a_batched_generation_records_the_same_as_a_direct_one(
    make_obs: MakeObs, ratio: float,
) -> None:
    """Sampling and batching decide where and whether the span goes, never the totals."""
    direct, batched = make_obs(sample_ratio=ratio), make_obs(sample_ratio=ratio)
    for _ in range(3):
        direct.langfuse.log_generation_sync(**_generation(request_id="r1"))
    with batched.tracing.span("wf", kind="workflow", tenant_id="t1", request_id="r1",
                              batch=True):
        for _ in range(3):
            batched.langfuse.log_generation_sync(**_generation())

    results = []
    for obs in (direct, batched):
        assert obs.flush()
        exported = obs.metrics.export_metrics()
        usage = {metric: sorted((sorted(s["labels"].items()), s.get("value", s.get("count")))
                                for s in exported[metric]["series"])
                 for metric in ("model_usage_count", "prompt_usage_count", "token_usage",
                                "gen_ai_client_operation_duration",
                                "gen_ai_client_token_usage")}
        generations = [span for span in obs.tracing.finished_spans()
                       if span.kind == "generation"]
        results.append((obs.costs.get_request_cost("r1"), usage, len(generations)))
        assert obs.health().collectors["cost"].handler_errors == 0
    assert results[0] == results[1]
    assert results[0][0] == 3 * Decimal("0.0054")
    assert results[0][2] == (3 if ratio else 0)


def test_a_generation_under_a_remote_parent_joins_its_trace(obs: Observability) -> None:
    remote = obs.tracing.extract({"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"})
    assert remote is not None
    token = obs.tracing.attach(remote)
    try:
        generation = obs.langfuse.log_generation_sync(**_generation(request_id="r1"))
    finally:
        obs.tracing.detach(token)

    (span,) = obs.tracing.finished_spans()
    assert (span.trace_id, span.span_id) == (generation.trace_id, generation.span_id)
    assert span.trace_id == int("ab" * 16, 16)
    assert span.parent_span_id == int("cd" * 8, 16) and span.remote_parent
    assert obs.costs.get_request_cost("r1") == generation.cost


def test_unpriced_models_keep_their_policy_on_every_call(make_obs: MakeObs) -> None:
    """Each call flags (or refuses) an unpriced model; the warning is rate-limited."""
    flagging, raising = make_obs(), make_obs(unpriced_policy="raise")
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            generation = flagging.langfuse.log_generation_sync(
                **_generation(model_version="mystery"))
            assert (generation.cost, generation.priced) == (0, False)
            with pytest.raises(ValueError, match="model_version 'mystery' has no price"):
                raising.langfuse.log_generation_sync(**_generation(model_version="mystery"))

    warnings = [log for log in logs if log["event"] == "observability.unpriced_model"]
    assert [log["model_version"] for log in warnings] == ["mystery"]  # rate-limited
    assert flagging.flush()
    assert flagging.costs.snapshot().unpriced == {"mystery": 3}
    assert all(span.attrs["priced"] is False for span in flagging.tracing.finished_spans())
    _nothing_recorded(raising)
