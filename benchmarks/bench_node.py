"""``node``: one workflow node's instrumentation, ours against OTel SDK + prometheus_client.

One node = one span around the node's (trivial) work, one counter increment
and one latency observation, with the same names, labels and buckets on every
side. The tenant cycles over 8 values.

* **ours (bound handles)**: the same three records through the public API,
  each sent on its own (the workflow itself batches a request's records in
  its run's outbox and sends a node's latency with its span):
  ``span = tracing.start_span_sync("risk_scoring", kind="node")``, the work,
  ``tracing.end_span_sync(span)``, then
  ``requests.labels(tenant_id=t).inc()`` and
  ``node_latency.labels(node=..., tenant_id=t, status="ok").observe(dt)`` on
  the families the workflow holds (``obs.metrics.counter(...)``,
  ``obs.metrics.histogram(...)``), collector threads running;
* **ours (async facade)**: the specification's calls inside a coroutine:
  ``await tracing.start_span(...)``, ``await tracing.end_span(span)``,
  ``obs.metrics.increment("request_count", tenant_id=t)`` and
  ``obs.metrics.observe_latency("node_execution_latency", dt, node=..., tenant_id=t,
  status="ok")``;
* **otel+prom**: ``tracer.start_as_current_span`` of the OpenTelemetry SDK
  (``TracerProvider``, ``BatchSpanProcessor``, ``InMemorySpanExporter``),
  then ``Counter.labels(t).inc()`` and ``Histogram.labels(...).observe(dt)``
  of prometheus_client;
* **bare** (and **bare (async)**, the same loop in a coroutine): the loop,
  the work, the tenant choice and the clock reads, without instrumentation.

A variant's cost per node is its time per node minus its bare loop's, per
round; the ratios are per round (the anchor's cost over ours). Between rounds
(untimed) our pipeline is flushed and the OTel batch processor force-flushed,
and every round checks that nothing was lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from benchmarks._harness import (
    BenchResult,
    Runs,
    Stats,
    Table,
    Target,
    Variant,
    alternate,
    cpu_split,
    fmt_int,
    fmt_ratio,
    fmt_stats,
    fmt_us,
    summarize,
    thread_cpu_ns,
)

NAME = "node"
TITLE = "One node's instrumentation"
ORDER = 10

#: Required: ours (bound handles) at least this many times cheaper per node than the anchor.
TARGET_RATIO = 6.0
#: The goal for the bound handles.
GOAL_RATIO = 8.0
#: Required: the async facade at least this many times cheaper than the same anchor.
TARGET_ASYNC_RATIO = 5.0

TENANTS = tuple(f"tenant-{i}" for i in range(8))
NODE = "risk_scoring"


def work() -> int:
    """The node's trivial work, identical in every variant."""
    return sum(range(16))


