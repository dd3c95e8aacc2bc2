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


@pytest.mark.timeout(180)
def test_quick_run_writes_report_with_table_and_machine_section(tmp_path: Path) -> None:
    out = tmp_path / "PERF.md"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )

    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "exposition",
         "--out", str(out)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=170, check=False,
    )

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
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.tools.workflow_opcodes", "3", "--json"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=170, check=False,
    )
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
