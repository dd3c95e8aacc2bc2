"""The cost store and the collector thread that owns it.

All money is ``Decimal``: the facade prices tokens with a fixed rate per model
version (``app.observability.cost_tracker``), and this store only ever adds
``Decimal`` values, so totals are exact whatever the order records arrive in.

Per-request costs are the one part that forgets: they are kept for the most
recent requests only, in generations of plain dicts dropped whole (see
:class:`CostStoreCollector`). Totals per tenant, model version and tenant x
model, usage and the cumulative cost never forget anything.

**Idempotency.** Every record carries an ``event_id``; a record whose event
id was seen before is a duplicate: counted, never billed. In memory the
collector remembers the most recent event ids (the same bound as requests);
with a ledger, the ledger's unique key catches every duplicate, whichever
process or run logged the first copy.

**Budgets.** A tenant may have a budget per period (``budget_period``: the
whole history, each UTC day or each UTC month). The first time its spend in a
period reaches each configured fraction of the budget (e.g. 0.8 and 1.0) the
collector emits one audit event and one ``budget_threshold_crossed`` metric
record to the collectors downstream of it. Without a ledger this is decided
in memory; with one, by the ledger's unique key on (tenant, period,
threshold), so the crossing is emitted exactly once across every process
sharing the ledger, when the transaction that reaches it commits.

**The ledger** (``ledger_url``): every record is also buffered and written in
one transaction per drained batch, on this collector's thread (the hot path
never touches the database); a flush returns only once those rows are
committed. At start and then at most every ``refresh_interval`` seconds
(checked when a batch has been committed and before any read is answered),
the totals are reloaded from the ledger and this process's uncommitted rows
added on top: a read reflects this process's records exactly and every other
process's committed records as of at most ``refresh_interval`` seconds
before the read. While the ledger is unreachable, reads answer from the last
totals loaded plus this process's records.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any, TypeVar

from collectors.base import Collector
from collectors.ledger import (
    BudgetCrossing,
    BudgetPeriod,
    Ledger,
    LedgerCollector,
    LedgerLink,
    UsageCommit,
    open_ledger,
    period_key,
)
from collectors.records import AuditRecord, CostRecord, MetricRecord

__all__ = (
    "BudgetStatus",
    "CostSnapshot",
    "CostStore",
    "CostStoreCollector",
    "ResetRecord",
    "TenantUsage",
)

_ZERO = Decimal(0)
ResultT = TypeVar("ResultT")
#: Per-request costs are kept in this many generations (fewer when the bound is small).
_REQUEST_GENERATIONS = 16


class ResetRecord:
    """Control record: clear the store, in FIFO order with cost records."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantUsage:
    """One tenant's metered usage."""

    tenant_id: str
    generations: int
    input_tokens: int
    output_tokens: int
    cost: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetStatus:
    """One tenant's spend against its budget in the current budget period.

    ``period`` is ``"all"`` for a budget that never resets, else the UTC
    month (``"2025-01"``) or day (``"2025-01-31"``) the spend belongs to.
    """

    tenant_id: str
    budget: Decimal
    spent: Decimal
    thresholds_crossed: tuple[Decimal, ...]
    period: str = "all"

    @property
    def fraction(self) -> Decimal:
        """Spend as a fraction of the budget."""
        return self.spent / self.budget if self.budget else Decimal("Infinity")

    @property
    def over_budget(self) -> bool:
        """Whether spend has reached the budget."""
        return self.spent >= self.budget

    @property
    def remaining(self) -> Decimal:
        """What is left of the budget in this period (never below 0)."""
        return max(self.budget - self.spent, _ZERO)


