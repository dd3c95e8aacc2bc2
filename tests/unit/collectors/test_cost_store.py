"""Tests for :mod:`collectors.cost`: exact Decimal aggregates, the request map, budgets.

The cost collector is driven with :class:`CostRecord` messages; its budget
events go to two small sink collectors standing in for metrics and audit.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.base import Collector
from collectors.cost import CostStoreCollector, ResetRecord
from collectors.records import AuditRecord, Batch, CostRecord, MetricRecord

JOIN = 10.0


class Sink(Collector[list[Any]]):
    """Keeps every record it receives."""

    def _new_store(self) -> list[Any]:
        return []

    def _apply(self, record: Any) -> None:
        self._store.append(record)


class HeldCost(CostStoreCollector):
    """A cost collector whose thread can be held inside ``_apply``."""

    def __init__(self, **kwargs: Any) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        super().__init__(**kwargs)

    def _apply(self, record: Any) -> None:
        if record == "hold":
            self.entered.set()
            if not self.release.wait(JOIN):
                raise TimeoutError("never released")
            return
        super()._apply(record)


_EVENT_IDS = itertools.count(1)


def cost(tenant: str, amount: str, *, model: str = "m1", request: str | None = None,
         priced: bool = True, tokens: tuple[int, int] = (10, 20),
         event_id: str | None = None) -> CostRecord:
    """A cost record; each gets a new event id unless one is given (the same id is billed once)."""
    return CostRecord(
        event_id=event_id or f"e{next(_EVENT_IDS)}", tenant_id=tenant, request_id=request,
        model_version=model, prompt_version=None, input_tokens=tokens[0],
        output_tokens=tokens[1], cost=Decimal(amount), priced=priced, time_ns=time.time_ns(),
    )


class Rig:
    """A started cost collector with metrics and audit sinks; all stopped at teardown."""

    def __init__(self) -> None:
        self.collectors: list[Collector[Any]] = []
        self.metrics = self._start(Sink("metrics"))
        self.audit = self._start(Sink("audit"))

    def _start(self, collector: Any) -> Any:
        self.collectors.append(collector)
        collector.start()
        return collector

    def cost(self, cls: type[CostStoreCollector] = CostStoreCollector,
             **kwargs: Any) -> Any:
        return self._start(cls(metrics=self.metrics, audit=self.audit, **kwargs))

    def emitted(self, collector: CostStoreCollector) -> tuple[list[Any], list[Any]]:
        """Flush cost first, then the sinks (the pipeline's staged order)."""
        assert collector.request_flush().result(JOIN)
        assert self.metrics.request_flush().result(JOIN)
        assert self.audit.request_flush().result(JOIN)
        return list(self.metrics.query(tuple)), list(self.audit.query(tuple))

    def close(self) -> None:
        for collector in self.collectors:
            if isinstance(collector, HeldCost):
                collector.release.set()
            collector.stop(JOIN)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    try:
        yield r
    finally:
        r.close()


# --- exact totals ------------------------------------------------------------------------


def test_totals_are_exact_decimals_per_tenant_model_and_pair(rig: Rig) -> None:
    collector = rig.cost()
    for _ in range(10):
        collector.send(cost("t1", "0.1", model="m1"))
    collector.send(Batch((cost("t1", "0.0000001", model="m2"), cost("t2", "2", model="m1"))), 2)
    collector.send(cost("t2", "0", model="unknown", priced=False))
    snap = collector.snapshot(JOIN)
    assert snap.total == Decimal("3.0000001")
    assert type(snap.total) is Decimal
    assert snap.by_tenant == {"t1": Decimal("1.0000001"), "t2": Decimal("2")}
    assert snap.by_model == {"m1": Decimal("3.0"), "m2": Decimal("0.0000001"),
                             "unknown": Decimal("0")}
    assert snap.by_tenant_model[("t1", "m1")] == Decimal("1.0")  # not 0.9999999999999999
    assert snap.unpriced == {"unknown": 1}
    usage = snap.usage["t1"]
    assert (usage.generations, usage.input_tokens, usage.output_tokens) == (11, 110, 220)
    assert snap.usage["t2"].generations == 2
    assert collector.tenant_cost("t1") == Decimal("1.0000001")
    assert collector.tenant_cost("nobody") == Decimal("0")
    assert collector.model_cost("m2") == Decimal("0.0000001")
    assert collector.total_cost() == Decimal("3.0000001")


_amounts = st.decimals(min_value=0, max_value=1000, places=8, allow_nan=False,
                       allow_infinity=False)


@settings(max_examples=40, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(["t1", "t2", "t3"]), st.sampled_from(["m1", "m2"]),
                          _amounts), min_size=1, max_size=200))
