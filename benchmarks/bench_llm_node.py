"""``llm_node``: a node that calls an LLM, ours against OTel SDK + prometheus_client + Langfuse.

The ``node`` benchmark's node (span, counter, latency) plus one logged
generation with model, token usage and cost:

* **ours**: the ``node`` benchmark's bound handles, and
  ``obs.langfuse.log_generation_sync(tenant_id=..., model_version="risk-llm-v2",
  prompt_version="risk_scoring/v3", input_tokens=..., output_tokens=..., latency=...)``
  inside the node span, as the workflow does it; it prices the usage, feeds the
  cost store, four usage counters (model, prompt, input and output tokens), the
  GenAI client histograms and a ``generation`` span;
* **otel+prom+langfuse**: the ``node`` anchor plus the Langfuse SDK (v5,
  OpenTelemetry-based): ``Langfuse(public_key="pk-lf-bench", secret_key="sk-lf-bench",
  host="http://127.0.0.1:9", tracer_provider=..., span_exporter=InMemorySpanExporter())``
  and ``langfuse.start_observation(as_type="generation", model=..., usage_details=...,
  cost_details=..., metadata=...).end()``; the same work as ours on the metrics
  side: the four usage counters and a cost counter in prometheus_client, the
  cost priced from the same table (floats);
* **bare**: the same loop without instrumentation calls.

Langfuse's span processor is its own ``BatchSpanProcessor`` subclass wrapping
the in-memory exporter in its transforming exporter (media handling, masking),
exactly as it wraps its OTLP exporter in production; its queue bound is raised
to ours (``OTEL_BSP_MAX_QUEUE_SIZE=65536`` while it is built). A socket guard
refuses and records every connection attempt and DNS lookup while the anchor
exists, from its construction to its shutdown.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from benchmarks._harness import (
    BenchResult,
    Runs,
    Table,
    Target,
    Variant,
    alternate,
    cpu_split,
    fmt_int,
    fmt_ratio,
    fmt_stats,
    fmt_us,
    thread_cpu_ns,
)

NAME = "llm_node"
TITLE = "A node with one LLM generation"
ORDER = 20

#: Target: ours at least this many times cheaper per LLM node than the anchor stack
#: (the ratio the ``node`` benchmark requires of a plain node).
TARGET_RATIO = 6.0

TENANTS = tuple(f"tenant-{i}" for i in range(8))
NODE = "risk_scoring"
MODEL = "risk-llm-v2"
PROMPT = "risk_scoring/v3"
#: Prices per 1k tokens of MODEL, as in the default price table (input, output).
PRICE_PER_1K = (0.0030, 0.0060)


def work() -> int:
    """The node's trivial work, identical in every variant."""
    return sum(range(16))


def run(quick: bool) -> BenchResult:
    """Measure one LLM node's instrumentation cost (see the module docstring)."""
    from app.observability import Observability, ObservabilitySettings
    from benchmarks._anchors import no_network, otel_tracing, prom_node_metrics

    nodes = 300 if quick else 3_000
    rounds = 2 if quick else 9
    _check_price_table(ObservabilitySettings())
    obs = Observability(ObservabilitySettings(drain_at_exit=False))
    otel = otel_tracing()
    prom = prom_node_metrics()
    lost = {"otel": 0, "langfuse": 0}
    with no_network() as guard:
        langfuse = _Langfuse()
        try:
            loop_attempts_before = len(guard.attempts)
            main = alternate(
                [
                    Variant("ours", _ours_round(obs, nodes)),
                    Variant("anchor", _anchor_round(otel, prom, langfuse, nodes, lost)),
                    Variant("bare", _bare_round(nodes)),
                ],
                rounds=rounds,
            )
            loop_attempts = len(guard.attempts) - loop_attempts_before
            part_nodes = nodes // 2
            parts = alternate(
                [
                    Variant("generation", _generation_round(obs, part_nodes)),
                    Variant("paused", _paused_round(part_nodes)),
                    Variant("bare", _bare_round(part_nodes)),
                ],
                rounds=max(2, rounds - 2),
            )
            dropped = obs.health().dropped_total
        finally:
            langfuse.shutdown()
            obs.close()
            otel.shutdown()
        attempts = list(guard.attempts)
    return _result(main, parts, dropped, lost, loop_attempts, attempts, nodes)