@dataclass(frozen=True, slots=True, kw_only=True)
class CostSnapshot:
    """An immutable copy of the cost store.

    With a ledger, totals are the ledger's (every process, every run) as of
    the last refresh plus this process's records since; ``duplicates``
    counts the records this process found already billed.
    """

    total: Decimal
    by_tenant: Mapping[str, Decimal]
    by_model: Mapping[str, Decimal]
    by_tenant_model: Mapping[tuple[str, str], Decimal]
    usage: Mapping[str, TenantUsage]
    unpriced: Mapping[str, int]
    budgets: Mapping[str, BudgetStatus]
    requests_tracked: int
    requests_evicted: int
    duplicates: int
    #: What this process billed (duplicates excluded), whatever the ledger holds.
    process_total: Decimal
    process_by_tenant: Mapping[str, Decimal]


class CostStore:
    """Cost aggregates. Owned and mutated by one :class:`CostStoreCollector` thread.

    ``by_request`` holds the per-request costs in generations (request id ->
    cost dicts), oldest first, at most ``request_generations`` of them; new
    requests join the last one. A request is in at most one generation.
    ``events`` holds the recent event ids the same way (sets). ``period`` is
    the budget period ``period_spend`` and ``crossed`` belong to.
    """

    __slots__ = (
        "by_model", "by_request", "by_tenant", "by_tenant_model", "crossed", "duplicates",
        "events", "generations", "input_tokens", "output_tokens", "own_by_tenant", "own_total",
        "period", "period_spend", "requests_evicted", "total", "unpriced",
    )

    def __init__(self, request_generations: int = _REQUEST_GENERATIONS) -> None:
        self.total = _ZERO
        self.by_tenant: dict[str, Decimal] = {}
        self.by_model: dict[str, Decimal] = {}
        self.by_tenant_model: dict[tuple[str, str], Decimal] = {}
        self.by_request: deque[dict[str, Decimal]] = deque([{}], maxlen=request_generations)
        self.requests_evicted = 0
        self.events: deque[set[str]] = deque([set()], maxlen=request_generations)
        self.duplicates = 0
        self.own_total = _ZERO
        self.own_by_tenant: dict[str, Decimal] = {}
        self.generations: dict[str, int] = {}
        self.input_tokens: dict[str, int] = {}
        self.output_tokens: dict[str, int] = {}
        self.unpriced: dict[str, int] = {}
        self.period = ""
        self.period_spend: dict[str, Decimal] = {}
        self.crossed: dict[str, list[Decimal]] = {}

    def clear_totals(self) -> None:
        """Forget every total (before they are reloaded from a ledger)."""
        self.total = _ZERO
        self.by_tenant = {}
        self.by_model = {}
        self.by_tenant_model = {}
        self.generations = {}
        self.input_tokens = {}
        self.output_tokens = {}

    def add(self, tenant: str, model: str, cost: Decimal, tokens_in: int, tokens_out: int,
            calls: int) -> Decimal:
        """Add usage to every total; returns the tenant's total before it."""
        self.total += cost
        by_tenant = self.by_tenant
        before = by_tenant.get(tenant, _ZERO)
        by_tenant[tenant] = before + cost
        self.by_model[model] = self.by_model.get(model, _ZERO) + cost
        pair = (tenant, model)
        self.by_tenant_model[pair] = self.by_tenant_model.get(pair, _ZERO) + cost
        self.generations[tenant] = self.generations.get(tenant, 0) + calls
        self.input_tokens[tenant] = self.input_tokens.get(tenant, 0) + tokens_in
        self.output_tokens[tenant] = self.output_tokens.get(tenant, 0) + tokens_out
        return before


