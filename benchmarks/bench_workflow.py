"""``workflow``: the real LangGraph risk workflow with instrumentation on and off.

Both variants run the same compiled graph shape (``build_risk_graph``) with the
same zero-latency simulated LLM (the harshest case: nothing but Python runs)
and the same evaluator (``obs.evaluation``, a node of the workflow in both):

* **on**: ``InstrumentedRiskWorkflow(obs)`` -- every node wrapped (span,
  latency, generation, failure capture) and each request wrapped in a
  batched ``workflow`` span with the request metrics;
* **off**: ``InstrumentedRiskWorkflow(obs, instrument=False)`` -- the bare
  graph, no node wrapper, no run wrapper.

Rounds alternate (on, off, on, off...) over the same request mix (approvals,
escalations, reviews; no failures), one request at a time on one event loop,
with the collector threads running in both variants. A round's time is the
wall time of its requests (what a caller waits) and includes everything the
collector threads took from the GIL meanwhile; the CPU each thread used is
reported beside it.

The rounds measure the steady state of a long-running service: before them,
instrumented requests fill the trace ring buffer (10,000 spans, ~900
requests). While the ring fills, every stored span is a new long-lived object,
and the young collections the instrumentation adds are about three times as
many as once it is full (then each new span evicts one; measured with the
GC callbacks, 1,000 requests: +27 vs +9 over the bare graph's ~23); that
start-up transient is reported as its own line, not mixed into the rounds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from benchmarks._harness import (
    REPO_ROOT,
    BenchResult,
    Table,
    Target,
    Variant,
    alternate,
    cpu_split,
    fmt_float,
    fmt_stats,
    fmt_us,
    quiet_logging,
    thread_cpu_ns,
)

NAME = "workflow"
TITLE = "The LangGraph workflow, instrumentation on vs off"
ORDER = 40

#: Target: instrumented runs at most 1 % slower than bare ones.
TARGET_OVERHEAD = 0.01

_PAYLOAD = {
    "applicant_id": "app-1", "amount": "120.50", "currency": "USD", "country": "US",
    "merchant_category": "retail", "account_age_days": 400, "prior_chargebacks": 0,
    "channel": "web", "description": "card purchase",
}
_REVIEW = {**_PAYLOAD, "amount": "800", "account_age_days": 60, "prior_chargebacks": 1}


def run(quick: bool) -> BenchResult:
    """Alternate instrumented and bare workflow runs; report the overhead."""
    from app.observability import Observability, ObservabilitySettings
    from app.workflows.langgraph.config import WorkflowConfig
    from app.workflows.langgraph.instrumentation import InstrumentedRiskWorkflow
    from app.workflows.langgraph.state import RiskRequest

    quiet_logging()
    # Short rounds, many of them: the executor-thread hops LangGraph makes for
    # sync nodes make single rounds noisy, and the median of many paired
    # (on, off) rounds is what stays put.
    per_round = 20 if quick else 40
    rounds = 5 if quick else 45
    obs = Observability(ObservabilitySettings(drain_at_exit=False))
    config = WorkflowConfig(seed=1)
    on = InstrumentedRiskWorkflow(obs, config=config)
    off = InstrumentedRiskWorkflow(obs, config=config, instrument=False)
    loop = asyncio.new_event_loop()
    counter = [0]

    def requests() -> list[RiskRequest]:
        batch = []
        for _ in range(per_round):
            counter[0] += 1
            index = counter[0]
            batch.append(RiskRequest(
                request_id=f"bench-{index}", tenant_id=f"tenant-{index % 4}",
                correlation_id=f"corr-{index}",
                payload=_REVIEW if index % 3 == 0 else _PAYLOAD,
            ))
        return batch

    def variant(workflow: InstrumentedRiskWorkflow) -> Mapping[str, float]:
        batch = requests()

        async def go() -> int:
            started = time.perf_counter_ns()
            for request in batch:
                await workflow.run(request)
            return time.perf_counter_ns() - started

        cpu_before = thread_cpu_ns()
        process_before = time.process_time_ns()
        elapsed = loop.run_until_complete(go())
        process = time.process_time_ns() - process_before
        cpu = cpu_split(cpu_before, thread_cpu_ns(), per_round)
        assert obs.flush(30.0), "flush did not complete"
        return {"ns": elapsed / per_round, "process_cpu_ns": process / per_round, **cpu}

    try:
        loop.run_until_complete(on.run(requests()[0]))  # build caches, start executors
        fill = _fill_trace_ring(obs, loop, on, requests)
        runs = alternate(
            [Variant("on", lambda: variant(on)), Variant("off", lambda: variant(off))],
            rounds=rounds, warmup=1,
        )
        in_situ = _in_situ_costs(obs, loop, config, requests, 10 if quick else 300)
        health = obs.health()
    finally:
        obs.close(10.0)
        loop.close()

    on_stats, off_stats = runs.stats("on", "ns"), runs.stats("off", "ns")
    overhead = runs.paired(("on", "ns"), ("off", "ns"), lambda a, b: (a - b) / b)
    added = runs.paired(("on", "ns"), ("off", "ns"), lambda a, b: a - b)
    cpu_overhead = runs.paired(
        ("on", "process_cpu_ns"), ("off", "process_cpu_ns"), lambda a, b: (a - b) / b
    )
    cpu_added = runs.paired(
        ("on", "process_cpu_ns"), ("off", "process_cpu_ns"), lambda a, b: a - b
    )
    met = overhead.median < TARGET_OVERHEAD
    table = Table(
        title="Per request (wall time, median over alternating rounds; p10-p90)",
        headers=("variant", "µs per request (wall)", "process CPU µs per request",
                 "background CPU per request"),
        rows=(
            ("on (instrumented)", fmt_stats(on_stats, fmt_us),
             fmt_stats(runs.stats("on", "process_cpu_ns"), fmt_us), runs.background_cpu("on")),
            ("off (bare graph)", fmt_stats(off_stats, fmt_us),
             fmt_stats(runs.stats("off", "process_cpu_ns"), fmt_us),
             runs.background_cpu("off")),
            ("on - off (paired per round)", fmt_stats(added, fmt_us),
             fmt_stats(cpu_added, fmt_us), ""),
        ),
        note=f"{rounds} rounds of {per_round} requests per variant, one request at a time.",
    )
    dropped = health.dropped_total
    profile = _opcode_profile(10 if quick else 40)
    added_ops = profile["instrumented"] - profile["bare"]
    by_function = sorted(profile["added_by_function"].items(), key=lambda item: -item[1])
    opcodes = Table(
        title="Where the added work goes: Python opcodes per request, by function "
              "(deterministic, every thread)",
        headers=("function", "added opcodes per request", "share of the added"),
        rows=(
            *((f"`{name}`", fmt_float(ops, 1), f"{fmt_float(ops / added_ops * 100, 1)} %")
              for name, ops in by_function[:14]),
            ("all instrumentation", fmt_float(added_ops, 0), "100 %"),
            ("the bare run itself", fmt_float(profile["bare"], 0), "-"),
        ),
        note="Counted by `python -m benchmarks.tools.workflow_opcodes` in a subprocess "
             "(sys.settrace opcode events on every thread, garbage collector off); an "
             "opcode of LangGraph's does more C work on average than one of ours, so the "
             "share of opcodes is not the share of time.",
    )
    situ = Table(
        title="The instrumentation's calls inside real runs (µs per call, wall; timers "
              "around each call, collectors running)",
        headers=("call", "calls per request", "µs per call in the workflow"),
        rows=tuple(
            (f"`{name}`", fmt_float(row["per_request"], 1), fmt_float(row["us"], 2))
            for name, row in in_situ.items()
        ),
        note="Measured on a separately built instrumented workflow whose calls are wrapped "
             "in timers, after the rounds. The same calls in a hot loop (`node`, `llm_node`, "
             "and the breakdowns there) take several times less: inside a LangGraph run each "
             "call finds its code and data out of the CPU caches, and the sync nodes run on "
             "executor threads, on the other core.",
    )
    return BenchResult(
        name=NAME,
        title=TITLE,
        summary=__doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        tables=[table, opcodes, situ],
        targets=[Target(
            goal="instrumentation overhead < 1 % of a workflow run",
            measured=f"{fmt_float(overhead.median * 100, 2)} % "
                     f"(p10 {fmt_float(overhead.p10 * 100, 2)} %, "
                     f"p90 {fmt_float(overhead.p90 * 100, 2)} %)",
            met=met,
        )],
        notes=[
            f"records dropped during the run: {dropped}",
            f"median per-round added time: {fmt_float(added.median / 1000, 1)} µs per request "
            f"(wall); added process CPU (all threads): "
            f"{fmt_float(cpu_added.median / 1000, 1)} µs per request, "
            f"{fmt_float(cpu_overhead.median * 100, 2)} % "
            f"(p10 {fmt_float(cpu_overhead.p10 * 100, 2)} %, "
            f"p90 {fmt_float(cpu_overhead.p90 * 100, 2)} %)",
            f"GC per round (gen0/gen1/gen2, pause): on {runs.gc_summary('on')}; "
            f"off {runs.gc_summary('off')}",
            f"start-up transient, not in the rounds: {fill['requests']} instrumented requests "
            f"filled the trace ring ({fill['spans']:,} spans) at "
            f"{fmt_float(fill['us_per_request'], 0)} µs per request with "
            f"{fill['gen0']} young collections (gen0)",
        ],
        analysis="" if met else _ANALYSIS.format(
            added=fmt_float(added.median / 1000, 1),
            ops=fmt_float(added_ops, 0),
            share=fmt_float(added_ops / profile["bare"] * 100, 2),
            floor=fmt_float(profile["floor_per_node"], 0),
            floor_run=fmt_float(_FLOOR_NODES_PER_RUN * profile["floor_per_node"], 0),
            floor_share=fmt_float(
                _FLOOR_NODES_PER_RUN * profile["floor_per_node"] / profile["bare"] * 100, 2),
            floor_instr=fmt_float(
                _FLOOR_NODES_PER_RUN * profile["floor_per_node"] / profile["bare"] * 100
                * _INSTRUCTIONS_PER_OPCODE_RATIO, 2),
            ratio=fmt_float(added_ops / (_FLOOR_NODES_PER_RUN * profile["floor_per_node"]), 2),
        ),
    )


def _in_situ_costs(
    obs: Any, loop: asyncio.AbstractEventLoop, config: Any,
    requests: Callable[[], list[Any]], count: int,
) -> dict[str, dict[str, float]]:
    """Time the instrumentation's own calls inside real workflow runs (wall, per call)."""
    from app.observability.langfuse_client import LangfuseClient
    from app.observability.tracing import TracingService
    from app.workflows.langgraph.instrumentation import InstrumentedRiskWorkflow

    totals: dict[str, list[int]] = {}
    clock = time.perf_counter_ns
    originals = {
        (TracingService, "start_child_span"): TracingService.start_child_span,
        (TracingService, "finish"): TracingService.finish,
        (LangfuseClient, "log_generation_sync"): LangfuseClient.log_generation_sync,
    }

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                entry = totals.setdefault(name, [0, 0])
                entry[0] += clock() - started
                entry[1] += 1
        return call

    for (owner, attribute), fn in originals.items():
        setattr(owner, attribute, timed(f"{owner.__name__}.{attribute}", fn))
    try:  # built after patching: the node wrappers bind these methods when built
        workflow = InstrumentedRiskWorkflow(obs, config=config)
        done = 0
        while done < count:
            batch = requests()

            async def go(batch: list[Any] = batch) -> None:
                for request in batch:
                    await workflow.run(request)

            loop.run_until_complete(go())
            done += len(batch)
        assert obs.flush(30.0), "flush did not complete"
    finally:
        for (owner, attribute), fn in originals.items():
            setattr(owner, attribute, fn)
    return {
        name: {"us": total / calls / 1000, "per_request": calls / done}
        for name, (total, calls) in sorted(totals.items())
    }


