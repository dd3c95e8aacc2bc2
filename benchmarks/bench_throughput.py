"""``throughput``: records per second through the public facade, and flush latency.

**Rate.** Counter increments of ``request_count`` (8 tenants) from 1, 4 and
16 producer threads, and from 500 asyncio tasks (one event loop, each task
yielding every 10 records), through the bound handles
(``obs.metrics.counter("request_count").labels(tenant_id=t)``, resolved once
per tenant, then ``.inc()``) and through the specification's
``obs.metrics.increment("request_count", tenant_id=t)``. The clock runs from
the moment every producer is released (a barrier; thread creation is not
timed) until ``obs.flush()`` (or ``await obs.aflush()``) returns complete,
i.e. until every record is applied to the store. Every round checks that the
metrics collector applied exactly what was sent, that the counter's total grew
by exactly that, and that nothing was dropped; the benchmark fails if not.

Anchors, from the same threads or tasks, recording the same increments on
children resolved the same way: prometheus_client ``Counter.labels(t)`` then
``.inc()`` (visible at once: the clock stops when the producers finish) and
the OpenTelemetry SDK metrics ``Counter.add(1, {"tenant_id": t})`` with an
``InMemoryMetricReader`` (the clock stops after one ``collect``, which makes
the data visible); their totals are checked too.

**Flush latency.** ``obs.flush()`` on an idle pipeline (median of many), and
with a 100,000-record backlog: (a) *produce then flush*: one thread enqueues
100k records as fast as it can while the collectors drain, then flushes (the
queue depth at the flush is reported); (b) *cold backlog*: 100k records are
enqueued before the collectors start (``start=False``; the queue bound is
raised to 262,144 for this one, since the default 65,536 cannot hold them),
then ``start()`` and ``flush()`` are timed together.
"""

from __future__ import annotations

import asyncio
import threading
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
    fmt_float,
    fmt_int,
    fmt_ms,
    fmt_stats,
    fmt_us,
    summarize,
)

NAME = "throughput"
TITLE = "Throughput and flush latency"
ORDER = 30

TARGET_RATE_16 = 500_000.0
TARGET_IDLE_FLUSH_NS = 1_000_000
TARGET_BACKLOG_FLUSH_NS = 500_000_000

TENANTS = tuple(f"tenant-{i}" for i in range(8))
BACKLOG = 100_000
#: Queue bound of the cold-backlog container: the default (65,536) cannot hold the
#: backlog, and past half its bound a put yields the GIL (``time.sleep(0)``), which
#: with no consumer running only slows the enqueueing down (not the timed flush).
COLD_QUEUE_BOUND = 262_144
TASKS = 500
THREADS = (1, 4, 16)


def run(quick: bool) -> BenchResult:
    """Measure producer throughput and flush latency (see the module docstring)."""
    from app.observability import Observability, ObservabilitySettings

    total = 4_000 if quick else 48_000
    rounds = 2 if quick else 7
    flushes = 50 if quick else 2_000
    backlog = 5_000 if quick else BACKLOG
    obs = Observability(ObservabilitySettings(drain_at_exit=False))
    prom = _Prom()
    otel = _OtelMetrics()
    try:
        rates: dict[str, Runs] = {}
        for producers in THREADS:
            rates[f"{producers} thread{'s' if producers > 1 else ''}"] = alternate(
                [
                    Variant("ours", _threads(producers, total, _ours_recorder(obs))),
                    Variant("ours_increment",
                            _threads(producers, total, _ours_recorder(obs, bound=False))),
                    Variant("prometheus_client", _threads(producers, total, prom.recorder())),
                    Variant("otel-sdk-metrics", _threads(producers, total, otel.recorder())),
                ],
                rounds=rounds,
            )
        rates[f"{TASKS} asyncio tasks"] = alternate(
            [
                Variant("ours", _tasks(total, _ours_recorder(obs))),
                Variant("ours_increment", _tasks(total, _ours_recorder(obs, bound=False))),
                Variant("prometheus_client", _tasks(total, prom.recorder())),
                Variant("otel-sdk-metrics", _tasks(total, otel.recorder())),
            ],
            rounds=rounds,
        )
        idle = _idle_flushes(obs, flushes)
        backlogs = alternate(
            [
                Variant("produce_then_flush", _produce_then_flush(obs, backlog)),
                Variant("cold_backlog",
                        _cold_backlog(Observability, ObservabilitySettings, backlog)),
            ],
            rounds=rounds,
        )
        dropped = obs.health().dropped_total
    finally:
        obs.close()
        otel.shutdown()
    return _result(rates, idle, backlogs, dropped, total, backlog)


