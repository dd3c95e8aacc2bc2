"""Shared helpers of the benchmarks: alternating rounds, statistics, results, the report.

The rules every benchmark follows (and this module enforces where it can):

* **Alternating rounds.** :func:`alternate` runs variant A, B, C, A, B, C, ...
  so that drift (frequency scaling, a noisy neighbour, a cache warming up)
  hits every variant alike. Warm-up rounds run in the same order and are
  discarded.
* **Same conditions for everyone.** Before every round, of every variant, the
  harness runs ``gc.collect()``; the garbage collector stays *enabled* for all
  variants (ours and the anchors), and the collections each round triggered
  are recorded per variant and reported.
* **One clock.** ``time.perf_counter_ns``; each variant times only its own
  measured section and returns the measurement, so untimed housekeeping
  (flushing queues between rounds, clearing in-memory exporters) never leaks
  into the numbers.
* **Robust statistics.** Median with p10/p90 over the rounds; ratios are
  computed per round (round *i* of A against round *i* of B) and then
  summarised, so a slow round hits both sides of its ratio.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.metadata
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

__all__ = (
    "REPO_ROOT",
    "BenchResult",
    "Runs",
    "Stats",
    "Table",
    "Target",
    "Variant",
    "alternate",
    "cpu_split",
    "fmt_float",
    "fmt_int",
    "fmt_ms",
    "fmt_ratio",
    "fmt_stats",
    "fmt_us",
    "gc_collections",
    "load_average",
    "machine_info",
    "quiet_logging",
    "read_rss_kib",
    "render_report",
    "result_from_json",
    "result_to_json",
    "summarize",
    "thread_cpu_ns",
)

#: The repository root (the directory holding ``app/`` and ``benchmarks/``).
REPO_ROOT = Path(__file__).resolve().parents[1]

#: Packages whose versions the report lists (absent ones are shown as such).
_REPORTED_PACKAGES = (
    "opentelemetry-sdk",
    "opentelemetry-api",
    "prometheus-client",
    "langfuse",
    "janus",
    "pydantic",
    "structlog",
    "langgraph",
)


# --- statistics -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stats:
    """Median and spread of one measured quantity over the rounds."""

    median: float
    p10: float
    p90: float
    n: int

    def scaled(self, factor: float) -> Stats:
        """The same statistics multiplied by ``factor`` (unit changes)."""
        return Stats(self.median * factor, self.p10 * factor, self.p90 * factor, self.n)


def summarize(values: Iterable[float]) -> Stats:
    """Median, p10 and p90 (inclusive linear interpolation) of ``values``.

    Raises:
        ValueError: ``values`` is empty.
    """
    data = sorted(values)
    if not data:
        raise ValueError("no samples to summarise")
    if len(data) == 1:
        return Stats(data[0], data[0], data[0], 1)
    deciles = statistics.quantiles(data, n=10, method="inclusive")
    return Stats(statistics.median(data), deciles[0], deciles[-1], len(data))


def median_interval(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median of ``values``.

    The order statistics ``x(j)`` and ``x(k)`` around the middle such that
    the median lies between them with at least ``confidence`` (normal
    approximation of the binomial, ``z = 1.96`` at 95 %). It says whether a
    measured median resolves a target: with noisy rounds the interval is wide.

    Raises:
        ValueError: ``values`` is empty.
    """
    data = sorted(values)
    n = len(data)
    if n == 0:
        raise ValueError("no samples to summarise")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half))
    high = min(n - 1, math.ceil(n / 2 + half) - 1)
    return data[low], data[high]


def gc_collections() -> tuple[int, int, int]:
    """Collections run so far by the garbage collector, per generation."""
    gen0, gen1, gen2 = (s["collections"] for s in gc.get_stats())
    return gen0, gen1, gen2


