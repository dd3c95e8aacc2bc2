"""What both ledger engines share: row types, periods, the audit hash chain.

Nothing here touches a database. The engines (:mod:`collectors.ledger._sqlite`,
:mod:`collectors.ledger._postgres`) turn these rows into SQL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Literal, Protocol

from collectors.records import CostRecord

__all__ = (
    "GENESIS_HASH",
    "AuditRow",
    "BudgetCrossing",
    "BudgetPeriod",
    "ChainBreak",
    "CostTotals",
    "Ledger",
    "LedgerError",
    "UsageCommit",
    "audit_hash",
    "canonical_fields",
    "period_key",
    "period_keys",
    "redact_url",
    "utc_day",
)

#: ``prev_hash`` of the first row of every chain.
GENESIS_HASH = "0" * 64
#: The period key of a budget that never resets.
ALL_TIME = "all"

BudgetPeriod = Literal["none", "day", "month"]

_ZERO = Decimal(0)


class LedgerError(RuntimeError):
    """A ledger URL that cannot be used, or a ledger whose schema is not ours."""


def utc_day(time_ns: int) -> date:
    """The UTC calendar day of a timestamp in nanoseconds since the epoch."""
    return datetime.fromtimestamp(time_ns // 1_000_000_000, tz=UTC).date()


def period_keys(day: date) -> tuple[str, str, str]:
    """The keys of every budget period a day belongs to: all time, its month, itself."""
    iso = day.isoformat()
    return ALL_TIME, iso[:7], iso


def period_key(period: BudgetPeriod, time_ns: int) -> str:
    """The key of the budget period of ``period`` kind that contains ``time_ns`` (UTC).

    ``"all"`` when budgets never reset, ``"2025-01"`` per month, ``"2025-01-31"`` per day.
    """
    if period == "none":
        return ALL_TIME
    iso = utc_day(time_ns).isoformat()
    return iso[:7] if period == "month" else iso


def redact_url(url: str) -> str:
    """A ledger URL safe to log or show: any password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, at, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***{at}{host}" if ":" in credentials else url


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRow:
    """One audit event to append: its chain (the tenant, or ``""``) and canonical fields."""

    chain: str
    event: str
    time_ns: int
    fields_json: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetCrossing:
    """A tenant's spend in one budget period reaching a fraction of its budget.

    Recorded once per tenant, period and threshold, whatever the number of
    processes sharing the ledger (a unique key, not a check-then-insert).
    """

    tenant_id: str
    period: str
    threshold: Decimal
    budget: Decimal
    spent: Decimal
    request_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageCommit:
    """What one committed batch of usage rows did."""

    #: Event ids already in the ledger (or twice in the batch): not billed again.
    duplicates: frozenset[str]
    #: Budget crossings this transaction recorded first (none recorded before).
    crossings: tuple[BudgetCrossing, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CostTotals:
    """Every aggregate of the usage table, read in one transaction."""

    total: Decimal = _ZERO
    #: (tenant, model version) -> (cost, input tokens, output tokens, generations).
    by_tenant_model: Mapping[tuple[str, str], tuple[Decimal, int, int, int]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    #: Tenant -> spend in the period asked for.
    period_spend: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))
    #: (tenant, threshold) pairs already crossed in that period.
    crossed: frozenset[tuple[str, Decimal]] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainBreak:
    """The first row of an audit chain that does not match its hash or its place."""

    chain: str
    seq: int
    row_id: int
    reason: str


class Ledger(Protocol):
    """A durable store of usage rows, budget crossings and the audit chains.

    One instance is one connection, used by one thread (the collector that
    opened it, or a command-line tool). Every write method is one transaction:
    it commits everything or nothing.
    """

    kind: str

    def append_usage(
        self, rows: Sequence[CostRecord], *, budgets: Mapping[str, Decimal],
        thresholds: Sequence[Decimal], period: BudgetPeriod,
    ) -> UsageCommit:
        """Insert usage rows (an existing event id is skipped), update the totals,
        and record the budget crossings the new spend causes."""
        ...

    def append_audit(self, rows: Sequence[AuditRow]) -> int:
        """Append audit rows to their chains; returns the rows appended."""
        ...

    def load_totals(self, period: str) -> CostTotals:
        """Every total, with the per-tenant spend and crossings of ``period``."""
        ...

    def usage_rows(self, since: date | None = None) -> Sequence[CostRecord]:
        """Every usage row (on or after ``since``), oldest first."""
        ...

    def verify_audit(self) -> tuple[int, ChainBreak | None]:
        """Check every audit chain; returns the rows checked and the first break."""
        ...

    def close(self) -> None:
        """Close the connection (idempotent)."""
        ...


def canonical_fields(fields: Sequence[tuple[str, object]]) -> str:
    """The canonical JSON of an audit event's fields: sorted keys, ASCII, compact.

    Values that JSON cannot hold (``Decimal``, ``datetime``) become their
    ``str``; the stored text is what the hash covers, so verification never
    depends on how a value was typed when it was logged.
    """
    return json.dumps(
        {key: value for key, value in fields}, sort_keys=True, ensure_ascii=True,
        separators=(",", ":"), default=str,
    )


