"""Count the instructions of N workflow runs, instrumented or bare, under callgrind.

Wall time on a shared 2-core VM is noisy (the workflow benchmark's rounds spread
by +-20 %); instruction counts are not. Run, from the repository root::

    for v in "on 50" "on 250" "off 50" "off 250"; do set -- $v
      PYTHONPATH=. valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$1.$2 \\
        python benchmarks/tools/workflow_instructions.py $1 $2 2>&1 | grep Collected
    done

and take ``(on250 - on50) / 200`` and ``(off250 - off50) / 200`` as the
instructions per request (start-up cancels out). ``--producer-only`` keeps the
collectors stopped, which isolates the calling threads' share. ``--no-gc``
disables the cyclic garbage collector for the runs: a collection costs
millions of instructions and lands in one window or the other, so without it
the difference measures the instrumentation's own work exactly.
``--linger S`` sets the collectors' linger (default 1.0 s here, the most the
settings allow): a collector thread wakes about once per linger, and under
callgrind a request takes ~50x longer than natively, so the service default
(0.1 s, one wake per ~25 requests natively) would make the collectors wake
for nearly every request and charge their wake-ups to the instrumentation
many times over. Even 1.0 s still wakes them several times more often per
request than a native run does: the collectors' share stays an upper bound.

Add ``--separate-threads=yes`` to valgrind for one output file per thread, and
``--cache-sim=yes`` for callgrind's simulated first-level cache misses beside
the instructions (the workflow benchmark's analysis quotes both).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

import structlog

from app.observability import Observability, ObservabilitySettings
from app.workflows.langgraph.config import WorkflowConfig
from app.workflows.langgraph.instrumentation import InstrumentedRiskWorkflow
from app.workflows.langgraph.state import RiskRequest

PAYLOAD = {
    "applicant_id": "app-1", "amount": "120.50", "currency": "USD", "country": "US",
    "merchant_category": "retail", "account_age_days": 400, "prior_chargebacks": 0,
    "channel": "web", "description": "card purchase",
}
REVIEW = {**PAYLOAD, "amount": "800", "account_age_days": 60, "prior_chargebacks": 1}


def main(argv: list[str]) -> None:
    """``workflow_instructions.py on|off N [--producer-only] [--no-gc] [--linger S]``."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    instrument = argv[0] == "on"
    count = int(argv[1])
    producer_only = "--producer-only" in argv
    if "--no-gc" in argv:
        gc.disable()
    linger = float(argv[argv.index("--linger") + 1]) if "--linger" in argv else 1.0
    obs = Observability(
        ObservabilitySettings(
            drain_at_exit=False, queue_maxsize=1_000_000, linger_seconds=linger),
        start=not producer_only,
    )
    workflow = InstrumentedRiskWorkflow(obs, config=WorkflowConfig(seed=1), instrument=instrument)

    async def run() -> None:
        for i in range(count):
            await workflow.run(RiskRequest(
                request_id=f"r{i}", tenant_id=f"t{i % 4}", correlation_id=f"c{i}",
                payload=REVIEW if i % 3 == 0 else PAYLOAD,
            ))

    asyncio.run(run())
    if not producer_only:
        assert obs.flush(60)
    obs.close()


if __name__ == "__main__":
    main(sys.argv[1:])
