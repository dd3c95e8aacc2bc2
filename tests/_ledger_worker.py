"""A process that writes to a ledger, for the multi-process and SIGKILL tests.

``python -m tests._ledger_worker URL PREFIX COUNT`` records COUNT costs of
0.001 USD (event ids ``PREFIX-<i>``, tenants ``t1``/``t2`` alternately, a
budget of 0.05 USD each) and one audit event per cost, flushing every 50
records and printing ``flushed <n>`` once a flush has returned complete
(every record up to ``n`` is then committed). It exits 0 after a clean close.
"""

from __future__ import annotations

import logging
import sys
from decimal import Decimal

import structlog

from app.observability import Observability, ObservabilitySettings

COST = Decimal("0.001")
BUDGET = Decimal("0.05")
EVERY = 50


def main(url: str, prefix: str, count: int) -> int:
    settings = ObservabilitySettings(
        ledger_url=url, drain_at_exit=False, budgets={"t1": BUDGET, "t2": BUDGET},
        flush_timeout_seconds=30.0,
    )
    with Observability(settings) as obs:
        for index in range(1, count + 1):
            tenant = "t1" if index % 2 else "t2"
            obs.costs.add_cost(tenant_id=tenant, model_version="risk-llm-v2", input_tokens=1,
                               output_tokens=1, cost=COST, event_id=f"{prefix}-{index}",
                               request_id=f"{prefix}-req-{index}")
            obs.audit.log("ledger.test", tenant_id=tenant, index=index, prefix=prefix)
            if index % EVERY == 0:
                if not obs.flush():
                    sys.stderr.write(f"flush incomplete at {index}\n")
                    return 1
                sys.stdout.write(f"flushed {index}\n")
                sys.stdout.flush()
        result = obs.flush()
    return 0 if result else 1


if __name__ == "__main__":
    # Only warnings, on stderr: stdout carries the "flushed" lines.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    raise SystemExit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
