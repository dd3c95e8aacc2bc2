"""The main job: a batch of synthetic multi-tenant risk requests, then a report.

``python -m app`` runs the instrumented LangGraph risk workflow over
``--requests`` synthetic requests spread over ``--tenants`` tenants, at most
``--concurrency`` at a time, flushes the collectors, prints a report a person
can read (per-tenant usage and cost, per-node latency percentiles, failures
by category, the slowest trace as a tree, budgets, pipeline health) and
writes into ``--out``:

* ``metrics.prom`` -- every metric in Prometheus text format 0.0.4;
* ``traces.otlp.json`` -- the finished spans as an OTLP/JSON
  ``ExportTraceServiceRequest`` (what an OpenTelemetry Collector takes);
* ``traces.json`` -- the same spans as plain JSON, one object per span.

Everything is deterministic for a given ``--seed`` except timings.
Bad options print a clear message and exit with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import structlog

from app.observability import Observability, ObservabilitySettings
from app.observability.otlp import write_otlp_json
from app.observability.redaction import structlog_redactor
from app.observability.settings import MetricsServerSettings
from app.workflows.langgraph.config import WorkflowConfig
from app.workflows.langgraph.instrumentation import InstrumentedRiskWorkflow
from app.workflows.langgraph.state import RiskRequest
from collectors.records import SpanRecord
from collectors.snapshots import HistogramSeries, MetricFamily, ValueSeries

__all__ = ("build_parser", "generate_requests", "main")

_COUNTRIES = ("US", "US", "US", "GB", "DE", "FR", "NL", "CA", "JP", "BR", "VE", "MM")
_MERCHANTS = ("retail", "retail", "groceries", "travel", "electronics", "gambling", "crypto")
_CHANNELS = ("web", "mobile", "branch", "api")
_CURRENCIES = ("USD", "USD", "EUR", "GBP")


# --- options ------------------------------------------------------------------


def _int_in(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def _float_in(low: float, high: float) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:  # also rejects NaN
            raise argparse.ArgumentTypeError(f"{text} is not between {low} and {high}")
        return value

    return parse


def _budget(text: str) -> Decimal | None:
    if text.lower() in ("none", "off", "0"):
        return None
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount in USD") from None
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive amount in USD (or 'none')")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m app``."""
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Run the instrumented risk workflow over synthetic multi-tenant requests "
        "and report latency, cost, failures and traces.",
    )
    parser.add_argument("--requests", type=_int_in(1, 1_000_000), default=200,
                        help="number of requests (default 200)")
    parser.add_argument("--tenants", type=_int_in(1, 10_000), default=5,
                        help="number of tenants (default 5)")
    parser.add_argument("--concurrency", type=_int_in(1, 10_000), default=16,
                        help="requests in flight at once (default 16)")
    parser.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=7,
                        help="seed of every synthetic draw (default 7)")
    parser.add_argument("--failure-rate", type=_float_in(0.0, 1.0), default=0.05,
                        help="share of requests that fail: split between invalid input, "
                        "policy breaches and infrastructure faults (default 0.05)")
    parser.add_argument("--out", type=Path, default=Path("risk-engine-out"),
                        help="folder for metrics.prom, traces.otlp.json, traces.json "
                        "(default ./risk-engine-out)")
    parser.add_argument("--tenant-budget", type=_budget, default=Decimal("0.015"),
                        help="cost budget per tenant in USD, 'none' for no budgets "
                        "(default 0.015, small enough that the demo crosses it)")
    parser.add_argument("--serve-metrics", type=_float_in(0.0, 86_400.0), default=0.0,
                        metavar="SECONDS",
                        help="after the batch, keep serving /metrics for this long "
                        "(default 0: do not serve)")
    parser.add_argument("--metrics-port", type=_int_in(0, 65_535), default=9464,
                        help="port of the /metrics endpoint on 127.0.0.1 (0: any free port)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


# --- the batch ------------------------------------------------------------------


def generate_requests(
    count: int, tenants: int, seed: int, failure_rate: float
) -> list[RiskRequest]:
    """Deterministic synthetic requests.

    A third of ``failure_rate`` is invalid input and a third sanctioned
    countries (policy breaches); the last third is left to the simulated
    infrastructure faults of the workflow configuration.
    """
    rng = random.Random(seed)
    requests: list[RiskRequest] = []
    for index in range(count):
        tenant = f"tenant-{rng.randrange(tenants) + 1:02d}"
        payload: dict[str, Any] = {
            "applicant_id": f"app-{rng.randrange(100_000):05d}",
            "amount": str(round(rng.lognormvariate(5.0, 1.2), 2) or 1),
            "currency": rng.choice(_CURRENCIES),
            "country": rng.choice(_COUNTRIES),
            "merchant_category": rng.choice(_MERCHANTS),
            "account_age_days": rng.randrange(0, 3_000),
            "prior_chargebacks": rng.choice((0, 0, 0, 0, 1, 2, 3)),
            "channel": rng.choice(_CHANNELS),
            "description": "card purchase",
        }
        draw = rng.random()
        if draw < failure_rate / 3:
            payload["amount"] = "-10"  # invalid input
        elif draw < 2 * failure_rate / 3:
            payload["country"] = "KP"  # sanctioned: a policy breach
        requests.append(RiskRequest(
            request_id=f"req-{seed}-{index:06d}",
            tenant_id=tenant,
            correlation_id=f"corr-{rng.getrandbits(48):012x}",
            payload=payload,
        ))
    return requests


@dataclass
class _Outcome:
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)


