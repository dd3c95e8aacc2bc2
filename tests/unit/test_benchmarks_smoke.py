"""Smoke test of ``python -m benchmarks``: a quick run writes a report (never a speed check).

Runs the cheapest benchmark (``exposition``: it needs only prometheus_client,
a dev dependency) in a subprocess with ``--quick`` and checks that the report
has its result table, its target line and the machine section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collectors import hotpath

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` from the repository root, with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=170, check=False,
    )


@pytest.mark.timeout(180)
def test_quick_run_writes_report_with_table_and_machine_section(tmp_path: Path) -> None:
    out = tmp_path / "PERF.md"

    completed = _run_module("benchmarks", "--quick", "--only", "exposition", "--out", str(out))

    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = out.read_text(encoding="utf-8")
    assert "# Performance" in report
    assert "(`exposition`)" in report
    assert "| variant | time per scrape (ms) |" in report
    assert "prometheus_client `generate_latest(registry)`" in report
    assert "| exposition |" in report  # the targets table
    assert "## Machine" in report
    for label in ("| CPU |", "| Cores |", "| Memory |", "| Python |", "| Packages |",
                  "| Date (UTC) |"):
        assert label in report


@pytest.mark.timeout(180)
def test_opcode_profile_attributes_the_added_work_to_the_instrumentation() -> None:
    completed = _run_module("benchmarks.tools.workflow_opcodes", "3", "--json")
    assert completed.returncode == 0, completed.stderr
    profile = json.loads(completed.stdout)
    assert profile["instrumented"] > profile["bare"] > 10_000
    added = profile["added_by_function"]
    # Every node runs in the instrumentation's wrapper: async nodes in a Python
    # coroutine, sync nodes (on the executor threads) in the pure-Python closure, or
    # with the compiled hot path in collectors._speedups.NodeWrapper (no opcodes).
    assert added["app/workflows/langgraph/instrumentation.py:async_node"] > 0
    sync_node = added.get("app/workflows/langgraph/instrumentation.py:sync_node", 0)
    assert (sync_node == 0) if hotpath.COMPILED else (sync_node > 0)
    # ... and stored by the trace collector's thread (a run's spans arrive as one batch).
    assert added["collectors/trace.py:_apply_all"] > 0
    assert sum(added.values()) == pytest.approx(profile["instrumented"] - profile["bare"])
    # The floor node (benchmarks._prototypes.FloorNode) is counted in the same process.
    assert 100 < profile["floor_per_node"] < profile["instrumented"] - profile["bare"]


@pytest.mark.timeout(30)
def test_the_median_interval_brackets_the_median_and_narrows_with_more_rounds() -> None:
    from benchmarks._harness import median_interval

    assert median_interval([7.0]) == (7.0, 7.0)
    low, high = median_interval(float(i) for i in range(100))
    assert 39 <= low < 49.5 < high <= 60  # order statistics ~ n/2 -+ 0.98 sqrt(n)
    wide = median_interval(float(i % 10) for i in range(10))
    narrow = median_interval(float(i % 10) for i in range(1000))
    assert wide[1] - wide[0] > narrow[1] - narrow[0]
    with pytest.raises(ValueError):
        median_interval([])


@pytest.mark.timeout(60)
def test_the_workflow_report_splits_the_added_cpu_by_thread_group() -> None:
    from benchmarks._harness import Runs
    from benchmarks.bench_workflow import _added_cpu_table, _thread_groups

    def round_(caller: float, executor: float, collector: float) -> dict[str, float]:
        cpu = {"cpu_caller_ns": caller, "cpu_background_ns": 2 * executor + collector,
               "cpu:asyncio_0": executor, "cpu:asyncio_1": executor,
               "cpu:collector-trace": collector}
        return {**cpu, **_thread_groups(cpu)}

    runs = Runs(order=("on", "off"), rounds=3)
    for variant, rows in (("on", [round_(1_100, 300, 50)] * 3),
                          ("off", [round_(1_000, 250, 40)] * 3)):
        runs.samples[variant] = {key: [row[key] for row in rows] for key in rows[0]}

    table = _added_cpu_table(runs, process_added=200.0)
    by_label = {row[0]: row for row in table.rows}

    assert by_label["calling thread (event loop: run start and end, async nodes, "
                    "the generation)"][1:] == ("0.1", "50 %")  # +100 ns of 200
    assert by_label["LangGraph's executor threads (sync nodes, compiled wrapper)"][1:] == (
        "0.1", "50 %")  # two threads, +50 ns each
    assert by_label["collector threads (applying the records)"][1:] == ("0.01", "5 %")
    assert by_label["- `collector-trace`"][1:] == ("0.01", "5 %")
    assert table.rows[-1] == ("all threads (process CPU)", "0.2", "100 %")


@pytest.mark.timeout(60)
def test_the_floor_node_wrapper_keeps_the_node_kind_and_records_each_call() -> None:
    import asyncio
    import inspect

    from benchmarks._prototypes import floor_node_wrapper

    def sync_node(state: int) -> int:
        return state + 1

    async def async_node(state: int) -> int:
        return state * 2

    sink: list[tuple[str, int, int]] = []
    wrap = floor_node_wrapper(sink)
    wrapped_sync, wrapped_async = wrap("s", sync_node), wrap("a", async_node)

    assert not inspect.iscoroutinefunction(wrapped_sync)
    assert inspect.iscoroutinefunction(wrapped_async)
    assert wrapped_sync.__wrapped__ is sync_node  # type: ignore[attr-defined]
    assert wrapped_sync(1) == 2
    assert asyncio.run(wrapped_async(3)) == 6
    assert [name for name, _, _ in sink] == ["s", "a"]
    assert all(start <= end for _, start, end in sink)


@pytest.mark.timeout(180)
def test_the_floor_tool_reports_the_floor_against_the_budget() -> None:
    completed = _run_module("benchmarks.tools.workflow_floor", "2")

    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == "2 rounds of 20 requests per variant"
    assert lines[1].startswith("floor - off: ") and "95 % confidence interval" in lines[1]
    assert lines[2].startswith("added process CPU: ") and "1 % budget: " in lines[2]