class CostStoreCollector(LedgerCollector[CostStore, CostRecord]):
    """Actor owning the :class:`CostStore` (and, optionally, its ledger connection).

    Args:
        budgets: Tenant id -> budget in USD per budget period.
        budget_thresholds: Fractions of a budget that raise an event once per period.
        budget_period: ``"none"`` (never resets), ``"day"`` or ``"month"`` (UTC).
        max_tracked_requests: Bound ``N`` on the requests whose cost is kept (see
            below), and on the recent event ids remembered for idempotency.
        metrics: Where ``budget_threshold_crossed`` records go (optional).
        audit: Where budget audit events go (optional).
        ledger_url: ``sqlite:///PATH`` or ``postgresql://...``; ``None``: memory only.
        ledger_buffer_size: Rows kept while the ledger is unreachable; past it,
            rows are dropped from the ledger and counted.
        ledger_refresh_seconds: The most a read lags behind other processes'
            committed records (see the module docstring).
        ledger_retry_max_seconds: The ceiling of the retry backoff.
        ledger_opener: Opens a ledger from its URL (tests inject failures here).
        **kwargs: Passed to :class:`~collectors.base.Collector`.

    Per-request costs are kept in ``K`` generations of ``G`` requests, with
    ``G = max(1, N // 16)`` and ``K = N // G`` (16 to 31 generations, or
    ``N`` of one request when ``N < 16``). A request joins the newest
    generation with its first cost; later costs of a request still kept add
    to it where it is. When a new request finds the newest generation full, a
    new one is started, and if there were already ``K`` the oldest is dropped
    whole, its requests counted in ``requests_evicted``. So, counting requests
    by their first cost, the most recent ``(K - 1) * G + 1`` to ``K * G``
    requests are kept (once that many have been seen): never more than ``N``,
    always more than ``N - 2 * G`` (at least 7/8 of ``N``); 93,751 to 100,000 for the
    default ``N = 100,000``. An evicted request reads as unknown; a later
    cost for it starts it again from that cost. Event ids are remembered the
    same way, in sets.

    Why generations: a single map evicting its oldest request for each new
    one rebuilds its whole table (megabytes) every few ten thousand inserts,
    and the C allocator does not give those tables back, so resident memory
    crept up under a steady stream of unique requests. Small generations
    dropped whole recycle tables of one modest size (~200 KiB at the
    default), which the allocator reuses. Finding a request costs up to ``K``
    dict lookups, on the collector thread.
    """

    downstream = ("metrics", "audit")

    def __init__(
        self,
        *,
        budgets: Mapping[str, Decimal] | None = None,
        budget_thresholds: tuple[Decimal, ...] = (Decimal("0.8"), Decimal("1.0")),
        budget_period: BudgetPeriod = "none",
        max_tracked_requests: int = 100_000,
        metrics: Collector[Any] | None = None,
        audit: Collector[Any] | None = None,
        ledger_url: str | None = None,
        ledger_buffer_size: int = 100_000,
        ledger_refresh_seconds: float = 1.0,
        ledger_retry_max_seconds: float = 5.0,
        ledger_opener: Callable[[str], Ledger] = open_ledger,
        **kwargs: Any,
    ) -> None:
        if max_tracked_requests < 1:
            raise ValueError("max_tracked_requests must be at least 1")
        if budget_period not in ("none", "day", "month"):
            raise ValueError(f"budget_period must be none, day or month, got {budget_period!r}")
        if not ledger_refresh_seconds >= 0:
            raise ValueError("ledger_refresh_seconds must be >= 0")
        self._budgets = dict(budgets or {})
        self._thresholds = tuple(sorted(budget_thresholds))
        self._period: BudgetPeriod = budget_period
        self._generation = max(1, max_tracked_requests // _REQUEST_GENERATIONS)
        self._generations = max_tracked_requests // self._generation
        self._metrics_out = metrics
        self._audit_out = audit
        self._refresh_interval = ledger_refresh_seconds
        self._last_refresh = -float("inf")
        super().__init__(
            "cost", ledger_url=ledger_url, ledger_buffer_size=ledger_buffer_size,
            ledger_retry_max_seconds=ledger_retry_max_seconds, ledger_opener=ledger_opener,
            **kwargs,
        )

    # --- runs on the collector thread only (or before it starts) ---------

    def _new_store(self) -> CostStore:
        return CostStore(self._generations)

    def _open_ledger(self, link: LedgerLink[CostRecord]) -> None:
        """Open the ledger and load its totals as the thread starts."""
        self._refresh()

    def _apply(self, record: CostRecord | ResetRecord) -> None:
        """Add one priced usage to every aggregate (once per event id). Collector thread only."""
        if type(record) is not CostRecord:
            if type(record) is ResetRecord:
                self._store = self._new_store()
                self._last_refresh = -float("inf")  # with a ledger: reload its totals
                return
            assert isinstance(record, CostRecord)
        store = self._store
        if self._seen(store, record.event_id):
            store.duplicates += 1
            return
        tenant, cost = record.tenant_id, record.cost
        store.add(tenant, record.model_version, cost, record.input_tokens,
                  record.output_tokens, 1)
        store.own_total += cost
        store.own_by_tenant[tenant] = store.own_by_tenant.get(tenant, _ZERO) + cost
        if not record.priced:
            store.unpriced[record.model_version] = store.unpriced.get(record.model_version, 0) + 1
        request = record.request_id
        if request is not None:
            self._add_request_cost(store, request, cost)
        spend = self._add_period_spend(store, tenant, cost, record.time_ns)
        link = self._link
        if link is not None:
            link.add(record)  # a row it cannot take is counted by the ledger link
            return  # crossings are decided by the ledger when the row commits
        if spend is not None and self._budgets:
            budget = self._budgets.get(tenant)
            if budget is not None:
                self._check_budget(store, tenant, budget, spend[0], spend[1], record)

    def _seen(self, store: CostStore, event_id: str) -> bool:
        """Whether ``event_id`` is a recent one; remember it if not."""
        generations = store.events
        for generation in reversed(generations):
            if event_id in generation:
                return True
        newest = generations[-1]
        if len(newest) >= self._generation:
            newest = set()
            generations.append(newest)
        newest.add(event_id)
        return False

    def _add_request_cost(self, store: CostStore, request: str, cost: Decimal) -> None:
        for generation in reversed(store.by_request):  # newest first: where repeats are
            if request in generation:
                generation[request] += cost
                return
        self._add_request(store, request, cost)

    def _add_request(self, store: CostStore, request: str, cost: Decimal) -> None:
        """A request not kept yet joins the newest generation (see the class docstring)."""
        generations = store.by_request
        newest = generations[-1]
        if len(newest) >= self._generation:
            if len(generations) == generations.maxlen:
                store.requests_evicted += len(generations[0])  # dropped by the append
            newest = {}
            generations.append(newest)
        newest[request] = cost

    def _add_period_spend(
        self, store: CostStore, tenant: str, cost: Decimal, time_ns: int
    ) -> tuple[Decimal, Decimal] | None:
        """Add to the tenant's spend in the record's budget period.

        Returns:
            The spend before and after, or ``None`` for a record of a period
            already over (late): it counts in the totals, not in this period.
        """
        key = period_key(self._period, time_ns)
        if key != store.period:
            if key < store.period:
                return None
            store.period, store.period_spend, store.crossed = key, {}, {}
        before = store.period_spend.get(tenant, _ZERO)
        store.period_spend[tenant] = after = before + cost
        return before, after

    def _check_budget(
        self, store: CostStore, tenant: str, budget: Decimal, before: Decimal, after: Decimal,
        record: CostRecord,
    ) -> None:
        for threshold in self._thresholds:
            limit = budget * threshold
            if before < limit <= after:
                store.crossed.setdefault(tenant, []).append(threshold)
                self._emit_crossing(BudgetCrossing(
                    tenant_id=tenant, period=store.period, threshold=threshold, budget=budget,
                    spent=after, request_id=record.request_id,
                ))

    def _emit_crossing(self, crossing: BudgetCrossing) -> None:
        label = repr(float(crossing.threshold))  # canonical: Decimal("1") and "1.0" -> "1.0"
        tenant = crossing.tenant_id
        if self._metrics_out is not None:
            self._metrics_out.send(
                MetricRecord("budget_threshold_crossed",
                             (("tenant_id", tenant), ("threshold", label)), 1)
            )
        if self._audit_out is not None:
            self._audit_out.send(
                AuditRecord(
                    "budget.threshold_crossed",
                    time.time_ns(),
                    (
                        ("tenant_id", tenant),
                        ("threshold", label),
                        ("budget_usd", str(crossing.budget)),
                        ("spent_usd", str(crossing.spent)),
                        ("period", crossing.period),
                        ("request_id", crossing.request_id),
                    ),
                )
            )

    # --- the ledger (collector thread) ------------------------------------

    def _commit(self) -> bool:
        """Write the buffered usage rows in one transaction (after each batch, before a flush
        resolves); then reload the totals if they are older than the refresh interval."""
        link = self._link
        if link is None:
            return True
        committed, result = link.commit(self._write)
        if result is not None:
            self._committed(*result)
        if committed:
            self._maybe_refresh()
        return committed

    def _write(
        self, ledger: Ledger, rows: list[CostRecord]
    ) -> tuple[list[CostRecord], UsageCommit]:
        return rows, ledger.append_usage(
            rows, budgets=self._budgets, thresholds=self._thresholds, period=self._period
        )

    def _committed(self, rows: list[CostRecord], commit: UsageCommit) -> None:
        """Account for a committed batch: un-bill duplicates, emit new crossings."""
        store = self._store
        if commit.duplicates:
            assert self._link is not None
            for row in rows:
                if row.event_id in commit.duplicates:
                    self._unbill(store, row)
                    store.duplicates += 1
                    self._link.duplicates += 1
        for crossing in commit.crossings:
            if crossing.period == store.period:
                crossed = store.crossed.setdefault(crossing.tenant_id, [])
                if crossing.threshold not in crossed:
                    crossed.append(crossing.threshold)
            self._emit_crossing(crossing)

    def _unbill(self, store: CostStore, row: CostRecord) -> None:
        """Take back a row the ledger had already billed (its cost was added on apply)."""
        store.add(row.tenant_id, row.model_version, -row.cost, -row.input_tokens,
                  -row.output_tokens, -1)
        store.own_total -= row.cost
        store.own_by_tenant[row.tenant_id] -= row.cost
        key = period_key(self._period, row.time_ns)
        if key == store.period and row.tenant_id in store.period_spend:
            store.period_spend[row.tenant_id] -= row.cost
        if row.request_id is not None:
            for generation in store.by_request:
                if row.request_id in generation:
                    generation[row.request_id] -= row.cost
                    break

    def _maybe_refresh(self) -> None:
        if time.monotonic() - self._last_refresh >= self._refresh_interval:
            self._refresh()

    def _refresh(self) -> None:
        """Reload the totals from the ledger and add this process's uncommitted rows."""
        link = self._link
        assert link is not None
        now_key = period_key(self._period, time.time_ns())
        # Stamped before the read: an unreachable ledger is tried at most once an interval.
        self._last_refresh = time.monotonic()
        totals = link.read(lambda ledger: ledger.load_totals(now_key))
        if totals is None:
            return
        store = self._store
        store.clear_totals()
        for (tenant, model), (cost, tokens_in, tokens_out, calls) in (
            totals.by_tenant_model.items()
        ):
            store.add(tenant, model, cost, tokens_in, tokens_out, calls)
        store.period = now_key
        store.period_spend = dict(totals.period_spend)
        crossed: dict[str, list[Decimal]] = {}
        for tenant, threshold in sorted(totals.crossed):
            crossed.setdefault(tenant, []).append(threshold)
        store.crossed = crossed
        for row in link.pending:
            store.add(row.tenant_id, row.model_version, row.cost, row.input_tokens,
                      row.output_tokens, 1)
            if period_key(self._period, row.time_ns) == now_key:
                store.period_spend[row.tenant_id] = (
                    store.period_spend.get(row.tenant_id, _ZERO) + row.cost
                )

    def _fresh(self, fn: Callable[[CostStore], ResultT]) -> Callable[[CostStore], ResultT]:
        """A read that first reloads stale ledger totals (only on the collector thread)."""
        if self._link is None:
            return fn

        def read(store: CostStore) -> ResultT:
            if self.owns_current_thread():
                self._maybe_refresh()
                store = self._store
            return fn(store)

        return read

    def _snapshot(self, store: CostStore) -> CostSnapshot:
        usage = {
            tenant: TenantUsage(
                tenant_id=tenant,
                generations=store.generations.get(tenant, 0),
                input_tokens=store.input_tokens.get(tenant, 0),
                output_tokens=store.output_tokens.get(tenant, 0),
                cost=cost,
            )
            for tenant, cost in store.by_tenant.items()
        }
        budgets = {
            tenant: self._budget_status(store, tenant, budget)
            for tenant, budget in self._budgets.items()
        }
        return CostSnapshot(
            total=store.total,
            by_tenant=MappingProxyType(dict(store.by_tenant)),
            by_model=MappingProxyType(dict(store.by_model)),
            by_tenant_model=MappingProxyType(dict(store.by_tenant_model)),
            usage=MappingProxyType(usage),
            unpriced=MappingProxyType(dict(store.unpriced)),
            budgets=MappingProxyType(budgets),
            requests_tracked=sum(map(len, store.by_request)),
            requests_evicted=store.requests_evicted,
            duplicates=store.duplicates,
            process_total=store.own_total,
            process_by_tenant=MappingProxyType(dict(store.own_by_tenant)),
        )

    def _budget_status(self, store: CostStore, tenant: str, budget: Decimal) -> BudgetStatus:
        """A tenant's budget in the period containing now (spend 0 in a period just begun)."""
        now_key = period_key(self._period, time.time_ns())
        current = now_key == store.period
        return BudgetStatus(
            tenant_id=tenant,
            budget=budget,
            spent=store.period_spend.get(tenant, _ZERO) if current else _ZERO,
            thresholds_crossed=tuple(store.crossed.get(tenant, ())) if current else (),
            period=now_key,
        )

    # --- any thread -------------------------------------------------------

    def after_fork_in_child(self, *, restart: bool) -> int:
        """In a forked child, also reload the ledger's totals at the first chance."""
        self._last_refresh = -float("inf")
        return super().after_fork_in_child(restart=restart)

    def snapshot(self, timeout: float = 5.0) -> CostSnapshot:
        """An immutable copy of every aggregate (after all earlier records)."""
        return self.query(self._fresh(self._snapshot), timeout)

    def tenant_cost(self, tenant_id: str, timeout: float = 5.0) -> Decimal:
        """One tenant's cumulative cost (``Decimal('0')`` if unknown)."""
        return self.query(
            self._fresh(lambda store: store.by_tenant.get(tenant_id, _ZERO)), timeout)

    def request_cost(self, request_id: str, timeout: float = 5.0) -> Decimal | None:
        """One request's cost, or ``None`` if unknown or evicted."""
        return self.query(lambda store: _request_cost(store, request_id), timeout)

    def model_cost(self, model_version: str, timeout: float = 5.0) -> Decimal:
        """One model version's cumulative cost."""
        return self.query(
            self._fresh(lambda store: store.by_model.get(model_version, _ZERO)), timeout)

    def total_cost(self, timeout: float = 5.0) -> Decimal:
        """The cumulative cost over every tenant."""
        return self.query(self._fresh(lambda store: store.total), timeout)

    def budget_status(self, tenant_id: str, timeout: float = 5.0) -> BudgetStatus | None:
        """A tenant's budget in the current period, or ``None`` if it has no budget."""
        budget = self._budgets.get(tenant_id)
        if budget is None:
            return None
        return self.query(
            self._fresh(lambda store: self._budget_status(store, tenant_id, budget)), timeout)


def _request_cost(store: CostStore, request_id: str) -> Decimal | None:
    for generation in reversed(store.by_request):
        cost = generation.get(request_id)
        if cost is not None:
            return cost
    return None

