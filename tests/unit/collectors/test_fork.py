"""``os.fork()`` with a running pipeline: the child gets fresh threads and stores.

The child runs a small body, reports a JSON result through a pipe and leaves
with ``os._exit`` (never through pytest). The parent waits for the report
and for the child's exit with a deadline: ``select`` on the pipe, then on a
pidfd (no polling, no sleeping); a child that overruns is killed and the
test fails.

Python 3.12+ warns (``DeprecationWarning``) when forking a process that has
threads; 3.11 does not. The warning is filtered around the ``fork`` call
only, explicitly, so the global ``filterwarnings = error`` stays in force.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any, NamedTuple, NoReturn

import pytest

from app.observability import Observability, ObservabilitySettings
from collectors.base import Collector
from collectors.pipeline import Pipeline
from collectors.records import Batch, MetricRecord, SpanRecord

JOIN = 10.0
CHILD_DEADLINE = 20.0


def _fork() -> int:
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*fork\(\) may lead to deadlocks", category=DeprecationWarning
        )
        return os.fork()


def _child(read_fd: int, write_fd: int, body: Callable[[], Any]) -> NoReturn:
    """Run ``body`` in the child, write its result (or traceback) to the pipe, exit."""
    code = 1
    try:
        os.close(read_fd)
        payload = {"ok": True, "result": body()}
        code = 0
    except BaseException:
        payload = {"ok": False, "error": traceback.format_exc()}
    finally:
        try:
            data = json.dumps(payload, default=str).encode()
            while data:
                data = data[os.write(write_fd, data):]
        finally:
            os._exit(code)


def _run_in_child(body: Callable[[], Any], while_child_runs: Callable[[], None]) -> Any:
    """Fork; the child runs ``body``; the parent runs ``while_child_runs``, then collects."""
    read_fd, write_fd = os.pipe()
    pid = _fork()
    if pid == 0:
        _child(read_fd, write_fd, body)
    os.close(write_fd)
    pidfd = os.pidfd_open(pid)
    try:
        while_child_runs()
        deadline = time.monotonic() + CHILD_DEADLINE
        chunks: list[bytes] = []
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([read_fd], [], [], remaining)
            if not readable:
                break
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:  # EOF: the child is exiting
                break
            chunks.append(chunk)
        exited, _, _ = select.select([pidfd], [], [], max(deadline - time.monotonic(), 0.0))
        if not exited:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pidfd)
        os.close(read_fd)
    assert exited, "the child did not finish before its deadline and was killed"
    report = json.loads(b"".join(chunks) or b"{}")
    assert report.get("ok"), report.get("error", "no report from the child")
    assert os.waitstatus_to_exitcode(status) == 0
    return report["result"]


class MemoryExporter:
    """Keeps exported spans in memory (each process has its own copy)."""

    name = "mem"

    def __init__(self) -> None:
        self.spans: list[SpanRecord] = []

    def export(self, spans: Sequence[SpanRecord]) -> None:
        self.spans.extend(spans)


@pytest.fixture
def container() -> Iterator[tuple[Observability, MemoryExporter]]:
    exporter = MemoryExporter()
    obs = Observability(ObservabilitySettings(id_seed=5, drain_at_exit=False),
                        exporters=[exporter])
    try:
        yield obs, exporter
    finally:
        obs.close(JOIN)


def _request_counts(obs: Observability) -> dict[str, Any]:
    series = obs.metrics.export_metrics()["request_count"]["series"]
    return {s["labels"]["tenant_id"]: s["value"] for s in series}


def test_child_records_into_fresh_stores_and_the_parent_is_unaffected(
    container: tuple[Observability, MemoryExporter],
) -> None:
    obs, exporter = container
    obs.metrics.increment("request_count", 5, tenant_id="parent")
    parent_cost = obs.costs.add_cost(tenant_id="parent", model_version="risk-llm-v2",
                                     input_tokens=1000, output_tokens=500)
    with obs.tracing.span("parent-before"):
        pass
    assert obs.flush(JOIN)
    trace = obs.pipeline.collectors["trace"]
    assert trace.flush_exporters(JOIN)

    def child() -> dict[str, Any]:
        before = _request_counts(obs)
        before_spans = [s.name for s in obs.tracing.finished_spans()]
        obs.metrics.increment("request_count", 3, tenant_id="child")
        cost = obs.costs.add_cost(tenant_id="child", model_version="risk-llm-v1",
                                  input_tokens=2000, output_tokens=0)
        with obs.tracing.span("child-span"):
            pass
        flushed = bool(obs.flush(JOIN))
        exported = trace.flush_exporters(JOIN)
        health = obs.health()
        return {
            "pid": os.getpid(),
            "before": before,
            "before_spans": before_spans,
            "flushed": flushed,
            "exported": exported,
            "after": _request_counts(obs),
            "cost": str(cost),
            "total": str(obs.costs.get_total_cost()),
            "spans": [s.name for s in obs.tracing.finished_spans()],
            "threads": sorted(t.name for t in threading.enumerate()),
            "applied": {name: s.applied for name, s in health.collectors.items()},
            "dropped": {name: dict(s.dropped) for name, s in health.collectors.items()},
            "exporter": [(s.state.value, s.submitted, s.exported) for s in
                         trace.exporter_stats()],
            "exporter_spans": [s.name for s in exporter.spans],
        }

    def parent_meanwhile() -> None:
        for _ in range(100):
            obs.metrics.increment("request_count", tenant_id="parent")
        with obs.tracing.span("parent-after"):
            pass

    report = _run_in_child(child, parent_meanwhile)

    assert report["pid"] != os.getpid()
    assert report["before"] == {}  # the child's stores start empty
    assert report["before_spans"] == []
    assert report["flushed"] and report["exported"]
    assert report["after"] == {"child": 3}
    assert Decimal(report["total"]) == Decimal(report["cost"]) == Decimal("0.0030")
    assert report["spans"] == ["child-span"]
    assert {"collector-metrics", "collector-cost", "collector-trace", "collector-audit",
            "exporter-mem"} <= set(report["threads"])
    assert report["applied"] == {"metrics": 1, "cost": 1, "trace": 1, "audit": 0}
    assert report["dropped"] == {"metrics": {}, "cost": {}, "trace": {}, "audit": {}}
    assert report["exporter"] == [["running", 1, 1]]
    assert report["exporter_spans"] == ["parent-before", "child-span"]  # a copied list

    assert obs.flush(JOIN)
    assert _request_counts(obs) == {"parent": 105}
    assert obs.costs.get_total_cost() == parent_cost
    assert [s.name for s in obs.tracing.finished_spans()] == ["parent-before", "parent-after"]
    assert all(s.dropped_total == 0 for s in obs.health().collectors.values())
    assert trace.flush_exporters(JOIN)
    assert [s.name for s in exporter.spans] == ["parent-before", "parent-after"]


@pytest.mark.timeout(60)
def test_a_child_applies_the_same_label_objects_to_its_own_fresh_series(
    container: tuple[Observability, MemoryExporter],
) -> None:
    obs, _ = container
    actor = obs.pipeline.collectors["metrics"]
    tenant = (("tenant_id", "shared"),)
    node = (("node", "n"), ("tenant_id", "shared"), ("status", "ok"))
    batch = Batch((MetricRecord("request_count", tenant, 1),
                   MetricRecord("node_execution_latency", node, 0.5)))
    for _ in range(3):  # the parent's series exist before the fork
        actor.send(batch, 2)
    assert obs.flush(JOIN)

    def child() -> dict[str, Any]:
        for _ in range(2):  # the same record objects, applied to the child's new store
            actor.send(batch, 2)
        flushed = bool(obs.flush(JOIN))
        latency = obs.metrics.export_metrics()["node_execution_latency"]["series"]
        return {
            "flushed": flushed,
            "requests": _request_counts(obs),
            "latency": [(s["labels"], s["count"]) for s in latency],
            "errors": actor.stats().handler_errors,
        }

    report = _run_in_child(child, lambda: actor.send(batch, 2))
    assert report == {
        "flushed": True,
        "requests": {"shared": 2},
        "latency": [[{"node": "n", "tenant_id": "shared", "status": "ok"}, 2]],
        "errors": 0,
    }
    assert obs.flush(JOIN)
    assert _request_counts(obs) == {"shared": 4}  # the parent's series, unaffected


class Gate(NamedTuple):
    entered: threading.Event
    release: threading.Event


class Recorder(Collector[list[Any]]):
    def _new_store(self) -> list[Any]:
        return []

    def _apply(self, record: Any) -> None:
        if type(record) is Gate:
            record.entered.set()
            if not record.release.wait(JOIN):
                raise TimeoutError("gate never released")
            record = "gate"
        self._store.append(record)


def test_records_queued_at_the_fork_are_dropped_as_fork_in_the_child_only() -> None:
    collector = Recorder("forked", maxsize=10)
    pipeline = Pipeline([collector], drain_at_exit=False)
    pipeline.start()
    gate = Gate(threading.Event(), threading.Event())
    try:
        collector.send(gate)
        assert gate.entered.wait(JOIN)
        sent = [collector.send(("parent", i)) for i in range(12)]  # behind the held thread
        assert sent == [True] * 10 + [False] * 2  # the parent drops two: its own history

        def child() -> dict[str, Any]:
            before = collector.query(len)
            for i in range(5):
                collector.send(("child", i))
            flushed = bool(pipeline.flush(JOIN))
            stats = collector.stats()
            return {
                "before": before,
                "flushed": flushed,
                "store": collector.query(list),
                "applied": stats.applied,
                "dropped": dict(stats.dropped),
                "alive": stats.alive,
            }

        report = _run_in_child(child, lambda: None)
        assert report["before"] == 0
        assert report["flushed"]
        assert report["store"] == [["child", i] for i in range(5)]
        assert report["applied"] == 5
        assert report["dropped"] == {"fork": 10}  # not the parent's queue_full
        assert report["alive"]

        gate.release.set()
        assert pipeline.flush(JOIN)
        stats = collector.stats()
        assert (stats.applied, dict(stats.dropped)) == (11, {"queue_full": 2})
        assert collector.query(list) == ["gate", *(("parent", i) for i in range(10))]
    finally:
        gate.release.set()
        pipeline.close(JOIN)
