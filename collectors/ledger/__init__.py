"""The durable ledger behind the cost and audit collectors.

A ledger keeps what must outlive a process and add up across processes: one
row per priced LLM call (keyed by its event id, so a call logged twice is
billed once), the totals derived from them, each budget threshold crossing
(once per tenant, period and threshold), and the audit trail as one SHA-256
hash chain per tenant (events without a tenant form a chain of their own).

Two engines, chosen by URL (:func:`open_ledger`):

* ``sqlite:///PATH`` -- one file, shared by the processes of one machine
  (:class:`~collectors.ledger._sqlite.SqliteLedger`);
* ``postgresql://...`` -- a PostgreSQL database, shared by processes on any
  machine (:class:`~collectors.ledger._postgres.PostgresLedger`, psycopg 3).

A ledger object is one connection used by one thread. The collectors use
theirs through :class:`LedgerLink`, which buffers rows, retries with backoff
while the database is away, and counts what it has to drop.
"""

from __future__ import annotations

from collectors.ledger._collector import LedgerCollector
from collectors.ledger._common import (
    GENESIS_HASH,
    AuditRow,
    BudgetCrossing,
    BudgetPeriod,
    ChainBreak,
    CostTotals,
    Ledger,
    LedgerError,
    UsageCommit,
    audit_hash,
    canonical_fields,
    period_key,
    redact_url,
    threshold_text,
    utc_day,
)
from collectors.ledger._link import LedgerLink, LedgerState, LedgerStats

__all__ = (
    "GENESIS_HASH",
    "AuditRow",
    "BudgetCrossing",
    "BudgetPeriod",
    "ChainBreak",
    "CostTotals",
    "Ledger",
    "LedgerCollector",
    "LedgerError",
    "LedgerLink",
    "LedgerState",
    "LedgerStats",
    "UsageCommit",
    "audit_hash",
    "canonical_fields",
    "check_ledger_url",
    "open_ledger",
    "period_key",
    "redact_url",
    "threshold_text",
    "utc_day",
)

_SQLITE = "sqlite:///"
_POSTGRES = ("postgresql://", "postgres://")


def check_ledger_url(url: str) -> str:
    """Validate a ledger URL's form (not whether it can be reached).

    Returns:
        The URL.

    Raises:
        ValueError: Neither ``sqlite:///PATH`` nor ``postgresql://...``.
    """
    if url.startswith(_SQLITE):
        if not url[len(_SQLITE):]:
            raise ValueError("ledger_url sqlite:/// needs a file path, e.g. sqlite:///ledger.db")
        return url
    if url.startswith(_POSTGRES):
        return url
    raise ValueError(
        f"ledger_url must be sqlite:///PATH or postgresql://..., got {redact_url(url)[:80]!r}"
    )


def open_ledger(url: str, *, connect_timeout: float = 5.0) -> Ledger:
    """Open (and create if needed) the ledger at ``url`` on the calling thread.

    ``sqlite:///relative/path`` and ``sqlite:////absolute/path`` name a file;
    ``postgresql://user:password@host:port/database`` a database.

    Raises:
        ValueError: The URL has neither form.
        LedgerError: The database holds a ledger of another schema version.
        OSError, sqlite3.Error, psycopg.Error: The database cannot be opened.
    """
    check_ledger_url(url)
    if url.startswith(_SQLITE):
        from collectors.ledger._sqlite import SqliteLedger

        return SqliteLedger(url[len(_SQLITE):], busy_timeout=max(connect_timeout, 30.0))
    from collectors.ledger._postgres import PostgresLedger

    return PostgresLedger(url, connect_timeout=connect_timeout)
