"""Measure the workflow benchmark's floor variant against the bare graph, at length.

The ``workflow`` benchmark runs 150 rounds per variant; at that length the
floor's cost (a node wrapper that only times each node: two clock reads and
one tuple per node, ``benchmarks/_prototypes.py:floor_node_wrapper``) is not
resolved from zero. This runs only the bare graph and the floor, alternating,
for as many rounds as asked, and prints the median added wall time with its
95 % confidence interval and the added process CPU. Run from the repository
root::

    python -m benchmarks.tools.workflow_floor 600

(600 rounds of 20 requests per variant take about three minutes here.)
"""

from __future__ import annotations

import sys

from benchmarks._harness import Variant, alternate, quiet_logging
from benchmarks.bench_workflow import TARGET_OVERHEAD, _Rounds


def main(argv: list[str]) -> None:
    """``workflow_floor.py [ROUNDS]`` (default 600)."""
    rounds = int(argv[0]) if argv else 600
    if rounds < 1:
        raise SystemExit("ROUNDS must be positive")
    quiet_logging()
    bench = _Rounds(per_round=20)
    try:
        bench.warm_up()
        runs = alternate(
            [Variant("off", lambda: bench.variant(bench.off)),
             Variant("floor", lambda: bench.variant(bench.floor))],
            rounds=rounds, warmup=1,
        )
    finally:
        bench.close()
    wall = runs.paired(("floor", "ns"), ("off", "ns"), lambda a, b: (a - b) / b)
    low, high = runs.paired_interval(("floor", "ns"), ("off", "ns"), lambda a, b: (a - b) / b)
    cpu = runs.paired(("floor", "process_cpu_ns"), ("off", "process_cpu_ns"), lambda a, b: a - b)
    budget = TARGET_OVERHEAD * runs.stats("off", "process_cpu_ns").median
    sys.stdout.write(
        f"{rounds} rounds of 20 requests per variant\n"
        f"floor - off: {wall.median * 100:.2f} % wall (95 % confidence interval of the "
        f"median {low * 100:.2f} % to {high * 100:.2f} %)\n"
        f"added process CPU: {cpu.median / 1000:.1f} µs per request; 1 % budget: "
        f"{budget / 1000:.1f} µs ({cpu.median / budget * 100:.0f} % of it)\n"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
