"""Tests for :mod:`collectors.logs`: the library is silent until the application configures logging.

The unconfigured cases run in a fresh interpreter: this test session has
configured structlog (``tests/conftest.py``), as an application would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import structlog

from collectors.logs import get_logger

REPO = Path(__file__).resolve().parents[3]

#: A library user's program: a container, a workflow run, records after close.
_USER_PROGRAM = """
import asyncio
from app.observability import Observability, ObservabilitySettings
from app.workflows.langgraph.instrumentation import InstrumentedRiskWorkflow
from app.workflows.langgraph.state import RiskRequest

obs = Observability(ObservabilitySettings(budgets={"t1": "0.000001"}))
workflow = InstrumentedRiskWorkflow(obs)
request = RiskRequest(request_id="r1", tenant_id="t1", correlation_id="c1", payload={
    "applicant_id": "a1", "amount": "120.50", "currency": "USD", "country": "US",
    "merchant_category": "retail", "account_age_days": 400, "prior_chargebacks": 0,
    "channel": "web", "description": "card purchase"})
asyncio.run(workflow.run(request))
obs.audit.log("user.action", tenant_id="t1")
assert obs.flush()
obs.close()
obs.metrics.increment("request_count", tenant_id="t1")  # dropped after close: a warning
"""


def _run(program: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True,
        timeout=50, check=False,
    )


def test_a_library_user_who_configured_no_logging_sees_nothing() -> None:
    done = _run(_USER_PROGRAM)

    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")


def test_with_stdlib_logging_configured_the_events_arrive_there() -> None:
    program = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout,\n"
        "                    format='%(levelname)s %(name)s %(message)s')\n"
        + _USER_PROGRAM
        + "from collectors.logs import get_logger\n"
        "try:\n"
        "    raise KeyError('boom')\n"
        "except KeyError:\n"
        "    get_logger('collectors.demo').exception('demo.failed', tenant='t1')\n"
    )

    done = _run(program)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "DEBUG collectors.pipeline observability.pipeline_closed complete=True" in (
        done.stdout
    ), done.stdout
    assert "ERROR collectors.demo demo.failed tenant='t1'" in lines
    assert "KeyError: 'boom'" in lines  # the traceback, through the stdlib's exc_info


def test_with_structlog_configured_the_events_go_through_its_configuration() -> None:
    logger = get_logger("collectors.demo")

    with structlog.testing.capture_logs() as logs:
        logger.warning("demo.event", count=3)
        logger.debug("demo.quiet")  # below the level tests/conftest.py configures

    assert logs == [{"event": "demo.event", "count": 3, "log_level": "warning"}]
