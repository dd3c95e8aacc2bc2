"""Smoke tests of ``python -m benchmarks``: every benchmark runs and writes its tables.

Each benchmark module runs through the real runner with ``--quick`` (tiny
sizes, two or three rounds) in a subprocess, and the report it writes must
have the benchmark's section, its result table, its target lines and the
machine section. Nothing here checks a speed or a ratio: timings on a shared
test machine say nothing, and ``make bench`` is where figures come from.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Benchmark ``NAME`` -> a header row that its result table must have.
_TABLES = {
    "node": "| variant | time per node (µs) | instrumentation (µs, minus its bare loop) |",
    "llm_node": "| variant | time per node (µs) | instrumentation (µs, minus bare) |",
    "throughput": "| producers | ours, bound handles: until flushed (rec/s) |",
    "workflow": "| case | bare graph (µs) | instrumented (µs) |",
    "exposition": "| variant | time per scrape (ms) |",
    "memory": "| requests / flood increments | requests: RSS |",
}


def _run_module(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` from the repository root, with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", sorted(_TABLES))
def test_a_quick_run_of_each_benchmark_writes_its_section(name: str, tmp_path: Path) -> None:
    out = tmp_path / "PERF.md"

    completed = _run_module("benchmarks", "--quick", "--only", name, "--out", str(out))

    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = out.read_text(encoding="utf-8")
    assert report.startswith("# Performance")
    assert "> **Quick run**" in report and "> **Partial run**" in report
    assert f"(`{name}`)" in report  # the section title
    assert _TABLES[name] in report
    assert f"\n| {name} | " in report  # its rows of the targets table
    assert "FAILED" not in report
    assert "## Machine" in report
    for label in ("| CPU |", "| Cores |", "| Python |", "| Revision |", "| Date (UTC) |"):
        assert label in report
    assert "**Ran on** " in report


@pytest.mark.timeout(60)
def test_every_benchmark_of_a_full_run_is_discovered() -> None:
    from benchmarks.__main__ import FULL_RUN, discover

    benches, broken = discover()

    assert broken == {}
    assert {bench.name for bench in benches} >= set(FULL_RUN)
    assert set(_TABLES) <= set(FULL_RUN)


@pytest.mark.timeout(60)
def test_an_unknown_benchmark_name_is_refused(tmp_path: Path) -> None:
    completed = _run_module("benchmarks", "--quick", "--only", "nonesuch",
                            "--out", str(tmp_path / "PERF.md"))

    assert completed.returncode == 2
    assert "unknown benchmark" in completed.stderr
    assert not (tmp_path / "PERF.md").exists()


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
    by_label = {row[0]: row[1:] for row in table.rows}

    # +100 ns of 200 on the calling thread; two executor threads, +50 ns each.
    assert by_label["calling thread (event loop: run start and end, async nodes, "
                    "the generation)"] == ("0.100", "50 %")
    assert by_label["LangGraph's executor threads (sync nodes and their wrapper)"] == (
        "0.100", "50 %")
    assert by_label["collector threads (applying the records)"] == ("0.0100", "5.0 %")
    assert by_label["- `collector-trace`"] == ("0.0100", "5.0 %")
    assert table.rows[-1] == ("all threads (process CPU)", "0.200", "100 %")