def _fill_trace_ring(
    obs: Any, loop: asyncio.AbstractEventLoop, workflow: Any,
    requests: Callable[[], list[Any]],
) -> dict[str, Any]:
    """Run instrumented requests until the trace ring is full (the start-up transient)."""
    import gc

    trace = obs.pipeline.collectors["trace"]
    capacity = obs.settings.trace_buffer_size
    done = 0
    collections_before = gc.get_stats()[0]["collections"]
    started = time.perf_counter_ns()
    while trace.counts()[0] < capacity:
        batch = requests()

        async def go(batch: list[Any] = batch) -> None:
            for request in batch:
                await workflow.run(request)

        loop.run_until_complete(go())
        done += len(batch)
        assert obs.flush(30.0), "flush did not complete"
    elapsed = time.perf_counter_ns() - started
    return {
        "requests": done,
        "spans": trace.counts()[0],
        "us_per_request": elapsed / done / 1000,
        "gen0": gc.get_stats()[0]["collections"] - collections_before,
    }


def _opcode_profile(requests: int) -> dict[str, Any]:
    """The deterministic opcode profile, from a fresh interpreter (tracing is global)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.tools.workflow_opcodes", str(requests), "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


#: A run's required work in floor nodes: nine node spans with their latencies, plus the
#: generation's span (its usage counters and the run's three metrics stand in for the
#: floor node's counter).
_FLOOR_NODES_PER_RUN = 10

#: Machine instructions per opcode of the instrumentation's work relative to the bare
#: run's average, from callgrind (`benchmarks/tools/workflow_instructions.py --no-gc`,
#: 200 requests, 2026-11-23): +493k instructions on 15.3M (3.2 %) for +6,312 opcodes on
#: 148,090 (4.3 %).
_INSTRUCTIONS_PER_OPCODE_RATIO = 0.75

_ANALYSIS = """**Why the target is missed, and where the time goes.** The median round
added {added} µs per request. The instrumentation's own work is {ops} Python
opcodes per request ({share} % of the bare run's opcode count; table above),
spread over the node wrapper's span start and end (`start_child_span`,
`finish`: ~100 and ~150 opcodes per node), the collectors applying the run's
records (a span into the ring, a histogram observation with its quantile
sketch, a counter), and the generation (pricing, usage metrics, its span).
Under callgrind with the garbage collector off (deterministic:
`benchmarks/tools/workflow_instructions.py on|off N --no-gc`) that work is
3.2 % of the bare run's instructions (+493k on 15.3M per request). The
wall-clock cost is higher than the instruction count suggests: timed inside
real runs (last table), each call costs several times what the same call
costs in a hot loop, because between two calls LangGraph's own work has
pushed our code and data out of the CPU caches, and the sync nodes (with
their spans) run on executor threads on the other core. Per request that is
some ten cold calls on the calling and executor threads, and no single one
dominates, so the remaining factor of three or more is not one fix away in
pure Python. The wall-clock medians above also move by several percent
between runs on this shared 2-core VM (p10-p90).

