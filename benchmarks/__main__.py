"""Run the benchmarks and write ``docs/PERFORMANCE.md``: ``python -m benchmarks``.

Options:
    --quick             Fewer rounds and smaller sizes (a smoke run).
    --only NAME[,NAME]  Run only these benchmarks (by ``NAME``).
    --out PATH          Where to write the report (default ``docs/PERFORMANCE.md``).
    --list              List the discovered benchmarks and exit.

Every ``benchmarks/bench_*.py`` module is discovered and run; adding one needs
no change here (see ``benchmarks/README.md`` for the interface). Each benchmark
runs in a fresh Python process (this module with ``--worker NAME``), so that no
benchmark inherits another's imports, heap or threads: the garbage collector's
work, for one, grows with the heap.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from benchmarks._harness import (
    REPO_ROOT,
    BenchResult,
    load_average,
    machine_info,
    quiet_logging,
    render_report,
    result_from_json,
    result_to_json,
)

_DEFAULT_OUT = REPO_ROOT / "docs" / "PERFORMANCE.md"
_DEFAULT_ORDER = 100

#: The benchmarks a full run (``make bench``) must contain, by ``NAME``. Each is a
#: ``benchmarks/bench_<name>.py`` module found by :func:`discover`; one missing from
#: a full run is reported as failed instead of being left out of the report silently.
#:
#: --- LEDGER: wired in here. ``benchmarks/bench_ledger.py`` (records/s committed by
#: the SQLite and PostgreSQL ledgers, and the ledger's effect on the workflow's added
#: time per request) is discovered like every module; on a machine without PostgreSQL
#: it reports SQLite only and says so, it never fails the run.
FULL_RUN: tuple[str, ...] = (
    "node", "llm_node", "throughput", "workflow", "exposition", "memory", "ledger",
)
#: Prefix of the line on which a worker process sends its result.
_RESULT_MARK = "@@benchmark-result@@ "


@dataclass(frozen=True, slots=True)
class _Bench:
    name: str
    title: str
    order: int
    run: Callable[[bool], BenchResult]


def discover() -> tuple[list[_Bench], dict[str, str]]:
    """Import every ``benchmarks/bench_*.py`` module and check its interface.

    Returns:
        The benchmarks sorted by ``(ORDER, NAME)``, and the modules that could
        not be used, with the reason.
    """
    found: list[_Bench] = []
    broken: dict[str, str] = {}
    package_dir = Path(__file__).resolve().parent
    for info in sorted(pkgutil.iter_modules([str(package_dir)]), key=lambda i: i.name):
        if not info.name.startswith("bench_"):
            continue
        try:
            module = importlib.import_module(f"benchmarks.{info.name}")
        except Exception:
            broken[info.name] = traceback.format_exc()
            continue
        problem = _interface_problem(module)
        if problem:
            broken[info.name] = f"benchmarks/{info.name}.py: {problem}"
            continue
        found.append(_Bench(
            name=module.NAME, title=module.TITLE,
            order=int(getattr(module, "ORDER", _DEFAULT_ORDER)), run=module.run,
        ))
    names = [b.name for b in found]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise SystemExit(f"duplicate benchmark NAME(s): {sorted(duplicates)}")
    return sorted(found, key=lambda b: (b.order, b.name)), broken


def _interface_problem(module: ModuleType) -> str:
    for attribute in ("NAME", "TITLE"):
        if not isinstance(getattr(module, attribute, None), str):
            return f"missing str {attribute}"
    if not callable(getattr(module, "run", None)):
        return "missing run(quick: bool) -> BenchResult"
    order = getattr(module, "ORDER", _DEFAULT_ORDER)
    if not isinstance(order, int):
        return "ORDER must be an int"
    return ""


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the observability benchmarks and write the performance report.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds and smaller sizes (a smoke run)")
    parser.add_argument("--only", default="", metavar="NAME[,NAME]",
                        help="run only these benchmarks")
    parser.add_argument("--out", type=Path, default=_DEFAULT_OUT, metavar="PATH",
                        help=f"report path (default: {_DEFAULT_OUT.relative_to(REPO_ROOT)})")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--worker", default="", metavar="NAME", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _worker(bench: _Bench, quick: bool) -> int:
    """Run one benchmark in this (fresh) process and print its result for the runner."""
    result = bench.run(quick)
    print(_RESULT_MARK + result_to_json(result), flush=True)
    return 0


def _run_in_fresh_process(name: str, quick: bool) -> BenchResult:
    """Run benchmark ``name`` in a new interpreter; forward its output; return its result.

    Raises:
        RuntimeError: The worker failed or sent no result (its output is included).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    command = [sys.executable, "-m", "benchmarks", "--worker", name]
    if quick:
        command.append("--quick")
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    result: BenchResult | None = None
    output: list[str] = []
    for line in process.stdout:
        if line.startswith(_RESULT_MARK):
            result = result_from_json(line[len(_RESULT_MARK):])
        else:
            output.append(line)
            print(line, end="", flush=True)
    if process.wait() != 0 or result is None:
        raise RuntimeError(
            f"benchmark {name!r} failed (exit status {process.returncode}):\n"
            + "".join(output[-200:])
        )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks, write the report, and return the exit status.

    Returns:
        0 if every selected benchmark ran (targets met or not), 1 otherwise.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parse(arguments)
    quiet_logging()
    benches, broken = discover()
    if args.worker:
        by_name = {b.name: b for b in benches}
        if args.worker not in by_name:
            print(f"unknown benchmark {args.worker!r}", file=sys.stderr)
            return 2
        return _worker(by_name[args.worker], args.quick)
    if args.list:
        for bench in benches:
            print(f"{bench.name:12s} {bench.title}")
        for name, reason in broken.items():
            print(f"{name:12s} UNUSABLE: {reason.splitlines()[-1]}")
        return 0
    selected = benches
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        known = {b.name for b in benches}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            print(f"unknown benchmark(s) {unknown}; known: {sorted(known)}", file=sys.stderr)
            return 2
        selected = [b for b in benches if b.name in wanted]
    failures: dict[str, str] = {} if args.only else dict(broken)
    if not args.only:
        found = {b.name for b in benches} | {n.removeprefix("bench_") for n in broken}
        for name in FULL_RUN:
            if name not in found:
                failures[name] = f"benchmarks/bench_{name}.py is missing"
    machine = machine_info()
    command = " ".join(["python -m benchmarks", shlex.join(arguments)]).strip()
    started = time.perf_counter()
    results: list[BenchResult] = []
    for bench in selected:
        print(f"[benchmarks] {bench.name}: {bench.title} ...", flush=True)
        bench_started = time.perf_counter()
        load = load_average()
        try:
            result = _run_in_fresh_process(bench.name, args.quick)
        except Exception:
            failures[bench.name] = traceback.format_exc()
            print(f"[benchmarks] {bench.name}: FAILED\n{failures[bench.name]}", flush=True)
            continue
        result.elapsed = time.perf_counter() - bench_started
        result.load = load
        results.append(result)
        for target in result.targets:
            verdict = "met" if target.met else "MISSED"
            print(f"[benchmarks]   {target.goal}: {target.measured} ({verdict})", flush=True)
        print(f"[benchmarks] {bench.name}: done in {result.elapsed:.1f} s", flush=True)
    report = render_report(
        results, machine, command=command, quick=args.quick, failures=failures,
        total_seconds=time.perf_counter() - started, end_load=load_average(),
        partial=bool(args.only),
    )
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print(f"[benchmarks] wrote {out} ({time.perf_counter() - started:.1f} s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
