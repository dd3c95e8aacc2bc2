"""Tests for :mod:`collectors.pipeline`: staged flushes, bounded close, health.

Pipelines of small test collectors show the exact semantics (a flush does
not wait for records enqueued after it; stages; timeouts); the real
``Observability`` container shows the same through the facades (budget
events, close under load, reads after close). Nothing sleeps: a ``Gate``
record holds a collector thread until the test releases it.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from app.observability import Observability
from collectors.audit import AuditStoreCollector
from collectors.base import Collector, CollectorState
from collectors.cost import CostStoreCollector
from collectors.export import CallableExporter
from collectors.metrics import MetricsStoreCollector
from collectors.pipeline import FlushResult, Pipeline, PipelineState
from collectors.records import CostRecord
from collectors.snapshots import MetricSpec

JOIN = 10.0


class Gate(NamedTuple):
    entered: threading.Event
    release: threading.Event
    tag: str = "gate"


class Recorder(Collector[list[Any]]):
    """Stores every record; a ``Gate`` blocks the thread until released."""

    def __init__(self, name: str = "rec", *, downstream: tuple[str, ...] = (),
                 **kwargs: Any) -> None:
        self.downstream = downstream
        self.marker_requested = threading.Event()
        super().__init__(name, **kwargs)

    def _new_store(self) -> list[Any]:
        return []

    def _apply(self, record: Any) -> None:
        if type(record) is Gate:
            record.entered.set()
            if not record.release.wait(JOIN):
                raise TimeoutError("gate never released")
        self._store.append(record)

    def request_flush(self) -> Any:
        future = super().request_flush()
        self.marker_requested.set()
        return future


class Kit:
    """Makes pipelines and gates; releases and closes all of them at teardown."""

    def __init__(self) -> None:
        self.pipelines: list[Pipeline] = []
        self.gates: list[Gate] = []

    def pipeline(self, *collectors: Collector[Any], start: bool = True) -> Pipeline:
        pipeline = Pipeline(collectors, drain_at_exit=False)
        self.pipelines.append(pipeline)
        if start:
            pipeline.start()
        return pipeline

    def hold(self, collector: Collector[Any], tag: str = "gate") -> Gate:
        gate = Gate(threading.Event(), threading.Event(), tag)
        self.gates.append(gate)
        assert collector.send(gate)
        assert gate.entered.wait(JOIN)
        return gate

    def close(self) -> None:
        for gate in self.gates:
            gate.release.set()
        for pipeline in self.pipelines:
            pipeline.close(JOIN)


@pytest.fixture
def kit() -> Iterator[Kit]:
    k = Kit()
    try:
        yield k
    finally:
        k.close()


def _run_threads(count: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN * 2)
        assert not thread.is_alive(), "a worker thread hung"


# --- construction and stages ----------------------------------------------------


def test_duplicate_collector_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Pipeline([Recorder("a"), Recorder("a")], drain_at_exit=False)


def test_a_cycle_of_collectors_is_refused() -> None:
    with pytest.raises(ValueError, match="cycle"):
        Pipeline([Recorder("a", downstream=("b",)), Recorder("b", downstream=("a",))],
                 drain_at_exit=False)


def test_stages_put_every_collector_after_those_that_feed_it(kit: Kit) -> None:
    pipeline = kit.pipeline(
        Recorder("sink"), Recorder("mid", downstream=("sink",)),
        Recorder("source", downstream=("mid", "sink")), Recorder("alone"), start=False,
    )
    stages = pipeline._stages
    position = {name: index for index, stage in enumerate(stages) for name in stage}
    assert position["source"] < position["mid"] < position["sink"]
    assert position["alone"] == 0


def test_start_is_idempotent_and_start_after_close_raises(kit: Kit) -> None:
    pipeline = kit.pipeline(Recorder(), start=False)
    assert pipeline.state is PipelineState.CREATED
    pipeline.start()
    pipeline.start()
    assert pipeline.state is PipelineState.RUNNING
    pipeline.close(JOIN)
    with pytest.raises(RuntimeError, match="closed"):
        pipeline.start()


# --- flush semantics ------------------------------------------------------------


def test_flush_covers_earlier_records_and_is_not_delayed_by_later_ones(kit: Kit) -> None:
    collector = Recorder()
    pipeline = kit.pipeline(collector)
    first = kit.hold(collector)
    for i in range(100):
        collector.send(i)
    results: list[FlushResult] = []
    flusher = threading.Thread(target=lambda: results.append(pipeline.flush(JOIN)), daemon=True)
    flusher.start()
    assert collector.marker_requested.wait(JOIN)
    late = Gate(threading.Event(), threading.Event(), "late")
    kit.gates.append(late)
    collector.send(late)  # behind the marker; its handler blocks until released
    first.release.set()
    flusher.join(JOIN)
    assert not flusher.is_alive(), "flush waited for a record enqueued after it"
    assert results[0].complete
    assert late.entered.wait(JOIN)  # the late record is being handled, not finished
    assert collector.stats().applied == 101
    late.release.set()
    assert pipeline.flush(JOIN)
    assert collector.stats().applied == 102


def test_flush_racing_with_producers_covers_each_producers_own_records(kit: Kit) -> None:
    a, b = Recorder("a"), Recorder("b")
    pipeline = kit.pipeline(a, b)
    failures: list[str] = []
    start = threading.Barrier(8)

    def worker(tid: int) -> None:
        start.wait(JOIN)
        for r in range(1, 11):
            for i in range(100):
                a.send((tid, i))
                b.send((tid, i))
            result = pipeline.flush(JOIN)
            if not result:
                failures.append(f"{tid}: {result}")
            for collector in (a, b):
                mine = collector.query(lambda s: sum(1 for x in s if x[0] == tid))
                if mine != r * 100:
                    failures.append(f"{tid}: {collector.name} has {mine}, wanted {r * 100}")

    _run_threads(8, worker)
    assert failures == []
    assert a.stats().applied == b.stats().applied == 8_000


def test_aflush_works_on_two_event_loops_one_after_the_other(kit: Kit) -> None:
    collector = Recorder()
    pipeline = kit.pipeline(collector)

    async def round_trip(tag: str) -> FlushResult:
        for i in range(500):
            collector.send((tag, i))
        return await pipeline.aflush(JOIN)

    first = asyncio.run(round_trip("first"))
    second = asyncio.run(round_trip("second"))
    assert first.complete and second.complete
    assert collector.stats().applied == 1_000
    assert collector.query(lambda s: [x[0] for x in s].count("second")) == 500


def test_aflush_from_several_threads_each_with_its_own_loop(kit: Kit) -> None:
    collector = Recorder()
    pipeline = kit.pipeline(collector)
    results: list[tuple[int, bool, int]] = []

    def worker(tid: int) -> None:
        async def main() -> None:
            for r in range(1, 6):
                for i in range(200):
                    collector.send((tid, i))
                result = await pipeline.aflush(JOIN)
                mine = collector.query(lambda s: sum(1 for x in s if x[0] == tid))
                results.append((tid, result.complete, mine - r * 200))

        asyncio.run(main())

    _run_threads(6, worker)
    assert len(results) == 30
    assert all(complete and missing == 0 for _, complete, missing in results)


def test_aflush_times_out_without_blocking_the_loop(kit: Kit) -> None:
    collector = Recorder()
    pipeline = kit.pipeline(collector)
    kit.hold(collector)
    collector.send("queued")

    async def main() -> tuple[FlushResult, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        result = await pipeline.aflush(0.05)
        task.cancel()
        return result, ticks

    result, ticks = asyncio.run(main())
    assert not result and result.timed_out and not result.dead
    assert result.pending == 2  # the record and the marker
    assert ticks > 1  # the loop kept running while the flush waited


def test_flush_result_fields(kit: Kit) -> None:
    collector = Recorder(maxsize=4)
    pipeline = kit.pipeline(collector)
    assert kit.pipeline(Recorder("idle"), start=False).flush(JOIN).complete is False
    gate = kit.hold(collector)
    for i in range(6):
        collector.send(i)  # four queued, two dropped
    timed_out = pipeline.flush(0.05)
    assert isinstance(timed_out, FlushResult)
    assert not timed_out
    assert (timed_out.complete, timed_out.timed_out, timed_out.dead) == (False, True, ())
    assert timed_out.pending == 5  # four records and the marker
    assert timed_out.dropped == 2
    assert 0.04 <= timed_out.elapsed < JOIN
    gate.release.set()
    done = pipeline.flush(JOIN)
    assert done and done.complete and not done.timed_out
    assert (done.pending, done.dropped, done.dead) == (0, 2, ())
    with pytest.raises(AttributeError):
        done.complete = False  # type: ignore[misc]


# --- staged flush with the real stores ----------------------------------------------


class _HeldCost(CostStoreCollector):
    """A cost collector whose thread waits until its flush marker is requested."""

    def __init__(self, **kwargs: Any) -> None:
        self.go = threading.Event()
        super().__init__(**kwargs)

    def _apply(self, record: Any) -> None:
        if not self.go.wait(JOIN):
            raise TimeoutError("never released")
        super()._apply(record)

    def request_flush(self) -> Any:
        future = super().request_flush()
        self.go.set()
        return future


def test_a_staged_flush_covers_the_budget_events_the_cost_collector_emits(kit: Kit) -> None:
    catalog = {"budget_threshold_crossed": MetricSpec(
        name="budget_threshold_crossed", prom_name="b", type="counter", help="h",
        label_names=("tenant_id", "threshold"))}
    metrics = MetricsStoreCollector(catalog)
    audit = AuditStoreCollector()
    cost = _HeldCost(budgets={"t1": Decimal("1.00"), "t2": Decimal("1.50")},
                     metrics=metrics, audit=audit)
    pipeline = kit.pipeline(metrics, cost, audit)
    for tenant in ("t1", "t2"):
        for index in range(25):  # 1.25 each: t1 crosses 0.8 and 1.0, t2 only 0.8
            cost.send(CostRecord(event_id=f"{tenant}-{index}", tenant_id=tenant, request_id=None,
                                 model_version="m", prompt_version=None, input_tokens=1,
                                 output_tokens=1, cost=Decimal("0.05"), priced=True,
                                 time_ns=time.time_ns()))
    # The cost thread only starts applying once its marker is queued; a flush
    # that marked metrics and audit at the same time would miss the events.
    result = pipeline.flush(JOIN)
    assert result.complete
    assert metrics.stats().applied == 3 and audit.stats().applied == 3
    assert metrics.stats().queue_depth == audit.stats().queue_depth == 0
    t1_events = audit.events(event="budget.threshold_crossed", tenant_id="t1")
    assert [dict(e.fields)["threshold"] for e in t1_events] == ["0.8", "1.0"]
    families, _ = metrics.snapshot()
    series = {s.labels: s.value for s in families[0].series}
    assert series == {
        (("tenant_id", "t1"), ("threshold", "0.8")): 1,
        (("tenant_id", "t1"), ("threshold", "1.0")): 1,
        (("tenant_id", "t2"), ("threshold", "0.8")): 1,
    }
    assert cost.snapshot().by_tenant == {"t1": Decimal("1.25"), "t2": Decimal("1.25")}


def test_budget_events_through_the_facades_after_one_flush(make_obs: Any) -> None:
    obs: Observability = make_obs(budgets={"acme": Decimal("0.01")}, id_seed=7)
    for _ in range(20):
        obs.costs.add_cost(tenant_id="acme", model_version="risk-llm-v2",
                           input_tokens=100, output_tokens=50)  # $0.0006 each
    assert obs.flush()
    crossed = obs.metrics.export_metrics()["budget_threshold_crossed"]["series"]
    assert {(s["labels"]["threshold"], s["value"]) for s in crossed} == {("0.8", 1), ("1.0", 1)}
    events = obs.audit.events(event="budget.threshold_crossed")
    assert len(events) == 2
    health = obs.health()
    assert health.collectors["metrics"].queue_depth == 0
    assert obs.costs.get_tenant_cost("acme") == Decimal("0.0120")


# --- close ------------------------------------------------------------------------


def test_close_under_load_from_16_threads_is_bounded_and_exact(make_obs: Any) -> None:
    obs: Observability = make_obs(close_timeout_seconds=5.0)
    threads, per_thread = 16, 3_000
    start = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def record(tid: int) -> None:
        start.wait(JOIN)
        try:
            for i in range(per_thread):
                obs.metrics.increment("request_count", tenant_id=f"t{tid % 4}")
                if i % 10 == 0:
                    obs.metrics.observe_latency("request_latency", 0.01, tenant_id="t",
                                                workflow="w", status="ok")
        except BaseException as exc:  # recording must never raise, even mid-close
            errors.append(exc)

    pool = [threading.Thread(target=record, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    start.wait(JOIN)
    started = time.monotonic()
    result = obs.close(timeout=5.0)
    assert time.monotonic() - started < 6.0
    for thread in pool:
        thread.join(JOIN)
        assert not thread.is_alive()
    assert errors == []
    assert result.complete
    assert obs.state is PipelineState.CLOSED
    stats = obs.health().collectors["metrics"]
    sent = threads * per_thread + threads * (per_thread // 10)
    assert stats.applied + stats.dropped_total == sent
    assert set(stats.dropped) <= {"closed", "queue_full"}
    exported = obs.metrics.export_metrics()  # reads work after close
    counted = sum(s["value"] for s in exported["request_count"]["series"])
    observed = sum(s["count"] for s in exported["request_latency"]["series"])
    assert counted + observed == stats.applied


def test_recording_after_close_is_dropped_as_closed_and_raises_nothing(make_obs: Any) -> None:
    obs: Observability = make_obs()
    obs.metrics.increment("request_count", tenant_id="t")
    assert obs.close().complete
    obs.metrics.increment("request_count", tenant_id="t")
    obs.metrics.observe_latency("request_latency", 0.1, tenant_id="t", workflow="w", status="ok")
    obs.costs.add_cost(tenant_id="t", model_version="risk-llm-v1", input_tokens=1,
                       output_tokens=1)
    obs.costs.reset()
    obs.audit.log("after.close", tenant_id="t")
    with obs.tracing.span("after-close", tenant_id="t"):
        pass
    dropped = {name: dict(s.dropped) for name, s in obs.health().collectors.items()}
    assert dropped == {
        "metrics": {"closed": 2}, "cost": {"closed": 2}, "trace": {"closed": 1},
        "audit": {"closed": 1},
    }
    series = obs.metrics.export_metrics()["request_count"]["series"]
    assert series == [{"labels": {"tenant_id": "t"}, "value": 1}]


def test_close_is_idempotent_and_flush_after_close_does_not_wait(make_obs: Any) -> None:
    obs: Observability = make_obs()
    obs.metrics.increment("request_count", tenant_id="t")
    first = obs.close()
    second = obs.close()
    assert first.complete and second.complete
    assert obs.flush(0.01).complete
    assert all(s.state is CollectorState.STOPPED for s in obs.health().collectors.values())
    assert not obs.health().healthy


def test_close_gives_up_at_its_timeout_and_accounts_for_the_rest(kit: Kit) -> None:
    slow, quick = Recorder("slow"), Recorder("quick")
    pipeline = kit.pipeline(slow, quick)
    gate = kit.hold(slow)
    for i in range(10):
        slow.send(i)
        quick.send(i)
    started = time.monotonic()
    result = pipeline.close(0.1)
    assert time.monotonic() - started < 2.0
    assert not result.complete and result.timed_out
    assert slow.send("late") is False
    gate.release.set()
    slow._thread.join(JOIN)  # type: ignore[union-attr]
    assert slow.state is CollectorState.STOPPED  # the thread marked itself on its way out
    assert slow.query(len) == 11
    stats = slow.stats()
    assert (stats.applied, dict(stats.dropped)) == (11, {"closed": 1})


def test_reads_after_close_see_everything_recorded_before_it(make_obs: Any) -> None:
    obs: Observability = make_obs(id_seed=3)
    obs.metrics.increment("request_count", 3, tenant_id="t")
    obs.costs.add_cost(tenant_id="t", model_version="risk-llm-v1", input_tokens=1000,
                       output_tokens=1000)
    with obs.tracing.span("root", tenant_id="t"):
        pass
    obs.audit.log("done", tenant_id="t")
    obs.close()
    assert obs.metrics.export_metrics()["request_count"]["series"][0]["value"] == 3
    assert obs.costs.get_total_cost() == Decimal("0.0035")
    assert [s.name for s in obs.tracing.finished_spans()] == ["root"]
    assert [e.event for e in obs.audit.events()] == ["done"]


# --- health -----------------------------------------------------------------------


def test_health_never_blocks_producers_while_a_collector_is_held(kit: Kit) -> None:
    collector = Recorder(maxsize=128)
    pipeline = kit.pipeline(collector, Recorder("other"))
    gate = kit.hold(collector)
    producers, per_producer = 4, 5_000
    healths: list[int] = []

    def produce(tid: int) -> None:
        if tid == producers:  # one extra thread reads health the whole time
            for _ in range(2_000):
                healths.append(pipeline.health().collectors["rec"].queue_depth)
            return
        for i in range(per_producer):
            collector.send((tid, i))

    _run_threads(producers + 1, produce)  # all finish while the gate is still closed
    assert not gate.release.is_set()
    assert len(healths) == 2_000 and max(healths) <= 128 + producers
    health = pipeline.health()
    assert health.healthy
    assert health.collectors["rec"].dropped_total > 0
    gate.release.set()
    assert pipeline.flush(JOIN)
    stats = collector.stats()
    assert stats.applied + stats.dropped_total == 1 + producers * per_producer
    assert pipeline.health().dropped_total == stats.dropped_total


# --- unclosed pipelines, and waits on a pipeline's own threads -------------------


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before]


@pytest.mark.timeout(120)
def test_unclosed_containers_are_collected_warn_and_stop_their_threads() -> None:
    before = set(threading.enumerate())
    count = 200
    refs = []

    with pytest.warns(ResourceWarning) as warned:
        for _ in range(count):  # drain_at_exit is on: the exit hook must not keep them alive
            refs.append(weakref.ref(Observability().pipeline))
        gc.collect()

    assert [ref() for ref in refs] == [None] * count
    unclosed = [w for w in warned if "unclosed observability pipeline" in str(w.message)]
    assert len(unclosed) == count
    for thread in _new_threads(before):  # collector threads and the closing threads
        thread.join(JOIN)
    assert not _new_threads(before)
    assert threading.active_count() == len(before)


def test_a_closed_or_never_started_pipeline_is_collected_without_a_warning() -> None:
    before = set(threading.enumerate())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        closed = Observability()
        closed.close()
        idle = Observability(start=False)
        refs = [weakref.ref(closed.pipeline), weakref.ref(idle.pipeline)]
        del closed, idle
        gc.collect()

    assert [ref() for ref in refs] == [None, None]
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not _new_threads(before)


@pytest.mark.timeout(60)
def test_at_exit_an_unclosed_container_is_still_drained_without_a_warning(
    tmp_path: Path,
) -> None:
    out = tmp_path / "spans.txt"
    script = f"""
