"""The compiled hot path (collectors/_speedups.c) and its pure-Python twin.

The rest of the suite runs against whichever implementation is loaded (``make
test`` runs it once each way). These tests check that the compiled one is
really in use where it was built, that both give the same observable results
for the same calls, errors included, and the compiled types' own edges.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from app.observability import Observability
from app.observability.metrics import MetricsCollector
from app.observability.tracing import Span, TracingService
from app.workflows.langgraph.instrumentation import WorkflowInstrumentation
from collectors import hotpath
from collectors.base import Collector
from collectors.metrics import MetricsStoreCollector

REPO_ROOT = Path(__file__).resolve().parents[3]
SCENARIO = Path(__file__).with_name("_scenario.py")
PURE = os.environ.get(hotpath.PURE_PYTHON_ENV, "").strip() not in ("", "0")


def _built() -> list[Path]:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return list((REPO_ROOT / "collectors").glob(f"_speedups*{suffix}"))


@pytest.mark.timeout(30)
def test_the_compiled_hot_path_is_built_and_used_unless_pure_python_is_asked_for() -> None:
    if PURE:
        assert not hotpath.COMPILED
        assert hotpath.speedups is None
        return
    if shutil.which("cc") or shutil.which("gcc"):  # the install compiles it here
        assert _built(), "the install did not build collectors._speedups"
    assert bool(_built()) == hotpath.COMPILED
    if hotpath.COMPILED:
        speedups = hotpath.speedups
        assert speedups is not None
        assert issubclass(Span, speedups.SpanBase)
        assert issubclass(TracingService, speedups.TracerBase)
        assert issubclass(MetricsCollector, speedups.MetricsBase)
        assert issubclass(Collector, speedups.CollectorBase)
        with Observability() as obs:  # sync nodes get the compiled wrapper
            def node(state: dict[str, object]) -> dict[str, object]:
                return state

            wrapped = WorkflowInstrumentation(obs).wrap_node("n", node)
            assert type(wrapped) is speedups.NodeWrapper
            assert wrapped.__wrapped__ is node and wrapped.__name__ == "node"


def _scenario(pure: bool) -> dict[str, object]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.pop(hotpath.PURE_PYTHON_ENV, None)
    if pure:
        env[hotpath.PURE_PYTHON_ENV] = "1"
    done = subprocess.run(
        [sys.executable, str(SCENARIO)], cwd=REPO_ROOT, env=env, capture_output=True,
        text=True, timeout=50, check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.timeout(120)
def test_both_implementations_record_and_reject_the_same() -> None:
    pure = _scenario(pure=True)
    assert pure.pop("compiled") is False
    compiled = _scenario(pure=False)
    assert compiled.pop("compiled") is bool(_built())
    assert compiled == pure
    # The scenario itself is not vacuous: it saw errors, spans and series.
    assert pure["dropped"] == 0 and pure["flushed"] is True
    calls = pure["metric_calls"]
    assert isinstance(calls, list)
    assert calls.count("ok") == 8
    assert ["ValueError", "amount must be finite and >= 0, got -1"] in calls
    spans = pure["spans"]
    assert isinstance(spans, list) and len(spans) == 14
    assert pure["run_record"] == [
        "tenant_id", "t4", "correlation_id", "c4", "request_id", "r4",
        "decision", "approve", "approval_required", False,
    ]
    assert pure["clash_record"] == ["tenant_id", "t6", "n", 2]


@pytest.mark.timeout(30)
def test_a_workflow_run_starts_and_ends_without_the_python_fallbacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The instrumentation's calls (a root with ids and an outbox, attributes) stay compiled."""
    if hotpath.COMPILED:
        def python_path(*args: object, **kwargs: object) -> None:
            raise AssertionError("the compiled hot path fell back to Python")

        monkeypatch.setattr(TracingService, "_start_span_py", python_path)
        monkeypatch.setattr(TracingService, "_finish_py", python_path)
    with Observability() as obs:
        tracing = obs.tracing
        root = tracing.start_span_sync(
            "wf", kind="workflow", root=True, tenant_id="t1", correlation_id="c1",
            request_id="r1", batch=True,
        )
        assert root.outbox is not None and root.parent is None
        node = tracing.start_child_span("decide", "node")
        tracing.finish(node, None, None, "node_execution_latency",
                       (("node", "decide"), ("status", "ok"), ("tenant_id", "t1")))
        root.attribute_map()["decision"] = "approve"
        record = tracing.finish(root, None, None, "request_latency",
                                (("status", "ok"), ("tenant_id", "t1"), ("workflow", "wf")))
        assert record[10] == ("tenant_id", "t1", "correlation_id", "c1", "request_id", "r1",
                              "decision", "approve")
        assert root.outbox is not None and not root.outbox.open
        assert obs.flush(5.0)
        spans = {span.name: span for span in tracing.finished_spans()}
        assert spans["decide"].parent_span_id == spans["wf"].span_id
        assert spans["decide"].attrs["request_id"] == "r1"
        exported = obs.metrics.export_metrics()
        assert exported["request_latency"]["series"][0]["count"] == 1
        assert exported["node_execution_latency"]["series"][0]["count"] == 1


@pytest.mark.timeout(30)
def test_spans_cannot_be_built_directly() -> None:
    with pytest.raises(TypeError, match="start spans with"):
        Span()


@pytest.mark.timeout(30)
def test_a_malformed_record_sent_straight_to_the_metrics_actor_is_counted_not_applied() -> None:
    with Observability() as obs:
        actor = obs.pipeline.collectors["metrics"]
        assert isinstance(actor, MetricsStoreCollector)
        obs.metrics.increment("request_count", tenant_id="t1")
        labels = (("tenant_id", "t1"),)
        assert actor.send(("request_count", labels, "not a number"))
        assert actor.send(("request_count", labels, 2))
        assert actor.send("not a record")
        assert obs.flush(5.0)
        series = obs.metrics.export_metrics()["request_count"]["series"]
        assert series == [{"labels": {"tenant_id": "t1"}, "value": 3}]
        stats = actor.stats()
        assert stats.handler_errors == 2
        assert stats.dropped["handler_error"] == 2


@pytest.mark.timeout(30)
def test_send_takes_the_record_and_an_optional_count_only() -> None:
    with Observability() as obs:
        actor = obs.pipeline.collectors["metrics"]
        with pytest.raises(TypeError):
            actor.send()  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            actor.send(("request_count", (), 1), 1, 2)  # type: ignore[call-arg]
        assert actor.send(record=("request_count", (("tenant_id", "t"),), 1), n=1)
        assert obs.flush(5.0)
        assert obs.metrics.export_metrics()["request_count"]["series"][0]["value"] == 1
