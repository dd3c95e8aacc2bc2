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
import structlog

from app.observability import Generation, Observability
from app.observability.otlp import spans_to_otlp
from collectors.records import CostRecord

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


# --- the fast path and the checked path record the same things ---------------------
#
# ``log_generation_sync`` takes a fast path for the common call (valid arguments, a
# priced model, no metadata, no explicit cost) and a checked path otherwise. An empty
# ``metadata`` mapping adds nothing but sends a call down the checked path, so two
# containers with the same ``id_seed`` doing the same calls, one with ``metadata={}``,
# must record exactly the same records (timestamps aside) and draw the same ids.

_WORKFLOW_CALL: dict[str, Any] = {
    "tenant_id": "t1", "model_version": "risk-llm-v2", "prompt_version": "risk_scoring/v3",
    "input_tokens": 412, "output_tokens": 96, "latency": 0.0123, "provider": "simulated",
}


def _untimed_span(record: tuple[Any, ...]) -> tuple[Any, ...]:
    """A span record without its start and end times (fields 5 and 6)."""
    return tuple(record[:5]) + tuple(record[7:])


def _untimed_cost(record: tuple[Any, ...]) -> tuple[Any, ...]:
    """A cost record without its timestamp (the last field)."""
    return tuple(record[:7])


def _log(obs: Observability, checked: bool, **arguments: Any) -> Generation:
    if checked:
        arguments["metadata"] = {}
    return obs.langfuse.log_generation_sync(**arguments)


def _batched_run(obs: Observability, checked: bool, calls: int, **overrides: Any) -> Any:
    """A workflow-like run: generations inside a node span of a batched root."""
    root = obs.tracing.start_span_sync(
        "wf", kind="workflow", root=True, tenant_id="t1", correlation_id="c1",
        request_id="r1", batch=True,
    )
    node = obs.tracing.start_child_span("risk_scoring", "node")
    outbox = node.outbox
    assert outbox is not None and outbox is root.outbox
    outbox.limit = 10_000  # keep everything in the outbox to compare it
    generations = [_log(obs, checked, **{**_WORKFLOW_CALL, **overrides}) for _ in range(calls)]
    taken = (
        [_untimed_span(span) for span in outbox.spans],
        list(outbox.metrics),
        [_untimed_cost(cost) for cost in outbox.costs],
        generations,
    )
    obs.tracing.end_span_sync(node)
    obs.tracing.end_span_sync(root)
    return taken


@pytest.mark.parametrize("ratio", [1.0, 0.0], ids=["sampled", "sampled-out"])
def test_fast_and_checked_paths_fill_the_outbox_alike(make_obs: MakeObs, ratio: float) -> None:
    fast = make_obs(id_seed=99, sample_ratio=ratio)
    checked = make_obs(id_seed=99, sample_ratio=ratio)

    spans, metrics, costs, generations = _batched_run(fast, False, 3)
    assert (spans, metrics, costs, generations) == _batched_run(checked, True, 3)

    assert len(spans) == (3 if ratio else 0)
    assert len(metrics) == 12 and len(costs) == 3
    first = generations[0]
    assert first.cost == Decimal("0.0018120") and first.priced is True
    assert first.event_id.startswith("gen-") and len(first.event_id) == 4 + 24
    if ratio:
        assert spans[0][:2] == (first.trace_id, first.span_id)
        assert dict(zip(spans[0][8][::2], spans[0][8][1::2], strict=True)) == {
            "tenant_id": "t1", "model_version": "risk-llm-v2",
            "prompt_version": "risk_scoring/v3", "input_tokens": 412, "output_tokens": 96,
            "cost_usd": "0.0018120", "priced": True, "event_id": first.event_id,
            "provider": "simulated", "correlation_id": "c1", "request_id": "r1",
        }
    for obs in (fast, checked):
        assert obs.flush()
        assert obs.costs.get_request_cost("r1") == 3 * Decimal("0.0018120")


def test_the_fast_path_builds_cost_records(obs: Observability) -> None:
    """The cost collector checks ``isinstance(record, CostRecord)``: plain tuples would fail."""
    root = obs.tracing.start_span_sync("wf", kind="workflow", tenant_id="t1", batch=True)
    assert root.outbox is not None
    obs.langfuse.log_generation_sync(**_WORKFLOW_CALL)
    (cost,) = root.outbox.costs
    generation = obs.langfuse.log_generation_sync(**_WORKFLOW_CALL)
    obs.tracing.end_span_sync(root)

    assert type(cost) is CostRecord
    assert cost.time_ns > 0 and cost.request_id is None
    assert type(generation) is Generation
    assert obs.flush()
    health = obs.health()
    assert health.collectors["cost"].handler_errors == 0
    assert obs.costs.get_tenant_cost("t1") == 2 * Decimal("0.0018120")


