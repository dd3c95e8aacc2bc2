"""The embedded ledger: one SQLite file, shared by the processes of one machine.

* WAL journal, so readers never block the writer, and ``synchronous=FULL``,
  so a committed transaction survives a power cut, not just a crash.
* Every write transaction starts with ``BEGIN IMMEDIATE``: it takes the
  file's write lock first and waits up to the busy timeout for it, so two
  processes never fail with "database is locked" halfway through, and the
  read-modify-write of the totals (money is exact decimal text, which
  SQLite's own arithmetic would turn into floats) runs under that lock.
* Audit rows read their chain's head inside the same locked transaction, so
  chains stay linear whichever process appends.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from collectors.ledger._common import BudgetCrossing, LedgerError, utc_day
from collectors.ledger._engine import AuditValues, ModelDelta, SpendDelta, SqlLedger
from collectors.records import CostRecord

__all__ = ("SqliteLedger",)

_ZERO = Decimal(0)
_SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usage_events (
    event_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    request_id TEXT,
    model_version TEXT NOT NULL,
    prompt_version TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd TEXT NOT NULL,
    priced INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    recorded_at TEXT NOT NULL,
    day TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_events_day ON usage_events (day);
CREATE TABLE IF NOT EXISTS usage_totals (
    tenant_id TEXT NOT NULL,
    model_version TEXT NOT NULL,
    cost_usd TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    generations INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, model_version)
);
CREATE TABLE IF NOT EXISTS tenant_spend (
    tenant_id TEXT NOT NULL,
    period TEXT NOT NULL,
    cost_usd TEXT NOT NULL,
    PRIMARY KEY (tenant_id, period)
);
CREATE TABLE IF NOT EXISTS budget_crossings (
    tenant_id TEXT NOT NULL,
    period TEXT NOT NULL,
    threshold TEXT NOT NULL,
    budget_usd TEXT NOT NULL,
    spent_usd TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, period, threshold)
);
CREATE TABLE IF NOT EXISTS audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chain TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    fields TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (chain, seq)
);
CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
"""


#: Never set: ``wait(t)`` is a bounded pause between two tries.
_PAUSE = threading.Event()