# --- recorders: what one producer does, with its accounting --------------------


class _Recorder:
    """One side's increment function, and how to read back what it recorded."""

    def __init__(
        self,
        record: Callable[[str], None],
        total: Callable[[], float],
        finish: Callable[[], Mapping[str, float]],
        afinish: Callable[[], Any] | None = None,
        applied: Callable[[], float] | None = None,
        dropped: Callable[[], float] | None = None,
    ) -> None:
        self.record = record
        self.total = total
        self.finish = finish
        self.afinish = afinish
        self.applied = applied
        self.dropped = dropped


def _ours_recorder(obs: Any, *, bound: bool = True) -> _Recorder:
    metrics = obs.pipeline.collectors["metrics"]
    if bound:
        counter = obs.metrics.counter("request_count")
        children = {tenant: counter.labels(tenant_id=tenant) for tenant in TENANTS}

        def record(tenant: str) -> None:
            children[tenant].inc()
    else:
        increment = obs.metrics.increment

        def record(tenant: str) -> None:
            increment("request_count", tenant_id=tenant)

    def total() -> float:
        series = obs.metrics.export_metrics()["request_count"]["series"]
        return float(sum(s["value"] for s in series))

    def finish() -> Mapping[str, float]:
        return {"complete": 1.0 if obs.flush() else 0.0}

    async def afinish() -> Mapping[str, float]:
        return {"complete": 1.0 if await obs.aflush() else 0.0}

    return _Recorder(
        record, total, finish, afinish,
        applied=lambda: float(metrics.stats().applied),
        dropped=lambda: float(metrics.stats().dropped_total),
    )


class _Prom:
    """A prometheus_client counter equal to ``request_count``."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter

        self.registry = CollectorRegistry()
        self.counter = Counter("risk_engine_requests", "Risk requests received, by tenant.",
                               ["tenant_id"], registry=self.registry)

    def recorder(self) -> _Recorder:
        children = {tenant: self.counter.labels(tenant) for tenant in TENANTS}

        def record(tenant: str) -> None:
            children[tenant].inc()

        def total() -> float:
            return sum(
                sample.value
                for family in self.registry.collect()
                for sample in family.samples
                if sample.name.endswith("_total")
            )

        return _Recorder(record, total, lambda: {"complete": 1.0})


class _OtelMetrics:
    """An OpenTelemetry SDK counter with an in-memory reader."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.counter = self.provider.get_meter("bench").create_counter(
            "risk_engine_requests", description="Risk requests received, by tenant."
        )
        self._last_total = 0.0

    def _collect(self) -> float:
        data = self.reader.get_metrics_data()
        total = 0.0
        if data is not None:
            for resource in data.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        total += sum(
                            float(getattr(point, "value", 0)) for point in metric.data.data_points
                        )
        self._last_total = total
        return total

    def recorder(self) -> _Recorder:
        add = self.counter.add
        attributes = {tenant: {"tenant_id": tenant} for tenant in TENANTS}

        def record(tenant: str) -> None:
            add(1, attributes[tenant])

        def finish() -> Mapping[str, float]:
            self._collect()
            return {"complete": 1.0}

        return _Recorder(record, lambda: self._last_total, finish)

    def shutdown(self) -> None:
        self.provider.shutdown()


# --- rate variants ------------------------------------------------------------