async def _run_batch(
    workflow: InstrumentedRiskWorkflow, requests: Sequence[RiskRequest], concurrency: int,
    progress: TextIO | None,
) -> _Outcome:
    outcome = _Outcome()
    semaphore = asyncio.Semaphore(concurrency)
    done = 0
    step = max(1, len(requests) // 10)

    async def one(request: RiskRequest) -> None:
        nonlocal done
        async with semaphore:
            try:
                await workflow.run(request)
                outcome.ok += 1
            except Exception as exc:  # counted and classified by the workflow
                outcome.failed += 1
                name = type(exc).__name__
                outcome.errors[name] = outcome.errors.get(name, 0) + 1
            done += 1
            if progress is not None and done % step == 0:
                progress.write(f"  {done}/{len(requests)} requests\n")
                progress.flush()

    await asyncio.gather(*(one(r) for r in requests))
    return outcome


# --- the report -------------------------------------------------------------------


def _series(families: Sequence[MetricFamily], name: str) -> tuple[Any, ...]:
    for family in families:
        if family.name == name:
            return family.series
    return ()


def _sum_by(series: Sequence[Any], label: str) -> dict[str, Any]:
    totals: dict[str, Any] = {}
    for item in series:
        if isinstance(item, ValueSeries):
            key = dict(item.labels).get(label, "-")
            totals[key] = totals.get(key, 0) + item.value
    return totals


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def _usd(amount: Decimal) -> str:
    return f"{amount.quantize(Decimal('0.000001')):f}"


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        out.write("  " + "  ".join(cells).rstrip() + "\n")
        if index == 0:
            out.write("  " + "  ".join("-" * w for w in widths) + "\n")


def _trace_tree(spans: Sequence[SpanRecord], out: TextIO) -> None:
    children: dict[int, list[SpanRecord]] = {}
    for span in spans:
        children.setdefault(span.parent_span_id, []).append(span)
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_span_id not in ids]

    def show(span: SpanRecord, depth: int) -> None:
        attrs = span.attrs
        extra = ""
        if span.kind == "generation":
            extra = (f"  model={attrs.get('model_version')} prompt={attrs.get('prompt_version')}"
                     f" tokens={attrs.get('input_tokens')}/{attrs.get('output_tokens')}"
                     f" cost=${attrs.get('cost_usd')}")
        if span.status == "error":
            extra += f"  ERROR {span.error_type}"
        out.write(f"  {'  ' * depth}{span.name} [{span.kind}] "
                  f"{span.duration_seconds * 1000:.3f} ms{extra}\n")
        for child in sorted(children.get(span.span_id, ()), key=lambda s: s.start_ns):
            show(child, depth + 1)

    for root in sorted(roots, key=lambda s: s.start_ns):
        show(root, 0)