def _check_price_table(settings: Any) -> None:
    price = settings.price_table[MODEL]
    expected = (Decimal(str(PRICE_PER_1K[0])), Decimal(str(PRICE_PER_1K[1])))
    if (price.input_per_1k, price.output_per_1k) != expected:
        raise RuntimeError(f"the anchor's prices {PRICE_PER_1K} differ from ours for {MODEL}")


class _Langfuse:
    """The Langfuse v5 client, tracing to memory through its own span processor."""

    def __init__(self) -> None:
        from langfuse import Langfuse
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from benchmarks._anchors import ANCHOR_QUEUE_SIZE

        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        with _env(OTEL_BSP_MAX_QUEUE_SIZE=str(ANCHOR_QUEUE_SIZE)):
            self.client = Langfuse(
                public_key="pk-lf-bench", secret_key="sk-lf-bench", host="http://127.0.0.1:9",
                tracer_provider=self.provider, span_exporter=self.exporter,
            )

    def drain(self) -> int:
        """Force-flush Langfuse's span processor; return and forget the exported count."""
        self.provider.force_flush()
        count = len(self.exporter.get_finished_spans())
        self.exporter.clear()
        return count

    def shutdown(self) -> None:
        """Flush and stop Langfuse's threads (still under the network guard)."""
        self.client.shutdown()


@contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


# --- variants -------------------------------------------------------------------


def _llm_loop(obs: Any, nodes: int) -> None:
    """``nodes`` LLM nodes instrumented through the bound handles, one record at a time."""
    start = obs.tracing.start_span_sync
    end = obs.tracing.end_span_sync
    requests = obs.metrics.counter("request_count")
    latency = obs.metrics.histogram("node_execution_latency")
    log_generation = obs.langfuse.log_generation_sync
    clock = time.perf_counter_ns
    for i in range(nodes):
        t0 = clock()
        tenant = TENANTS[i & 7]
        span = start(NODE, kind="node")
        work()
        log_generation(
            tenant_id=tenant, model_version=MODEL, prompt_version=PROMPT,
            input_tokens=400 + (i & 63), output_tokens=120, latency=0.012,
        )
        end(span)
        requests.labels(tenant_id=tenant).inc()
        latency.labels(node=NODE, tenant_id=tenant, status="ok").observe((clock() - t0) / 1e9)


def _ours_round(obs: Any, nodes: int) -> Callable[[], Mapping[str, float]]:
    def round_() -> Mapping[str, float]:
        clock = time.perf_counter_ns
        cpu = thread_cpu_ns()
        started = clock()
        _llm_loop(obs, nodes)
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


