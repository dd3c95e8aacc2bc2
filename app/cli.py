"""The main job: a batch of synthetic multi-tenant risk requests, then a report.

``python -m app`` runs the instrumented LangGraph risk workflow over
``--requests`` synthetic requests spread over ``--tenants`` tenants, at most
``--concurrency`` at a time, flushes the collectors, writes into ``--out``:

* ``metrics.prom`` -- every metric in Prometheus text format 0.0.4;
* ``traces.otlp.json`` -- the finished spans as an OTLP/JSON
  ``ExportTraceServiceRequest`` (what an OpenTelemetry Collector takes);
* ``traces.json`` -- the same spans as plain JSON, one object per span;

then prints a report a person can read (per-tenant usage and cost, per-node
latency percentiles, failures by category, the slowest trace as a tree,
budgets, pipeline health, spans exported).

With ``--otlp-endpoint`` (or the standard ``OTEL_EXPORTER_OTLP_*``
variables) the spans also go to an OTLP/HTTP receiver while the batch runs,
binary protobuf unless ``--otlp-protocol http/json``; with ``--pushgateway``
the final metrics are pushed to a Prometheus Pushgateway, so a batch shows in
Prometheus although it ends before any scrape.

Everything is deterministic for a given ``--seed`` except timings (the
simulated model latency of ``--llm-latency`` is seeded too; the time it
takes to run is not).

Exit status: 0 when the job ran (also when stdout was closed early, as by
``| head``: the files are written first); 2 for a bad option, an ``--out``
that cannot be written (checked before the batch), a port in use or a
malformed ``OTEL_*`` variable; 1 when writing the outputs fails after the
batch, or when the ``--pushgateway`` push fails (after the files are
written); 130 after Ctrl-C, which stops the
batch, writes what was collected and prints one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import structlog
from pydantic import SecretStr

from app import ledger_cli
from app.observability import Observability, ObservabilitySettings
from app.observability.otlp import OtlpResourceOptions, resolve_resource, write_otlp_json
from app.observability.pushgateway import DEFAULT_JOB, PushgatewayError, push_metrics
from app.observability.redaction import structlog_redactor
from app.observability.settings import MetricsServerSettings
from app.workflows.langgraph.config import WorkflowConfig
from app.workflows.langgraph.instrumentation import InstrumentedRiskWorkflow
from app.workflows.langgraph.llm import MAX_LATENCY_SPREAD, SimulatedLLM
from app.workflows.langgraph.state import RiskRequest
from collectors.cost import CostSnapshot
from collectors.ledger import redact_url
from collectors.metrics import OVERFLOW_LABELS
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


#: The spread of ``--llm-latency MEDIAN`` without one: a log-normal whose p95 is
#: about 2.3 times its median, roughly what hosted model endpoints show.
_DEFAULT_LATENCY_SPREAD = 0.5


def _llm_latency(text: str) -> tuple[float, float]:
    """``MEDIAN[:SPREAD]``: seconds, and the standard deviation of the log."""
    median_text, _, spread_text = text.partition(":")
    try:
        median = float(median_text)
        spread = float(spread_text) if spread_text else _DEFAULT_LATENCY_SPREAD
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not MEDIAN[:SPREAD] (seconds, e.g. 0.2 or 0.2:0.5)"
        ) from None
    if not 0.0 <= median <= 60.0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"median {median_text} is not between 0 and 60 seconds")
    if not 0.0 <= spread <= MAX_LATENCY_SPREAD:
        raise argparse.ArgumentTypeError(
            f"spread {spread_text} is not between 0 and {MAX_LATENCY_SPREAD:g}"
        )
    return median, spread


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
    parser.add_argument("--tenant-budget", type=_budget, default=Decimal("0.018"),
                        help="cost budget per tenant in USD, 'none' for no budgets "
                        "(default 0.018: the default run has tenants on both sides of it)")
    parser.add_argument("--serve-metrics", type=_float_in(0.0, 86_400.0), default=0.0,
                        metavar="SECONDS",
                        help="after the batch, keep serving /metrics for this long "
                        "(default 0: do not serve)")
    parser.add_argument("--metrics-port", type=_int_in(0, 65_535), default=9464,
                        help="port of the /metrics endpoint on 127.0.0.1 (0: any free port)")
    parser.add_argument("--llm-latency", type=_llm_latency, default=(0.0, 0.0),
                        metavar="MEDIAN[:SPREAD]",
                        help="simulated model latency: a seeded log-normal with this median in "
                        "seconds and spread (standard deviation of the log, default "
                        f"{_DEFAULT_LATENCY_SPREAD:g}); e.g. 0.2 for a realistic run "
                        "(default 0: no waiting)")
    parser.add_argument("--max-series", type=_int_in(1, 1_000_000), default=2_000,
                        help="series kept per metric before new label sets go to its "
                        "overflow series (default 2000)")
    parser.add_argument("--otlp-endpoint", type=_http_url, metavar="URL",
                        help="export spans over OTLP/HTTP to this traces URL, e.g. "
                        "http://127.0.0.1:4318/v1/traces (default: the "
                        "OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT variables, else no export)")
    parser.add_argument("--otlp-header", type=_header, action="append", default=[],
                        metavar="KEY=VALUE",
                        help="OTLP request header, repeatable; values are never printed "
                        "(OTEL_EXPORTER_OTLP_HEADERS keeps them out of the process list)")
    parser.add_argument("--otlp-protocol", choices=("http/protobuf", "http/json"),
                        help="OTLP encoding (default: OTEL_EXPORTER_OTLP_PROTOCOL, "
                        "else http/protobuf)")
    parser.add_argument("--pushgateway", type=_http_url, metavar="URL",
                        help="after the batch, push the final metrics to this Prometheus "
                        "Pushgateway, e.g. http://127.0.0.1:9091")
    parser.add_argument("--pushgateway-job", default=DEFAULT_JOB, metavar="JOB",
                        help=f"job label of the pushed metrics (default {DEFAULT_JOB})")
    parser.add_argument("--pushgateway-instance", default=socket.gethostname(),
                        metavar="INSTANCE",
                        help="instance label of the pushed metrics (default: the host name)")
    parser.add_argument("--ledger", type=ledger_cli.ledger_url_argument, metavar="URL",
                        help="where costs, budget crossings and the audit trail are kept: "
                        "sqlite:///PATH or postgresql://user@host:port/db; a second run on "
                        "the same ledger adds to the first (default sqlite:///OUT/ledger.sqlite)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def _http_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s)://host[:port]/... URL")
    return text


def _header(text: str) -> tuple[str, str]:
    """``KEY=VALUE``; an error never quotes the value (it may be a secret)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE (the value is not shown)")
    return key, value


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
        tenant = _tenant_id(rng.randrange(tenants) + 1, tenants)
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