def test_any_costs_in_any_order_sum_exactly(entries: list[tuple[str, str, Decimal]]) -> None:
    collector = CostStoreCollector()
    collector.start()
    try:
        for tenant, model, amount in entries:
            collector.send(cost(tenant, str(amount), model=model, tokens=(1, 1)))
        snap = collector.snapshot(JOIN)
        assert snap.total == sum((a for _, _, a in entries), Decimal(0))
        for tenant in {t for t, _, _ in entries}:
            assert snap.by_tenant[tenant] == sum(
                (a for t, _, a in entries if t == tenant), Decimal(0))
        for model in {m for _, m, _ in entries}:
            assert snap.by_model[model] == sum(
                (a for _, m, a in entries if m == model), Decimal(0))
        assert sum(snap.by_tenant_model.values(), Decimal(0)) == snap.total
    finally:
        collector.stop(JOIN)


# --- per request and its bound ------------------------------------------------------


def test_request_costs_are_kept_in_generations_dropped_whole(rig: Rig) -> None:
    collector = rig.cost(max_tracked_requests=32)  # 16 generations of 2 requests
    for i in range(1, 33):
        collector.send(cost("t", "0.1", request=f"r{i}"))
    collector.send(cost("t", "0.01", request="r1"))  # in the oldest generation: added there
    collector.send(cost("t", "0.02", request="r32"))  # in the newest one: evicts nothing
    collector.send(cost("t", "1"))  # no request id: not tracked
    snap = collector.snapshot(JOIN)
    assert (snap.requests_tracked, snap.requests_evicted) == (32, 0)  # full, nothing lost yet
    assert collector.request_cost("r1") == Decimal("0.11")
    assert collector.request_cost("r32") == Decimal("0.12")

    collector.send(cost("t", "0.5", request="r33"))  # a 17th generation: r1 and r2 go together
    snap = collector.snapshot(JOIN)
    assert (snap.requests_tracked, snap.requests_evicted) == (31, 2)
    assert collector.request_cost("r1") is None
    assert collector.request_cost("r2") is None
    assert collector.request_cost("r3") == Decimal("0.1")
    assert collector.request_cost("r33") == Decimal("0.5")
    assert snap.total == Decimal("4.73")  # eviction never touches the totals
    assert snap.by_tenant == {"t": Decimal("4.73")}

    collector.send(cost("t", "0.7", request="r1"))  # evicted, so it starts again (with r33)
    assert collector.snapshot(JOIN).requests_tracked == 32
    collector.send(cost("t", "0.6", request="r34"))  # r3 and r4 go
    snap = collector.snapshot(JOIN)
    assert (snap.requests_tracked, snap.requests_evicted) == (31, 4)
    assert collector.request_cost("r1") == Decimal("0.7")
    assert collector.request_cost("r4") is None
    assert collector.request_cost("r5") == Decimal("0.1")
    assert snap.total == Decimal("6.03")



def test_a_reset_store_keeps_the_request_bound(rig: Rig) -> None:
    collector = rig.cost(max_tracked_requests=5)
    for i in range(8):
        collector.send(cost("t", "1", request=f"r{i}"))
    collector.send_control(ResetRecord())
    for i in range(7):
        collector.send(cost("t", "1", request=f"n{i}"))
    snap = collector.snapshot(JOIN)
    assert (snap.requests_tracked, snap.requests_evicted) == (5, 2)
    assert collector.request_cost("r7") is None
    assert collector.request_cost("n1") is None
    assert collector.request_cost("n2") == Decimal("1")


