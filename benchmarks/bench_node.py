"""``node``: the instrumentation of one workflow node, ours against OTel SDK + prometheus_client.

One node = one span around the node's (trivial) work, one counter increment
and one latency observation:

* **ours**: ``with obs.tracing.span("risk_scoring", kind="node")``,
  ``obs.metrics.increment("request_count", tenant_id=...)``,
  ``obs.metrics.observe_latency("node_execution_latency", dt, node=...)``,
  with the collector threads running (default settings);
* **otel+prom**: ``tracer.start_as_current_span`` on an OpenTelemetry SDK
  ``TracerProvider`` with a ``BatchSpanProcessor`` to an
  ``InMemorySpanExporter``, ``Counter.labels(...).inc()`` and
  ``Histogram.labels(...).observe()`` of prometheus_client (same names,
  labels and buckets);
* **bare**: the same loop, work, tenant choice and clock reads, without
  instrumentation calls.

The per-node cost is the variant's time per node minus the bare node's, per
round. Between rounds (untimed) our pipeline is flushed and the OTel batch
processor force-flushed, and every round checks that nothing was dropped.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable, Mapping
from typing import Any

from benchmarks._harness import (
    BenchResult,
    Runs,
    Table,
    Target,
    Variant,
    alternate,
    cpu_split,
    fmt_float,
    fmt_int,
    fmt_ratio,
    fmt_stats,
    fmt_us,
    thread_cpu_ns,
)
from benchmarks._prototypes import AggregatingCounter, FloorNode, PrototypeTracer, ShellFacade

NAME = "node"
TITLE = "One node's instrumentation"
ORDER = 10

#: Target: ours at least this many times cheaper per node than OTel + prometheus_client.
TARGET_RATIO = 10.0

TENANTS = tuple(f"tenant-{i}" for i in range(8))
NODE = "risk_scoring"


def work() -> int:
    """The node's trivial work, identical in every variant."""
    return sum(range(16))


def run(quick: bool) -> BenchResult:
    """Measure one node's instrumentation cost (see the module docstring)."""
    from app.observability import Observability, ObservabilitySettings
    from benchmarks._anchors import otel_tracing, prom_node_metrics

    nodes = 2_000 if quick else 8_000
    rounds = 3 if quick else 9
    obs = Observability(ObservabilitySettings(drain_at_exit=False))
    otel = otel_tracing()
    prom = prom_node_metrics()
    anchor_lost = [0]
    try:
        main = alternate(
            [
                Variant("ours", _ours_round(obs, nodes)),
                Variant("otel+prom", _anchor_round(otel, prom, nodes, anchor_lost)),
                Variant("bare", _bare_round(nodes)),
            ],
            rounds=rounds,
        )
        part_nodes = nodes // 2
        tracer, counter, shell = PrototypeTracer(), AggregatingCounter(), ShellFacade()
        floor = FloorNode(obs.metrics.catalog["node_execution_latency"].buckets)
        parts = alternate(
            [
                Variant("span", _component_round(obs, part_nodes, "span")),
                Variant("increment", _component_round(obs, part_nodes, "increment")),
                Variant("observe_latency", _component_round(obs, part_nodes, "observe")),
                Variant("paused", _paused_round(Observability, ObservabilitySettings,
                                                part_nodes)),
                Variant("proto_span", _component_round(obs, part_nodes, "span",
                                                       span_fn=tracer.span)),
                Variant("proto_increment", _component_round(
                    obs, part_nodes, "increment", increment_fn=counter.increment)),
                Variant("ours_node", _ours_round(obs, part_nodes)),
                Variant("shell", _timed(
                    lambda: _node_loop(shell.span, shell.increment, shell.observe_latency,
                                       part_nodes), part_nodes)),
                Variant("floor", _timed(
                    lambda: floor.run(part_nodes, TENANTS, work), part_nodes)),
                Variant("bare", _bare_round(part_nodes)),
            ],
            rounds=max(3, rounds - 2),
        )
        profile = _profile_caller(obs, nodes)
        dropped = obs.health().dropped_total
    finally:
        obs.close()
        otel.shutdown()
    return _result(main, parts, profile, dropped, anchor_lost[0], nodes, quick)


# --- variants -------------------------------------------------------------------


def _ours_round(obs: object, nodes: int) -> Callable[[], Mapping[str, float]]:
    from app.observability import Observability

    assert isinstance(obs, Observability)

    def round_() -> Mapping[str, float]:
        clock = time.perf_counter_ns
        cpu = thread_cpu_ns()
        started = clock()
        _node_loop(obs.tracing.span, obs.metrics.increment, obs.metrics.observe_latency, nodes)
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