def _threads(producers: int, total: int, recorder: _Recorder) -> Callable[[], Mapping[str, float]]:
    per = total // producers

    def round_() -> Mapping[str, float]:
        before_total = recorder.total()
        applied0 = _extra(recorder, "applied")
        dropped0 = _extra(recorder, "dropped")
        barrier = threading.Barrier(producers + 1)
        record = recorder.record

        def produce(offset: int) -> None:
            barrier.wait()
            for i in range(per):
                record(TENANTS[(i + offset) & 7])

        workers = [
            threading.Thread(target=produce, args=(k,), name=f"producer-{k}")
            for k in range(producers)
        ]
        for worker in workers:
            worker.start()
        barrier.wait()
        started = time.perf_counter_ns()
        for worker in workers:
            worker.join()
        produced = time.perf_counter_ns()
        finished = recorder.finish()
        ended = time.perf_counter_ns()
        sent = per * producers
        return _accounting(recorder, sent, started, produced, ended, finished,
                           before_total, applied0, dropped0)

    return round_


def _tasks(total: int, recorder: _Recorder) -> Callable[[], Mapping[str, float]]:
    per = total // TASKS

    def round_() -> Mapping[str, float]:
        before_total = recorder.total()
        applied0 = _extra(recorder, "applied")
        dropped0 = _extra(recorder, "dropped")
        record = recorder.record
        times: dict[str, Any] = {}

        async def produce(offset: int) -> None:
            for i in range(per):
                record(TENANTS[(i + offset) & 7])
                if i % 10 == 9:
                    await asyncio.sleep(0)

        async def main() -> None:
            times["started"] = time.perf_counter_ns()
            await asyncio.gather(*(produce(k) for k in range(TASKS)))
            times["produced"] = time.perf_counter_ns()
            if recorder.afinish is not None:
                times["finished"] = await recorder.afinish()
            else:
                times["finished"] = recorder.finish()
            times["ended"] = time.perf_counter_ns()

        asyncio.run(main())
        return _accounting(recorder, per * TASKS, times["started"], times["produced"],
                           times["ended"], times["finished"], before_total, applied0, dropped0)

    return round_


def _extra(recorder: _Recorder, name: str) -> float:
    reader = getattr(recorder, name, None)
    return reader() if reader is not None else 0.0


def _accounting(
    recorder: _Recorder, sent: int, started: int, produced: int, ended: int,
    finished: Mapping[str, float], before_total: float, applied0: float, dropped0: float,
) -> Mapping[str, float]:
    counted = recorder.total() - before_total
    result = {
        "rate": sent / (ended - started) * 1e9,
        "produce_rate": sent / (produced - started) * 1e9,
        "sent": float(sent),
        "counted": counted,
        "complete": finished.get("complete", 1.0),
    }
    if recorder.applied is not None:
        result["applied"] = _extra(recorder, "applied") - applied0
        result["dropped"] = _extra(recorder, "dropped") - dropped0
    return result


# --- flush latency --------------------------------------------------------------


def _idle_flushes(obs: Any, count: int) -> dict[str, Any]:
    obs.flush()
    durations = []
    incomplete = 0
    for _ in range(count):
        started = time.perf_counter_ns()
        result = obs.flush()
        durations.append(time.perf_counter_ns() - started)
        incomplete += 0 if result else 1
    durations.sort()
    return {
        "stats": summarize(durations),
        "p99": durations[min(len(durations) - 1, int(len(durations) * 0.99))],
        "max": durations[-1],
        "count": count,
        "incomplete": incomplete,
    }


def _produce_then_flush(obs: Any, backlog: int) -> Callable[[], Mapping[str, float]]:
    metrics = obs.pipeline.collectors["metrics"]
    counter = obs.metrics.counter("request_count")
    children = [counter.labels(tenant_id=tenant) for tenant in TENANTS]

    def round_() -> Mapping[str, float]:
        applied0 = metrics.stats().applied
        dropped0 = metrics.stats().dropped_total
        started = time.perf_counter_ns()
        for i in range(backlog):
            children[i & 7].inc()
        depth = obs.health().collectors["metrics"].queue_depth
        flush_started = time.perf_counter_ns()
        result = obs.flush()
        ended = time.perf_counter_ns()
        stats = metrics.stats()
        return {
            "flush_ns": ended - flush_started,
            "total_ns": ended - started,
            "depth": depth,
            "applied": stats.applied - applied0,
            "dropped": stats.dropped_total - dropped0,
            "complete": 1.0 if result else 0.0,
        }

    return round_


