"""The compiled hot path (collectors/_speedups.c) and its pure-Python twin.

The rest of the suite runs against whichever implementation is loaded (``make
test`` runs it once each way). These tests check that the compiled one is
really in use where it was built, that both give the same observable results
for the same calls, errors included, and the compiled types' own edges.
"""

from __future__ import annotations

import gc
import importlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import weakref
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.observability import Observability
from app.observability.metrics import MetricsCollector
from app.observability.tracing import Span, TracingService
from app.workflows.langgraph.instrumentation import WorkflowInstrumentation
from collectors import hotpath
from collectors._sketch import QuantileSketch
from collectors.base import Collector
from collectors.metrics import MetricsStoreCollector
from collectors.records import MetricRecord

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
    quantiles = pure["quantiles"]
    assert isinstance(quantiles, dict)
    wide, batched = quantiles["(('node', 'wide'),)"], quantiles["(('node', 'batched'),)"]
    assert wide[:2] == [15, 0.0] and wide[-1] == sys.float_info.max
    assert batched[:2] == [1 + 40 * 16, 1e-200] and batched[-1] == 1e19


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


# --- the metrics store's compiled series and applier, tested directly -----------------
# (imported from the extension itself, so the pure-Python run tests them too)


def _extension() -> Any:
    """``collectors._speedups``, or ``None`` where it is not built (no C compiler)."""
    if not _built():
        assert not hotpath.COMPILED
        return None
    return importlib.import_module("collectors._speedups")


def _state(*cells: Any) -> list[object]:
    """Everything a counter or histogram shows, to check that nothing changed."""
    state: list[object] = []
    for cell in cells:
        if hasattr(cell, "value"):
            state.append(cell.value)
        else:
            state.append((cell.count, cell.counts, cell.sum, cell._bins, cell._min, cell._max,
                          cell._zero))
    return state


@pytest.mark.timeout(30)
def test_apply_all_applies_every_record_or_changes_nothing() -> None:
    ext = _extension()
    if ext is None:
        return
    counter, histogram = ext.CounterCell(), ext.HistogramCell((1.0,), 0.01)
    hits, lat = (("a", "x"),), (("a", "y"),)
    fallen: list[object] = []
    applier = ext.MetricsApplier({("hits", hits): counter, ("lat", lat): histogram},
                                 fallen.append)
    good = (("hits", hits, 1), ("lat", lat, 0.5), ("hits", hits, 2.5), ("lat", lat, 0.0),
            ("lat", lat, 3))
    assert applier.apply_all(good) is True
    assert applier.apply_all(()) is True
    assert counter.value == 3.5
    assert (histogram.count, histogram.counts, histogram.sum) == (3, [2, 1], 3.5)
    before = _state(counter, histogram)
    bad_records: list[object] = [
        "not a record",
        ("hits", hits),
        MetricRecord("hits", hits, 1),  # a NamedTuple: the Python apply takes it
        ("other", hits, 1),  # no series yet
        ("hits", [("a", "x")], 1),  # unhashable
        ("hits", hits, "1"),
        ("hits", hits, True),  # a bool: added by the one-by-one path
        ("hits", hits, Decimal(1)),
        ("hits", hits, 2**1100),  # 3.5 + that overflows
        ("lat", lat, "1"),
        ("lat", lat, math.inf),
        ("lat", lat, 2**1100),
        ("lat", lat, 1e300),  # a sketch index far outside the array: the dict path
    ]
    for bad in bad_records:
        for batch in ((bad, *good), (*good, bad), (*good[:2], bad, *good[2:])):
            assert applier.apply_all(batch) is False, bad
            assert _state(counter, histogram) == before, bad
    assert applier.apply_all(list(good)) is False  # Batch.records is a tuple
    assert _state(counter, histogram) == before
    assert fallen == []  # declining calls nothing


@pytest.mark.timeout(30)
def test_apply_all_ends_where_one_by_one_ends() -> None:
    ext = _extension()
    if ext is None:
        return
    rng = random.Random(11)
    labels = [(("a", str(i)),) for i in range(3)]
    records = []
    for _ in range(300):  # past the on-stack batch size: the heap tables
        kind = rng.choice(["c", "h"])
        if kind == "c":
            value: int | float = rng.choice([rng.randint(0, 2**40), rng.random() * 10, 1])
        else:  # spread widely: the sketch array grows several times within the batch
            value = rng.choice([0.0, 10.0 ** rng.uniform(-12, 12), rng.randint(0, 1000)])
        records.append((kind, rng.choice(labels), value))

    def cells() -> tuple[dict[Any, Any], list[Any]]:
        by_key: dict[Any, Any] = {}
        for labels_ in labels:
            by_key["c", labels_] = ext.CounterCell()
            by_key["h", labels_] = ext.HistogramCell((0.001, 1.0, 1000.0), 0.01)
        return by_key, list(by_key.values())

    batched, batched_cells = cells()
    single, single_cells = cells()
    assert ext.MetricsApplier(batched, print).apply_all(tuple(records)) is True
    one = ext.MetricsApplier(single, print)
    for record in records:
        one(record)
    assert _state(*batched_cells) == _state(*single_cells)  # the sketch bins included


