"""Every door checked (issue "Every door checked"): bad input never reaches a store.

Each test reproduces what a user hit: the value is refused at the door with a
clear error naming the field (or repaired and bounded, for free text), the
totals stay exact, every scrape answers and ``health()`` stays healthy.
"""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from app.observability import Observability
from app.observability.tracing import START_CLAMPED_ATTRIBUTE

HUGE = "x" * 10_000_000
SURROGATE = "bad\udcff"


def scrape_ok(obs: Observability) -> str:
    """Render the exposition as a scrape does and parse it with prometheus_client."""
    text = obs.metrics.render_prometheus()
    text.encode("utf-8")
    list(text_string_to_metric_families(text))
    return text


def counter_total(obs: Observability, name: str, **labels: str) -> float:
    series = obs.metrics.export_metrics()[name]["series"]
    return sum(s["value"] for s in series if labels.items() <= s["labels"].items())


# --- 1. a lone surrogate ------------------------------------------------------

def test_a_lone_surrogate_is_refused_by_metrics_and_costs(obs: Observability) -> None:
    with pytest.raises(ValueError, match=r"tenant_id.*lone surrogate"):
        obs.metrics.increment("request_count", tenant_id=SURROGATE)
    with pytest.raises(ValueError, match=r"tenant_id.*lone surrogate"):
        obs.costs.add_cost(tenant_id=SURROGATE, model_version="risk-llm-v2",
                           input_tokens=1, output_tokens=1)
    with pytest.raises(ValueError, match=r"span name.*lone surrogate"):
        obs.tracing.start_span_sync(SURROGATE)
    assert obs.flush()
    scrape_ok(obs)
    assert obs.health().healthy


def test_free_text_with_a_lone_surrogate_is_repaired(obs: Observability) -> None:
    with obs.tracing.span("work", attributes={"note": SURROGATE}):
        pass
    assert obs.flush()
    (span,) = obs.tracing.finished_spans()
    assert span.attrs["note"] == "bad\ufffd"


# --- 3. nonsense numbers ------------------------------------------------------

@pytest.mark.parametrize(("call", "message"), [
    (lambda o: o.costs.add_cost(tenant_id="t1", model_version="risk-llm-v2",
                                input_tokens=10**30, output_tokens=1),
     r"input_tokens must be within \[0, 10000000\]"),
    (lambda o: o.metrics.increment("request_count", 1.7e308, tenant_id="t1"),
     r"amount must be finite and within \[0, 1e\+09\]"),
    (lambda o: o.metrics.observe_latency("request_latency", 1e300, tenant_id="t1",
                                         workflow="w", status="ok"),
     r"latency must be finite and within \[0, 86400\]"),
    (lambda o: o.metrics.increment("request_count", math.nan, tenant_id="t1"), "amount"),
    (lambda o: o.costs.add_cost(tenant_id="t1", model_version="risk-llm-v2", input_tokens=1,
                                output_tokens=1, cost=Decimal("1e9")),
     r"cost must be finite and within \[0, 1000\]"),
])
def test_numbers_out_of_range_name_the_field_and_bound(
    obs: Observability, call: Any, message: str
) -> None:
    obs.metrics.increment("request_count", 2, tenant_id="t1")
    with pytest.raises(ValueError, match=message):
        call(obs)
    assert obs.flush()
    assert counter_total(obs, "request_count", tenant_id="t1") == 2
    assert obs.costs.get_tenant_cost("t1") == 0
    assert "Inf" not in scrape_ok(obs).replace('le="+Inf"', "")
    assert obs.health().healthy


def test_the_bounds_are_configurable(make_obs: Any) -> None:
    from app.observability.settings import InputLimits

    obs = make_obs(limits=InputLimits(max_tokens_per_call=100, max_id_length=12))
    with pytest.raises(ValueError, match=r"input_tokens must be within \[0, 100\]"):
        obs.costs.add_cost(tenant_id="t1", model_version="risk-llm-v2",
                           input_tokens=101, output_tokens=0)
    with pytest.raises(ValueError, match="longer than 12"):
        obs.metrics.increment("request_count", tenant_id="1234567890123")


# --- 4. one length limit per kind, whatever the door --------------------------

