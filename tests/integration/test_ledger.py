"""The ledger against the real engines: SQLite files and a real PostgreSQL server.

Each test runs on both engines (``ledger_url`` is parametrised): a SQLite
file in a temporary folder, and a fresh database on a PostgreSQL server that
the module starts with ``initdb``/``pg_ctl`` (:mod:`tests._postgres`).
Records are synchronised with ``flush()``; other processes are waited for
with deadlines.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from app import ledger_cli
from app.observability import Observability, ObservabilitySettings
from collectors.ledger import LedgerState, open_ledger
from tests._postgres import PostgresServer, postgres_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 90.0


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    server: PostgresServer = request.getfixturevalue("pg")
    return server.new_database()


@pytest.fixture
def open_obs() -> Iterator[Callable[..., Observability]]:
    made: list[Observability] = []

    def factory(url: str, **overrides: object) -> Observability:
        overrides.setdefault("drain_at_exit", False)
        obs = Observability(ObservabilitySettings(ledger_url=url, **overrides))  # type: ignore[arg-type]
        made.append(obs)
        return obs

    yield factory
    for obs in made:
        obs.close(timeout=10.0)


def _cost(obs: Observability, tenant: str, amount: str, event_id: str) -> None:
    obs.costs.add_cost(tenant_id=tenant, model_version="risk-llm-v2", input_tokens=10,
                       output_tokens=5, cost=Decimal(amount), event_id=event_id)


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = ledger_cli.main(list(argv), out=out)
    return status, out.getvalue()


def test_totals_survive_a_restart_and_a_duplicate_is_billed_once(
    ledger_url: str, open_obs: Callable[..., Observability]
) -> None:
    first = open_obs(ledger_url)
    _cost(first, "t1", "0.10", "e1")
    _cost(first, "t2", "0.25", "e2")
    _cost(first, "t1", "0.10", "e1")  # the same generation logged twice in one process
    assert first.flush()
    assert first.costs.get_tenant_cost("t1") == Decimal("0.10")
    assert first.costs.snapshot().duplicates == 1
    first.close()

    second = open_obs(ledger_url)  # a restart: totals come back from the ledger
    assert second.costs.get_tenant_cost("t1") == Decimal("0.10")
    assert second.costs.get_total_cost() == Decimal("0.35")
    _cost(second, "t1", "0.10", "e1")  # logged again by a later run: still billed once
    _cost(second, "t1", "0.05", "e3")
    assert second.flush()
    snapshot = second.costs.snapshot()
    assert snapshot.by_tenant["t1"] == Decimal("0.15")
    assert snapshot.total == Decimal("0.40")
    assert snapshot.process_total == Decimal("0.05")
    assert snapshot.duplicates == 1
    (cost_ledger,) = [s for s in second.health().ledgers if s.collector == "cost"]
    assert cost_ledger.duplicates == 1 and cost_ledger.lag == 0
    assert cost_ledger.state is LedgerState.UP
    second.close()
    status, text = _cli("costs", "--ledger", ledger_url, "--json")
    assert status == 0
    assert text.strip() == '{"total": "0.40", "tenants": {"t1": "0.15", "t2": "0.25"}}'


def test_budget_crossings_are_recorded_once_and_remaining_budget_answers(
    ledger_url: str, open_obs: Callable[..., Observability]
) -> None:
    budgets = {"t1": Decimal("1.00")}
    first = open_obs(ledger_url, budgets=budgets, budget_period="month")
    _cost(first, "t1", "0.85", "a1")
    assert first.flush()
    assert first.costs.remaining_budget("t1") == Decimal("0.15")
    assert first.costs.remaining_budget("t2") is None
    assert len(first.audit.events(event="budget.threshold_crossed")) == 1
    first.close()
    second = open_obs(ledger_url, budgets=budgets, budget_period="month")
    _cost(second, "t1", "0.10", "a2")  # 0.95: the 0.8 crossing is not recorded again
    assert second.flush()
    assert second.audit.events(event="budget.threshold_crossed") == ()
    _cost(second, "t1", "0.10", "a3")
    assert second.flush()
    (crossing,) = second.audit.events(event="budget.threshold_crossed")
    assert crossing.data["threshold"] == "1.0"
    assert second.costs.remaining_budget("t1") == Decimal(0)
    assert second.costs.budget_status("t1").thresholds_crossed == (  # type: ignore[union-attr]
        Decimal("0.8"), Decimal("1.0"))


def test_a_changed_audit_row_is_detected(
    ledger_url: str, open_obs: Callable[..., Observability]
) -> None:
    obs = open_obs(ledger_url)
    for index in range(3):
        obs.audit.log("decision.made", tenant_id="t1", decision="approve", index=index)
        obs.audit.log("decision.made", tenant_id="t2", decision="review", index=index)
    obs.audit.log("system.started", version="1")  # no tenant: a chain of its own
    assert obs.flush()
    obs.close()
    assert _cli("audit-verify", "--ledger", ledger_url) == (
        0, "audit trail intact: 7 rows verified\n")

    update = ("UPDATE audit_events SET fields = replace(fields, 'review', 'approve')"
              " WHERE chain = 't2' AND seq = 2")
    if ledger_url.startswith("sqlite"):
        db = sqlite3.connect(ledger_url.removeprefix("sqlite:///"))
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(update)
        db.execute("DROP TRIGGER audit_events_no_update")  # someone with write access
        db.execute(update)
        db.commit()
        db.close()
    else:
        with psycopg.connect(ledger_url, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(update)
            conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
            conn.execute(update)
    status, text = _cli("audit-verify", "--ledger", ledger_url)
    assert status == 1
    assert "tenant 't2'" in text and "(position 2)" in text and "does not match" in text


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Callable[[str, str, int], subprocess.Popen[str]]]:
    """Starts ``tests._ledger_worker`` processes (stderr to a file); kills any left."""
    started: list[subprocess.Popen[str]] = []

    def start(url: str, prefix: str, count: int) -> subprocess.Popen[str]:
        stderr = (tmp_path / f"{prefix}.stderr").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "tests._ledger_worker", url, prefix, str(count)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        stderr.close()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=DEADLINE)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.timeout(180)
def test_two_processes_add_up_exactly(
    ledger_url: str, worker: Callable[[str, str, int], subprocess.Popen[str]], tmp_path: Path
) -> None:
    workers = [worker(ledger_url, f"p{n}", 400) for n in range(2)]
    for n, process in enumerate(workers):
        process.wait(timeout=DEADLINE)
        err = (tmp_path / f"p{n}.stderr").read_text()
        assert process.returncode == 0, err
        assert "locked" not in err
    ledger = open_ledger(ledger_url)
    try:
        totals = ledger.load_totals("all")
        assert totals.total == Decimal("0.800")
        assert dict(totals.period_spend) == {"t1": Decimal("0.400"), "t2": Decimal("0.400")}
        # 0.05 budgets: each threshold crossed once per tenant, whoever crossed it.
        assert totals.crossed == {(t, Decimal(x)) for t in ("t1", "t2") for x in ("0.8", "1")}
        assert len(ledger.usage_rows()) == 800
        assert ledger.verify_audit() == (800 + 4, None)
    finally:
        ledger.close()


@pytest.mark.timeout(180)
def test_sigkill_mid_batch_keeps_every_flushed_record(
    ledger_url: str, worker: Callable[[str, str, int], subprocess.Popen[str]], tmp_path: Path
) -> None:
    process = worker(ledger_url, "k", 1_000_000)
    assert process.stdout is not None
    flushed = 0
    deadline = time.monotonic() + DEADLINE
    while flushed < 500 and time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line, (tmp_path / "k.stderr").read_text()
        flushed = int(line.split()[1])
    os.kill(process.pid, signal.SIGKILL)  # while it records and commits the next batches
    process.wait(timeout=DEADLINE)
    assert process.returncode == -signal.SIGKILL
    assert flushed >= 500
    ledger = open_ledger(ledger_url)  # opens cleanly after the crash
    try:
        ids = {row.event_id for row in ledger.usage_rows()}
        assert {f"k-{i}" for i in range(1, flushed + 1)} <= ids
        checked, broken = ledger.verify_audit()
        assert broken is None and checked >= flushed
    finally:
        ledger.close()
    assert _cli("audit-verify", "--ledger", ledger_url)[0] == 0


@pytest.mark.timeout(120)
def test_postgres_going_away_buffers_retries_and_counts_drops() -> None:
    with postgres_server() as server:
        url = server.new_database()
        obs = Observability(ObservabilitySettings(
            ledger_url=url, drain_at_exit=False, ledger_buffer_size=100,
            ledger_retry_max_seconds=0.5, flush_timeout_seconds=5.0,
        ))
        try:
            _cost(obs, "t1", "0.01", "before")
            assert obs.flush()
            server.stop()
            for index in range(150):  # 100 fit in the buffer, 50 are dropped from the ledger
                _cost(obs, "t1", "0.01", f"down-{index}")
            started = time.monotonic()
            result = obs.flush(timeout=3.0)
            assert not result and time.monotonic() - started < 4.0
            health = obs.health()
            assert health.healthy  # the pipeline runs on; the ledger shows what is wrong
            (cost,) = [s for s in health.ledgers if s.collector == "cost"]
            assert cost.state is LedgerState.DOWN
            assert cost.lag == 100 and cost.dropped == 50 and cost.errors >= 1
            rows = {
                s["labels"]["outcome"]: s["value"]
                for s in obs.metrics.export_metrics()["ledger_rows"]["series"]
                if s["labels"]["collector"] == "cost"
            }
            assert rows["dropped"] == 50  # visible as a metric; the records' accounting is exact
            assert health.collectors["cost"].dropped_total == 0
            assert obs.costs.get_tenant_cost("t1") == Decimal("1.51")  # memory has them all
            server.start()
            deadline = time.monotonic() + DEADLINE
            while not obs.flush(timeout=5.0):  # the retries land the buffered rows
                assert time.monotonic() < deadline
                threading.Event().wait(0.2)
            (cost,) = [s for s in obs.health().ledgers if s.collector == "cost"]
            assert cost.state is LedgerState.UP and cost.lag == 0
        finally:
            obs.close(timeout=10.0)
        ledger = open_ledger(url)
        try:
            ids = {row.event_id for row in ledger.usage_rows()}
            assert ids == {"before"} | {f"down-{i}" for i in range(100)}
        finally:
            ledger.close()


@pytest.mark.timeout(300)
def test_two_runs_of_the_main_job_add_up_in_the_ledger(ledger_url: str, tmp_path: Path) -> None:
    """A second batch on the same ledger adds to the first; ``costs --json`` says the same."""
    reported: list[tuple[Decimal, Decimal]] = []
    for seed in (1, 2):
        done = subprocess.run(
            [sys.executable, "-m", "app", "--requests", "40", "--tenants", "3",
             "--seed", str(seed), "--out", str(tmp_path / f"run-{seed}"),
             "--ledger", ledger_url, "--quiet"],
            cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False,
        )
        assert done.returncode == 0, done.stderr
        found = re.search(
            r"total cost \(ledger, every run so far\): \$([0-9.]+) .*; this run: \$([0-9.]+)",
            done.stdout,
        )
        assert found is not None, done.stdout
        reported.append((Decimal(found[1]), Decimal(found[2])))
    (first_ledger, first_run), (second_ledger, second_run) = reported
    assert first_run > 0 and second_run > 0
    assert first_ledger == first_run
    assert second_ledger == first_run + second_run  # exact: decimals, not floats
    status, text = _cli("costs", "--ledger", ledger_url, "--json")
    assert status == 0
    totals = json.loads(text)
    assert Decimal(totals["total"]) == second_ledger
    assert sum(Decimal(value) for value in totals["tenants"].values()) == second_ledger
    assert len(totals["tenants"]) == 3
