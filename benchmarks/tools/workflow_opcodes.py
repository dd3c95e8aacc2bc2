"""Count the Python bytecodes one workflow run executes, per function, instrumented vs bare.

A deterministic profile of where the instrumentation's work goes, on every
thread (the calling thread, LangGraph's executor threads, the collector
threads): opcode counts do not depend on the machine's load, unlike wall or
CPU time on a shared 2-core VM. Run from the repository root::

    python -m benchmarks.tools.workflow_opcodes 60

It runs 60 requests bare and 60 instrumented (after a warm-up each, the
garbage collector disabled so that its passes do not land in one variant)
and prints the opcodes per request of both, and the functions whose counts
differ most. Tracing slows the runs down some fifty times, so timings and
thread wake-ups inside it mean nothing; only the counts do.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import threading
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from app.observability import Observability, ObservabilitySettings
from app.workflows.langgraph.config import WorkflowConfig
from app.workflows.langgraph.instrumentation import InstrumentedRiskWorkflow
from app.workflows.langgraph.state import RiskRequest
from benchmarks.tools.workflow_instructions import PAYLOAD, REVIEW

#: Source paths are shown relative to the repository root.
_ROOT = str(Path(__file__).resolve().parents[2]) + os.sep


def count(instrument: bool, requests: int) -> Counter[str]:
    """Opcodes per ``file:function`` over ``requests`` runs (after 30 untraced ones)."""
    counts: Counter[str] = Counter()
    active = [False]

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if not active[0]:
            return None
        frame.f_trace_opcodes = True
        code = frame.f_code
        path = code.co_filename
        path = (path[len(_ROOT):] if path.startswith(_ROOT)
                else path.split("site-packages/")[-1])
        key = f"{path}:{code.co_name}"

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode":
                counts[key] += 1
            return local

        return local

    threading.settrace(tracer)  # threads started from now on: collectors, executors
    try:
        obs = Observability(ObservabilitySettings(drain_at_exit=False, queue_maxsize=1_000_000))
        workflow = InstrumentedRiskWorkflow(
            obs, config=WorkflowConfig(seed=1), instrument=instrument
        )

        async def run(first: int, n: int) -> None:
            for i in range(first, first + n):
                await workflow.run(RiskRequest(
                    request_id=f"r{i}", tenant_id=f"t{i % 4}", correlation_id=f"c{i}",
                    payload=REVIEW if i % 3 == 0 else PAYLOAD,
                ))

        asyncio.run(run(0, 30))
        assert obs.flush(60)
        active[0] = True
        sys.settrace(tracer)
        asyncio.run(run(1_000, requests))
        assert obs.flush(60)
    finally:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]
        active[0] = False
    obs.close()
    return counts


def floor_per_node(nodes: int = 2_048) -> float:
    """Opcodes of :class:`~benchmarks._prototypes.FloorNode` per node, its trivial work excluded.

    The least Python work of one instrumented node (a span, a counter and a
    latency observation, built and stored in one thread with no checks): a
    floor for what any pure-Python design adds per node.
    """
    from benchmarks._prototypes import FloorNode
    from benchmarks.bench_node import TENANTS, work

    floor = FloorNode((0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
    floor.run(256, TENANTS, work)  # warm: label cache, sketch bins
    counts: Counter[str] = Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        name = frame.f_code.co_name

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode":
                counts[name] += 1
            return local

        return local

    sys.settrace(tracer)
    try:
        floor.run(nodes, TENANTS, work)
    finally:
        sys.settrace(None)
    counts.pop("work", None)
    return sum(counts.values()) / nodes


def profile(requests: int) -> dict[str, Any]:
    """Both variants' opcodes per request, the added opcodes per function, and a floor."""
    gc.disable()
    try:
        bare, instrumented = count(False, requests), count(True, requests)
        floor = floor_per_node()
    finally:
        gc.enable()
    return {
        "bare": sum(bare.values()) / requests,
        "instrumented": sum(instrumented.values()) / requests,
        "floor_per_node": floor,
        "added_by_function": {
            key: (instrumented[key] - bare[key]) / requests
            for key in set(bare) | set(instrumented)
            if instrumented[key] != bare[key]
        },
    }


def main(argv: list[str]) -> None:
    """``workflow_opcodes.py [N] [--json]``: N requests per variant (default 60)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    numbers = [arg for arg in argv if not arg.startswith("--")]
    requests = int(numbers[0]) if numbers else 60
    result = profile(requests)
    if "--json" in argv:
        print(json.dumps(result))
        return
    total_bare, total_on = result["bare"], result["instrumented"]
    print(f"opcodes per request: bare {total_bare:,.0f}, instrumented {total_on:,.0f}, "
          f"added {total_on - total_bare:,.0f} ({(total_on - total_bare) / total_bare:.1%})")
    print(f"floor of one instrumented node (benchmarks._prototypes.FloorNode): "
          f"{result['floor_per_node']:,.0f} opcodes")
    diff: dict[str, float] = result["added_by_function"]
    for key, added in sorted(diff.items(), key=lambda item: -abs(item[1]))[:30]:
        print(f"{added:10.1f}  {key}")


if __name__ == "__main__":
    main(sys.argv[1:])