import warnings
warnings.simplefilter("error", ResourceWarning)
from app.observability import Observability
from collectors.export import CallableExporter

def export(spans):
    with open({str(out)!r}, "a", encoding="utf-8") as f:
        f.writelines(s.name + "\\n" for s in spans)

obs = Observability(exporters=[CallableExporter(export, name="file")])
with obs.tracing.span("left-open"):
    pass
"""  # no close(): the exit hook drains the pipeline and stops the exporter
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[3],
        capture_output=True, text=True, timeout=50, check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert out.read_text(encoding="utf-8") == "left-open\n"


def test_flush_and_close_on_an_exporter_thread_fail_at_once() -> None:
    seen: list[tuple[str, float, BaseException | None]] = []
    obs: Observability | None = None

    def export(spans: Any) -> None:
        assert obs is not None
        for name, call in (("flush", lambda: obs.flush(timeout=30)),
                           ("aflush", lambda: asyncio.run(obs.aflush(timeout=30))),
                           ("flush_exporters", lambda: obs.flush_exporters(timeout=30)),
                           ("close", lambda: obs.close(timeout=30))):
            started = time.monotonic()
            try:
                call()
            except RuntimeError as exc:
                seen.append((name, time.monotonic() - started, exc))
            else:
                seen.append((name, time.monotonic() - started, None))

    obs = Observability(exporters=[CallableExporter(export, name="probe")])
    try:
        with obs.tracing.span("one"):
            pass
        assert obs.flush(timeout=JOIN, exporters=True)
        assert obs.state is PipelineState.RUNNING  # the refused close changed nothing
    finally:
        obs.close(JOIN)

    assert [name for name, _, _ in seen] == ["flush", "aflush", "flush_exporters", "close"]
    for name, elapsed, error in seen:
        assert error is not None, name
        assert "exporter-probe" in str(error) and "would wait for itself" in str(error)
        assert elapsed < 1.0, (name, elapsed)


class Call(NamedTuple):
    fn: Callable[[], None]


class Caller(Recorder):
    """Runs ``Call`` records on the collector thread (as a handler or log processor might)."""

    def _apply(self, record: Any) -> None:
        if type(record) is Call:
            record.fn()
        else:
            super()._apply(record)


def test_flush_on_a_collector_thread_fails_at_once(kit: Kit) -> None:
    collector = Caller()
    pipeline = kit.pipeline(collector, Recorder("other"))
    errors: list[BaseException] = []
    elapsed: list[float] = []

    def flush_from_inside() -> None:
        started = time.monotonic()
        try:
            pipeline.flush(30)
        except RuntimeError as exc:
            errors.append(exc)
        elapsed.append(time.monotonic() - started)

    assert collector.send(Call(flush_from_inside))
    assert pipeline.flush(JOIN)

    assert len(errors) == 1 and elapsed[0] < 1.0
    assert "'collector-rec'" in str(errors[0]) and "collector 'rec'" in str(errors[0])
    assert pipeline.owns_current_thread() is False  # the test's thread is not one of them
