"""Many threads and many asyncio tasks recording at once: exact totals after a flush.

Sixteen threads and five hundred asyncio tasks (on an event loop of their
own thread) record through the public facades at the same time: counters,
latency histograms, priced costs, spans (plain and batched runs) and
Langfuse-style generations. Each producer tallies what it sent in a local
``Counter``; after one flush every counter, histogram count, Decimal cost
and span count must equal the merged tallies exactly, and no record may be
dropped (the ``block`` policy waits for room instead). The scenario runs
three rounds on fresh containers so that flakiness has a chance to show.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from app.observability import Observability
from app.observability.settings import DEFAULT_PRICE_TABLE

pytestmark = pytest.mark.stress

THREADS = 16
TASKS = 500
PER_THREAD = 400
PER_TASK = 12
ROUNDS = 3
JOIN = 30.0
MODELS = ("risk-llm-v2", "risk-llm-v1", "risk-llm-mini-v1")
TENANTS = ("acme", "globex", "initech", "umbrella")


def price(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """The expected cost, computed independently of the facade."""
    rate = DEFAULT_PRICE_TABLE[model]
    return (rate.input_per_1k * input_tokens + rate.output_per_1k * output_tokens) / 1000


class Tally:
    """What one producer sent; merged after all producers are done."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.latencies: Counter[tuple[str, str]] = Counter()
        self.model_usage: Counter[tuple[str, str]] = Counter()
        self.tokens: Counter[tuple[str, str, str]] = Counter()
        self.cost: dict[str, Decimal] = {}
        self.spans = 0
        self.generations = 0
        self.costs_added = 0

    def add_cost(self, tenant: str, amount: Decimal) -> None:
        self.cost[tenant] = self.cost.get(tenant, Decimal(0)) + amount

    def generation(self, tenant: str, model: str, input_tokens: int, output_tokens: int) -> None:
        self.generations += 1
        self.spans += 1
        self.model_usage[(model, tenant)] += 1
        self.tokens[(tenant, model, "input")] += input_tokens
        self.tokens[(tenant, model, "output")] += output_tokens
        self.add_cost(tenant, price(model, input_tokens, output_tokens))

    def merge(self, other: Tally) -> None:
        self.requests.update(other.requests)
        self.latencies.update(other.latencies)
        self.model_usage.update(other.model_usage)
        self.tokens.update(other.tokens)
        for tenant, amount in other.cost.items():
            self.add_cost(tenant, amount)
        self.spans += other.spans
        self.generations += other.generations
        self.costs_added += other.costs_added


def thread_producer(obs: Observability, tid: int, start: threading.Barrier) -> Tally:
    tally = Tally()
    start.wait(JOIN)
    for i in range(PER_THREAD):
        tenant = TENANTS[(tid + i) % len(TENANTS)]
        model = MODELS[i % len(MODELS)]
        obs.metrics.increment("request_count", tenant_id=tenant)
        tally.requests[tenant] += 1
        node = f"node{i % 3}"
        obs.metrics.observe_latency("node_execution_latency", (i % 40) / 1000,
                                    node=node, tenant_id=tenant, status="ok")
        tally.latencies[(node, tenant)] += 1
        input_tokens, output_tokens = 10 + i % 97, i % 31
        recorded = obs.costs.add_cost(tenant_id=tenant, model_version=model,
                                      input_tokens=input_tokens, output_tokens=output_tokens,
                                      request_id=f"t{tid}-{i % 7}")
        assert recorded == price(model, input_tokens, output_tokens)
        tally.add_cost(tenant, recorded)
        tally.costs_added += 1
        with obs.tracing.span("thread-op", tenant_id=tenant):
            tally.spans += 1
            if i % 5 == 0:
                obs.langfuse.log_generation_sync(
                    tenant_id=tenant, model_version=model, prompt_version="p1",
                    input_tokens=input_tokens, output_tokens=output_tokens, latency=0.01)
                tally.generation(tenant, model, input_tokens, output_tokens)
    return tally


