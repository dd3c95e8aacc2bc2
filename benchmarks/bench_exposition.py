"""``exposition``: rendering 2,000 series in the Prometheus text format (0.0.4).

Both sides hold the same families, label sets, values and histogram buckets:
1,000 ``request_count`` series (by tenant), 400 ``token_usage`` series, 200
``workflow_execution_count`` series, 200 ``node_execution_latency`` and 200
``request_latency`` histograms (16 buckets + ``+Inf``, ten observations
each), i.e. 2,000 catalog series, plus our pipeline's own ``observability_*``
families, which the prometheus_client registry mirrors from a snapshot (so
both texts have the same series). prometheus_client's ``_created`` samples are
switched off (``disable_created_metrics()``) so that both texts carry the same
lines; the run checks that the two texts have the same sample names and label
sets.

* **ours, snapshot + render**: ``obs.metrics.render_prometheus()``: the
  metrics collector thread builds an immutable snapshot (including the
  p50/p95/p99 quantile sketches), the cost and trace collectors answer their
  queries, and the text is rendered;
* **ours, render only**: ``render_text(families)`` over a snapshot taken once
  (what the renderer itself costs); its label-set cache is warm, as it is from
  the second scrape on. A third row clears that cache before every render
  (a first scrape);
* **prometheus_client**: ``generate_latest(registry)``.
"""

from __future__ import annotations

import re
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
    fmt_int,
    fmt_ms,
    fmt_ratio,
    fmt_stats,
    summarize,
)

NAME = "exposition"
TITLE = "Prometheus text exposition of 2,000 series"
ORDER = 50

#: Target: ours at most this fraction of prometheus_client's time.
TARGET_FRACTION = 0.5

NODES = tuple(f"node_{i}" for i in range(8))
WORKFLOW = "risk_assessment"
MODEL = "risk-llm-v2"
#: Observations per histogram series.
OBSERVATIONS = tuple(0.0003 * 1.9**k for k in range(10))


def run(quick: bool) -> BenchResult:
    """Measure rendering 2,000 series (see the module docstring)."""
    import prometheus_client.metrics as prom_metrics
    from prometheus_client import generate_latest

    from app.observability import Observability, ObservabilitySettings, exposition

    renders = 1 if quick else 5
    rounds = 2 if quick else 9
    created = prom_metrics._use_created
    prom_metrics.disable_created_metrics()  # type: ignore[no-untyped-call]
    obs = Observability(ObservabilitySettings(drain_at_exit=False))
    try:
        registry, series = _populate(obs)
        families = obs.metrics.families()
        _mirror_pipeline_families(registry, families)
        ours_text = obs.metrics.render_prometheus()
        prom_text = generate_latest(registry).decode()
        same, ours_keys, prom_keys = _compare(ours_text, prom_text)

        def timed(render: Callable[[], object], before: Callable[[], None] | None = None
                  ) -> Callable[[], Mapping[str, float]]:
            def round_() -> Mapping[str, float]:
                total = 0
                for _ in range(renders):
                    if before is not None:
                        before()
                    started = time.perf_counter_ns()
                    render()
                    total += time.perf_counter_ns() - started
                return {"ns": total / renders}

            return round_

        runs = alternate(
            [
                Variant("ours_full", timed(obs.metrics.render_prometheus)),
                Variant("ours_render", timed(lambda: exposition.render_text(families))),
                Variant("ours_render_cold", timed(
                    lambda: exposition.render_text(families),
                    before=exposition._label_body.cache_clear,
                )),
                Variant("prometheus_client", timed(lambda: generate_latest(registry))),
            ],
            rounds=rounds,
        )
    finally:
        obs.close()
        if created:
            prom_metrics.enable_created_metrics()  # type: ignore[no-untyped-call]
    return _result(runs, renders, series, same, ours_keys, prom_keys,
                   len(ours_text), len(prom_text))