@pytest.mark.parametrize("door", [
    lambda o: o.metrics.increment("request_count", tenant_id=HUGE),
    lambda o: o.costs.add_cost(tenant_id=HUGE, model_version="risk-llm-v2",
                               input_tokens=1, output_tokens=1),
    lambda o: o.costs.add_cost(tenant_id="t1", model_version=HUGE,
                               input_tokens=1, output_tokens=1),
    lambda o: o.langfuse.log_generation_sync(
        tenant_id="t1", model_version="risk-llm-v2", prompt_version=HUGE,
        input_tokens=1, output_tokens=1, latency=0.0),
    lambda o: o.langfuse.log_generation_sync(
        tenant_id="t1", model_version=HUGE, prompt_version="p",
        input_tokens=1, output_tokens=1, latency=0.0),
    lambda o: o.tracing.start_span_sync(HUGE),
    lambda o: o.tracing.start_span_sync("s", tenant_id=HUGE),
    lambda o: o.failures.classify(RuntimeError("x"), tenant_id=HUGE),
])
def test_a_huge_id_is_refused_at_every_door(obs: Observability, door: Any) -> None:
    with pytest.raises(ValueError, match="longer than 256") as info:
        door(obs)
    assert len(str(info.value)) < 300
    assert obs.flush()
    assert len(scrape_ok(obs)) < 200_000
    assert obs.health().healthy


def test_huge_free_text_is_truncated_visibly(obs: Observability) -> None:
    obs.langfuse.log_generation_sync(
        tenant_id="t1", model_version="risk-llm-v2", prompt_version="p", input_tokens=1,
        output_tokens=1, latency=0.0, metadata={"note": HUGE})
    with obs.tracing.span("work", attributes={"a": HUGE}) as span:
        span.set_attribute("b", HUGE)
        span.add_event("e", c=HUGE)
    with pytest.raises(RuntimeError), obs.tracing.span("failing"):
        raise RuntimeError(HUGE)
    obs.audit.log("custom.event", detail=HUGE)
    assert obs.flush()
    spans = {s.name: s for s in obs.tracing.finished_spans()}
    assert len(spans["chat risk-llm-v2"].attrs["note"]) < 4_200
    work = spans["work"]
    assert all(len(str(v)) < 4_200 for v in work.attrs.values())
    assert "truncated" in str(work.attrs["a"])
    assert len(str(work.events[0].attributes[0][1])) < 4_200
    assert len(spans["failing"].error_message or "") < 4_200
    (event,) = obs.audit.events(event="custom.event")
    assert len(str(event.data["detail"])) < 4_200


# --- 5. exactly the declared labels ---------------------------------------------

def test_a_missing_or_undeclared_label_is_an_error(obs: Observability) -> None:
    with pytest.raises(ValueError, match="needs label 'tenant_id'"):
        obs.metrics.increment("request_count")
    with pytest.raises(ValueError, match="has no label 'colour'"):
        obs.metrics.increment("request_count", tenant_id="t1", colour="red")
    with pytest.raises(ValueError, match="needs label 'status'"):
        obs.metrics.histogram("node_execution_latency").labels(node="n", tenant_id="t1")
    assert obs.flush()
    assert obs.metrics.export_metrics()["request_count"]["series"] == []


def test_bound_children_are_validated_once_and_shared(obs: Observability) -> None:
    family = obs.metrics.counter("request_count")
    child = family.labels(tenant_id="t1")
    assert family.labels(tenant_id="t1") is child
    child.inc()
    child.inc(2.5)
    obs.metrics.increment("request_count", tenant_id="t1")
    with pytest.raises(ValueError, match="request_count: amount"):
        child.inc(-1)
    with pytest.raises(TypeError, match="amount must be an int or float"):
        child.inc("1")  # type: ignore[arg-type]
    assert obs.flush()
    assert counter_total(obs, "request_count", tenant_id="t1") == 4.5


# --- 12. a generation never starts before its parent -----------------------------

def test_a_generation_longer_than_its_parent_is_clamped(obs: Observability) -> None:
    async def scenario() -> None:
        root = await obs.tracing.start_span("workflow", kind="workflow", tenant_id="t1")
        node = await obs.tracing.start_span("risk_scoring", kind="node")
        await obs.langfuse.log_generation(
            tenant_id="t1", model_version="risk-llm-v2", prompt_version="p",
            input_tokens=10, output_tokens=5, latency=0.41)
        await obs.tracing.end_span(node)
        await obs.tracing.end_span(root)

    asyncio.run(scenario())
    assert obs.flush()
    spans = {s.kind: s for s in obs.tracing.finished_spans()}
    generation, node, root = spans["generation"], spans["node"], spans["workflow"]
    assert generation.start_ns >= node.start_ns >= root.start_ns
    assert generation.end_ns <= node.end_ns
    assert generation.attrs[START_CLAMPED_ATTRIBUTE] is True