def _anchor_round(
    otel: Any, prom: Any, langfuse: _Langfuse, nodes: int, lost: dict[str, int]
) -> Callable[[], Mapping[str, float]]:
    prices = {MODEL: PRICE_PER_1K}

    def round_() -> Mapping[str, float]:
        start_span = otel.tracer.start_as_current_span
        start_observation = langfuse.client.start_observation
        requests = prom.requests
        latency = prom.node_latency
        model_usage = prom.model_usage
        prompt_usage = prom.prompt_usage
        tokens = prom.tokens
        cost = prom.cost
        clock = time.perf_counter_ns
        cpu = thread_cpu_ns()
        started = clock()
        for i in range(nodes):
            t0 = clock()
            tenant = TENANTS[i & 7]
            with start_span(NODE):
                work()
                input_tokens, output_tokens = 400 + (i & 63), 120
                price_in, price_out = prices[MODEL]
                cost_in = input_tokens * price_in / 1000
                cost_out = output_tokens * price_out / 1000
                start_observation(
                    name="llm.generation", as_type="generation", model=MODEL,
                    usage_details={"input": input_tokens, "output": output_tokens},
                    cost_details={"input": cost_in, "output": cost_out},
                    metadata={"tenant_id": tenant, "prompt_version": PROMPT},
                ).end()
                model_usage.labels(MODEL, tenant).inc()
                prompt_usage.labels(PROMPT, tenant).inc()
                tokens.labels(tenant, MODEL, "input").inc(input_tokens)
                tokens.labels(tenant, MODEL, "output").inc(output_tokens)
                cost.labels(tenant, MODEL).inc(cost_in + cost_out)
            requests.labels(tenant).inc()
            latency.labels(NODE, tenant, "ok").observe((clock() - t0) / 1e9)
        ended = clock()
        exported_nodes = otel.drain()
        exported_generations = langfuse.drain()
        drained = clock()
        lost["otel"] += abs(nodes - exported_nodes)
        lost["langfuse"] += abs(nodes - exported_generations)
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
            input_tokens = 400 + (i & 63)
            sink += (clock() - t0) / 1e9 + len(tenant) + input_tokens
        ended = clock()
        return {
            "ns": (ended - started) / nodes,
            "ns_drained": (ended - started) / nodes,
            **cpu_split(cpu, thread_cpu_ns(), nodes),
        }

    return round_


def _generation_round(obs: Any, nodes: int) -> Callable[[], Mapping[str, float]]:
    """``log_generation_sync`` alone per bare node (no span), collectors running."""

    def round_() -> Mapping[str, float]:
        log_generation = obs.langfuse.log_generation_sync
        clock = time.perf_counter_ns
        sink = 0.0
        started = clock()
        for i in range(nodes):
            t0 = clock()
            tenant = TENANTS[i & 7]
            work()
            log_generation(
                tenant_id=tenant, model_version=MODEL, prompt_version=PROMPT,
                input_tokens=400 + (i & 63), output_tokens=120, latency=0.012,
            )
            sink += (clock() - t0) / 1e9
        ended = clock()
        obs.flush()
        return {"ns": (ended - started) / nodes}

    return round_


def _paused_round(nodes: int) -> Callable[[], Mapping[str, float]]:
    """The full LLM node with collectors not started, then the backlog's drain."""
    from app.observability import Observability, ObservabilitySettings

    def round_() -> Mapping[str, float]:
        obs = Observability(ObservabilitySettings(drain_at_exit=False), start=False)
        clock = time.perf_counter_ns
        try:
            started = clock()
            _llm_loop(obs, nodes)
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