def _recorded(obs: Observability) -> tuple[Any, ...]:
    assert obs.flush()
    spans = tuple(_untimed_span(tuple(span)) for span in obs.tracing.finished_spans())
    snapshot = obs.costs.snapshot()
    exported = obs.metrics.export_metrics()
    usage = {metric: sorted((sorted(s["labels"].items()), s["value"])
                            for s in exported[metric]["series"])
             for metric in ("model_usage_count", "prompt_usage_count", "token_usage")}
    return spans, snapshot.by_tenant, snapshot.usage, dict(snapshot.unpriced), usage


@pytest.mark.parametrize("where", ["no-parent", "plain-parent", "remote-parent",
                                   "closed-outbox"])
def test_fast_and_checked_paths_send_alike(make_obs: MakeObs, where: str) -> None:
    results = []
    for checked in (False, True):
        obs = make_obs(id_seed=5)
        generations = []
        for request in ("r1", None):
            if where == "no-parent":
                generations.append(_log(obs, checked, request_id=request, **_WORKFLOW_CALL))
            elif where == "remote-parent":
                remote = obs.tracing.extract(
                    {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"})
                assert remote is not None
                token = obs.tracing.attach(remote)
                try:
                    generations.append(_log(obs, checked, request_id=request, **_WORKFLOW_CALL))
                finally:
                    obs.tracing.detach(token)
            else:
                batch = where == "closed-outbox"
                with obs.tracing.span("node", kind="node", tenant_id="t1",
                                      correlation_id="c1", request_id=request,
                                      batch=batch) as node:
                    if batch:  # its run ended meanwhile: the generation is sent directly
                        assert node.outbox is not None
                        node.outbox.open = False
                    generations.append(_log(obs, checked, **_WORKFLOW_CALL))
        results.append((generations, _recorded(obs)))

    assert results[0] == results[1]
    generations, (spans, by_tenant, _, _, _) = results[0]
    assert by_tenant == {"t1": 2 * Decimal("0.0018120")}
    generation_spans = [span for span in spans if span[4] == "generation"]
    assert [span[:2] for span in generation_spans] == [
        (g.trace_id, g.span_id) for g in generations]
    if where == "remote-parent":
        assert all(span[0] == int("ab" * 16, 16) for span in generation_spans)
        assert all(span[2] == int("cd" * 8, 16) and span[-1] for span in generation_spans)


class _ClosingList(list[Any]):
    """An outbox list whose first append closes the outbox, as a root ending meanwhile."""

    def __init__(self, outbox: Any) -> None:
        super().__init__()
        self._outbox = outbox

    def append(self, item: Any) -> None:
        self._outbox.open = False
        super().append(item)


@pytest.mark.parametrize("ratio", [1.0, 0.0], ids=["sampled", "sampled-out"])
@pytest.mark.parametrize("checked", [False, True], ids=["fast", "checked"])
def test_an_outbox_closed_during_the_call_is_sent_by_the_caller(
    make_obs: MakeObs, checked: bool, ratio: float
) -> None:
    obs = make_obs(id_seed=3, sample_ratio=ratio)
    root = obs.tracing.start_span_sync("wf", kind="workflow", tenant_id="t1",
                                       request_id="r1", batch=True)
    outbox = root.outbox
    assert outbox is not None
    outbox.costs = _ClosingList(outbox)  # closed by the cost record's append

    generation = _log(obs, checked, **_WORKFLOW_CALL)

    assert (outbox.spans, outbox.metrics, list(outbox.costs)) == ([], [], [])
    assert obs.flush()
    if ratio:
        (span,) = obs.tracing.finished_spans()
        assert (span.trace_id, span.span_id) == (generation.trace_id, generation.span_id)
    else:
        assert obs.tracing.finished_spans() == ()
    assert obs.costs.get_request_cost("r1") == generation.cost
    assert _counter(obs, "token_usage", tenant_id="t1", model_version="risk-llm-v2",
                    direction="input") == 412
    obs.tracing.end_span_sync(root)


@pytest.mark.parametrize("checked", [False, True], ids=["fast", "checked"])
def test_unpriced_models_keep_their_policy_on_every_call(
    make_obs: MakeObs, checked: bool
) -> None:
    """The price cache never holds an unpriced model: each call flags or raises."""
    flagging, raising = make_obs(), make_obs(unpriced_policy="raise")
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            generation = _log(flagging, checked,
                              **{**_WORKFLOW_CALL, "model_version": "mystery"})
            assert (generation.cost, generation.priced) == (0, False)
            with pytest.raises(ValueError, match="model_version 'mystery' has no price"):
                _log(raising, checked, **{**_WORKFLOW_CALL, "model_version": "mystery"})

    warnings = [log for log in logs if log["event"] == "observability.unpriced_model"]
    assert [log["model_version"] for log in warnings] == ["mystery"]  # rate-limited
    assert flagging.flush()
    assert flagging.costs.snapshot().unpriced == {"mystery": 3}
    assert all(span.attrs["priced"] is False for span in flagging.tracing.finished_spans())
    for obs in (flagging, raising):
        assert all(key[0] != "mystery" for key in obs.costs.price_cache)
    _nothing_recorded(raising)
