"""Tests for :mod:`app.observability.langfuse_client`: in-process generation logging.

One ``log_generation`` feeds three stores: the cost store (priced usage),
the metrics (usage counters) and the trace (a ``generation`` span).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from app.observability import Generation, Observability
from app.observability.otlp import spans_to_otlp

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
    for metric in ("model_usage_count", "prompt_usage_count", "token_usage"):
        assert exported[metric]["series"] == []
    health = obs.health()
    assert health.healthy and health.dropped_total == 0


@pytest.mark.asyncio
async def test_generation_log_is_recorded(obs: Observability) -> None:
    async with obs.tracing.span("risk_scoring", kind="node", tenant_id="t1",
                                correlation_id="c1", request_id="r1") as node:
        generation = await obs.langfuse.log_generation(
            **_generation(event_id="evt-1", metadata={"temperature": 0.0, "attempt": 1})
        )

    assert isinstance(generation, Generation)
    assert generation.event_id == "evt-1"
    assert generation.trace_id == node.trace_id
    spans = {span.name: span for span in obs.tracing.finished_spans()}
    record = spans["llm.generation"]
    assert record.kind == "generation"
    assert record.span_id == generation.span_id
    assert record.parent_span_id == node.span_id
    assert record.duration_ns == 250_000_000
    assert dict(record.attributes) == {
        "tenant_id": "t1",
        "model_version": "risk-llm-v2",
        "prompt_version": "risk-prompt-v3",
        "input_tokens": 1200,
        "output_tokens": 300,
        "cost_usd": "0.0054000",
        "priced": True,
        "event_id": "evt-1",
        "provider": "simulated",
        "correlation_id": "c1",
        "request_id": "r1",
        "temperature": 0.0,
        "attempt": 1,
    }


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


def test_metadata_cannot_overwrite_the_engine_attributes(obs: Observability) -> None:
    obs.langfuse.log_generation_sync(**_generation(metadata={"tenant_id": "other",
                                                              "cost_usd": "0"}))

    (span,) = obs.tracing.finished_spans()
    assert span.attrs["tenant_id"] == "t1"
    assert span.attrs["cost_usd"] == "0.0054000"


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
        ({"name": ""}, ValueError, "name"),
        ({"provider": 1}, TypeError, "provider"),
        ({"metadata": [("k", "v")]}, TypeError, "metadata"),
        ({"metadata": {"k": None}}, TypeError, "metadata"),
        ({"metadata": {"k": [1, 2]}}, TypeError, "metadata"),
        ({"metadata": {"k": math.nan}}, ValueError, "metadata"),
        ({"metadata": {"": "v"}}, ValueError, "metadata"),
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
    root = obs.tracing.start_span_sync("wf", kind="workflow", tenant_id="t1", batch=True)
    assert root.outbox is not None
    root.outbox.limit = 10
    for _ in range(3):
        obs.langfuse.log_generation_sync(
            tenant_id="t1", model_version="risk-llm-v2", prompt_version="p/v1",
            input_tokens=1, output_tokens=1, latency=0.0,
        )
    # Each generation adds a span and four usage metrics: the second reaches the limit
    # (2 + 8 records) and sends the run so far; the third stays for the root's end.
    assert (len(root.outbox.spans), len(root.outbox.metrics)) == (1, 4)
    assert obs.flush(5.0)
    assert len(obs.tracing.finished_spans()) == 2
    obs.tracing.end_span_sync(root)
    assert obs.flush(5.0)
    assert len(obs.tracing.finished_spans()) == 4