def _tenant_id(number: int, tenants: int) -> str:
    """``tenant-07``: numbered from 1, zero-padded so that names sort in number order."""
    return f"tenant-{number:0{max(2, len(str(tenants)))}d}"


@dataclass
class _Outcome:
    """What the batch did so far (filled while it runs, so an interrupt keeps it)."""

    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> int:
        """Requests finished, either way."""
        return self.ok + self.failed


async def _run_batch(
    workflow: InstrumentedRiskWorkflow, requests: Sequence[RiskRequest], concurrency: int,
    progress: TextIO | None, outcome: _Outcome,
) -> None:
    semaphore = asyncio.Semaphore(concurrency)
    step = max(1, len(requests) // 10)

    async def one(request: RiskRequest) -> None:
        async with semaphore:
            try:
                await workflow.run(request)
                outcome.ok += 1
            except Exception as exc:  # counted and classified by the workflow
                outcome.failed += 1
                name = type(exc).__name__
                outcome.errors[name] = outcome.errors.get(name, 0) + 1
            if progress is not None and outcome.done % step == 0:
                progress.write(f"  {outcome.done}/{len(requests)} requests\n")
                progress.flush()

    await asyncio.gather(*(one(r) for r in requests))


# --- the report -------------------------------------------------------------------


def _series(families: Sequence[MetricFamily], name: str) -> tuple[Any, ...]:
    for family in families:
        if family.name == name:
            return family.series
    return ()


#: The row of the label sets a metric folded into its overflow series (past
#: ``--max-series``): their values are exact, but no longer per label value.
_OVERFLOW = "(over the series cap)"
_OVERFLOW_TENANTS = "(other tenants, over the series cap)"
#: Tenants listed one per row; past this, the rest share one row.
_MAX_TENANT_ROWS = 25


def _label(item: ValueSeries | HistogramSeries, label: str) -> str:
    """``label``'s value in a series; the overflow series gets :data:`_OVERFLOW`."""
    if item.labels == OVERFLOW_LABELS:
        return _OVERFLOW
    return dict(item.labels).get(label, "-")


def _sum_by(series: Sequence[Any], label: str) -> dict[str, Any]:
    totals: dict[str, Any] = {}
    for item in series:
        if isinstance(item, ValueSeries):
            key = _label(item, label)
            totals[key] = totals.get(key, 0) + item.value
    return totals


def _duration(seconds: float | None) -> str:
    """A duration a person reads: ``850 µs``, ``12.4 ms``, ``1.52 s``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms" if seconds < 0.1 else f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:.0f} s"


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
        if span.kind == "generation":  # OpenTelemetry's gen_ai names, else the older ones
            def get(key: str, old: str) -> Any:
                return attrs.get(key, attrs.get(old))

            extra = (f"  model={get('gen_ai.request.model', 'model_version')}"
                     f" prompt={attrs.get('prompt_version')}"
                     f" tokens={get('gen_ai.usage.input_tokens', 'input_tokens')}"
                     f"/{get('gen_ai.usage.output_tokens', 'output_tokens')}"
                     f" cost=${get('gen_ai.usage.cost.amount', 'cost_usd')}")
        if span.status == "error":
            extra += f"  ERROR {span.error_type}"
        out.write(f"  {'  ' * depth}{span.name} [{span.kind}] "
                  f"{_duration(span.duration_seconds)}{extra}\n")
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

    out.write("\nPer tenant\n")
    _table(_tenant_rows(families, costs, outcome.failed), out)
    generations = sum(u.generations for u in costs.usage.values())
    if obs.settings.ledger_url is None:
        out.write(f"  total cost (this run): ${_usd(costs.total)} over {generations} "
                  "generations\n")
    else:  # the table above and the ledger total cover every run on the ledger
        duplicates = (f" ({costs.duplicates} duplicate generations not billed)"
                      if costs.duplicates else "")
        out.write(f"  total cost (ledger, every run so far): ${costs.total:f} over "
                  f"{generations} generations; this run: ${costs.process_total:f}{duplicates}"
                  "\n")
    if costs.unpriced:
        out.write(f"  UNPRICED model versions: {dict(costs.unpriced)}\n")

    merged: dict[str, list[HistogramSeries]] = {}
    for item in _series(families, "node_execution_latency"):
        if isinstance(item, HistogramSeries):
            merged.setdefault(_label(item, "node"), []).append(item)
    overflow = merged.pop(_OVERFLOW, [])
    rows = [["node", "runs", "p50", "p95", "p99"]]
    spans = obs.tracing.finished_spans()
    for node, parts in sorted(merged.items()):
        durations = sorted(s.duration_seconds for s in spans
                           if s.kind == "node" and s.name == node)
        count = sum(p.count for p in parts)
        if len(parts) == 1 and not overflow:
            p50, p95, p99 = parts[0].p50, parts[0].p95, parts[0].p99
        else:  # several label sets (tenants, status): percentiles of the kept spans
            p50, p95, p99 = (_quantile(durations, q) for q in (0.5, 0.95, 0.99))
        rows.append([node, str(count), _duration(p50), _duration(p95), _duration(p99)])
    for item in overflow:  # one series: runs of every node past the cap, together
        rows.append([_OVERFLOW, str(item.count), _duration(item.p50), _duration(item.p95),
                     _duration(item.p99)])
    out.write("\nPer node latency (node_execution_latency; percentiles over every tenant)\n")
    _table(rows, out)

    failures = _sum_by(_series(families, "failure_count"), "category")
    out.write("\nFailures by category\n")
    if failures:
        _table([["category", "count"]] + [[k, str(v)] for k, v in sorted(failures.items())], out)
    else:
        out.write("  none\n")

    roots = sorted((s for s in spans if s.kind == "workflow"), key=lambda s: s.start_ns)
    if roots:
        # The first request pays the process's warm-up (first imports, caches,
        # the graph's first run), and the requests started beside it wait for
        # it: they are left out, unless no other request is left.
        warm_up = roots[0]
        rest = [s for s in roots if s.start_ns >= warm_up.end_ns]
        slowest = max(rest or roots, key=lambda s: s.duration_ns)
        attrs = slowest.attrs
        waited = len(roots) - len(rest) - 1
        note = (f"left out: the first request, which warmed the process up in "
                f"{_duration(warm_up.duration_seconds)}"
                + (f", and the {waited} started while it ran" if waited else ""))
        if not rest:
            note = "every request started while the process warmed up"
        out.write(f"\nSlowest trace {slowest.trace_id_hex} (request {attrs.get('request_id')}, "
                  f"{attrs.get('tenant_id')}; {note})\n")
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
    for exporter in obs.exporter_stats():
        out.write(f"  exporter {exporter.name}: {exporter.exported} spans exported, "
                  f"{exporter.failed} failed, {exporter.timed_out} timed out, "
                  f"{exporter.dropped_total} dropped\n")


def _tenant_rows(
    families: Sequence[MetricFamily], costs: CostSnapshot, failed_total: int
) -> list[list[str]]:
    """The per-tenant table; its rows always add up to the batch's totals.

    A tenant whose series went past ``--max-series`` is counted in the
    overflow series, which has no tenant label: its counts, and the usage of
    the tenants without a row of their own, form the
    :data:`_OVERFLOW_TENANTS` row. Past :data:`_MAX_TENANT_ROWS` tenants, the
    busiest are listed and the rest share one row.
    """
    requests = _sum_by(_series(families, "request_count"), "tenant_id")
    approvals = _sum_by(_series(families, "approval_required_count"), "tenant_id")
    failed: dict[str, int | float] = {}
    for item in _series(families, "workflow_execution_count"):
        labels = dict(item.labels)
        if labels.get("status") == "error":
            failed[labels["tenant_id"]] = failed.get(labels["tenant_id"], 0) + item.value
    overflow = {name: values.pop(_OVERFLOW, 0) for name, values in
                (("requests", requests), ("approvals", approvals))}
    # The overflow series of executions mixes outcomes: its failures are the rest.
    overflow["failed"] = max(failed_total - sum(failed.values()), 0)
    tenants = sorted(requests)
    if len(tenants) > _MAX_TENANT_ROWS:
        tenants = sorted(sorted(tenants, key=lambda t: (-requests[t], t))[:_MAX_TENANT_ROWS])
    listed = set(tenants)
    rest = [t for t in requests if t not in listed]
    unlabelled = [t for t in costs.usage if t not in requests]

    def budget_text(group: Sequence[str]) -> str:
        statuses = [costs.budgets[t] for t in group if t in costs.budgets]
        if not statuses:
            return "-"
        if len(group) == 1:
            status = statuses[0]
            return f"{float(status.fraction) * 100:.0f}% of {status.budget}" + (
                " OVER" if status.over_budget else "")
        return f"{sum(s.over_budget for s in statuses)} of {len(statuses)} over"

    def row(name: str, group: Sequence[str], counts: Mapping[str, Any]) -> list[str]:
        usages = [costs.usage[t] for t in group if t in costs.usage]
        return [
            name, str(counts["requests"]), str(counts["failed"]), str(counts["approvals"]),
            str(sum(u.input_tokens for u in usages)), str(sum(u.output_tokens for u in usages)),
            _usd(sum((u.cost for u in usages), Decimal(0))), budget_text(group),
        ]

    rows = [["tenant", "requests", "failed", "approvals", "tokens in", "tokens out",
             "cost USD", "budget"]]
    for tenant in tenants:
        rows.append(row(tenant, [tenant], {"requests": requests[tenant],
                                           "failed": failed.get(tenant, 0),
                                           "approvals": approvals.get(tenant, 0)}))
    if rest:
        rows.append(row(f"({len(rest)} more tenants)", rest, {
            "requests": sum(requests[t] for t in rest),
            "failed": sum(failed.get(t, 0) for t in rest),
            "approvals": sum(approvals.get(t, 0) for t in rest),
        }))
    if overflow["requests"] or overflow["failed"] or unlabelled:
        rows.append(row(_OVERFLOW_TENANTS, unlabelled, overflow))
    return rows


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * (len(values) - 1)))]


def _write_outputs(
    obs: Observability, out_dir: Path, resource: OtlpResourceOptions
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    spans = obs.tracing.finished_spans()
    paths = {
        "metrics": out_dir / "metrics.prom",
        "otlp": out_dir / "traces.otlp.json",
        "traces": out_dir / "traces.json",
    }
    paths["metrics"].write_text(obs.metrics.render_prometheus(), encoding="utf-8")
    write_otlp_json(paths["otlp"], spans, **resource)
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


def _otlp_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The OTLP settings given on the command line (header values stay secret)."""
    given: dict[str, Any] = {}
    if args.otlp_endpoint is not None:
        given["otlp_endpoint"] = args.otlp_endpoint
    if args.otlp_protocol is not None:
        given["otlp_protocol"] = args.otlp_protocol
    if args.otlp_header:
        given["otlp_headers"] = {key: SecretStr(value) for key, value in args.otlp_header}
    return given


def _push(obs: Observability, args: argparse.Namespace) -> str | None:
    """Push the final metrics when ``--pushgateway`` is given; the error, if any."""
    if args.pushgateway is None:
        return None
    try:
        url = push_metrics(
            args.pushgateway, obs.metrics.render_prometheus(), job=args.pushgateway_job,
            grouping_key={"instance": args.pushgateway_instance},
        )
    except (PushgatewayError, ValueError) as exc:
        return str(exc)
    if not args.quiet:
        sys.stderr.write(f"pushed the final metrics to {url}\n")
    return None


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


def _check_out(parser: argparse.ArgumentParser, out: Path) -> None:
    """Refuse an ``--out`` that cannot be written before running the batch (exit 2).

    The folder is created and a probe file written and removed there: the
    only test that covers permissions, read-only mounts and pseudo file
    systems alike (``os.access`` says yes to root everywhere).
    """
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        parser.error(f"argument --out: {existing} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as exc:
        parser.error(f"argument --out: cannot write to {out}: {exc.strerror or exc}")


def _discard_stdout() -> None:
    """After ``BrokenPipeError`` on stdout: send whatever is left to ``os.devnull``.

    Python's documented way (``signal`` module, "Note on SIGPIPE"): without it,
    the interpreter's final flush of stdout raises again at exit.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture it)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the main job; returns the process exit status (see the module docstring).

    ``python -m app costs ...`` and ``python -m app audit-verify ...`` run the
    ledger tools instead (:mod:`app.ledger_cli`).
    """
    words = sys.argv[1:] if argv is None else list(argv)
    if words and words[0] in ledger_cli.COMMANDS:
        return ledger_cli.main(words)
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_out(parser, args.out)
    _configure_logging()
    try:
        return _main_job(args)
    except KeyboardInterrupt:  # a second Ctrl-C while writing or reporting
        sys.stderr.write("python -m app: interrupted\n")
        return 130


def _main_job(args: argparse.Namespace) -> int:
    budgets = {}
    if args.tenant_budget is not None:
        budgets = {_tenant_id(i + 1, args.tenants): args.tenant_budget
                   for i in range(args.tenants)}
    settings = ObservabilitySettings(
        budgets=budgets,
        trace_buffer_size=max(10_000, min(args.requests * 12, 200_000)),
        metrics_server=MetricsServerSettings(
            enabled=args.serve_metrics > 0, port=args.metrics_port
        ),
        drain_at_exit=True,
        max_series_per_metric=args.max_series,
        ledger_url=args.ledger or f"sqlite:///{(args.out / 'ledger.sqlite').absolute()}",
        # Only the options given: the rest falls back to the OTEL_* variables.
        **_otlp_settings(args),
    )
    workflow_config = WorkflowConfig(seed=args.seed, infra_failure_rate=args.failure_rate / 3)
    median, spread = args.llm_latency
    llm = SimulatedLLM(seed=args.seed, latency_seconds=median, latency_spread=spread,
                       infra_failure_rate=workflow_config.infra_failure_rate)
    requests = generate_requests(args.requests, args.tenants, args.seed, args.failure_rate)
    progress = None if args.quiet or args.requests < 500 else sys.stderr
    try:
        resource = resolve_resource(settings)
        obs = Observability(settings)
    except ValueError as exc:  # a malformed OTEL_* variable (named in the message)
        sys.stderr.write(f"python -m app: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"python -m app: cannot serve /metrics on port {args.metrics_port}: "
                         f"{exc}\n")
        return 2
    outcome = _Outcome()
    with obs:
        workflow = InstrumentedRiskWorkflow(obs, config=workflow_config, llm=llm)
        if progress is not None:
            progress.write(f"running {args.requests} requests...\n")
            progress.flush()
        started = time.perf_counter()
        interrupted = False
        try:
            asyncio.run(_run_batch(workflow, requests, args.concurrency, progress, outcome))
        except KeyboardInterrupt:  # asyncio.run cancelled the batch: keep what it did
            interrupted = True
        elapsed = time.perf_counter() - started
        flushed = obs.flush(timeout=30, exporters=True)
        if not flushed:
            sys.stderr.write(f"warning: flush incomplete: {flushed}\n")
        # The files first: a reader that stops early (| head) or a Ctrl-C loses no data.
        try:
            paths = _write_outputs(obs, args.out, resource)
        except OSError as exc:
            sys.stderr.write(f"python -m app: cannot write to {args.out}: {exc}\n")
            return 1
        if interrupted:
            sys.stderr.write(f"python -m app: interrupted after {outcome.done} of "
                             f"{args.requests} requests; what was collected is in {args.out}\n")
            return 130
        push_error = _push(obs, args)
        try:
            _report(obs, args, outcome, elapsed, sys.stdout)
            sys.stdout.write("\nOutputs\n" + "".join(f"  {p}\n" for p in paths.values()))
            if settings.ledger_url is not None:
                sys.stdout.write(f"  ledger: {redact_url(settings.ledger_url)}\n")
            server = obs.metrics_server
            if server is not None:
                sys.stdout.write(f"\nServing {server.url} for {args.serve_metrics:g} s "
                                 "(Ctrl-C to stop)\n")
            sys.stdout.flush()
        except BrokenPipeError:  # the reader has gone (| head): the job itself is done
            _discard_stdout()
        unexported = sum(e.submitted - e.exported for e in obs.exporter_stats())
        if unexported:
            sys.stderr.write(f"warning: {unexported} spans were not exported "
                             "(see the exporter lines of the report)\n")
        if push_error is not None:
            sys.stderr.write(f"python -m app: cannot push metrics to the Pushgateway: "
                             f"{push_error}\n")
            return 1
        server = obs.metrics_server
        if server is not None:
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait(args.serve_metrics)
    return 0
