"""The shared ledger: PostgreSQL, for several processes or machines (psycopg 3).

* Money is ``NUMERIC``: sums are exact in the database itself.
* A batch is a handful of statements whatever its size: rows travel as
  arrays (``unnest``), the totals are upserted with ``cost = cost +
  EXCLUDED.cost``, so two processes adding to one tenant serialise on that
  row's lock and neither addition is lost. Rows are sorted so that every
  transaction takes its row locks in the same order.
* A tenant's spend in a budget period is one row; the upsert returns its
  value after this transaction's addition, which includes every other
  committed addition, so the crossing check sees the tenant's real spend.
  Crossings are inserted with ``ON CONFLICT DO NOTHING`` on their primary
  key: recorded exactly once, by whichever process gets there first.
* Audit chains are appended under a transaction-scoped advisory lock per
  chain (taken in sorted order), so each chain stays linear.
* Rows of ``audit_events`` cannot be updated, deleted or truncated: a
  trigger refuses it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from collectors.ledger._common import BudgetCrossing, LedgerError, utc_day
from collectors.ledger._engine import AuditValues, ModelDelta, SpendDelta, SqlLedger
from collectors.records import CostRecord

__all__ = ("PostgresLedger",)

_SCHEMA_VERSION = "1"
#: Key of the advisory lock that serialises schema creation between processes.
_SCHEMA_LOCK = 0x1ED6E5

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ledger_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS usage_events (
        event_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        request_id TEXT,
        model_version TEXT NOT NULL,
        prompt_version TEXT,
        input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        cost_usd NUMERIC NOT NULL,
        priced BOOLEAN NOT NULL,
        time_ns BIGINT NOT NULL,
        recorded_at TIMESTAMPTZ NOT NULL,
        day DATE NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS usage_events_day ON usage_events (day)",
    """CREATE TABLE IF NOT EXISTS usage_totals (
        tenant_id TEXT NOT NULL,
        model_version TEXT NOT NULL,
        cost_usd NUMERIC NOT NULL,
        input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        generations BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, model_version))""",
    """CREATE TABLE IF NOT EXISTS tenant_spend (
        tenant_id TEXT NOT NULL,
        period TEXT NOT NULL,
        cost_usd NUMERIC NOT NULL,
        PRIMARY KEY (tenant_id, period))""",
    """CREATE TABLE IF NOT EXISTS budget_crossings (
        tenant_id TEXT NOT NULL,
        period TEXT NOT NULL,
        threshold TEXT NOT NULL,
        budget_usd NUMERIC NOT NULL,
        spent_usd NUMERIC NOT NULL,
        recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, period, threshold))""",
    """CREATE TABLE IF NOT EXISTS audit_events (
        id BIGSERIAL PRIMARY KEY,
        chain TEXT NOT NULL,
        seq BIGINT NOT NULL,
        event TEXT NOT NULL,
        time_ns BIGINT NOT NULL,
        fields TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        UNIQUE (chain, seq))""",
    """CREATE OR REPLACE FUNCTION ledger_audit_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$""",
    """CREATE OR REPLACE TRIGGER audit_events_append_only
        BEFORE UPDATE OR DELETE ON audit_events
        FOR EACH ROW EXECUTE FUNCTION ledger_audit_append_only()""",
    """CREATE OR REPLACE TRIGGER audit_events_no_truncate
        BEFORE TRUNCATE ON audit_events
        FOR EACH STATEMENT EXECUTE FUNCTION ledger_audit_append_only()""",
)


class PostgresLedger(SqlLedger):
    """A ledger in a PostgreSQL database (see the module docstring).

    Args:
        url: A libpq URL, ``postgresql://user:pass@host:port/db``.
        connect_timeout: Seconds a connection attempt may take.
        statement_timeout: Seconds any statement may take before the server
            cancels it, so a write never hangs its collector thread for long.

    Raises:
        LedgerError: The database holds a ledger of another schema version.
        psycopg.Error: The server cannot be reached or refuses the connection.
    """

    kind = "postgresql"
    _mark = "%s"
    #: The database's collation may sort chains otherwise; ``C`` is by code point.
    _chain_order = 'chain COLLATE "C"'
    #: Transient conflicts: the transaction is replayed whole, at once.
    _retried = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
    _attempts = 3

    def __init__(
        self, url: str, *, connect_timeout: float = 5.0, statement_timeout: float = 30.0
    ) -> None:
        super().__init__()
        self._conn = psycopg.connect(
            url, autocommit=True, connect_timeout=max(2, round(connect_timeout)),
            options=f"-c statement_timeout={int(statement_timeout * 1000)}",
        )
        try:
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _SCHEMA:
                    self._conn.execute(statement)
                self._conn.execute(
                    "INSERT INTO ledger_meta (key, value) VALUES ('schema_version', %s)"
                    " ON CONFLICT (key) DO NOTHING", (_SCHEMA_VERSION,))
                row = self._conn.execute(
                    "SELECT value FROM ledger_meta WHERE key = 'schema_version'").fetchone()
                if row is None or row[0] != _SCHEMA_VERSION:
                    raise LedgerError(f"ledger schema version {row and row[0]}, "
                                      f"expected {_SCHEMA_VERSION}")
        except BaseException:
            self._conn.close()
            raise

    def _transaction(self) -> AbstractContextManager[object]:
        return self._conn.transaction()

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        with self._conn.transaction():
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def _day_param(self, day: date) -> object:
        return day  # a DATE column

    # --- the statements of a write (inside its transaction) -------------------

    def _insert_usage(self, rows: Sequence[CostRecord]) -> set[str]:
        return {
            event_id for (event_id,) in self._conn.execute(
                "INSERT INTO usage_events (event_id, tenant_id, request_id, model_version,"
                " prompt_version, input_tokens, output_tokens, cost_usd, priced, time_ns,"
                " recorded_at, day) SELECT * FROM unnest(%s::text[], %s::text[],"
                " %s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[],"
                " %s::numeric[], %s::boolean[], %s::bigint[], %s::timestamptz[],"
                " %s::date[]) ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                _columns(rows, lambda r: (
                    r.event_id, r.tenant_id, r.request_id, r.model_version,
                    r.prompt_version, r.input_tokens, r.output_tokens, r.cost, r.priced,
                    r.time_ns, r.time, utc_day(r.time_ns))),
            ).fetchall()
        }

    def _add_model_totals(self, deltas: Sequence[ModelDelta]) -> None:
        self._conn.execute(
            "INSERT INTO usage_totals AS t (tenant_id, model_version, cost_usd,"
            " input_tokens, output_tokens, generations) SELECT * FROM unnest("
            "%s::text[], %s::text[], %s::numeric[], %s::bigint[], %s::bigint[],"
            " %s::bigint[]) ON CONFLICT (tenant_id, model_version) DO UPDATE SET"
            " cost_usd = t.cost_usd + EXCLUDED.cost_usd,"
            " input_tokens = t.input_tokens + EXCLUDED.input_tokens,"
            " output_tokens = t.output_tokens + EXCLUDED.output_tokens,"
            " generations = t.generations + EXCLUDED.generations",
            _columns(deltas, lambda item: (item[0][0], item[0][1], *item[1])),
        )

    def _add_spend(
        self, deltas: Sequence[SpendDelta]
    ) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
        # The upsert returns each spend after this addition and every other
        # committed one; the spend before is that minus this addition.
        delta_of = dict(deltas)
        return {
            (tenant, key): (after - delta_of[(tenant, key)], after)
            for tenant, key, after in self._conn.execute(
                "INSERT INTO tenant_spend AS s (tenant_id, period, cost_usd) SELECT * FROM"
                " unnest(%s::text[], %s::text[], %s::numeric[]) ON CONFLICT (tenant_id,"
                " period) DO UPDATE SET cost_usd = s.cost_usd + EXCLUDED.cost_usd"
                " RETURNING tenant_id, period, cost_usd",
                _columns(deltas, lambda item: (item[0][0], item[0][1], item[1])),
            ).fetchall()
        }

    def _insert_crossing(self, key: tuple[str, str, str], crossing: BudgetCrossing) -> bool:
        found = self._conn.execute(
            "INSERT INTO budget_crossings (tenant_id, period, threshold, budget_usd,"
            " spent_usd) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
            " RETURNING tenant_id", (*key, crossing.budget, crossing.spent)).fetchone()
        return found is not None

    def _chain_heads(self, chains: Sequence[str]) -> dict[str, tuple[int, str]]:
        conn = self._conn
        for chain in chains:  # sorted: every appender locks in the same order
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 17))",
                         ("audit:" + chain,))
        return {
            chain: (seq, digest) for chain, seq, digest in conn.execute(
                "SELECT DISTINCT ON (chain) chain, seq, hash FROM audit_events"
                " WHERE chain = ANY(%s) ORDER BY chain, seq DESC", (list(chains),)
            ).fetchall()
        }

    def _insert_audit(self, values: Sequence[AuditValues]) -> None:
        self._conn.execute(
            "INSERT INTO audit_events (chain, seq, event, time_ns, fields, prev_hash,"
            " hash) SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[],"
            " %s::bigint[], %s::text[], %s::text[], %s::text[])",
            _columns(values, lambda v: v),
        )

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()


def _columns(items: Sequence[Any], row: Any) -> list[list[Any]]:
    """Rows -> one list per column (the arrays ``unnest`` takes)."""
    width = len(row(items[0])) if items else 0
    columns: list[list[Any]] = [[] for _ in range(width)]
    for item in items:
        for column, value in zip(columns, row(item), strict=True):
            column.append(value)
    return columns
