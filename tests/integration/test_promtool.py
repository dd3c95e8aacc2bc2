"""promtool checks our exposition text, alert rules and dashboard queries.

promtool comes from Debian's ``prometheus`` package; a missing binary fails the
tests (CI installs it), it never skips them.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from app.observability.catalog import PIPELINE_METRICS, build_catalog
from app.observability.exposition import render_text
from collectors.snapshots import HistogramSeries, MetricFamily, MetricSpec, ValueSeries

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "ops" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "ops" / "prometheus" / "alerts_test.yml"
DASHBOARD = REPO / "ops" / "grafana" / "risk-engine-dashboard.json"

EXPECTED_ALERTS = {
    "CostSpike", "TenantBudgetExceeded", "HighErrorRate",
    "NodeLatencyP95High", "RecordsDropped", "TargetDown", "CollectorDown", "SpanExportFailing",
}
REQUIRED_IN_EACH_ALERT = (
    r"^ +for: \d+[smhd]$",
    r"^ +severity: (?:warning|critical)$",
    r"^ +summary: \S",
    r"^ +description: \S",
)
METRIC_NAME = re.compile(r"\b(?:risk_engine|observability)_[a-z0-9_]+\b")


def run_promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: install Debian's `prometheus` package "
            "(apt-get install -y prometheus); these tests never skip",
            pytrace=False,
        )
    return subprocess.run(
        [path, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )


def all_specs() -> list[MetricSpec]:
    return [*build_catalog().values(), *PIPELINE_METRICS.values()]


def catalog_snapshot() -> list[MetricFamily]:
    """Every catalog and pipeline family with two series each (one of them nasty)."""
    families = []
    for spec in all_specs():
        label_sets = [
            tuple((name, f"{name}-1") for name in spec.label_names),
            tuple((name, f'Zürich "q" \\ \n{name}') for name in spec.label_names),
        ]
        series: list[ValueSeries | HistogramSeries] = []
        for i, labels in enumerate(label_sets):
            if spec.type == "histogram":
                bounds = (*spec.buckets, math.inf)
                series.append(HistogramSeries(
                    labels=labels, count=i + 1, sum=0.1 * (i + 1),
                    buckets=tuple((b, i + 1) for b in bounds), p50=0.1, p95=0.1, p99=0.1,
                ))
            else:
                value = Decimal("0.125") if spec.unit == "usd" else i + 1
                series.append(ValueSeries(labels=labels, value=value))
        if not spec.label_names:
            series = series[:1]
        families.append(MetricFamily(spec=spec, series=tuple(series)))
    return families


def exposed_names() -> set[str]:
    """Every sample name the exposition renders for the catalog."""
    names: set[str] = set()
    for spec in all_specs():
        if spec.type == "counter":
            names.add(spec.prom_name + "_total")
        elif spec.type == "gauge":
            names.add(spec.prom_name)
        else:
            names.update(spec.prom_name + s for s in ("_bucket", "_sum", "_count"))
    return names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
    ]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


# --- exposition -------------------------------------------------------------


@pytest.mark.integration
def test_promtool_accepts_the_rendered_catalog_without_lint_problems() -> None:
    families = catalog_snapshot()
    result = run_promtool("check", "metrics", stdin=render_text(families))

    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stderr == ""
    assert result.stdout == ""
    assert len(families) == len(all_specs()) >= 19


@pytest.mark.integration
def test_promtool_lint_is_live() -> None:
    """A non-conventional name is reported, so a clean run above means something."""
    spec = MetricSpec(
        name="bad", prom_name="risk_engine_latency_milliseconds", type="gauge",
        help="Latency.", label_names=(),
    )
    text = render_text([MetricFamily(spec=spec, series=(ValueSeries(labels=(), value=3),))])
    result = run_promtool("check", "metrics", stdin=text)

    assert result.returncode != 0
    assert 'use base unit "seconds" instead of "milliseconds"' in result.stderr + result.stdout


# --- alert rules ------------------------------------------------------------


@pytest.mark.integration
def test_promtool_check_rules_accepts_the_alerts() -> None:
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


@pytest.mark.integration
def test_promtool_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stderr + result.stdout
    assert "SUCCESS" in result.stdout


def test_every_alert_has_for_severity_and_annotations() -> None:
    text = ALERTS.read_text(encoding="utf-8")
    assert "- name: risk-engine\n" in text
    chunks = text.split("- alert: ")[1:]

    assert {chunk.split("\n", 1)[0].strip() for chunk in chunks} == EXPECTED_ALERTS
    for chunk in chunks:
        name = chunk.split("\n", 1)[0]
        for pattern in REQUIRED_IN_EACH_ALERT:
            assert re.search(pattern, chunk, re.MULTILINE), (name, pattern)


def test_every_alert_is_exercised_by_the_rule_tests() -> None:
    text = ALERTS_TEST.read_text(encoding="utf-8")
    fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels:", text))
    quiet = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts: \[\]", text))
    assert fired == EXPECTED_ALERTS
    assert quiet == EXPECTED_ALERTS


# --- dashboard --------------------------------------------------------------


@pytest.mark.integration
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every panel query, wrapped as a recording rule."""
    grafana_vars = {"$__rate_interval": "5m", "$__range": "1h", "$tenant": ".*"}
    rules: list[dict[str, Any]] = []
    for i, expr in enumerate(dashboard_exprs()):
        for var, value in grafana_vars.items():
            expr = expr.replace(var, value)
        if expr.startswith("label_values("):  # a Grafana function, not PromQL
            expr = expr.removeprefix("label_values(").rsplit(",", 1)[0]
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = run_promtool("check", "rules", str(rules_file))

    assert result.returncode == 0, result.stderr + result.stdout
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_dashboard_has_the_expected_panels_and_datasource_input() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]

    assert dashboard["schemaVersion"] == 39
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for p in panels)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    exprs = "\n".join(dashboard_exprs())
    for metric in (
        "risk_engine_cost_usd_total", "risk_engine_requests_total", "risk_engine_failures_total",
        "risk_engine_node_execution_latency_seconds_bucket", "risk_engine_approvals_required_total",
        "observability_records_dropped_total", "observability_queue_depth",
        "observability_collector_up", "observability_spans_exported_total",
    ):
        assert metric in exprs, metric
    assert "histogram_quantile(0.95, sum by (le, node)" in exprs


@pytest.mark.parametrize("path", [ALERTS, ALERTS_TEST, DASHBOARD], ids=lambda p: p.name)
def test_ops_files_only_query_metrics_the_catalog_exports(path: Path) -> None:
    # Dashboard: queries only, since panel descriptions may name a histogram family.
    text = "\n".join(dashboard_exprs()) if path == DASHBOARD else path.read_text(encoding="utf-8")
    referenced = set(METRIC_NAME.findall(text))
    assert referenced, path
    assert referenced <= exposed_names(), sorted(referenced - exposed_names())