@pytest.mark.parametrize(("bound", "sent", "kept"), [
    (1, 100, 1),  # the latest only
    (5, 100, 5),  # below 16: generations of one request, exactly the latest N
    (31, 100, 31),
    (32, 100, 32),  # generations of 2: 31 or 32 kept
    (32, 101, 31),
    (100, 300, 96),  # 16 generations of 6: 91 to 96 kept
    (100, 301, 91),
])
def test_the_request_bound_holds(rig: Rig, bound: int, sent: int, kept: int) -> None:
    collector = rig.cost(max_tracked_requests=bound)
    for i in range(sent):
        collector.send(cost("t", "1", request=f"r{i}"))
    snap = collector.snapshot(JOIN)
    assert (snap.requests_tracked, snap.requests_evicted) == (kept, sent - kept)
    assert collector.request_cost(f"r{sent - 1}") == Decimal("1")  # the latest is kept
    assert collector.request_cost(f"r{sent - kept}") == Decimal("1")  # so are the last `kept`
    assert collector.request_cost(f"r{sent - kept - 1}") is None
    assert snap.total == Decimal(sent)


def test_the_default_bound_keeps_93751_to_100000_requests(rig: Rig) -> None:
    collector = rig.cost()
    records = [cost("t", "0.001", request=f"r{i}") for i in range(100_001)]
    for start in range(0, 100_000, 1_000):
        collector.send(Batch(tuple(records[start:start + 1_000])), 1_000)
    snap = collector.snapshot(JOIN)
    assert (snap.requests_tracked, snap.requests_evicted) == (100_000, 0)
    collector.send(records[-1])
    snap = collector.snapshot(JOIN)
    assert (snap.requests_tracked, snap.requests_evicted) == (93_751, 6_250)
    assert collector.request_cost("r6249") is None
    assert collector.request_cost("r6250") == Decimal("0.001")
    assert snap.total == Decimal("100.001")


@settings(max_examples=40, deadline=None, database=None)
@given(st.integers(min_value=1, max_value=48),
       st.lists(st.tuples(st.integers(min_value=0, max_value=59), st.integers(0, 99)),
                max_size=150))