def _node_loop(span: Any, increment: Any, observe: Any, nodes: int) -> None:
    """``nodes`` nodes instrumented through ``span``, ``increment`` and ``observe``."""
    clock = time.perf_counter_ns
    for i in range(nodes):
        t0 = clock()
        tenant = TENANTS[i & 7]
        with span(NODE, kind="node"):
            work()
        increment("request_count", tenant_id=tenant)
        observe("node_execution_latency", (clock() - t0) / 1e9, node=NODE)


def _anchor_round(
    otel: object, prom: object, nodes: int, lost: list[int]
) -> Callable[[], Mapping[str, float]]:
    from benchmarks._anchors import OtelTracing, PromNodeMetrics

    assert isinstance(otel, OtelTracing) and isinstance(prom, PromNodeMetrics)

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
            latency.labels(NODE).observe((clock() - t0) / 1e9)
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


def _component_round(
    obs: object, nodes: int, part: str, *, span_fn: Any = None, increment_fn: Any = None
) -> Callable[[], Mapping[str, float]]:
    """One instrumentation call alone per bare node (collectors running).

    ``span_fn`` / ``increment_fn`` replace ours with a prototype (``_prototypes``).
    """
    from app.observability import Observability

    assert isinstance(obs, Observability)

    def round_() -> Mapping[str, float]:
        span = span_fn or obs.tracing.span
        increment = increment_fn or obs.metrics.increment
        observe = obs.metrics.observe_latency
        clock = time.perf_counter_ns
        sink = 0.0
        started = clock()
        if part == "span":
            for i in range(nodes):
                t0 = clock()
                tenant = TENANTS[i & 7]
                with span(NODE, kind="node"):
                    work()
                sink += (clock() - t0) / 1e9 + len(tenant)
        elif part == "increment":
            for i in range(nodes):
                t0 = clock()
                tenant = TENANTS[i & 7]
                work()
                increment("request_count", tenant_id=tenant)
                sink += (clock() - t0) / 1e9
        else:
            for i in range(nodes):
                t0 = clock()
                tenant = TENANTS[i & 7]
                work()
                observe("node_execution_latency", (clock() - t0) / 1e9, node=NODE)
                sink += len(tenant)
        ended = clock()
        obs.flush()
        return {"ns": (ended - started) / nodes}

    return round_


def _timed(run_nodes: Callable[[], object], nodes: int) -> Callable[[], Mapping[str, float]]:
    """A round timing ``run_nodes()``, which runs ``nodes`` nodes (no flush, no CPU split)."""

    def round_() -> Mapping[str, float]:
        clock = time.perf_counter_ns
        started = clock()
        run_nodes()
        ended = clock()
        return {"ns": (ended - started) / nodes}

    return round_


def _paused_round(
    observability: Callable[..., object], settings: Callable[..., object], nodes: int
) -> Callable[[], Mapping[str, float]]:
    """The full node with the collector threads not yet started, then the backlog's drain.

    Splits the cost into what the calling thread pays (records built and
    queued) and what the collector threads pay afterwards (records applied).
    """

    def round_() -> Mapping[str, float]:
        obs = observability(settings(drain_at_exit=False), start=False)
        clock = time.perf_counter_ns
        try:
            started = clock()
            _node_loop(obs.tracing.span, obs.metrics.increment,  # type: ignore[attr-defined]
                       obs.metrics.observe_latency, nodes)  # type: ignore[attr-defined]
            ended = clock()
            obs.start()  # type: ignore[attr-defined]
            flushed = obs.flush()  # type: ignore[attr-defined]
            drained = clock()
        finally:
            obs.close()  # type: ignore[attr-defined]
        return {
            "ns": (ended - started) / nodes,
            "drain_ns": (drained - ended) / nodes,
            "incomplete": 0 if flushed else 1,
        }

    return round_


