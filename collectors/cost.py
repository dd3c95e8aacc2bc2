"""The cost store and the collector thread that owns it.

All money is ``Decimal``: the facade prices tokens with a fixed rate per model
version (``app.observability.cost_tracker``), and this store only ever adds
``Decimal`` values, so totals are exact whatever the order records arrive in.

Budgets: a tenant may have a budget; the first time its spend reaches each
configured fraction of it (e.g. 0.8 and 1.0) the collector emits one audit
event and one ``budget_threshold_crossed`` metric record to the collectors
downstream of it. Crossing state lives in the store, so ``reset()`` re-arms
the thresholds.
"""

from __future__ import annotations

import time
from collections import OrderedDict
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
    """Cost aggregates. Owned and mutated by one :class:`CostStoreCollector` thread."""

    __slots__ = (
        "by_model", "by_request", "by_tenant", "by_tenant_model", "crossed", "generations",
        "input_tokens", "output_tokens", "requests_evicted", "total", "unpriced",
    )

    def __init__(self) -> None:
        self.total = _ZERO
        self.by_tenant: dict[str, Decimal] = {}
        self.by_model: dict[str, Decimal] = {}
        self.by_tenant_model: dict[tuple[str, str], Decimal] = {}
        self.by_request: OrderedDict[str, Decimal] = OrderedDict()
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
        max_tracked_requests: Per-request costs kept (oldest evicted, counted).
        metrics: Where ``budget_threshold_crossed`` records go (optional).
        audit: Where budget audit events go (optional).
        **kwargs: Passed to :class:`~collectors.base.Collector`.
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
        self._max_requests = max_tracked_requests
        self._metrics_out = metrics
        self._audit_out = audit
        super().__init__("cost", **kwargs)

    # --- runs on the collector thread only (or before it starts) ---------

    def _new_store(self) -> CostStore:
        return CostStore()

    def _apply(self, record: CostRecord | ResetRecord) -> None:
        """Add one priced usage to every aggregate. Collector thread only."""
        store = self._store
        if type(record) is ResetRecord:
            self._store = CostStore()
            return
        assert isinstance(record, CostRecord)
        tenant, model, cost = record.tenant_id, record.model_version, record.cost
        store.total += cost
        before = store.by_tenant.get(tenant, _ZERO)
        store.by_tenant[tenant] = after = before + cost
        store.by_model[model] = store.by_model.get(model, _ZERO) + cost
        pair = (tenant, model)
        store.by_tenant_model[pair] = store.by_tenant_model.get(pair, _ZERO) + cost
        store.generations[tenant] = store.generations.get(tenant, 0) + 1
        store.input_tokens[tenant] = store.input_tokens.get(tenant, 0) + record.input_tokens
        store.output_tokens[tenant] = store.output_tokens.get(tenant, 0) + record.output_tokens
        if not record.priced:
            store.unpriced[model] = store.unpriced.get(model, 0) + 1
        if record.request_id is not None:
            requests = store.by_request
            requests[record.request_id] = requests.get(record.request_id, _ZERO) + cost
            if len(requests) > self._max_requests:
                requests.popitem(last=False)
                store.requests_evicted += 1
        budget = self._budgets.get(tenant)
        if budget is not None:
            self._check_budget(store, tenant, budget, before, after, record)

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
            requests_tracked=len(store.by_request),
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
        return self.query(lambda store: store.by_request.get(request_id), timeout)

    def model_cost(self, model_version: str, timeout: float = 5.0) -> Decimal:
        """One model version's cumulative cost."""
        return self.query(lambda store: store.by_model.get(model_version, _ZERO), timeout)

    def total_cost(self, timeout: float = 5.0) -> Decimal:
        """The cumulative cost over every tenant."""
        return self.query(lambda store: store.total, timeout)