def test_a_generation_within_its_parent_keeps_its_latency(obs: Observability) -> None:
    with obs.tracing.span("node", kind="node", tenant_id="t1", start_ns=1) as node:
        obs.langfuse.log_generation_sync(
            tenant_id="t1", model_version="risk-llm-v2", prompt_version="p",
            input_tokens=10, output_tokens=5, latency=0.25)
    assert obs.flush()
    generation = next(s for s in obs.tracing.finished_spans() if s.kind == "generation")
    assert generation.duration_seconds == pytest.approx(0.25, abs=0.01)
    assert START_CLAMPED_ATTRIBUTE not in generation.attrs
    assert generation.start_ns >= node.start_ns


# --- floods ----------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_a_flood_of_300k_tenants_keeps_every_family_capped(make_obs: Any) -> None:
    obs = make_obs(queue_maxsize=1_000_000, overflow_policy="block", block_timeout_seconds=5.0)
    tenants = 300_000
    for i in range(tenants):
        tenant = f"tenant-{i}"
        obs.metrics.increment("request_count", tenant_id=tenant)
        obs.costs.add_cost(tenant_id=tenant, model_version="risk-llm-mini-v1",
                           input_tokens=100, output_tokens=10)
    assert obs.flush(timeout=120)
    text = scrape_ok(obs)
    assert len(text.encode("utf-8")) < 2_000_000
    for family in obs.metrics.families():
        assert len(family.series) <= 2_001, family.spec.name
    exported = obs.metrics.export_metrics()
    overflow = {s["labels"]["metric"]: s["value"] for s in exported["series_overflow"]["series"]}
    assert overflow["request_count"] == tenants - 2_000
    assert overflow["cost_usd"] == tenants - 2_000
    # Folding changes the series, never the totals.
    assert counter_total(obs, "request_count") == tenants
    per_call = obs.costs.estimate_cost("risk-llm-mini-v1", 100, 10).cost
    assert sum(s["value"] for s in exported["cost_usd"]["series"]) == per_call * tenants
    assert obs.costs.get_total_cost() == per_call * tenants
    assert obs.health().healthy


# --- a barrage of bad input ------------------------------------------------------

BAD_TEXT = st.one_of(
    st.just(""), st.just(SURROGATE), st.just("x" * 300), st.just("a\nb"),
    st.integers(), st.none(), st.binary(max_size=4),
)
BAD_NUMBER = st.one_of(
    st.just(-1), st.just(math.nan), st.just(math.inf), st.just(10**30),
    st.just(1.7e308), st.text(max_size=3), st.booleans(),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=BAD_TEXT, number=BAD_NUMBER)
def test_a_barrage_of_bad_input_changes_nothing(
    obs: Observability, text: object, number: object
) -> None:
    doors = [
        lambda: obs.metrics.increment("request_count", tenant_id=text),
        lambda: obs.metrics.increment("request_count", number, tenant_id="good"),
        lambda: obs.metrics.observe_latency("request_latency", number, tenant_id="good",
                                            workflow="w", status="ok"),
        lambda: obs.costs.add_cost(tenant_id=text, model_version="risk-llm-v2",
                                   input_tokens=1, output_tokens=1),
        lambda: obs.costs.add_cost(tenant_id="good", model_version="risk-llm-v2",
                                   input_tokens=number, output_tokens=1),
        lambda: obs.langfuse.log_generation_sync(
            tenant_id="good", model_version="risk-llm-v2", prompt_version=text,
            input_tokens=1, output_tokens=1, latency=0.0),
        lambda: obs.langfuse.log_generation_sync(
            tenant_id="good", model_version="risk-llm-v2", prompt_version="p",
            input_tokens=1, output_tokens=1, latency=number),
        lambda: obs.tracing.start_span_sync(text),
    ]
    for door in doors:
        with pytest.raises((TypeError, ValueError)):
            door()
    obs.metrics.increment("request_count", tenant_id="good")
    assert obs.flush()
    assert obs.tracing.current_span() is None
    scrape_ok(obs)
    health = obs.health()
    assert health.healthy
    assert health.dropped_total == 0
    exported = obs.metrics.export_metrics()
    assert [s["labels"] for s in exported["request_count"]["series"]] == [{"tenant_id": "good"}]
    assert obs.costs.get_total_cost() == 0