def test_request_costs_follow_the_generation_model(
    bound: int, entries: list[tuple[int, int]]
) -> None:
    """Against a model of the documented rule: requests numbered by first cost."""
    size = max(1, bound // 16)  # requests per generation
    kept_generations = bound // size
    started: dict[str, int] = {}  # request -> its number (the last time it started)
    sums: dict[str, Decimal] = {}
    count = 0  # requests started so far

    def kept(request: str) -> bool:
        newest = (count - 1) // size
        return request in started and started[request] // size > newest - kept_generations

    collector = CostStoreCollector(max_tracked_requests=bound)
    collector.start()
    try:
        for number, cents in entries:
            request, amount = f"r{number}", Decimal(cents).scaleb(-2)
            collector.send(cost("t", str(amount), model="m", request=request, tokens=(1, 1)))
            if kept(request):
                sums[request] += amount
            else:
                started[request], sums[request] = count, amount
                count += 1
        snap = collector.snapshot(JOIN)
        tracked = {r for r in started if kept(r)}
        assert snap.requests_tracked == len(tracked) <= bound
        assert len(tracked) >= min(count, bound - 2 * size + 2)  # "more than N - 2G"
        assert snap.requests_evicted == count - len(tracked)
        for number in range(60):
            request = f"r{number}"
            assert collector.request_cost(request, JOIN) == (
                sums[request] if request in tracked else None)
        assert snap.total == sum((Decimal(c).scaleb(-2) for _, c in entries), Decimal(0))
    finally:
        collector.stop(JOIN)


def test_a_request_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_tracked_requests"):
        CostStoreCollector(max_tracked_requests=0)


# --- reset ---------------------------------------------------------------------------


def test_reset_is_ordered_with_the_records_around_it(rig: Rig) -> None:
    collector = rig.cost()
    collector.send(cost("t", "1", request="before"))
    collector.send(cost("t", "2"))
    assert collector.send_control(ResetRecord())
    collector.send(cost("t", "0.25", request="after"))
    snap = collector.snapshot(JOIN)
    assert snap.total == Decimal("0.25")
    assert snap.by_tenant == {"t": Decimal("0.25")}
    assert collector.request_cost("before") is None
    assert collector.request_cost("after") == Decimal("0.25")
    assert collector.stats().applied == 4  # the reset counts as a record


def test_reset_passes_a_full_queue_and_keeps_its_place(rig: Rig) -> None:
    collector = rig.cost(cls=HeldCost, maxsize=4)
    collector.send("hold")
    assert collector.entered.wait(JOIN)
    sent = [collector.send(cost("t", "1")) for _ in range(6)]
    assert sent == [True] * 4 + [False] * 2
    assert collector.send_control(ResetRecord())  # past the bound
    assert not collector.send(cost("t", "7"))  # records are still refused
    collector.release.set()
    snap = collector.snapshot(JOIN)
    assert snap.total == Decimal("0")  # the four queued costs came before the reset
    stats = collector.stats()
    assert dict(stats.dropped) == {"queue_full": 3}
    assert stats.applied + stats.dropped_total == 1 + 6 + 1 + 1


# --- budgets ---------------------------------------------------------------------------


def test_each_threshold_crossing_emits_one_metric_and_one_audit_event(rig: Rig) -> None:
    collector = rig.cost(budgets={"t": Decimal("10")})
    for amount in ("5", "2.99", "0.01", "1", "1", "5"):  # 7.99, 8.00 (0.8), 10.00 (1.0), 15
        collector.send(cost("t", amount, request="req-1"))
    collector.send(cost("no-budget", "1000"))
    metrics, audit = rig.emitted(collector)
    assert metrics == [
        MetricRecord("budget_threshold_crossed", (("tenant_id", "t"), ("threshold", "0.8")), 1),
        MetricRecord("budget_threshold_crossed", (("tenant_id", "t"), ("threshold", "1.0")), 1),
    ]
    assert [type(e) for e in audit] == [AuditRecord, AuditRecord]
    assert [e.event for e in audit] == ["budget.threshold_crossed"] * 2
    assert [e.data["threshold"] for e in audit] == ["0.8", "1.0"]
    assert [e.data["spent_usd"] for e in audit] == ["8.00", "10.00"]
    assert audit[0].data["budget_usd"] == "10" and audit[0].data["request_id"] == "req-1"
    status = collector.snapshot(JOIN).budgets["t"]
    assert status.thresholds_crossed == (Decimal("0.8"), Decimal("1.0"))
    assert status.spent == Decimal("15.00") and status.over_budget
    assert status.fraction == Decimal("1.5")
    assert set(collector.snapshot(JOIN).budgets) == {"t"}


def test_one_record_crossing_several_thresholds_emits_each_once(rig: Rig) -> None:
    collector = rig.cost(budgets={"t": Decimal("1")},
                         budget_thresholds=(Decimal("1.0"), Decimal("0.5"), Decimal("0.8")))
    collector.send(cost("t", "3"))
    collector.send(cost("t", "3"))
    metrics, audit = rig.emitted(collector)
    assert [dict(m.labels)["threshold"] for m in metrics] == ["0.5", "0.8", "1.0"]
    assert len(audit) == 3


def test_reset_rearms_the_thresholds(rig: Rig) -> None:
    collector = rig.cost(budgets={"t": Decimal("1")}, budget_thresholds=(Decimal("1"),))
    collector.send(cost("t", "1"))
    collector.send_control(ResetRecord())
    collector.send(cost("t", "0.5"))
    collector.send(cost("t", "0.5"))
    metrics, audit = rig.emitted(collector)
    assert len(metrics) == len(audit) == 2
    assert collector.snapshot(JOIN).budgets["t"].thresholds_crossed == (Decimal("1"),)


def test_budget_events_dropped_downstream_are_counted_there(rig: Rig) -> None:
    rig.metrics.stop(JOIN)  # metrics no longer accepts: the event is dropped, not lost
    collector = rig.cost(budgets={"t": Decimal("1")}, budget_thresholds=(Decimal("1"),))
    collector.send(cost("t", "1"))
    assert collector.request_flush().result(JOIN)
    assert dict(rig.metrics.stats().dropped) == {"closed": 1}
    assert collector.stats().alive