def _result(
    main: Runs,
    parts: Runs,
    dropped: int,
    lost: dict[str, int],
    loop_attempts: int,
    attempts: list[str],
    nodes: int,
) -> BenchResult:
    net = {v: main.net(v) for v in ("ours", "anchor")}
    net_drained = {v: main.net(v, "ns_drained") for v in ("ours", "anchor")}
    ratio = main.net_ratio("anchor", "ours")
    ratio_drained = main.net_ratio("anchor", "ours", "ns_drained")
    labels = {"ours": "ours", "anchor": "otel+prom+langfuse", "bare": "bare"}
    rows = []
    for variant in ("ours", "anchor", "bare"):
        is_bare = variant == "bare"
        rows.append((
            labels[variant],
            fmt_stats(main.stats(variant, "ns"), fmt_us),
            "-" if is_bare else fmt_stats(net[variant], fmt_us),
            "-" if is_bare else fmt_stats(net_drained[variant], fmt_us),
            "1x" if variant == "ours" else ("-" if is_bare else fmt_stats(ratio, fmt_ratio)),
            f"{fmt_us(main.stats(variant, 'cpu_caller_ns').median)} / "
            f"{fmt_us(main.stats(variant, 'cpu_background_ns').median)}",
            main.gc_summary(variant),
        ))
    table = Table(
        title=f"Per LLM node, {fmt_int(nodes)} nodes per round, {main.rounds} alternating rounds",
        headers=("variant", "time per node (µs)", "instrumentation (µs, minus bare)",
                 "incl. drain (µs, minus bare)", "anchor / ours",
                 "CPU: calling thread / other threads (µs)", "GC per round: gen0/1/2, pause"),
        rows=tuple(rows),
        note=(
            "As in `node`: the calling thread's loop with every background thread running"
            " (ours: 4 collectors; anchor: the OTel and Langfuse batch processors and"
            " Langfuse's media and score consumers). *incl. drain* adds the time until"
            " everything is applied/exported. Drain ratio:"
            f" {fmt_stats(ratio_drained, fmt_ratio)}. *CPU* is on-CPU time per node"
            " (schedstat), loop and drain included; ours by thread:"
            f" {main.background_cpu('ours')}; anchor by thread: {main.background_cpu('anchor')}."
        ),
    )
    bare = parts.stats("bare", "ns").median
    breakdown = Table(
        title=f"Where our time goes (µs per LLM node, minus a bare node of {fmt_us(bare)} µs)",
        headers=("part", "µs per node", "GC per round: gen0/1/2, pause"),
        rows=(
            ("`log_generation_sync(...)` alone (no span), collectors running",
             fmt_stats(parts.net("generation"), fmt_us), parts.gc_summary("generation")),
            ("whole LLM node, collectors paused: calling thread only",
             fmt_stats(parts.net("paused"), fmt_us), parts.gc_summary("paused")),
            ("... then the collectors applying that backlog (per node)",
             fmt_stats(parts.stats("paused", "drain_ns"), fmt_us), "-"),
        ),
        note=f"{fmt_int(nodes // 2)} nodes per round, {parts.rounds} alternating rounds. The"
             " paused row builds the container with `start=False`; starting and flushing it"
             " then measures what the collector threads pay to apply the node's records.",
    )
    met = ratio.median >= TARGET_RATIO
    incomplete = sum(main.values("ours", "incomplete")) + sum(parts.values("paused", "incomplete"))
    valid = loop_attempts == 0 and not attempts and lost["otel"] == 0 and lost["langfuse"] == 0
    notes = [
        f"Network guard: {loop_attempts} connection attempts or DNS lookups during the timed"
        f" rounds, {len(attempts)} over the anchor's whole life (construction to shutdown)"
        + (f": {attempts[:3]}" if attempts else "") + ". Must be 0.",
        f"Records dropped by our pipeline: {fmt_int(dropped)} (must be 0); incomplete flushes:"
        f" {fmt_int(incomplete)}. Spans missing from the anchor's exporters: OTel"
        f" {fmt_int(lost['otel'])}, Langfuse {fmt_int(lost['langfuse'])}.",
        "Same work on both sides: one node span, one generation (model, input/output tokens,"
        " cost, tenant, prompt version), request counter, node latency, model and prompt usage"
        " counters, input and output token counters, cost per tenant and model. Ours also"
        " records the GenAI client histograms (operation duration, input and output token"
        " usage) and the per-request cost; the anchor does not.",
    ]
    return BenchResult(
        name=NAME,
        title=TITLE,
        summary=__doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        tables=[table, breakdown],
        targets=[Target(
            goal=f"ours ≥ {TARGET_RATIO:g}x cheaper per LLM node than OTel + prometheus_client"
                 " + Langfuse",
            measured=f"{fmt_ratio(ratio.median)} ({fmt_us(net['ours'].median)} µs vs "
                     f"{fmt_us(net['anchor'].median)} µs)",
            met=met and dropped == 0 and valid,
        )],
        notes=notes,
    )