def _report(
    obs: Observability, args: argparse.Namespace, outcome: _Outcome, elapsed: float,
    out: TextIO,
) -> None:
    families = obs.metrics.families()
    costs = obs.costs.snapshot()
    out.write(
        f"\nRisk engine batch: {args.requests} requests, {args.tenants} tenants, "
        f"concurrency {args.concurrency}, seed {args.seed}, failure rate {args.failure_rate}\n"
        f"  {outcome.ok} completed, {outcome.failed} failed in {elapsed:.2f} s "
        f"({args.requests / elapsed:.0f} requests/s)\n"
    )

    requests = _sum_by(_series(families, "request_count"), "tenant_id")
    approvals = _sum_by(_series(families, "approval_required_count"), "tenant_id")
    failed: dict[str, int | float] = {}
    for item in _series(families, "workflow_execution_count"):
        labels = dict(item.labels)
        if labels.get("status") == "error":
            failed[labels["tenant_id"]] = failed.get(labels["tenant_id"], 0) + item.value
    rows = [["tenant", "requests", "failed", "approvals", "tokens in", "tokens out",
             "cost USD", "budget"]]
    for tenant in sorted(requests):
        usage = costs.usage.get(tenant)
        budget = costs.budgets.get(tenant)
        budget_text = "-"
        if budget is not None:
            budget_text = f"{float(budget.fraction) * 100:.0f}% of {budget.budget}"
            if budget.over_budget:
                budget_text += " OVER"
        rows.append([
            tenant, str(requests[tenant]), str(failed.get(tenant, 0)),
            str(approvals.get(tenant, 0)),
            str(usage.input_tokens if usage else 0), str(usage.output_tokens if usage else 0),
            _usd(usage.cost if usage else Decimal(0)), budget_text,
        ])
    out.write("\nPer tenant\n")
    _table(rows, out)
    out.write(f"  total cost: ${_usd(costs.total)} over "
              f"{sum(u.generations for u in costs.usage.values())} generations\n")
    if costs.unpriced:
        out.write(f"  UNPRICED model versions: {dict(costs.unpriced)}\n")

    merged: dict[str, list[HistogramSeries]] = {}
    for item in _series(families, "node_execution_latency"):
        if isinstance(item, HistogramSeries):
            merged.setdefault(dict(item.labels)["node"], []).append(item)
    rows = [["node", "runs", "p50 ms", "p95 ms", "p99 ms"]]
    spans = obs.tracing.finished_spans()
    for node, parts in sorted(merged.items()):
        durations = sorted(s.duration_seconds for s in spans
                           if s.kind == "node" and s.name == node)
        count = sum(p.count for p in parts)
        if len(parts) == 1:
            p50, p95, p99 = parts[0].p50, parts[0].p95, parts[0].p99
        else:  # several label sets (tenants, status): percentiles of the kept spans
            p50, p95, p99 = (_quantile(durations, q) for q in (0.5, 0.95, 0.99))
        rows.append([node, str(count), _ms(p50), _ms(p95), _ms(p99)])
    out.write("\nPer node latency (node_execution_latency; percentiles over every tenant)\n")
    _table(rows, out)

    failures = _sum_by(_series(families, "failure_count"), "category")
    out.write("\nFailures by category\n")
    if failures:
        _table([["category", "count"]] + [[k, str(v)] for k, v in sorted(failures.items())], out)
    else:
        out.write("  none\n")

    roots = [s for s in spans if s.kind == "workflow"]
    if roots:
        slowest = max(roots, key=lambda s: s.duration_ns)
        attrs = slowest.attrs
        out.write(f"\nSlowest trace {slowest.trace_id_hex} (request {attrs.get('request_id')}, "
                  f"{attrs.get('tenant_id')})\n")
        _trace_tree([s for s in spans if s.trace_id == slowest.trace_id], out)

    health = obs.health()
    rows = [["collector", "state", "alive", "applied", "dropped", "errors", "queue"]]
    for name, stats in health.collectors.items():
        rows.append([name, stats.state.value, "yes" if stats.alive else "NO",
                     str(stats.applied), str(stats.dropped_total), str(stats.handler_errors),
                     str(stats.queue_depth)])
    out.write(f"\nPipeline health: {'healthy' if health.healthy else 'DEGRADED'}\n")
    _table(rows, out)
    if health.over_budget:
        out.write(f"  tenants over budget: {', '.join(health.over_budget)}\n")
    for exporter in health.exporters:
        out.write(f"  exporter {exporter.name}: {exporter.exported} spans exported, "
                  f"{exporter.failed} failed, {exporter.dropped_total} dropped\n")


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * (len(values) - 1)))]