@pytest.mark.timeout(30)
def test_the_applier_cache_holds_what_by_key_held_until_cleared() -> None:
    ext = _extension()
    if ext is None:
        return
    first, second = ext.CounterCell(), ext.CounterCell()
    labels = (("a", "x"),)
    by_key = {("hits", labels): first}
    applier = ext.MetricsApplier(by_key, print)
    applier(("hits", labels, 1))
    referents = gc.get_referents(applier)  # what tp_traverse visits
    assert any(r is first for r in referents) and any(r is labels for r in referents)
    # by_key is append-only while the applier lives; replacing an entry needs clear_cache():
    by_key["hits", labels] = second
    applier(("hits", labels, 1))
    assert (first.value, second.value) == (2, 0)  # the cached series, by identity
    applier(("hits", tuple(list(labels)), 1))  # an equal, distinct tuple: looked up
    assert (first.value, second.value) == (2, 1)
    applier.clear_cache()
    assert not any(r is first for r in gc.get_referents(applier))
    applier(("hits", labels, 1))
    assert (first.value, second.value) == (2, 2)
    # Labels that are not all plain str are looked up every time, never cached.
    odd = (("a", 1),)
    by_key["hits", odd] = first
    applier(("hits", odd, 1))
    assert first.value == 3
    assert not any(r is odd for r in gc.get_referents(applier))


@pytest.mark.timeout(30)
def test_a_cycle_through_the_applier_cache_is_collected() -> None:
    ext = _extension()
    if ext is None:
        return

    class Cell(ext.CounterCell):  # type: ignore[misc]
        pass  # a __dict__, to hold the applier

    cell = Cell()
    labels = (("a", "x"),)
    applier = ext.MetricsApplier({("hits", labels): cell}, print)
    assert applier.apply_all((("hits", labels, 1),)) is True
    cell.applier = applier  # applier -> cache -> cell -> applier
    ref = weakref.ref(cell)
    del cell, applier
    gc.collect()
    assert ref() is None


_wide = st.one_of(
    st.floats(min_value=0.0, max_value=sys.float_info.max, allow_nan=False),
    st.sampled_from([0.0, 5e-324, 1e-300, 1e-9, 1.0, 1e300, sys.float_info.max]),
    st.integers(min_value=0, max_value=2**53),
)


@pytest.mark.timeout(120)
@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(_wide, max_size=100), st.sampled_from([0.01, 0.001, 0.2, 1e-14]))
def test_the_compiled_sketch_equals_the_python_sketch(
    values: list[float], accuracy: float,
) -> None:
    ext = _extension()
    if ext is None:
        return
    cell, sketch = ext.HistogramCell((0.1, 1.0), accuracy), QuantileSketch(accuracy)
    for value in values:
        cell.add(value)
        sketch.add(value)
    assert cell._bins == sketch._bins
    assert (cell.count, cell._zero) == (sketch.count, sketch._zero)
    _, length, most = cell._bin_array
    assert length <= most
    for q in range(41):
        assert QuantileSketch.quantile(cell, q / 40) == sketch.quantile(q / 40)


@pytest.mark.timeout(30)
def test_extreme_observations_are_counted_or_refused_with_nothing_changed() -> None:
    ext = _extension()
    if ext is None:
        return
    cell = ext.HistogramCell((1.0,), 0.01)
    cell.add(1.0)
    assert cell._bin_array[1:] == (64, 4096)  # 64 bins around the first value's
    for value in (1e-300, 5e-324, 0.0, 1e300, sys.float_info.max, 2.5):
        cell.add(value)
    _, length, most = cell._bin_array
    assert length <= most == 4096
    assert len(cell._bins) == 6  # 1e-300, 5e-324, 1e300 and the largest float: far bins
    before = _state(cell)
    for value, error in ((math.inf, OverflowError), (2**1100, OverflowError), ("1", TypeError)):
        with pytest.raises(error):
            cell.add(value)
        assert _state(cell) == before
    quantile = QuantileSketch.quantile
    assert quantile(cell, 0.0) == 0.0
    assert quantile(cell, 1.0) == sys.float_info.max
    assert quantile(cell, 1 / 7) == pytest.approx(5e-324, rel=0.02)  # the second smallest
    cell.__init__((1.0,), 0.01)
    assert (cell.count, cell._bins, cell._bin_array) == (0, {}, (0, 0, 4096))
    fine = ext.HistogramCell((1.0,), 0.001)
    assert fine._bin_array[2] > 4096  # a finer accuracy: more bins for the same range
