"""The ledger's algorithm, written once over SQL; each engine supplies its statements.

:class:`SqlLedger` does everything that does not depend on the database: it
splits a batch into fresh rows and duplicates, derives the totals and spend
each batch adds, decides which budget crossings to try, links audit rows into
their hash chains, runs the reads both engines phrase alike, and replays a
transaction that failed on a transient conflict. An engine
(:mod:`collectors.ledger._sqlite`, :mod:`collectors.ledger._postgres`)
supplies its transactions and the statements that really differ: how rows are
inserted, how totals are added (read-modify-write under a file lock, or an
upsert), how audit chains are locked and their heads read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import date
from decimal import Decimal
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from collectors.ledger._common import (
    GENESIS_HASH,
    AuditRow,
    BudgetCrossing,
    BudgetPeriod,
    ChainBreak,
    CostTotals,
    UsageCommit,
    audit_hash,
    check_chain,
    crossings_for,
    known_crossings,
    model_deltas,
    spend_deltas,
    threshold_text,
)
from collectors.records import CostRecord

__all__ = ("AuditValues", "ModelDelta", "SpendDelta", "SqlLedger")

_ZERO = Decimal(0)
ResultT = TypeVar("ResultT")

#: ((tenant, model version), (cost, input tokens, output tokens, generations)) to add.
ModelDelta = tuple[tuple[str, str], tuple[Decimal, int, int, int]]
#: ((tenant, period key), cost) to add.
SpendDelta = tuple[tuple[str, str], Decimal]
#: One audit row to insert: (chain, seq, event, time_ns, fields, prev_hash, hash).
AuditValues = tuple[str, int, str, int, str, str, str]

#: The columns of ``usage_events`` a :class:`~collectors.records.CostRecord` is read from.
_USAGE_COLUMNS = ("event_id, tenant_id, request_id, model_version, prompt_version,"
                  " input_tokens, output_tokens, cost_usd, priced, time_ns")


class SqlLedger(ABC):
    """A ledger over one database connection (the :class:`~collectors.ledger.Ledger` protocol).

    Every write method is one transaction, replayed whole (up to
    ``_attempts`` times) when it fails with one of ``_retried``.
    """

    #: The engine's name (``sqlite``, ``postgresql``).
    kind: str
    #: The parameter marker of the engine's driver (``?`` or ``%s``).
    _mark: ClassVar[str]
    #: ``ORDER BY`` key that sorts chains by code point, as Python's ``sorted`` does.
    _chain_order: ClassVar[str] = "chain"
    #: Transient conflicts after which a transaction is replayed.
    _retried: ClassVar[tuple[type[Exception], ...]] = ()
    _attempts: ClassVar[int] = 1

    def __init__(self) -> None:
        #: Crossings known to be recorded (this connection's cache; the table decides).
        self._recorded: set[tuple[str, str, str]] = set()

    # --- what an engine supplies -----------------------------------------------

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[object]:
        """A write transaction: committed on exit, rolled back on an exception."""

    @abstractmethod
    def _snapshot(self) -> AbstractContextManager[object]:
        """A read-only transaction: one consistent view for several reads."""

    @abstractmethod
    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (parameters marked with ``_mark``); its rows."""

    @abstractmethod
    def _day_param(self, day: date) -> object:
        """A UTC day as the engine's ``day`` column compares it."""

    @abstractmethod
    def _insert_usage(self, rows: Sequence[CostRecord]) -> set[str]:
        """Insert usage rows, skipping known event ids; the event ids inserted."""

    @abstractmethod
    def _add_model_totals(self, deltas: Sequence[ModelDelta]) -> None:
        """Add to the per tenant and model totals (``deltas`` sorted: lock order)."""

    @abstractmethod
    def _add_spend(
        self, deltas: Sequence[SpendDelta]
    ) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
        """Add to each (tenant, period key)'s spend (sorted); returns (before, after) each."""

    @abstractmethod
    def _insert_crossing(self, key: tuple[str, str, str], crossing: BudgetCrossing) -> bool:
        """Insert one crossing under ``key`` (tenant, period, threshold text) unless
        recorded; whether this transaction recorded it."""

    @abstractmethod
    def _chain_heads(self, chains: Sequence[str]) -> dict[str, tuple[int, str]]:
        """Lock ``chains`` (sorted) against other appenders and read the (seq, hash)
        of each one's last row (chains without rows are left out)."""

    @abstractmethod
    def _insert_audit(self, values: Sequence[AuditValues]) -> None:
        """Insert linked audit rows."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection (idempotent)."""

    # --- writes (one transaction each) -------------------------------------

    def _replayed(self, write: Callable[[], ResultT]) -> ResultT:
        for attempt in range(self._attempts):
            try:
                return write()
            except self._retried:
                if attempt == self._attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def append_usage(
        self, rows: Sequence[CostRecord], *, budgets: Mapping[str, Decimal],
        thresholds: Sequence[Decimal], period: BudgetPeriod,
    ) -> UsageCommit:
        """Insert usage rows, update the totals and record new budget crossings."""
        if not rows:
            return UsageCommit(duplicates=frozenset(), crossings=())
        return self._replayed(lambda: self._append_usage(rows, budgets, thresholds, period))

    def _append_usage(
        self, rows: Sequence[CostRecord], budgets: Mapping[str, Decimal],
        thresholds: Sequence[Decimal], period: BudgetPeriod,
    ) -> UsageCommit:
        with self._transaction():
            inserted = self._insert_usage(rows)
            fresh: list[CostRecord] = []
            duplicates: set[str] = set()
            for row in rows:
                if row.event_id in inserted:
                    inserted.discard(row.event_id)  # a second copy in the batch is a duplicate
                    fresh.append(row)
                else:
                    duplicates.add(row.event_id)
            totals = sorted(model_deltas(fresh).items())
            if totals:
                self._add_model_totals(totals)
            deltas = sorted(spend_deltas(fresh).items())
            spend = self._add_spend(deltas) if deltas else {}
            crossings = self._record_crossings(spend, budgets, thresholds, period, fresh)
        # Filled after the commit only: a rolled-back crossing must be tried again.
        self._recorded.update(known_crossings(spend, budgets, thresholds, period))
        return UsageCommit(duplicates=frozenset(duplicates), crossings=crossings)

    def _record_crossings(
        self, spend: Mapping[tuple[str, str], tuple[Decimal, Decimal]],
        budgets: Mapping[str, Decimal], thresholds: Sequence[Decimal], period: BudgetPeriod,
        rows: Sequence[CostRecord],
    ) -> tuple[BudgetCrossing, ...]:
        if not budgets:
            return ()
        last_request = {row.tenant_id: row.request_id for row in rows}
        recorded: list[BudgetCrossing] = []
        for crossing in crossings_for(spend, budgets=budgets, thresholds=thresholds,
                                      period=period, last_request=last_request):
            key = (crossing.tenant_id, crossing.period, threshold_text(crossing.threshold))
            if key not in self._recorded and self._insert_crossing(key, crossing):
                recorded.append(crossing)
        return tuple(recorded)

    def append_audit(self, rows: Sequence[AuditRow]) -> int:
        """Append audit rows to their chains (each chain locked while its head is read)."""
        if not rows:
            return 0
        return self._replayed(lambda: self._append_audit(rows))

    def _append_audit(self, rows: Sequence[AuditRow]) -> int:
        chains = sorted({row.chain for row in rows})
        with self._transaction():
            heads = dict.fromkeys(chains, (0, GENESIS_HASH))
            heads.update(self._chain_heads(chains))
            values: list[AuditValues] = []
            for row in rows:
                seq, prev_hash = heads[row.chain]
                seq += 1
                digest = audit_hash(prev_hash, row.chain, seq, row.event, row.time_ns,
                                    row.fields_json)
                values.append((row.chain, seq, row.event, row.time_ns, row.fields_json,
                               prev_hash, digest))
                heads[row.chain] = (seq, digest)
            self._insert_audit(values)
        return len(rows)

    # --- reads ---------------------------------------------------------------

    def load_totals(self, period: str) -> CostTotals:
        """Every total, with each tenant's spend and crossings in ``period``."""
        mark = self._mark
        with self._snapshot():
            pairs = self._fetch("SELECT tenant_id, model_version, cost_usd, input_tokens,"
                                " output_tokens, generations FROM usage_totals")
            spend = self._fetch(
                f"SELECT tenant_id, cost_usd FROM tenant_spend WHERE period = {mark}", (period,))
            crossed = self._fetch(
                f"SELECT tenant_id, threshold FROM budget_crossings WHERE period = {mark}",
                (period,))
        by_pair = {
            (tenant, model): (Decimal(cost), tokens_in, tokens_out, calls)
            for tenant, model, cost, tokens_in, tokens_out, calls in pairs
        }
        return CostTotals(
            total=sum((v[0] for v in by_pair.values()), _ZERO),
            by_tenant_model=MappingProxyType(by_pair),
            period_spend=MappingProxyType({tenant: Decimal(cost) for tenant, cost in spend}),
            crossed=frozenset((tenant, Decimal(threshold)) for tenant, threshold in crossed),
        )

    def usage_rows(self, since: date | None = None) -> Sequence[CostRecord]:
        """Every usage row (on or after ``since``), in time order."""
        where = ""
        params: tuple[object, ...] = ()
        if since is not None:
            where = f" WHERE day >= {self._mark}"
            params = (self._day_param(since),)
        return [
            CostRecord(event_id=r[0], tenant_id=r[1], request_id=r[2], model_version=r[3],
                       prompt_version=r[4], input_tokens=r[5], output_tokens=r[6],
                       cost=Decimal(r[7]), priced=bool(r[8]), time_ns=r[9])
            for r in self._fetch(f"SELECT {_USAGE_COLUMNS} FROM usage_events{where}"
                                 " ORDER BY time_ns, event_id", params)
        ]

    def verify_audit(self) -> tuple[int, ChainBreak | None]:
        """Check every audit chain, in chain then position order."""
        return check_chain(self._fetch(
            "SELECT id, chain, seq, event, time_ns, fields, prev_hash, hash FROM audit_events"
            f" ORDER BY {self._chain_order}, seq"))
