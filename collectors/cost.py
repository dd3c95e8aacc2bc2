"""The cost store and the collector thread that owns it.

All money is ``Decimal``: the facade prices tokens with a fixed rate per model
version (``app.observability.cost_tracker``), and this store only ever adds
``Decimal`` values, so totals are exact whatever the order records arrive in.

Per-request costs are the one part that forgets: they are kept for the most
recent requests only, in generations of plain dicts dropped whole (see
:class:`CostStoreCollector`). Totals per tenant, model version and tenant x
model, usage and the cumulative cost never forget anything.

Budgets: a tenant may have a budget; the first time its spend reaches each
configured fraction of it (e.g. 0.8 and 1.0) the collector emits one audit
event and one ``budget_threshold_crossed`` metric record to the collectors
downstream of it. Crossing state lives in the store, so ``reset()`` re-arms
the thresholds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from collectors.base import Collector
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
    """One tenant's spend against its budget."""

    tenant_id: str
    budget: Decimal
    spent: Decimal
    thresholds_crossed: tuple[Decimal, ...]

    @property
    def fraction(self) -> Decimal:
        """Spend as a fraction of the budget."""
        return self.spent / self.budget if self.budget else Decimal("Infinity")

    @property
    def over_budget(self) -> bool:
        """Whether spend has reached the budget."""
        return self.spent >= self.budget


@dataclass(frozen=True, slots=True, kw_only=True)
class CostSnapshot:
    """An immutable copy of the cost store."""

    total: Decimal
    by_tenant: Mapping[str, Decimal]
    by_model: Mapping[str, Decimal]
    by_tenant_model: Mapping[tuple[str, str], Decimal]
    usage: Mapping[str, TenantUsage]
    unpriced: Mapping[str, int]
    budgets: Mapping[str, BudgetStatus]
    requests_tracked: int
    requests_evicted: int


class CostStore:
    """Cost aggregates. Owned and mutated by one :class:`CostStoreCollector` thread.

    ``by_request`` holds the per-request costs in generations (request id ->
    cost dicts), oldest first, at most ``request_generations`` of them; new
    requests join the last one. A request is in at most one generation.
    """

    __slots__ = (
        "by_model", "by_request", "by_tenant", "by_tenant_model", "crossed", "generations",
        "input_tokens", "output_tokens", "requests_evicted", "total", "unpriced",
    )

    def __init__(self, request_generations: int = _REQUEST_GENERATIONS) -> None:
        self.total = _ZERO
        self.by_tenant: dict[str, Decimal] = {}
        self.by_model: dict[str, Decimal] = {}
        self.by_tenant_model: dict[tuple[str, str], Decimal] = {}
        self.by_request: deque[dict[str, Decimal]] = deque([{}], maxlen=request_generations)
        self.requests_evicted = 0
        self.generations: dict[str, int] = {}
        self.input_tokens: dict[str, int] = {}
        self.output_tokens: dict[str, int] = {}
        self.unpriced: dict[str, int] = {}
        self.crossed: dict[str, list[Decimal]] = {}