def run(quick: bool) -> BenchResult:
    """Measure one node's instrumentation cost (see the module docstring)."""
    from app.observability import Observability, ObservabilitySettings
    from benchmarks._anchors import otel_tracing, prom_node_metrics

    nodes = 500 if quick else 8_000
    rounds = 2 if quick else 11
    obs = Observability(ObservabilitySettings(drain_at_exit=False))
    otel = otel_tracing()
    prom = prom_node_metrics()
    loop = asyncio.new_event_loop()
    lost = [0]
    try:
        main = alternate(
            [
                Variant("ours", _ours_round(obs, nodes)),
                Variant("ours_async", _ours_async_round(obs, loop, nodes)),
                Variant("otel+prom", _anchor_round(otel, prom, nodes, lost)),
                Variant("bare", _bare_round(nodes)),
                Variant("bare_async", _bare_async_round(loop, nodes)),
            ],
            rounds=rounds,
        )
        part_nodes = max(250, nodes // 2)
        parts = alternate(
            [
                Variant("span", _part_round(obs, part_nodes, "span")),
                Variant("counter", _part_round(obs, part_nodes, "counter")),
                Variant("histogram", _part_round(obs, part_nodes, "histogram")),
                Variant("paused", _paused_round(part_nodes)),
                Variant("bare", _bare_round(part_nodes)),
            ],
            rounds=max(2, rounds - 4),
        )
        dropped = obs.health().dropped_total
    finally:
        loop.close()
        obs.close()
        otel.shutdown()
    return _result(main, parts, dropped, lost[0], nodes, part_nodes)


# --- the loops ------------------------------------------------------------------


def _bound_loop(obs: Any, nodes: int) -> None:
    """``nodes`` nodes instrumented through the bound handles, one record at a time."""
    start = obs.tracing.start_span_sync
    end = obs.tracing.end_span_sync
    requests = obs.metrics.counter("request_count")
    latency = obs.metrics.histogram("node_execution_latency")
    clock = time.perf_counter_ns
    for i in range(nodes):
        t0 = clock()
        tenant = TENANTS[i & 7]
        span = start(NODE, kind="node")
        work()
        end(span)
        requests.labels(tenant_id=tenant).inc()
        latency.labels(node=NODE, tenant_id=tenant, status="ok").observe((clock() - t0) / 1e9)


async def _facade_loop(obs: Any, nodes: int) -> None:
    """``nodes`` nodes instrumented through the specification's async facade."""
    start = obs.tracing.start_span
    end = obs.tracing.end_span
    increment = obs.metrics.increment
    observe = obs.metrics.observe_latency
    clock = time.perf_counter_ns
    for i in range(nodes):
        t0 = clock()
        tenant = TENANTS[i & 7]
        span = await start(NODE, kind="node")
        work()
        await end(span)
        increment("request_count", tenant_id=tenant)
        observe("node_execution_latency", (clock() - t0) / 1e9,
                node=NODE, tenant_id=tenant, status="ok")


async def _bare_async_loop(nodes: int) -> float:
    clock = time.perf_counter_ns
    sink = 0.0
    for i in range(nodes):
        t0 = clock()
        tenant = TENANTS[i & 7]
        work()
        sink += (clock() - t0) / 1e9 + len(tenant)
    return sink


# --- variants -------------------------------------------------------------------


def _measured(
    obs: Any, nodes: int, body: Callable[[], object]
) -> Callable[[], Mapping[str, float]]:
    """A round of ``body`` on our container: loop time, time until flushed, CPU split."""

    def round_() -> Mapping[str, float]:
        clock = time.perf_counter_ns
        cpu = thread_cpu_ns()
        started = clock()
        body()
        ended = clock()
        flushed = obs.flush()
        drained = clock()
        return {
            "ns": (ended - started) / nodes,
            "ns_drained": (drained - started) / nodes,
            "incomplete": 0 if flushed else 1,
            **cpu_split(cpu, thread_cpu_ns(), nodes),
        }

    return round_


def _ours_round(obs: Any, nodes: int) -> Callable[[], Mapping[str, float]]:
    return _measured(obs, nodes, lambda: _bound_loop(obs, nodes))


def _ours_async_round(
    obs: Any, loop: asyncio.AbstractEventLoop, nodes: int
) -> Callable[[], Mapping[str, float]]:
    return _measured(obs, nodes, lambda: loop.run_until_complete(_facade_loop(obs, nodes)))


def _anchor_round(
    otel: Any, prom: Any, nodes: int, lost: list[int]
) -> Callable[[], Mapping[str, float]]:
    def round_() -> Mapping[str, float]:
        start_span = otel.tracer.start_as_current_span
        requests = prom.requests
        latency = prom.node_latency
        clock = time.perf_counter_ns
        cpu = thread_cpu_ns()
        started = clock()
        for i in range(nodes):
            t0 = clock()
            tenant = TENANTS[i & 7]
            with start_span(NODE):
                work()
            requests.labels(tenant).inc()
            latency.labels(NODE, tenant, "ok").observe((clock() - t0) / 1e9)
        ended = clock()
        exported = otel.drain()
        drained = clock()
        lost[0] += abs(nodes - exported)
        return {
            "ns": (ended - started) / nodes,
            "ns_drained": (drained - started) / nodes,
            **cpu_split(cpu, thread_cpu_ns(), nodes),
        }

    return round_


def _bare_round(nodes: int) -> Callable[[], Mapping[str, float]]:
    def round_() -> Mapping[str, float]:
        clock = time.perf_counter_ns
        sink = 0.0
        cpu = thread_cpu_ns()
        started = clock()
        for i in range(nodes):
            t0 = clock()
            tenant = TENANTS[i & 7]
            work()
            sink += (clock() - t0) / 1e9 + len(tenant)
        ended = clock()
        return {
            "ns": (ended - started) / nodes,
            "ns_drained": (ended - started) / nodes,
            **cpu_split(cpu, thread_cpu_ns(), nodes),
        }

    return round_


def _bare_async_round(
    loop: asyncio.AbstractEventLoop, nodes: int
) -> Callable[[], Mapping[str, float]]:
    def round_() -> Mapping[str, float]:
        clock = time.perf_counter_ns
        started = clock()
        loop.run_until_complete(_bare_async_loop(nodes))
        ended = clock()
        return {"ns": (ended - started) / nodes}

    return round_


def _part_round(obs: Any, nodes: int, part: str) -> Callable[[], Mapping[str, float]]:
    """One of the node's three calls alone per bare node (collectors running)."""

    def round_() -> Mapping[str, float]:
        start = obs.tracing.start_span_sync
        end = obs.tracing.end_span_sync
        requests = obs.metrics.counter("request_count")
        latency = obs.metrics.histogram("node_execution_latency")
        clock = time.perf_counter_ns
        sink = 0.0
        started = clock()
        if part == "span":
            for i in range(nodes):
                t0 = clock()
                tenant = TENANTS[i & 7]
                span = start(NODE, kind="node")
                work()
                end(span)
                sink += (clock() - t0) / 1e9 + len(tenant)
        elif part == "counter":
            for i in range(nodes):
                t0 = clock()
                tenant = TENANTS[i & 7]
                work()
                requests.labels(tenant_id=tenant).inc()
                sink += (clock() - t0) / 1e9
        else:
            for i in range(nodes):
                t0 = clock()
                tenant = TENANTS[i & 7]
                work()
                latency.labels(node=NODE, tenant_id=tenant, status="ok").observe(
                    (clock() - t0) / 1e9)
        ended = clock()
        obs.flush()
        return {"ns": (ended - started) / nodes}

    return round_


def _paused_round(nodes: int) -> Callable[[], Mapping[str, float]]:
    """The whole node with the collector threads not yet started, then the backlog's drain.

    Splits the cost into what the calling thread pays (records built and
    queued) and what the collector threads pay afterwards (records applied).
    """
    from app.observability import Observability, ObservabilitySettings

    def round_() -> Mapping[str, float]:
        obs = Observability(ObservabilitySettings(drain_at_exit=False), start=False)
        clock = time.perf_counter_ns
        try:
            started = clock()
            _bound_loop(obs, nodes)
            ended = clock()
            obs.start()
            flushed = obs.flush()
            drained = clock()
        finally:
            obs.close()
        return {
            "ns": (ended - started) / nodes,
            "drain_ns": (drained - ended) / nodes,
            "incomplete": 0 if flushed else 1,
        }

    return round_


# --- result -----------------------------------------------------------------------


def _net_ratio(main: Runs, ours: str, base: str, key: str = "ns") -> Stats:
    """Per round: (anchor - bare) / (ours - its bare), summarised (0 if ours <= its bare)."""
    return summarize(
        (a - b) / (o - ob) if o > ob else 0.0
        for a, b, o, ob in zip(
            main.values("otel+prom", key), main.values("bare", "ns"),
            main.values(ours, key), main.values(base, "ns"), strict=True,
        )
    )


def _net(main: Runs, variant: str, base: str, key: str = "ns") -> Stats:
    return summarize(
        v - b for v, b in zip(main.values(variant, key), main.values(base, "ns"), strict=True)
    )


def _result(
    main: Runs, parts: Runs, dropped: int, anchor_lost: int, nodes: int, part_nodes: int
) -> BenchResult:
    bases = {"ours": "bare", "ours_async": "bare_async", "otel+prom": "bare"}
    net = {v: _net(main, v, b) for v, b in bases.items()}
    ratio = {v: _net_ratio(main, v, bases[v]) for v in ("ours", "ours_async")}
    ratio_drained = _net_ratio(main, "ours", "bare", "ns_drained")
    labels = {
        "ours": "ours: bound handles",
        "ours_async": "ours: async facade",
        "otel+prom": "OTel SDK + prometheus_client",
        "bare": "bare",
        "bare_async": "bare (async)",
    }
    rows = []
    for variant in ("ours", "ours_async", "otel+prom", "bare", "bare_async"):
        is_bare = variant.startswith("bare")
        cpu = "-"
        if variant != "bare_async":
            cpu = (f"{fmt_us(main.stats(variant, 'cpu_caller_ns').median)} / "
                   f"{fmt_us(main.stats(variant, 'cpu_background_ns').median)}")
        rows.append((
            labels[variant],
            fmt_stats(main.stats(variant, "ns"), fmt_us),
            "-" if is_bare else fmt_stats(net[variant], fmt_us),
            fmt_stats(ratio[variant], fmt_ratio) if variant in ratio else
            ("1x" if variant == "otel+prom" else "-"),
            cpu,
            main.gc_summary(variant),
        ))
    table = Table(
        title=f"Per node, {fmt_int(nodes)} nodes per round, {main.rounds} alternating rounds",
        headers=("variant", "time per node (µs)", "instrumentation (µs, minus its bare loop)",
                 "anchor / ours", "CPU: calling thread / other threads (µs)",
                 "GC per round: gen0/1/2, pause"),
        rows=tuple(rows),
        note=(
            "*instrumentation* is the loop's time per node minus the bare loop's (the async"
            " facade against the bare loop in a coroutine), collector threads running: they"
            " share the GIL, so the records they apply during the loop are included."
            " Counting the time until every record is applied (our `flush()`) or exported"
            " (OTel `force_flush()`) as well, the bound handles' ratio is"
            f" {fmt_stats(ratio_drained, fmt_ratio)}. *CPU* is on-CPU time per node of the"
            " calling thread and of all other threads (schedstat), loop and drain included;"
            f" ours by thread: {main.background_cpu('ours')}; the anchor's:"
            f" {main.background_cpu('otel+prom')}."
        ),
    )
    bare_parts = parts.stats("bare", "ns").median
    part_rows = [
        ("span: `start_span_sync` + `end_span_sync`", fmt_stats(parts.net("span"), fmt_us),
         parts.gc_summary("span")),
        ("counter: `labels(tenant_id=...).inc()`", fmt_stats(parts.net("counter"), fmt_us),
         parts.gc_summary("counter")),
        ("histogram: `labels(node=..., tenant_id=..., status=...).observe(dt)`",
         fmt_stats(parts.net("histogram"), fmt_us), parts.gc_summary("histogram")),
        ("whole node, collectors not started: the calling thread's share",
         fmt_stats(parts.net("paused"), fmt_us), parts.gc_summary("paused")),
        ("... then the collectors applying its three records",
         fmt_stats(parts.stats("paused", "drain_ns"), fmt_us), "-"),
    ]
    breakdown = Table(
        title=f"Where the bound handles' time goes (µs per node, minus a bare node of"
              f" {fmt_us(bare_parts)} µs)",
        headers=("part", "µs per node", "GC per round: gen0/1/2, pause"),
        rows=tuple(part_rows),
        note=(
            f"{fmt_int(part_nodes)} nodes per round, {parts.rounds} alternating rounds; each"
            " call alone, collectors running. The last two rows build the container with"
            " `start=False`: the loop then pays only for building and queueing the records,"
            " and starting and flushing the container measures what the collector threads"
            " pay to apply them."
        ),
    )
    incomplete = (sum(main.values("ours", "incomplete"))
                  + sum(main.values("ours_async", "incomplete"))
                  + sum(parts.values("paused", "incomplete")))
    exact = dropped == 0 and incomplete == 0 and anchor_lost == 0
    bound, facade = ratio["ours"].median, ratio["ours_async"].median

    def measured(variant: str) -> str:
        return (f"{fmt_ratio(ratio[variant].median)} ({fmt_us(net[variant].median)} µs vs"
                f" {fmt_us(net['otel+prom'].median)} µs)")

    targets = [
        Target(goal=f"bound handles ≥ {TARGET_RATIO:g}x cheaper per node than OTel SDK +"
                    " prometheus_client", measured=measured("ours"),
               met=bound >= TARGET_RATIO and exact),
        Target(goal=f"goal: bound handles ≥ {GOAL_RATIO:g}x cheaper", measured=measured("ours"),
               met=bound >= GOAL_RATIO and exact),
        Target(goal=f"async facade ≥ {TARGET_ASYNC_RATIO:g}x cheaper per node than the same"
                    " anchor", measured=measured("ours_async"),
               met=facade >= TARGET_ASYNC_RATIO and exact),
    ]
    notes = [
        f"Records dropped by our pipeline over the whole benchmark: {fmt_int(dropped)}"
        f" (must be 0); incomplete flushes: {fmt_int(incomplete)}; spans missing from the"
        f" OTel in-memory exporter: {fmt_int(anchor_lost)}.",
        f"Bare node: {fmt_stats(main.stats('bare', 'ns'), fmt_us)} µs (loop, tenant choice,"
        " two clock reads, `sum(range(16))`); in a coroutine:"
        f" {fmt_stats(main.stats('bare_async', 'ns'), fmt_us)} µs.",
    ]
    return BenchResult(
        name=NAME,
        title=TITLE,
        summary=__doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        tables=[table, breakdown],
        targets=targets,
        notes=notes,
    )

