"""``ledger``: records committed per second by the cost collector's ledger.

Costs are sent through ``obs.costs.add_cost`` (as the workflow does) in
rounds of ``BATCH`` records; each round ends with ``obs.flush()``, which
returns once every record is applied *and committed*, so a round's time is
the time to get ``BATCH`` records durable. Two engines:

* **sqlite**: a file in a temporary folder (WAL, ``synchronous=FULL``: every
  commit is an fsync);
* **postgresql**: a server started for the run in a temporary folder
  (``initdb``/``pg_ctl``, Debian's ``postgresql`` package, as the tests do).

A third row, **memory**, runs the same rounds without a ledger: the part of
a round that is the pipeline itself. Each round also checks that the
ledger's total equals what was sent (nothing lost, nothing billed twice).
"""

from __future__ import annotations

import tempfile
import time
from decimal import Decimal
from pathlib import Path

from benchmarks._harness import (
    BenchResult,
    Table,
    Target,
    fmt_int,
    fmt_ms,
    fmt_stats,
    quiet_logging,
    summarize,
)

NAME = "ledger"
TITLE = "Ledger write throughput (records committed per second)"
ORDER = 80

#: Records per round (one flush, so usually one to a few transactions).
BATCH = 2_000
#: Target: records committed per second on each engine, at least.
TARGET_RECORDS_PER_SECOND = 5_000
COST = Decimal("0.000123")


def _rounds(url: str | None, rounds: int) -> tuple[list[float], list[str]]:
    """Seconds per round of ``BATCH`` committed records, and any problems found."""
    from app.observability import Observability, ObservabilitySettings

    problems: list[str] = []
    seconds: list[float] = []
    settings = ObservabilitySettings(ledger_url=url, drain_at_exit=False,
                                     flush_timeout_seconds=60.0)
    with Observability(settings) as obs:
        sent = 0
        for round_ in range(rounds + 1):  # the first round warms up (schema, caches)
            started = time.perf_counter()
            for index in range(BATCH):
                obs.costs.add_cost(tenant_id=f"t{index % 20}", model_version="risk-llm-v2",
                                   input_tokens=100, output_tokens=20, cost=COST,
                                   event_id=f"r{round_}-{index}")
            result = obs.flush()
            elapsed = time.perf_counter() - started
            sent += BATCH
            if not result:
                problems.append(f"round {round_}: flush incomplete ({result})")
            if round_:
                seconds.append(elapsed)
        if obs.costs.get_total_cost() != COST * sent:
            problems.append(f"total {obs.costs.get_total_cost()} != {COST * sent}")
        dropped = obs.health().dropped_total
        if dropped:
            problems.append(f"{dropped} records dropped")
    return seconds, problems


def run(quick: bool) -> BenchResult:
    """Measure each engine; the PostgreSQL server lives for this call only."""
    from tests._postgres import postgres_server

    quiet_logging()
    rounds = 3 if quick else 15
    rows: list[tuple[str, ...]] = []
    targets: list[Target] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as folder, \
            postgres_server() as server:
        engines = {
            "memory": None,
            "sqlite": f"sqlite:///{Path(folder) / 'ledger.sqlite'}",
            "postgresql": server.new_database(),
        }
        for engine, url in engines.items():
            seconds, problems = _rounds(url, rounds)
            per_round = summarize(x * 1e9 for x in seconds)
            rate = summarize(BATCH / x for x in seconds)
            rows.append((engine, fmt_stats(per_round, fmt_ms), fmt_stats(rate, fmt_int)))
            notes.extend(f"{engine}: {p}" for p in problems)
            if url is not None:
                targets.append(Target(
                    goal=f"{engine}: >= {TARGET_RECORDS_PER_SECOND:,} records committed/s",
                    measured=f"{fmt_int(rate.median)}/s",
                    met=rate.median >= TARGET_RECORDS_PER_SECOND and not problems,
                ))
    if not notes:
        notes.append("every round: flush complete, ledger total exact, nothing dropped")
    return BenchResult(
        name=NAME,
        title=TITLE,
        summary=(f"{rounds} rounds of {BATCH:,} costs sent with obs.costs.add_cost, each "
                 "ended by obs.flush() (applied and committed); median (p10-p90)."),
        tables=[Table(
            title="Time per round and records committed per second",
            headers=("ledger", f"ms per {BATCH:,} records", "records/s"),
            rows=tuple(rows),
        )],
        targets=targets,
        notes=notes,
    )