def _populate(obs: Any) -> tuple[Any, int]:
    """Record the same series into our container and a prometheus_client registry."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    catalog = obs.metrics.catalog
    registry = CollectorRegistry()

    def prom_counter(name: str, labels: tuple[str, ...]) -> Any:
        spec = catalog[name]
        return Counter(spec.prom_name, spec.help, sorted(labels), registry=registry)

    def prom_histogram(name: str, labels: tuple[str, ...]) -> Any:
        spec = catalog[name]
        return Histogram(spec.prom_name, spec.help, sorted(labels), buckets=spec.buckets,
                         registry=registry)

    series = 0
    increment, observe = obs.metrics.increment, obs.metrics.observe

    requests = prom_counter("request_count", ("tenant_id",))
    for t in range(1_000):
        tenant, amount = f"tenant-{t:04d}", t % 17 + 1
        increment("request_count", amount, tenant_id=tenant)
        requests.labels(tenant_id=tenant).inc(amount)
        series += 1
    tokens = prom_counter("token_usage", ("tenant_id", "model_version", "direction"))
    for t in range(200):
        for direction in ("input", "output"):
            tenant, amount = f"tenant-{t:04d}", 100 * (t % 7 + 1)
            increment("token_usage", amount, tenant_id=tenant, model_version=MODEL,
                      direction=direction)
            tokens.labels(tenant_id=tenant, model_version=MODEL, direction=direction).inc(amount)
            series += 1
    workflows = prom_counter("workflow_execution_count", ("workflow", "tenant_id", "status"))
    request_latency = prom_histogram("request_latency", ("tenant_id", "workflow", "status"))
    for t in range(100):
        for status in ("ok", "error"):
            tenant = f"tenant-{t:04d}"
            increment("workflow_execution_count", t % 5 + 1, workflow=WORKFLOW,
                      tenant_id=tenant, status=status)
            workflows.labels(workflow=WORKFLOW, tenant_id=tenant, status=status).inc(t % 5 + 1)
            child = request_latency.labels(tenant_id=tenant, workflow=WORKFLOW, status=status)
            for value in OBSERVATIONS:
                seconds = value * (1 + t % 3)
                observe("request_latency", seconds, tenant_id=tenant, workflow=WORKFLOW,
                        status=status)
                child.observe(seconds)
            series += 2
    node_latency = prom_histogram("node_execution_latency", ("node", "tenant_id", "status"))
    for node in NODES:
        for t in range(25):
            tenant = f"tenant-{t:04d}"
            child = node_latency.labels(node=node, tenant_id=tenant, status="ok")
            for value in OBSERVATIONS:
                observe("node_execution_latency", value, node=node, tenant_id=tenant,
                        status="ok")
                child.observe(value)
            series += 1
    obs.flush()
    return registry, series


def _mirror_pipeline_families(registry: Any, families: tuple[Any, ...]) -> None:
    """Copy our ``observability_*`` / cost families into the registry, from a snapshot."""
    from prometheus_client import Counter, Gauge

    from app.observability.catalog import PIPELINE_METRICS

    pipeline_names = {spec.name for spec in PIPELINE_METRICS.values()}
    for family in families:
        spec = family.spec
        if spec.name not in pipeline_names:
            continue
        labels = sorted(spec.label_names)
        if spec.type == "counter":
            counter = Counter(spec.prom_name, spec.help, labels, registry=registry)
            for item in family.series:
                (counter.labels(**dict(item.labels)) if item.labels else counter).inc(
                    float(item.value)
                )
        else:
            gauge = Gauge(spec.prom_name, spec.help, labels, registry=registry)
            for item in family.series:
                (gauge.labels(**dict(item.labels)) if item.labels else gauge).set(
                    float(item.value)
                )


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _sample_keys(text: str) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    """Sample lines without their values: (name, label set), label order ignored."""
    keys = set()
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        head = line.rsplit(" ", 1)[0]
        name, _, labels = head.partition("{")
        keys.add((name, frozenset(_LABEL.findall(labels))))
    return keys


def _compare(ours: str, prom: str) -> tuple[bool, int, int]:
    ours_keys, prom_keys = _sample_keys(ours), _sample_keys(prom)
    return ours_keys == prom_keys, len(ours_keys), len(prom_keys)


def _result(
    runs: Runs, renders: int, series: int, same: bool, ours_lines: int, prom_lines: int,
    ours_bytes: int, prom_bytes: int,
) -> BenchResult:
    prom = runs.stats("prometheus_client", "ns")
    labels = {
        "ours_full": "ours: snapshot + render (`render_prometheus()`)",
        "ours_render": "ours: render only (`render_text(families)`), warm label cache",
        "ours_render_cold": "ours: render only, label cache cleared before each render",
        "prometheus_client": "prometheus_client `generate_latest(registry)`",
    }
    fractions = {
        variant: summarize(
            o / p for o, p in zip(runs.values(variant, "ns"),
                                  runs.values("prometheus_client", "ns"), strict=True)
        )
        for variant in ("ours_full", "ours_render", "ours_render_cold")
    }
    rows = []
    for variant in ("ours_full", "ours_render", "ours_render_cold", "prometheus_client"):
        stats = runs.stats(variant, "ns")
        rows.append((
            labels[variant],
            fmt_stats(stats, fmt_ms),
            "1x" if variant == "prometheus_client" else fmt_stats(fractions[variant], fmt_ratio),
            fmt_ratio(prom.median / stats.median),
            runs.gc_summary(variant),
        ))
    table = Table(
        title=f"One scrape of {fmt_int(series)} catalog series (mean of {renders} renders per"
              f" round, {runs.rounds} alternating rounds)",
        headers=("variant", "time per scrape (ms)", "ours / prometheus_client",
                 "speed-up", "GC per round: gen0/1/2, pause"),
        rows=tuple(rows),
        note=f"Texts: ours {fmt_int(ours_bytes)} bytes / {fmt_int(ours_lines)} sample lines,"
             f" prometheus_client {fmt_int(prom_bytes)} bytes / {fmt_int(prom_lines)} sample"
             f" lines; same sample names and label sets (label order aside):"
             f" {'yes' if same else '**NO**'}.",
    )
    full = fractions["ours_full"].median
    render_only = fractions["ours_render"].median
    met = full <= TARGET_FRACTION and same
    notes = [
        "The snapshot+render row is the real scrape path (what `/metrics` serves) and the one"
        " the target is checked on; render only isolates the text formatting."
    ]
    if not met and render_only <= TARGET_FRACTION:
        notes.append(
            f"Render only meets the target ({fmt_ratio(render_only)}); the snapshot (quantile"
            " sketches, collector round trips) is what pushes the full scrape over it."
        )
    return BenchResult(
        name=NAME, title=TITLE,
        summary=__doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        tables=[table],
        targets=[Target(
            goal="ours (snapshot + render) ≤ 0.5x prometheus_client's `generate_latest`",
            measured=f"{fmt_ratio(full)} ({fmt_ms(runs.stats('ours_full', 'ns').median)} ms vs"
                     f" {fmt_ms(prom.median)} ms; render only {fmt_ratio(render_only)})",
            met=met,
        )],
        notes=notes,
    )
