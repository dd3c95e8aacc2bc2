"""A batch run reaches a real Prometheus through a real Pushgateway.

Debian's ``prometheus-pushgateway`` (no persistence: nothing outlives the
test) and ``prometheus`` run on loopback with free ports and temporary
folders (``make tools`` installs both). The main job runs as ``python -m app
--pushgateway URL``, exactly as a person runs it; then Prometheus scrapes the
gateway with ``honor_labels: true`` and must answer the batch's per-tenant
cost, as the run's report and its ``metrics.prom`` give it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration._services import (
    REPO,
    StartPrometheus,
    StartService,
    clean_environment,
    free_port,
    report_rows,
    require_binary,
)

JOB = "risk_engine_batch"
INSTANCE = "ci-batch-1"
#: The subprocess runs a small batch; well below the test's own timeout.
RUN_TIMEOUT_SECONDS = 90


def _run_main_job(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=REPO, env=clean_environment(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, encoding="utf-8",
        timeout=RUN_TIMEOUT_SECONDS, check=False,
    )


def _report_costs(report: str) -> dict[str, float]:
    """Per-tenant cost from the report's "Per tenant" table (the "cost USD" column)."""
    return {row["tenant"]: float(row["cost USD"]) for row in report_rows(report)
            if row["tenant"].startswith("tenant-")}


def _file_costs(metrics_prom: Path) -> dict[str, float]:
    """Per-tenant cost from ``metrics.prom`` (what the job pushed), summed over models."""
    costs: dict[str, float] = {}
    text = metrics_prom.read_text(encoding="utf-8")
    for family in text_string_to_metric_families(text):
        if family.name == "risk_engine_cost_usd":
            for sample in family.samples:
                if sample.name == "risk_engine_cost_usd_total":
                    tenant = sample.labels["tenant_id"]
                    costs[tenant] = costs.get(tenant, 0.0) + sample.value
    return costs


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_pushed_batch_shows_its_per_tenant_cost_in_prometheus(
    tmp_path: Path, start_service: StartService, start_prometheus: StartPrometheus
) -> None:
    binary = require_binary("prometheus-pushgateway",
                            "apt-get install -y prometheus-pushgateway")
    port = free_port()
    gateway = start_service(
        "pushgateway",
        [binary, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        port=port, deadline_seconds=30.0,
    )
    gateway.poll("a ready pushgateway", lambda: gateway.get("/-/ready") or None)

    out = tmp_path / "out"
    run = _run_main_job("--requests", "40", "--tenants", "3", "--seed", "5",
                        "--out", str(out), "--pushgateway", gateway.base_url,
                        "--pushgateway-instance", INSTANCE)
    assert run.returncode == 0, run.stderr
    pushed_to = f"{gateway.base_url}/metrics/job/{JOB}/instance/{INSTANCE}"
    assert f"pushed the final metrics to {pushed_to}\n" in run.stderr
    report_costs = _report_costs(run.stdout)
    file_costs = _file_costs(out / "metrics.prom")
    assert set(report_costs) == set(file_costs) and len(file_costs) == 3
    assert all(cost > 0 for cost in file_costs.values())
    assert file_costs == pytest.approx(report_costs, abs=1e-6)  # the report rounds to 1e-6

    prometheus = start_prometheus(f"127.0.0.1:{port}", job="pushgateway", honor_labels=True,
                                  deadline_seconds=40.0)
    seen = prometheus.settle(
        f'sum by (tenant_id) (risk_engine_cost_usd_total{{job="{JOB}",instance="{INSTANCE}"}})',
        "tenant_id", lambda v: v == pytest.approx(file_costs, rel=1e-12),
    )
    assert seen == pytest.approx(file_costs, rel=1e-12)
    # The gateway's own bookkeeping: when the batch pushed, and that it succeeded.
    pushed = prometheus.settle(
        f'push_time_seconds{{job="{JOB}",instance="{INSTANCE}"}} > 0', "job",
        lambda v: bool(v))
    assert set(pushed) == {JOB}
    failures = prometheus.settle(
        f'push_failure_time_seconds{{job="{JOB}",instance="{INSTANCE}"}}', "job",
        lambda v: bool(v))
    assert failures == {JOB: 0.0}


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_failed_push_is_a_clear_error_after_the_files_are_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dead = f"http://127.0.0.1:{free_port()}"

    run = _run_main_job("--requests", "5", "--tenants", "2", "--quiet", "--out", str(out),
                        "--pushgateway", dead)

    assert run.returncode == 1
    assert f"python -m app: cannot push metrics to the Pushgateway: cannot reach {dead}/" in (
        run.stderr)
    assert "Per tenant" in run.stdout  # the report is still printed
    assert {p.name for p in out.iterdir()} >= {"metrics.prom", "traces.otlp.json",
                                              "traces.json"}