def audit_hash(
    prev_hash: str, chain: str, seq: int, event: str, time_ns: int, fields_json: str
) -> str:
    """SHA-256 over the previous row's hash and this row's canonical content (hex)."""
    content = json.dumps([chain, seq, event, time_ns, fields_json], ensure_ascii=True,
                         separators=(",", ":"))
    return hashlib.sha256((prev_hash + content).encode("ascii")).hexdigest()


def check_chain(
    rows: Sequence[tuple[int, str, int, str, int, str, str, str]],
) -> tuple[int, ChainBreak | None]:
    """Verify audit rows ``(id, chain, seq, event, time_ns, fields, prev_hash, hash)``.

    ``rows`` must be ordered by chain, then seq. Returns the rows checked and
    the first break (chains in sorted order).
    """
    previous_chain: str | None = None
    expected_seq = 1
    prev_hash = GENESIS_HASH
    for count, (row_id, chain, seq, event, time_ns, fields_json, stored_prev, stored) in (
        enumerate(rows, 1)
    ):
        if chain != previous_chain:
            previous_chain, expected_seq, prev_hash = chain, 1, GENESIS_HASH
        if seq != expected_seq:
            return count, ChainBreak(chain=chain, seq=seq, row_id=row_id,
                                     reason=f"expected position {expected_seq}")
        if stored_prev != prev_hash:
            return count, ChainBreak(chain=chain, seq=seq, row_id=row_id,
                                     reason="prev_hash is not the previous row's hash")
        if audit_hash(prev_hash, chain, seq, event, time_ns, fields_json) != stored:
            return count, ChainBreak(chain=chain, seq=seq, row_id=row_id,
                                     reason="content does not match its hash")
        prev_hash = stored
        expected_seq += 1
    return len(rows), None


def spend_deltas(rows: Sequence[CostRecord]) -> dict[tuple[str, str], Decimal]:
    """(tenant, period key) -> the cost the rows add, for every period kind."""
    deltas: dict[tuple[str, str], Decimal] = {}
    for row in rows:
        for key in period_keys(utc_day(row.time_ns)):
            pair = (row.tenant_id, key)
            deltas[pair] = deltas.get(pair, _ZERO) + row.cost
    return deltas


def model_deltas(
    rows: Sequence[CostRecord],
) -> dict[tuple[str, str], tuple[Decimal, int, int, int]]:
    """(tenant, model version) -> (cost, input tokens, output tokens, generations) added."""
    deltas: dict[tuple[str, str], tuple[Decimal, int, int, int]] = {}
    for row in rows:
        pair = (row.tenant_id, row.model_version)
        cost, tokens_in, tokens_out, calls = deltas.get(pair, (_ZERO, 0, 0, 0))
        deltas[pair] = (cost + row.cost, tokens_in + row.input_tokens,
                        tokens_out + row.output_tokens, calls + 1)
    return deltas


def crossings_for(
    spend: Mapping[tuple[str, str], tuple[Decimal, Decimal]], *, budgets: Mapping[str, Decimal],
    thresholds: Sequence[Decimal], period: BudgetPeriod, last_request: Mapping[str, str | None],
) -> list[BudgetCrossing]:
    """Crossings candidates: every threshold a tenant's period spend has reached.

    ``spend`` maps (tenant, period key) to (spend before, spend after) this
    transaction. A threshold reached before too is still a candidate: the
    insert is idempotent, so a crossing missed earlier (a budget configured
    late) is recorded now, and the unique key keeps it to one.
    """
    out: list[BudgetCrossing] = []
    for (tenant, key), (_, after) in sorted(spend.items()):
        budget = budgets.get(tenant)
        if budget is None or not _is_period_kind(key, period):
            continue
        for threshold in thresholds:
            if after >= budget * threshold:
                out.append(BudgetCrossing(tenant_id=tenant, period=key, threshold=threshold,
                                          budget=budget, spent=after,
                                          request_id=last_request.get(tenant)))
    return out


def _is_period_kind(key: str, period: BudgetPeriod) -> bool:
    if period == "none":
        return key == ALL_TIME
    if key == ALL_TIME:
        return False
    return len(key) == (7 if period == "month" else 10)


def threshold_text(threshold: Decimal) -> str:
    """The canonical text of a threshold (``Decimal("1")`` and ``"1.00"`` -> ``"1"``)."""
    return format(threshold.normalize(), "f")


def known_crossings(
    spend: Mapping[tuple[str, str], tuple[Decimal, Decimal]], budgets: Mapping[str, Decimal],
    thresholds: Sequence[Decimal], period: BudgetPeriod,
) -> set[tuple[str, str, str]]:
    """The crossings a committed transaction has made sure of (recorded now or before)."""
    return {
        (c.tenant_id, c.period, threshold_text(c.threshold))
        for c in crossings_for(spend, budgets=budgets, thresholds=thresholds, period=period,
                               last_request={})
    }