def _write_outputs(obs: Observability, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    spans = obs.tracing.finished_spans()
    paths = {
        "metrics": out_dir / "metrics.prom",
        "otlp": out_dir / "traces.otlp.json",
        "traces": out_dir / "traces.json",
    }
    paths["metrics"].write_text(obs.metrics.render_prometheus(), encoding="utf-8")
    write_otlp_json(paths["otlp"], spans, service_name=obs.settings.service_name,
                    service_version=obs.settings.service_version)
    plain = [
        {
            "trace_id": s.trace_id_hex, "span_id": s.span_id_hex,
            "parent_span_id": s.parent_span_id_hex, "name": s.name, "kind": s.kind,
            "start_time": s.start_time.isoformat(), "end_time": s.end_time.isoformat(),
            "duration_ms": s.duration_seconds * 1000, "status": s.status,
            "error_type": s.error_type, "attributes": dict(s.attributes),
        }
        for s in spans
    ]
    paths["traces"].write_text(json.dumps(plain, indent=1), encoding="utf-8")
    return paths


def _configure_logging() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog_redactor,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the main job; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Refuse an --out that cannot be a folder before running the batch, like any bad option.
    existing = next((p for p in (args.out, *args.out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        parser.error(f"argument --out: {existing} exists and is not a folder")
    _configure_logging()
    budgets = {}
    if args.tenant_budget is not None:
        budgets = {f"tenant-{i + 1:02d}": args.tenant_budget for i in range(args.tenants)}
    settings = ObservabilitySettings(
        budgets=budgets,
        trace_buffer_size=max(10_000, min(args.requests * 12, 200_000)),
        metrics_server=MetricsServerSettings(
            enabled=args.serve_metrics > 0, port=args.metrics_port
        ),
        drain_at_exit=True,
    )
    workflow_config = WorkflowConfig(seed=args.seed, infra_failure_rate=args.failure_rate / 3)
    requests = generate_requests(args.requests, args.tenants, args.seed, args.failure_rate)
    progress = None if args.quiet or args.requests < 500 else sys.stderr
    try:
        obs = Observability(settings)
    except OSError as exc:
        sys.stderr.write(f"python -m app: cannot serve /metrics on port {args.metrics_port}: "
                         f"{exc}\n")
        return 2
    with obs:
        workflow = InstrumentedRiskWorkflow(obs, config=workflow_config)
        if progress is not None:
            progress.write(f"running {args.requests} requests...\n")
        started = time.perf_counter()
        outcome = asyncio.run(_run_batch(workflow, requests, args.concurrency, progress))
        elapsed = time.perf_counter() - started
        flushed = obs.flush(timeout=30, exporters=True)
        if not flushed:
            sys.stderr.write(f"warning: flush incomplete: {flushed}\n")
        _report(obs, args, outcome, elapsed, sys.stdout)
        try:
            paths = _write_outputs(obs, args.out)
        except OSError as exc:
            sys.stderr.write(f"python -m app: cannot write to {args.out}: {exc}\n")
            return 2
        sys.stdout.write("\nOutputs\n" + "".join(f"  {p}\n" for p in paths.values()))
        server = obs.metrics_server
        if server is not None:
            sys.stdout.write(f"\nServing {server.url} for {args.serve_metrics:g} s "
                             "(Ctrl-C to stop)\n")
            sys.stdout.flush()
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait(args.serve_metrics)
    return 0