class SqliteLedger(SqlLedger):
    """A ledger in one SQLite file (see the module docstring).

    Args:
        path: The database file; its folder is created if missing.
        busy_timeout: Seconds a transaction waits for another process's lock.

    Raises:
        LedgerError: The file is a ledger of another schema version.
        sqlite3.Error: The file cannot be opened (or is not a database).
    """

    kind = "sqlite"
    _mark = "?"

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        # check_same_thread is off because close() may run after the owner thread
        # ended; the owner thread is still the only one that uses the connection.
        self._db = sqlite3.connect(
            str(self.path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._use_wal(busy_timeout)
            self._db.execute("PRAGMA synchronous = FULL")
            with self._transaction():
                for statement in _statements(_SCHEMA):
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO ledger_meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO NOTHING", (_SCHEMA_VERSION,))
                (version,) = self._db.execute(
                    "SELECT value FROM ledger_meta WHERE key = 'schema_version'").fetchone()
                if version != _SCHEMA_VERSION:
                    raise LedgerError(f"{self.path}: ledger schema version {version}, "
                                      f"expected {_SCHEMA_VERSION}")
        except BaseException:
            self._db.close()
            raise

    def _use_wal(self, busy_timeout: float) -> None:
        """Put the file in WAL mode (once per file; a no-op when it already is).

        The switch needs the file to itself, and SQLite answers "database is
        locked" at once, without waiting on its busy handler, while another
        process opens or switches the same new file: that is retried here,
        within the busy timeout.
        """
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                (mode,) = self._db.execute("PRAGMA journal_mode = WAL").fetchone()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                _PAUSE.wait(0.01)  # the other process finishes its switch meanwhile
                continue
            if str(mode).lower() != "wal":
                raise LedgerError(f"{self.path}: cannot use WAL mode (journal mode {mode})")
            return

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE``: the file's write lock first (see the module docstring)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        self._db.execute("BEGIN")  # a deferred transaction: one snapshot for its reads
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, params).fetchall()

    def _day_param(self, day: date) -> object:
        return day.isoformat()  # the column holds ISO text

    # --- the statements of a write (inside its transaction) -------------------

    def _insert_usage(self, rows: Sequence[CostRecord]) -> set[str]:
        inserted: set[str] = set()
        for row in rows:
            cursor = self._db.execute(
                "INSERT INTO usage_events (event_id, tenant_id, request_id, model_version,"
                " prompt_version, input_tokens, output_tokens, cost_usd, priced, time_ns,"
                " recorded_at, day) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (event_id) DO NOTHING",
                (row.event_id, row.tenant_id, row.request_id, row.model_version,
                 row.prompt_version, row.input_tokens, row.output_tokens, str(row.cost),
                 int(row.priced), row.time_ns, row.time.isoformat(),
                 utc_day(row.time_ns).isoformat()),
            )
            if cursor.rowcount == 1:
                inserted.add(row.event_id)
        return inserted

    def _add_model_totals(self, deltas: Sequence[ModelDelta]) -> None:
        # Read-modify-write under the file lock: SQLite's own sums of the
        # decimal text would be floats.
        db = self._db
        for (tenant, model), (cost, tokens_in, tokens_out, calls) in deltas:
            found = db.execute(
                "SELECT cost_usd, input_tokens, output_tokens, generations FROM usage_totals"
                " WHERE tenant_id = ? AND model_version = ?", (tenant, model)).fetchone()
            if found is not None:
                cost += Decimal(found[0])
                tokens_in += found[1]
                tokens_out += found[2]
                calls += found[3]
            db.execute(
                "INSERT OR REPLACE INTO usage_totals (tenant_id, model_version, cost_usd,"
                " input_tokens, output_tokens, generations) VALUES (?, ?, ?, ?, ?, ?)",
                (tenant, model, str(cost), tokens_in, tokens_out, calls))

    def _add_spend(
        self, deltas: Sequence[SpendDelta]
    ) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
        db = self._db
        spend: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
        for (tenant, key), delta in deltas:
            found = db.execute(
                "SELECT cost_usd FROM tenant_spend WHERE tenant_id = ? AND period = ?",
                (tenant, key)).fetchone()
            before = Decimal(found[0]) if found is not None else _ZERO
            after = before + delta
            db.execute("INSERT OR REPLACE INTO tenant_spend (tenant_id, period, cost_usd)"
                       " VALUES (?, ?, ?)", (tenant, key, str(after)))
            spend[(tenant, key)] = (before, after)
        return spend

    def _insert_crossing(self, key: tuple[str, str, str], crossing: BudgetCrossing) -> bool:
        cursor = self._db.execute(
            "INSERT INTO budget_crossings (tenant_id, period, threshold, budget_usd,"
            " spent_usd, recorded_at) VALUES (?, ?, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ'))"
            " ON CONFLICT DO NOTHING",
            (*key, str(crossing.budget), str(crossing.spent)))
        return cursor.rowcount == 1

    def _chain_heads(self, chains: Sequence[str]) -> dict[str, tuple[int, str]]:
        # The transaction holds the file's write lock: no other appender runs.
        heads: dict[str, tuple[int, str]] = {}
        for chain in chains:
            found = self._db.execute(
                "SELECT seq, hash FROM audit_events WHERE chain = ?"
                " ORDER BY seq DESC LIMIT 1", (chain,)).fetchone()
            if found is not None:
                heads[chain] = (found[0], found[1])
        return heads

    def _insert_audit(self, values: Sequence[AuditValues]) -> None:
        self._db.executemany(
            "INSERT INTO audit_events (chain, seq, event, time_ns, fields, prev_hash,"
            " hash) VALUES (?, ?, ?, ?, ?, ?, ?)", values)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._db.close()


def _statements(script: str) -> list[str]:
    """Split the schema into statements (trigger bodies keep their inner ``;``)."""
    statements: list[str] = []
    current: list[str] = []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current)
        if text.rstrip().endswith(";") and sqlite3.complete_statement(text):
            statements.append(text)
            current = []
    return statements