def _profile_caller(obs: object, nodes: int) -> list[tuple[str, float, float]]:
    """cProfile of our node loop, calling thread: (function, own µs, cumulative µs) per node."""
    profiler = cProfile.Profile()
    round_ = _ours_round(obs, nodes)
    profiler.enable()
    round_()
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows: list[tuple[str, float, float]] = []
    for (filename, line, function), (_, _, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        short = filename.split("/work/main/")[-1] if "/work/main/" in filename else filename
        label = f"{function} ({short.rsplit('/', 1)[-1]}:{line})" if line else function
        rows.append((label, own / nodes * 1e6, cumulative / nodes * 1e6))
    rows.sort(key=lambda r: r[1], reverse=True)
    return rows[:8]


# --- result -----------------------------------------------------------------------


def _result(
    main: Runs,
    parts: Runs,
    profile: list[tuple[str, float, float]],
    dropped: int,
    anchor_lost: int,
    nodes: int,
    quick: bool,
) -> BenchResult:
    net = {v: main.net(v) for v in ("ours", "otel+prom")}
    net_drained = {v: main.net(v, "ns_drained") for v in ("ours", "otel+prom")}
    ratio = main.net_ratio("otel+prom", "ours")
    ratio_drained = main.net_ratio("otel+prom", "ours", "ns_drained")
    bare = main.stats("bare", "ns")
    rows = []
    for variant in ("ours", "otel+prom", "bare"):
        total = main.stats(variant, "ns")
        is_bare = variant == "bare"
        rows.append((
            variant,
            fmt_stats(total, fmt_us),
            "-" if is_bare else fmt_stats(net[variant], fmt_us),
            "-" if is_bare else fmt_stats(net_drained[variant], fmt_us),
            "1x" if variant == "ours" else ("-" if is_bare else fmt_stats(ratio, fmt_ratio)),
            f"{fmt_us(main.stats(variant, 'cpu_caller_ns').median)} / "
            f"{fmt_us(main.stats(variant, 'cpu_background_ns').median)}",
            main.gc_summary(variant),
        ))
    table = Table(
        title=f"Per node, {fmt_int(nodes)} nodes per round, {main.rounds} alternating rounds",
        headers=("variant", "time per node (µs)", "instrumentation (µs, minus bare)",
                 "incl. drain (µs, minus bare)", "anchor / ours",
                 "CPU: calling thread / other threads (µs)", "GC per round: gen0/1/2, pause"),
        rows=tuple(rows),
        note=(
            "*instrumentation* is what the calling thread's loop took per node minus the bare"
            " node, collector threads running (they share the GIL, so the records they apply"
            " during the loop are included). *incl. drain* adds the time until every record"
            " is applied/exported (our `flush()`, OTel `force_flush()`). Drain ratio:"
            f" {fmt_stats(ratio_drained, fmt_ratio)}. *CPU* is on-CPU time per node of the"
            " calling thread and of all other threads (schedstat), loop and drain included;"
            f" ours by thread: {main.background_cpu('ours')}; anchor by thread:"
            f" {main.background_cpu('otel+prom')}."
        ),
    )
    bare_parts = parts.stats("bare", "ns").median
    parts_nodes = nodes // 2
    part_rows = []
    for variant, label in (
        ("span", "`with obs.tracing.span(...)` alone"),
        ("increment", "`obs.metrics.increment(...)` alone"),
        ("observe_latency", "`obs.metrics.observe_latency(...)` alone"),
    ):
        part_rows.append((label, fmt_stats(parts.net(variant), fmt_us), parts.gc_summary(variant)))
    paused = parts.net("paused")
    drain = parts.stats("paused", "drain_ns")
    part_rows.append(("whole node, collectors paused: calling thread only",
                      fmt_stats(paused, fmt_us), parts.gc_summary("paused")))
    part_rows.append(("... then the collectors applying that backlog (per node)",
                      fmt_stats(drain, fmt_us), "-"))
    part_rows.append(("whole node, collectors running (as in the table above)",
                      fmt_stats(parts.net("ours_node"), fmt_us), parts.gc_summary("ours_node")))
    part_rows.append(("*shell*: the same three calls with empty bodies",
                      fmt_stats(parts.net("shell"), fmt_us), parts.gc_summary("shell")))
    part_rows.append(("*floor*: the least Python work of a node, no facade, no checks, one thread",
                      fmt_stats(parts.net("floor"), fmt_us), parts.gc_summary("floor")))
    part_rows.append(("*prototype*: span as its own context manager, queued as-is",
                      fmt_stats(parts.net("proto_span"), fmt_us), parts.gc_summary("proto_span")))
    part_rows.append(("*prototype*: `increment` aggregated in a per-thread dict",
                      fmt_stats(parts.net("proto_increment"), fmt_us),
                      parts.gc_summary("proto_increment")))
    breakdown = Table(
        title="Where our per-node time goes (µs per node, minus a bare node of "
              f"{fmt_us(bare_parts)} µs)",
        headers=("part", "µs per node", "GC per round: gen0/1/2, pause"),
        rows=tuple(part_rows),
        note=(
            f"{fmt_int(parts_nodes)} nodes per round, {parts.rounds} alternating rounds. Each"
            " part alone, collectors running. The paused rows build the container with"
            " `start=False`: the calling thread pays only for building and queueing records;"
            " starting and flushing it then measures the collector threads' share. The"
            " *prototype* rows measure proposed designs, the *shell* row the public calls"
            " with empty bodies and the *floor* row the least work any design must do"
            " (`benchmarks/_prototypes.py`, not product code): see the analysis below."
        ),
    )
    profile_table = Table(
        title="cProfile of our node loop, calling thread (µs per node; the profiler inflates"
              " absolute times)",
        headers=("function", "own µs", "cumulative µs"),
        rows=tuple((name, fmt_float(own), fmt_float(cum)) for name, own, cum in profile),
    )
    measured_ratio = ratio.median
    met = measured_ratio >= TARGET_RATIO
    incomplete = sum(main.values("ours", "incomplete")) + sum(parts.values("paused", "incomplete"))
    notes = [
        f"Records dropped by our pipeline over the whole benchmark: {fmt_int(dropped)} "
        f"(must be 0); incomplete flushes: {fmt_int(incomplete)}; spans missing from the OTel "
        f"in-memory exporter: {fmt_int(anchor_lost)}.",
        f"Bare node: {fmt_stats(bare, fmt_us)} µs (loop, tenant choice, two clock reads,"
        " `sum(range(16))`).",
        f"Hot path measured: {_implementation()}.",
    ]
    analysis = _analysis(net["ours"].median, net["otel+prom"].median, parts, met)
    return BenchResult(
        name=NAME,
        title=TITLE,
        summary=__doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        tables=[table, breakdown, profile_table],
        targets=[Target(
            goal=f"ours ≥ {TARGET_RATIO:g}x cheaper per node than OTel SDK + prometheus_client",
            measured=f"{fmt_ratio(measured_ratio)} ({fmt_us(net['ours'].median)} µs vs "
                     f"{fmt_us(net['otel+prom'].median)} µs)",
            met=met and dropped == 0,
        )],
        notes=notes,
        analysis=analysis,
    )


def _implementation() -> str:
    from collectors.hotpath import COMPILED, PURE_PYTHON_ENV

    if COMPILED:
        return "compiled (`collectors/_speedups.c`, see `collectors/hotpath.py`)"
    return (f"pure Python (the compiled extension is not built, or `{PURE_PYTHON_ENV}` is"
            " set)")


def _analysis(ours_ns: float, anchor_ns: float, parts: Runs, met: bool) -> str:
    from collectors.hotpath import COMPILED

    def part(variant: str) -> float:
        return parts.net(variant).median / 1e3

    budget = anchor_ns / TARGET_RATIO / 1e3
    drain = parts.stats("paused", "drain_ns").median / 1e3
    floor = part("floor")
    verdict = (
        f"**How the target is met.** The 10x target leaves {fmt_float(budget)} µs per node;"
        f" we spend {fmt_us(ours_ns)} µs."
        if met else
        f"**Why the target is missed.** The 10x target leaves {fmt_float(budget)} µs per"
        f" node; we spend {fmt_us(ours_ns)} µs."
    )
    if COMPILED:
        how = """\
The calls run in the compiled hot path (`collectors/_speedups.c`): a span's start and
end, `increment` and `observe_latency`, and a collector's `send` are methods of C base
types, and so are the metrics store's series and its record applier on the collector
thread. The C code builds the same plain tuples the Python code builds, onto the same
bounded queues, and hands every uncommon case (attributes, events, errors, a remote parent,
a label set not validated yet, a queue past its high-water mark, a closed collector) to
the Python implementation, which also runs on its own when the extension is not built
(`tests/unit/hotpath` checks that both give the same results)."""
    else:
        how = """\
This run used the pure-Python implementation (the compiled extension is not built here, or
`RISK_ENGINE_PURE_PYTHON` is set). Installed on a machine with a C compiler, the project
builds `collectors/_speedups.c`, whose C base types run the span start and end, the metric
calls, a collector's `send` and the metrics store's series; that is what meets the target."""
    return f"""\
{verdict} Alone, the span costs {fmt_float(part("span"))} µs, `increment`
{fmt_float(part("increment"))} µs and `observe_latency` {fmt_float(part("observe_latency"))} µs
(collectors running). With the collectors paused the calling thread pays
{fmt_float(part("paused"))} µs per node, and the collector threads then need
{fmt_float(drain)} µs per node to apply its three records (a counter, a histogram
observation with its quantile sketch, a span tuple into the ring buffer). On this 2-core
machine the collectors' work holds the GIL, so it is paid inside the caller's loop: the
*CPU* column shows both shares.

{how}

**The floor.** The *floor* row is the least *Python* work such a node needs, whatever the
design (`benchmarks/_prototypes.py:FloorNode`): read the current span, two random ids, two
clocks, set and reset a context variable, build the three records, and store them (ring
buffer, counter dict, histogram bucket and sketch bin), all in one thread, with no facade
call, no argument check and no queue bound. It measured {fmt_float(floor)} µs per node in this
run, {fmt_float(floor / budget * 100)} % of the budget; ours costs
{fmt_float(ours_ns / 1e3 / floor)}x that. The *shell* row, the three public calls with empty
Python bodies, costs {fmt_float(part("shell"))} µs. The two *prototype* rows are earlier
pure-Python design studies (a span queued as its own record, counters aggregated per thread);
neither departs from the design card as little as the compiled hot path does."""