class CostStoreCollector(Collector[CostStore]):
    """Actor owning the :class:`CostStore`.

    Args:
        budgets: Tenant id -> budget in USD.
        budget_thresholds: Fractions of a budget that raise an event once.
        max_tracked_requests: Bound ``N`` on the requests whose cost is kept (see below).
        metrics: Where ``budget_threshold_crossed`` records go (optional).
        audit: Where budget audit events go (optional).
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
    cost for it starts it again from that cost.

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
        max_tracked_requests: int = 100_000,
        metrics: Collector[Any] | None = None,
        audit: Collector[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if max_tracked_requests < 1:
            raise ValueError("max_tracked_requests must be at least 1")
        self._budgets = dict(budgets or {})
        self._thresholds = tuple(sorted(budget_thresholds))
        self._generation = max(1, max_tracked_requests // _REQUEST_GENERATIONS)
        self._generations = max_tracked_requests // self._generation
        self._metrics_out = metrics
        self._audit_out = audit
        super().__init__("cost", **kwargs)

    # --- runs on the collector thread only (or before it starts) ---------

    def _new_store(self) -> CostStore:
        return CostStore(self._generations)

    def _apply(self, record: CostRecord | ResetRecord) -> None:
        """Add one priced usage to every aggregate. Collector thread only.

        Runs once per logged generation, on a thread that shares the GIL with
        the workflow: the record is unpacked once and each aggregate's dict is
        read into a local, so every field and table is looked up only once.
        """
        if type(record) is not CostRecord:
            if type(record) is ResetRecord:
                self._store = self._new_store()
                return
            assert isinstance(record, CostRecord)
        store = self._store
        tenant, request, model, input_tokens, output_tokens, cost, priced, _ = record
        store.total += cost
        by_tenant = store.by_tenant
        before = by_tenant.get(tenant, _ZERO)
        by_tenant[tenant] = after = before + cost
        by_model = store.by_model
        by_model[model] = by_model.get(model, _ZERO) + cost
        pair = (tenant, model)
        by_tenant_model = store.by_tenant_model
        by_tenant_model[pair] = by_tenant_model.get(pair, _ZERO) + cost
        generations = store.generations
        generations[tenant] = generations.get(tenant, 0) + 1
        input_totals = store.input_tokens
        input_totals[tenant] = input_totals.get(tenant, 0) + input_tokens
        output_totals = store.output_tokens
        output_totals[tenant] = output_totals.get(tenant, 0) + output_tokens
        if not priced:
            store.unpriced[model] = store.unpriced.get(model, 0) + 1
        if request is not None:  # a request kept already adds to its generation
            for generation in reversed(store.by_request):  # newest first: where repeats are
                if request in generation:
                    generation[request] += cost
                    break
            else:
                self._add_request(store, request, cost)
        if self._budgets:
            budget = self._budgets.get(tenant)
            if budget is not None:
                self._check_budget(store, tenant, budget, before, after, record)

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

    def _check_budget(
        self, store: CostStore, tenant: str, budget: Decimal, before: Decimal, after: Decimal,
        record: CostRecord,
    ) -> None:
        for threshold in self._thresholds:
            limit = budget * threshold
            if before < limit <= after:
                store.crossed.setdefault(tenant, []).append(threshold)
                label = repr(float(threshold))  # canonical: Decimal("1") and "1.0" -> "1.0"
                if self._metrics_out is not None:
                    self._metrics_out.send(
                        MetricRecord(
                            "budget_threshold_crossed",
                            (("tenant_id", tenant), ("threshold", label)),
                            1,
                        )
                    )
                if self._audit_out is not None:
                    self._audit_out.send(
                        AuditRecord(
                            "budget.threshold_crossed",
                            time.time_ns(),
                            (
                                ("tenant_id", tenant),
                                ("threshold", label),
                                ("budget_usd", str(budget)),
                                ("spent_usd", str(after)),
                                ("request_id", record.request_id),
                            ),
                        )
                    )

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
            tenant: BudgetStatus(
                tenant_id=tenant,
                budget=budget,
                spent=store.by_tenant.get(tenant, _ZERO),
                thresholds_crossed=tuple(store.crossed.get(tenant, ())),
            )
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
        )

    # --- any thread -------------------------------------------------------

    def snapshot(self, timeout: float = 5.0) -> CostSnapshot:
        """An immutable copy of every aggregate (after all earlier records)."""
        return self.query(self._snapshot, timeout)

    def tenant_cost(self, tenant_id: str, timeout: float = 5.0) -> Decimal:
        """One tenant's cumulative cost (``Decimal('0')`` if unknown)."""
        return self.query(lambda store: store.by_tenant.get(tenant_id, _ZERO), timeout)

    def request_cost(self, request_id: str, timeout: float = 5.0) -> Decimal | None:
        """One request's cost, or ``None`` if unknown or evicted."""
        return self.query(lambda store: _request_cost(store, request_id), timeout)

    def model_cost(self, model_version: str, timeout: float = 5.0) -> Decimal:
        """One model version's cumulative cost."""
        return self.query(lambda store: store.by_model.get(model_version, _ZERO), timeout)

    def total_cost(self, timeout: float = 5.0) -> Decimal:
        """The cumulative cost over every tenant."""
        return self.query(lambda store: store.total, timeout)


def _request_cost(store: CostStore, request_id: str) -> Decimal | None:
    for generation in reversed(store.by_request):
        cost = generation.get(request_id)
        if cost is not None:
            return cost
    return None