**The floor.** The least Python work of one instrumented node (a span, a
counter and a latency observation, built and stored in one thread with no
checks: `benchmarks/_prototypes.py:FloorNode`, the `node` benchmark's floor)
is {floor} opcodes. A run needs about ten of those (nine node spans with
their latencies, and the generation's span; the generation's usage counters
and the run's three metrics stand in for the floor's counter): ~{floor_run}
opcodes, {floor_share} % of the bare run's opcode count. Our opcodes execute
fewer machine instructions than the bare run's on average (under callgrind
the added work is 3.2 % of the instructions for 4.3 % of the opcodes), so by
instructions that floor is about {floor_instr} %: the 1 % target is at or
below what the required work alone costs in pure CPython, before any of the
product's checks, batching, bounded queues and thread hand-offs. Ours is
{ratio}x that floor.

What has been done (each measured): records travel and are stored as plain,
shallow tuples the cyclic GC untracks, so they no longer reach the oldest
generation (they used to trigger a full collection every ~1,000 runs, ~90 ms
each); a run's records go to the collectors as one batch per collector when
its root span ends; label tuples are built once and shared; a node's latency
is recorded from its span's end; span redaction runs where spans leave the
store (reads, exports) rather than on every stored span; the trace collector
stores a run's spans as one batch in a few C calls.

What would close the rest, in order of payoff: move work from the cold
per-request path to the collectors' batched (hot) loops -- e.g. the
generation recorded as one compact tuple and priced, counted and turned into
a span by the collectors, and the node and run metrics derived there from
the run's spans; but only a compiled (C or Rust) extension for span start and
end and the collectors' apply loops, whose records are already flat tuples,
gets below the floor above; or collectors in a subprocess, off this
interpreter's GIL and caches.
"""