def thread_cpu_ns() -> dict[int, tuple[str, int]]:
    """On-CPU time of every thread of this process: native id -> (name, nanoseconds).

    Read from ``/proc/self/task/<tid>/schedstat`` (safe for threads that exit
    meanwhile, unlike ``pthread_getcpuclockid``); names come from
    :mod:`threading` (``tid-<n>`` for threads it does not know).
    """
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    found: dict[int, tuple[str, int]] = {}
    try:
        entries = os.listdir("/proc/self/task")
    except OSError:
        return found
    for entry in entries:
        tid = int(entry)
        try:
            with open(f"/proc/self/task/{tid}/schedstat", encoding="ascii") as schedstat:
                on_cpu = int(schedstat.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        found[tid] = (names.get(tid, f"tid-{tid}"), on_cpu)
    return found


def cpu_split(
    before: Mapping[int, tuple[str, int]], after: Mapping[int, tuple[str, int]], per: int
) -> dict[str, float]:
    """CPU nanoseconds per unit of work between two :func:`thread_cpu_ns` readings.

    Returns:
        ``cpu_caller_ns`` (the main thread), ``cpu_background_ns`` (every other
        thread) and ``cpu:<thread name>`` for each background thread name.
    """
    main = threading.main_thread().native_id
    split: dict[str, float] = {"cpu_caller_ns": 0.0, "cpu_background_ns": 0.0}
    for tid, (name, on_cpu) in after.items():
        delta = (on_cpu - before.get(tid, (name, 0))[1]) / per
        if tid == main:
            split["cpu_caller_ns"] += delta
        else:
            split["cpu_background_ns"] += delta
            split[f"cpu:{name}"] = split.get(f"cpu:{name}", 0.0) + delta
    return split


# --- alternating rounds -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    """One side of a comparison.

    Attributes:
        name: Short name used as a key (``"ours"``, ``"otel+prom"``, ``"bare"``).
        run: Runs one round and returns its measurements by key (for example
            ``{"ns_per_op": ...}``). It times only what it measures; any
            untimed housekeeping (a flush, clearing an exporter) happens
            inside it, outside the timed section.
    """

    name: str
    run: Callable[[], Mapping[str, float]]


@dataclass(slots=True)
class Runs:
    """Measurements of alternating rounds, aligned by round index."""

    order: tuple[str, ...]
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    gc_per_round: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    gc_pause: dict[str, list[int]] = field(default_factory=dict)
    rounds: int = 0
    warmup: int = 0

    def values(self, variant: str, key: str) -> list[float]:
        """Every round's value of ``key`` for ``variant``, in round order."""
        return self.samples[variant][key]

    def stats(self, variant: str, key: str) -> Stats:
        """Summary of ``key`` for ``variant`` over the rounds."""
        return summarize(self.values(variant, key))

    def paired(
        self, a: tuple[str, str], b: tuple[str, str], fn: Callable[[float, float], float]
    ) -> Stats:
        """Summary of ``fn(a_i, b_i)`` over rounds ``i`` (``a``/``b`` are ``(variant, key)``)."""
        return summarize(
            fn(x, y) for x, y in zip(self.values(*a), self.values(*b), strict=True)
        )

    def paired_interval(
        self, a: tuple[str, str], b: tuple[str, str], fn: Callable[[float, float], float],
        confidence: float = 0.95,
    ) -> tuple[float, float]:
        """:func:`median_interval` of ``fn(a_i, b_i)`` over rounds ``i`` (see :meth:`paired`)."""
        return median_interval(
            (fn(x, y) for x, y in zip(self.values(*a), self.values(*b), strict=True)),
            confidence,
        )

    def net(self, variant: str, key: str = "ns", base: str = "bare") -> Stats:
        """Per round: ``variant``'s ``key`` minus ``base``'s ``"ns"``, summarised."""
        return summarize(
            v - b for v, b in zip(self.values(variant, key), self.values(base, "ns"), strict=True)
        )

    def net_ratio(self, anchor: str, ours: str, key: str = "ns", base: str = "bare") -> Stats:
        """Per round: ``(anchor - base) / (ours - base)``, summarised (0 if ours <= base)."""
        return summarize(
            (a - b) / (o - b) if o > b else 0.0
            for a, o, b in zip(
                self.values(anchor, key), self.values(ours, key), self.values(base, "ns"),
                strict=True,
            )
        )

    def background_cpu(self, variant: str, *, min_ns: float = 50.0) -> str:
        """Median CPU per unit of each background thread of ``variant``, as text.

        Threads below ``min_ns`` nanoseconds per unit are left out.
        """
        parts = []
        for key, values in self.samples[variant].items():
            if key.startswith("cpu:"):
                median = statistics.median(values)
                if median >= min_ns:
                    parts.append((median, key[4:]))
        parts.sort(reverse=True)
        return ", ".join(f"`{name}` {fmt_us(ns)} µs" for ns, name in parts) or "none"

    def gc_summary(self, variant: str) -> str:
        """Median gen0/gen1/gen2 collections and GC pause per round: ``"41/3/0, 12.5 ms"``."""
        per_round = self.gc_per_round[variant]
        counts = "/".join(
            fmt_int(statistics.median(r[g] for r in per_round)) for g in range(3)
        )
        return f"{counts}, {fmt_ms(statistics.median(self.gc_pause[variant]))} ms"

    def gc_pause_per(self, variant: str, units: int) -> float:
        """Median GC pause per unit of work, in nanoseconds (``units`` per round)."""
        return statistics.median(self.gc_pause[variant]) / units


def alternate(variants: Sequence[Variant], *, rounds: int, warmup: int = 1) -> Runs:
    """Run ``variants`` in alternating order: ``warmup`` discarded rounds, then ``rounds``.

    Before each round of each variant the harness runs ``gc.collect()`` (not
    timed) and checks that the garbage collector is enabled; the collections
    each round triggered, and their total pause (measured with a
    ``gc.callbacks`` hook, whichever thread triggered them), are recorded per
    variant.

    Args:
        variants: The variants, in the order they alternate.
        rounds: Measured rounds per variant (at least 1).
        warmup: Discarded rounds per variant, run first in the same order.

    Returns:
        The aligned measurements.

    Raises:
        RuntimeError: The garbage collector was disabled by someone.
        ValueError: No variants, duplicate names or ``rounds < 1``.
    """
    if not variants or rounds < 1:
        raise ValueError("need at least one variant and one round")
    names = tuple(v.name for v in variants)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate variant names: {names}")
    runs = Runs(order=names, rounds=rounds, warmup=warmup)
    for name in names:
        runs.samples[name] = {}
        runs.gc_per_round[name] = []
        runs.gc_pause[name] = []
    pause = _GcPause()
    gc.callbacks.append(pause.callback)
    try:
        for index in range(warmup + rounds):
            for variant in variants:
                gc.collect()
                if not gc.isenabled():
                    raise RuntimeError(
                        "the garbage collector must stay enabled for every variant"
                    )
                before, paused = gc_collections(), pause.total
                measured = variant.run()
                after, paused = gc_collections(), pause.total - paused
                if index < warmup:
                    continue
                runs.gc_per_round[variant.name].append(
                    (after[0] - before[0], after[1] - before[1], after[2] - before[2])
                )
                runs.gc_pause[variant.name].append(paused)
                for key, value in measured.items():
                    runs.samples[variant.name].setdefault(key, []).append(float(value))
    finally:
        gc.callbacks.remove(pause.callback)
    return runs


class _GcPause:
    """Total time spent in garbage collections, via ``gc.callbacks``."""

    __slots__ = ("started", "total")

    def __init__(self) -> None:
        self.started = 0
        self.total = 0

    def callback(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter_ns()
        else:
            self.total += time.perf_counter_ns() - self.started


# --- results ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Table:
    """A Markdown table of a benchmark's results."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""


@dataclass(frozen=True, slots=True)
class Target:
    """One target and whether this run met it.

    Attributes:
        goal: The target as a sentence (``"ours >= 10x cheaper than OTel+prom"``).
        measured: What this run measured (``"4.1x"``).
        met: Whether the target is met.
    """

    goal: str
    measured: str
    met: bool


@dataclass(slots=True)
class BenchResult:
    """Everything a benchmark module's ``run()`` returns to the runner.

    Attributes:
        name: The module's ``NAME``.
        title: The module's ``TITLE``.
        summary: A paragraph: what was measured, how, on which side.
        tables: The result tables, in display order.
        targets: The targets and whether they were met.
        notes: Bullet points: checks (drops, connection attempts), caveats.
        analysis: Markdown for missed targets: where the time goes, what to change.
        elapsed: Seconds the benchmark took (filled in by the runner).
        load: The load average when it started (filled in by the runner).
    """

    name: str
    title: str
    summary: str
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    analysis: str = ""
    elapsed: float = 0.0
    load: str = ""


def result_to_json(result: BenchResult) -> str:
    """Serialise a result (the worker process sends it to the runner this way)."""
    return json.dumps(dataclasses.asdict(result))


def result_from_json(text: str) -> BenchResult:
    """Rebuild a result serialised by :func:`result_to_json`."""
    data = json.loads(text)
    data["tables"] = [
        Table(title=t["title"], headers=tuple(t["headers"]),
              rows=tuple(tuple(row) for row in t["rows"]), note=t["note"])
        for t in data["tables"]
    ]
    data["targets"] = [Target(**t) for t in data["targets"]]
    return BenchResult(**data)


# --- formatting -------------------------------------------------------------


def fmt_float(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, without exponent for usual sizes."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10 ** digits:
        return f"{value:,.0f}"
    decimals = max(0, digits - 1 - int(_floor_log10(magnitude)))
    return f"{value:,.{decimals}f}"


def _floor_log10(value: float) -> int:
    exponent = 0
    while value >= 10:
        value /= 10
        exponent += 1
    while value < 1:
        value *= 10
        exponent -= 1
    return exponent


def fmt_int(value: float) -> str:
    """An integer with thousands separators."""
    return f"{round(value):,}"


def fmt_us(ns: float) -> str:
    """Nanoseconds as microseconds (3 significant digits)."""
    return fmt_float(ns / 1e3)


def fmt_ms(ns: float) -> str:
    """Nanoseconds as milliseconds (3 significant digits)."""
    return fmt_float(ns / 1e6)


def fmt_ratio(value: float) -> str:
    """A ratio such as ``"4.12x"``."""
    return f"{fmt_float(value)}x"


def fmt_stats(stats: Stats, fmt: Callable[[float], str]) -> str:
    """``median (p10-p90)`` with ``fmt`` applied to each number."""
    return f"{fmt(stats.median)} ({fmt(stats.p10)}-{fmt(stats.p90)})"


# --- environment ------------------------------------------------------------


def quiet_logging() -> None:
    """Keep library logging (structlog, langfuse, OTel) to warnings and up."""
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    for name in ("langfuse", "opentelemetry", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def read_rss_kib() -> int:
    """Resident set size of this process, in KiB (``VmRSS`` of ``/proc/self/status``).

    Raises:
        RuntimeError: ``/proc/self/status`` has no ``VmRSS`` line.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> str:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def machine_info() -> dict[str, str]:
    """The machine and software the benchmarks ran on, as label -> value."""
    versions = []
    for package in _REPORTED_PACKAGES:
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 0
    threshold = gc.get_threshold()
    return {
        "Date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "CPU": _cpu_model(),
        "Cores": f"{os.cpu_count()} logical, {affinity} usable by this process",
        "Memory": _memory_total(),
        "Load average (1/5/15 min) at start": _load_average(),
        "OS": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "Python": f"{platform.python_implementation()} {platform.python_version()} "
                  f"({' '.join(platform.python_build())})",
        "GC": f"enabled={gc.isenabled()}, thresholds={threshold[0]}/{threshold[1]}/{threshold[2]}"
              " (never disabled, for any variant)",
        "Thread switch interval": f"{sys.getswitchinterval() * 1e3:g} ms",
        "Packages": ", ".join(versions),
        "Revision": _git_revision(),
    }


# --- the report -------------------------------------------------------------


def _table_markdown(table: Table) -> list[str]:
    lines = [f"**{table.title}**", ""]
    lines.append("| " + " | ".join(table.headers) + " |")
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    if table.note:
        lines += ["", table.note]
    lines.append("")
    return lines


def render_report(
    results: Sequence[BenchResult],
    machine: Mapping[str, str],
    *,
    command: str,
    quick: bool,
    failures: Mapping[str, str],
    total_seconds: float,
    end_load: str,
    partial: bool = False,
) -> str:
    """Render the whole ``PERFORMANCE.md``.

    Args:
        results: The benchmarks that completed, in run order.
        machine: :func:`machine_info` taken at the start.
        command: The command line, for the reader to reproduce.
        quick: Whether this was a ``--quick`` (smoke) run.
        failures: Benchmarks that raised, with their traceback.
        total_seconds: Wall time of the whole run.
        end_load: The load average when the run ended.
        partial: Only some benchmarks were selected (``--only``).

    Returns:
        The Markdown text.
    """
    lines = [
        "# Performance",
        "",
        "Generated by `make bench` (`python -m benchmarks`, see `benchmarks/README.md`); do not"
        " edit by hand: rerun it. Every number comes from the run described under **Machine**:"
        " medians (p10-p90 in parentheses) over alternating rounds. Each benchmark runs in a"
        " fresh Python process, and its anchors are measured in that same process, alternating"
        " with ours, so every ratio compares figures of one run.",
        "",
        f"**Ran on** {machine.get('CPU', 'unknown')} ({machine.get('Cores', '?')}),"
        f" {machine.get('Python', 'unknown')}, revision `{machine.get('Revision', 'unknown')}`,"
        f" {machine.get('Date (UTC)', 'unknown')} UTC.",
        "",
        "The targets are those of the pure-Python implementation (the project has no compiled"
        " code): each benchmark's section states its targets and what it checks besides the"
        " timing (nothing dropped, exact totals, no network).",
        "",
    ]
    if quick:
        lines += [
            "> **Quick run** (`--quick`): fewer rounds and smaller sizes; a smoke test, not a"
            " measurement to quote.",
            "",
        ]
    if partial:
        lines += [
            "> **Partial run** (`--only`): the other benchmarks were not run; rerun"
            " `python -m benchmarks` for the whole report.",
            "",
        ]
    lines += ["## Targets", "", "| Benchmark | Target | Measured | Met |", "|---|---|---|---|"]
    for result in results:
        for target in result.targets:
            lines.append(
                f"| {result.name} | {target.goal} | {target.measured} | "
                f"{'yes' if target.met else '**no**'} |"
            )
    for name in failures:
        lines.append(f"| {name} | (benchmark failed) | - | **no** |")
    lines.append("")
    for result in results:
        lines += [f"## {result.title} (`{result.name}`)", "", result.summary, ""]
        for table in result.tables:
            lines += _table_markdown(table)
        if result.targets:
            for target in result.targets:
                lines.append(
                    f"- Target: {target.goal} — measured {target.measured}: "
                    f"{'**met**' if target.met else '**missed**'}."
                )
            lines.append("")
        if result.notes:
            lines += [f"- {note}" for note in result.notes]
            lines.append("")
        if result.analysis:
            lines += [result.analysis.strip(), ""]
        lines += [
            f"_Ran in {result.elapsed:.1f} s; load average (1/5/15 min) when it started:"
            f" {result.load or 'unknown'}._",
            "",
        ]
    for name, trace in failures.items():
        lines += [f"## `{name}`: FAILED", "", "```", trace.rstrip(), "```", ""]
    lines += ["## Machine", "", "| | |", "|---|---|"]
    for label, value in machine.items():
        lines.append(f"| {label} | {value} |")
    lines.append(f"| Load average (1/5/15 min) at end | {end_load} |")
    lines.append(f"| Command | `{command}` |")
    lines.append(f"| Total run time | {total_seconds:.1f} s |")
    lines.append("")
    return "\n".join(lines)


def load_average() -> str:
    """The 1/5/15-minute load average, formatted."""
    return _load_average()