def _cold_backlog(
    observability: Callable[..., Any], settings: Callable[..., Any], backlog: int
) -> Callable[[], Mapping[str, float]]:
    def round_() -> Mapping[str, float]:
        obs = observability(
            settings(drain_at_exit=False, queue_maxsize=COLD_QUEUE_BOUND), start=False
        )
        try:
            counter = obs.metrics.counter("request_count")
            children = [counter.labels(tenant_id=tenant) for tenant in TENANTS]
            for i in range(backlog):
                children[i & 7].inc()
            depth = obs.health().collectors["metrics"].queue_depth
            started = time.perf_counter_ns()
            obs.start()
            result = obs.flush()
            ended = time.perf_counter_ns()
            stats = obs.pipeline.collectors["metrics"].stats()
        finally:
            obs.close()
        return {
            "flush_ns": ended - started,
            "depth": depth,
            "applied": stats.applied,
            "dropped": stats.dropped_total,
            "complete": 1.0 if result else 0.0,
        }

    return round_


# --- result -----------------------------------------------------------------------


def _fmt_rate(rate: float) -> str:
    return f"{fmt_float(rate / 1e3)}k"


def _result(
    rates: dict[str, Runs], idle: dict[str, Any], backlogs: Runs, dropped: int, total: int,
    backlog: int,
) -> BenchResult:
    rows = []
    problems: list[str] = []
    for config, runs in rates.items():
        for variant in ("ours", "ours_increment"):
            sent = sum(runs.values(variant, "sent"))
            applied = sum(runs.values(variant, "applied"))
            counted = sum(runs.values(variant, "counted"))
            lost = sum(runs.values(variant, "dropped"))
            if (applied != sent or counted != sent or lost
                    or min(runs.values(variant, "complete")) < 1):
                problems.append(
                    f"{config}, {variant}: sent {fmt_int(sent)}, applied {fmt_int(applied)},"
                    f" counted {fmt_int(counted)}, dropped {fmt_int(lost)}"
                )
        for anchor in ("prometheus_client", "otel-sdk-metrics"):
            anchor_sent = sum(runs.values(anchor, "sent"))
            anchor_counted = sum(runs.values(anchor, "counted"))
            if anchor_counted != anchor_sent:
                problems.append(f"{config}: {anchor} counted {fmt_int(anchor_counted)} of"
                                f" {fmt_int(anchor_sent)}")
        sent = sum(runs.values("ours", "sent"))
        applied = sum(runs.values("ours", "applied"))
        lost = sum(runs.values("ours", "dropped"))
        rows.append((
            config,
            fmt_stats(runs.stats("ours", "rate"), _fmt_rate),
            fmt_stats(runs.stats("ours", "produce_rate"), _fmt_rate),
            fmt_stats(runs.stats("ours_increment", "rate"), _fmt_rate),
            f"{fmt_int(applied)} / {fmt_int(sent)} / {fmt_int(lost)}",
            fmt_stats(runs.stats("prometheus_client", "rate"), _fmt_rate),
            fmt_stats(runs.stats("otel-sdk-metrics", "rate"), _fmt_rate),
            f"{fmt_float(_ratio(runs, 'ours', 'prometheus_client'))}x / "
            f"{fmt_float(_ratio(runs, 'ours', 'otel-sdk-metrics'))}x",
            " / ".join(runs.gc_summary(v) for v in
                       ("ours", "prometheus_client", "otel-sdk-metrics")),
        ))
    if problems:
        # Exact totals are part of the figure: a rate with a lost record is no rate.
        raise RuntimeError("throughput totals are not exact: " + "; ".join(problems))
    rate_table = Table(
        title=f"Records per second ({fmt_int(total)} records per round, {_rounds(rates)}"
              " alternating rounds)",
        headers=("producers", "ours, bound handles: until flushed (rec/s)",
                 "ours, bound handles: enqueue only (rec/s)",
                 "ours, `increment(...)`: until flushed (rec/s)",
                 "ours, bound handles: applied / sent / dropped (all rounds)",
                 "prometheus_client (rec/s)", "OTel SDK metrics (rec/s)",
                 "ours (bound) / prom, ours / OTel",
                 "GC per round, ours / prom / OTel: gen0/1/2, pause"),
        rows=tuple(rows),
        note="*until flushed* is the headline rate: from release until every record is applied"
             " (ours) or visible (anchors). *enqueue only* stops the clock when our producers"
             " return. Ratios are medians of per-round ratios; above 1x ours is faster.",
    )
    idle_stats = idle["stats"]
    cold = backlogs.stats("cold_backlog", "flush_ns")
    warm = backlogs.stats("produce_then_flush", "flush_ns")
    warm_depth = backlogs.stats("produce_then_flush", "depth")
    warm_total = backlogs.stats("produce_then_flush", "total_ns")
    flush_table = Table(
        title="Flush latency",
        headers=("case", "median (p10-p90)", "other"),
        rows=(
            (f"idle pipeline, {fmt_int(idle['count'])} flushes",
             f"{fmt_stats(idle_stats, fmt_us)} µs",
             f"p99 {fmt_us(idle['p99'])} µs, max {fmt_us(idle['max'])} µs,"
             f" incomplete {idle['incomplete']}"),
            (f"(a) produce {fmt_int(backlog)} then flush",
             f"{fmt_stats(warm, fmt_ms)} ms",
             f"queue depth at flush {fmt_stats(warm_depth, fmt_int)};"
             f" produce+flush {fmt_stats(warm_total, fmt_ms)} ms"),
            (f"(b) cold backlog of {fmt_int(backlog)}: start + flush",
             f"{fmt_stats(cold, fmt_ms)} ms",
             f"applied {fmt_int(min(backlogs.values('cold_backlog', 'applied')))} per round"
             f" (min), dropped {fmt_int(sum(backlogs.values('cold_backlog', 'dropped')))}"),
        ),
        note=f"Backlog cases: {backlogs.rounds} alternating rounds, recorded through bound"
             " handles.",
    )
    for case in ("produce_then_flush", "cold_backlog"):
        if sum(backlogs.values(case, "dropped")) or min(backlogs.values(case, "complete")) < 1:
            problems.append(f"backlog {case}: drops or incomplete flushes")
        if min(backlogs.values(case, "applied")) < backlog:
            problems.append(f"backlog {case}: fewer than {backlog} applied")
    rate16 = rates["16 threads"].stats("ours", "rate").median
    targets = [
        Target(goal="≥ 500k records/s from 16 producer threads, flushed, totals exact",
               measured=f"{_fmt_rate(rate16)} rec/s (`increment(...)`:"
                        f" {_fmt_rate(rates['16 threads'].stats('ours_increment', 'rate').median)}"
                        " rec/s)",
               met=rate16 >= TARGET_RATE_16),
        Target(goal="idle flush < 1 ms (median)",
               measured=f"{fmt_us(idle_stats.median)} µs",
               met=idle_stats.median < TARGET_IDLE_FLUSH_NS and idle["incomplete"] == 0),
        Target(goal=f"{fmt_int(backlog)}-record backlog flushed < 0.5 s (cold backlog, median)",
               measured=f"{fmt_ms(cold.median)} ms (produce-then-flush: {fmt_ms(warm.median)} ms)",
               met=cold.median < TARGET_BACKLOG_FLUSH_NS and not problems),
    ]
    notes = [
        "Accounting: every round of ours applied exactly what it sent and the counter's total"
        " grew by exactly that, nothing dropped; every anchor counted every increment."
        + ("" if not problems else " Backlog PROBLEMS: " + "; ".join(problems)),
        f"Records dropped by the pipeline over the whole benchmark: {fmt_int(dropped)}.",
        "Producers are released together by a barrier; thread creation and the event loop's"
        " creation are not timed. Tenants cycle over 8 label values on every side.",
    ]
    return BenchResult(
        name=NAME, title=TITLE,
        summary=__doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        tables=[rate_table, flush_table], targets=targets, notes=notes,
    )


def _ratio(runs: Runs, a: str, b: str) -> float:
    return summarize(
        x / y for x, y in zip(runs.values(a, "rate"), runs.values(b, "rate"), strict=True)
    ).median


def _rounds(rates: dict[str, Runs]) -> int:
    return next(iter(rates.values())).rounds