async def task_producer(obs: Observability, n: int) -> Tally:
    tally = Tally()
    for i in range(PER_TASK):
        tenant = TENANTS[(n + i) % len(TENANTS)]
        model = MODELS[(n + i) % len(MODELS)]
        obs.metrics.increment("request_count", tenant_id=tenant)
        tally.requests[tenant] += 1
        await asyncio.sleep(0)
        # A batched run: its spans and the generation's records leave together.
        async with (
            obs.tracing.span("run", kind="workflow", tenant_id=tenant, batch=True),
            obs.tracing.span("node", kind="node"),  # entered second: a child of the run
        ):
            obs.metrics.observe_latency("node_execution_latency", 0.002 * (i + 1),
                                        node="async", tenant_id=tenant, status="ok")
            tally.latencies[("async", tenant)] += 1
            await asyncio.sleep(0)
            await obs.langfuse.log_generation(
                tenant_id=tenant, model_version=model, prompt_version="p2",
                input_tokens=n % 50, output_tokens=i, latency=0.001)
            tally.generation(tenant, model, n % 50, i)
        tally.spans += 2
        recorded = obs.costs.add_cost(tenant_id=tenant, model_version=model,
                                      input_tokens=i, output_tokens=n % 13)
        tally.add_cost(tenant, recorded)
        tally.costs_added += 1
    return tally


def run_round(obs: Observability) -> Tally:
    start = threading.Barrier(THREADS + 1)
    tallies: list[Tally] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def in_thread(target: Any, *args: Any) -> None:
        try:
            result = target(*args)
            with lock:
                tallies.extend(result if isinstance(result, list) else [result])
        except BaseException as exc:
            with lock:
                errors.append(exc)

    async def all_tasks() -> list[Tally]:
        return list(await asyncio.gather(*(task_producer(obs, n) for n in range(TASKS))))

    def event_loop() -> list[Tally]:
        start.wait(JOIN)
        return asyncio.run(all_tasks())

    threads = [threading.Thread(target=in_thread, args=(thread_producer, obs, t, start))
               for t in range(THREADS)]
    threads.append(threading.Thread(target=in_thread, args=(event_loop,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN)
        assert not thread.is_alive(), "a producer hung"
    assert errors == []
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    assert len(tallies) == THREADS + TASKS
    return total


def check_totals(obs: Observability, sent: Tally) -> None:
    result = obs.flush(JOIN)
    assert result.complete, result
    health = obs.health()
    assert {name: s.dropped_total for name, s in health.collectors.items()} == dict.fromkeys(
        health.collectors, 0)
    # A generation: four usage counters, one duration and two token-usage observations.
    assert health.collectors["metrics"].applied == (
        sum(sent.requests.values()) + sum(sent.latencies.values()) + 7 * sent.generations)
    assert health.collectors["cost"].applied == sent.costs_added + sent.generations
    assert health.collectors["trace"].applied == sent.spans

    exported = obs.metrics.export_metrics()
    requests = {s["labels"]["tenant_id"]: s["value"]
                for s in exported["request_count"]["series"]}
    assert requests == dict(sent.requests)
    latencies = {(s["labels"]["node"], s["labels"]["tenant_id"]): s
                 for s in exported["node_execution_latency"]["series"]}
    assert {key: s["count"] for key, s in latencies.items()} == dict(sent.latencies)
    assert all(s["buckets"]["+Inf"] == s["count"] for s in latencies.values())
    usage = {(s["labels"]["model_version"], s["labels"]["tenant_id"]): s["value"]
             for s in exported["model_usage_count"]["series"]}
    assert usage == dict(sent.model_usage)
    tokens = {(s["labels"]["tenant_id"], s["labels"]["model_version"],
               s["labels"]["direction"]): s["value"]
              for s in exported["token_usage"]["series"]}
    assert tokens == {key: n for key, n in sent.tokens.items()}
    durations = exported["gen_ai_client_operation_duration"]["series"]
    assert sum(s["count"] for s in durations) == sent.generations
    token_usage = exported["gen_ai_client_token_usage"]["series"]
    assert sum(s["count"] for s in token_usage) == 2 * sent.generations
    assert sum(s["sum"] for s in token_usage) == sum(sent.tokens.values())

    costs = obs.costs.snapshot()
    assert dict(costs.by_tenant) == sent.cost
    assert costs.total == sum(sent.cost.values(), Decimal(0))
    assert all(type(v) is Decimal for v in costs.by_tenant.values())
    received, _ = obs.pipeline.collectors["trace"].counts()
    assert received == sent.spans


def test_exact_totals_with_16_threads_and_500_tasks_recording_at_once(make_obs: Any) -> None:
    for round_number in range(ROUNDS):
        obs: Observability = make_obs(
            overflow_policy="block", block_timeout_seconds=JOIN, id_seed=round_number,
            trace_buffer_size=1_000,
        )
        sent = run_round(obs)
        assert sent.generations > 0 and sent.spans > THREADS * PER_THREAD
        check_totals(obs, sent)
        closed = obs.close(JOIN)
        assert closed.complete and closed.dropped == 0
