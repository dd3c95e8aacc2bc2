"""Tests for :mod:`app.observability.audit`: audit events, kept and logged."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from structlog.testing import LogCapture

from app.observability import Observability
from app.observability.redaction import structlog_redactor

MakeObs = Callable[..., Observability]


@pytest.fixture
def log_capture() -> Iterator[LogCapture]:
    """Every structlog line, at every level, through the redactor; config restored."""
    previous = structlog.get_config()
    capture = LogCapture()
    structlog.configure(
        processors=[structlog_redactor, capture],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    try:
        yield capture
    finally:
        structlog.configure(**previous)


def test_events_are_kept_in_order_with_their_fields(obs: Observability) -> None:
    before = datetime.now(UTC)
    obs.audit.log("decision.made", tenant_id="t1", request_id="r1", decision="approve",
                  score=0.12, escalated=False)
    obs.audit.log("decision.made", tenant_id="t2", request_id="r2", decision="reject")
    obs.audit.log("approval.granted", tenant_id="t1", approver="alice")

    events = obs.audit.events()  # no flush: the read follows the events in the queue

    assert [e.event for e in events] == ["decision.made", "decision.made", "approval.granted"]
    assert events[0].fields == (("tenant_id", "t1"), ("request_id", "r1"),
                                ("decision", "approve"), ("score", 0.12),
                                ("escalated", False))
    assert events[0].data["decision"] == "approve"
    assert before <= events[0].time <= datetime.now(UTC)
    assert events[0].time.tzinfo is UTC


def test_events_filter_by_name_and_tenant(obs: Observability) -> None:
    obs.audit.log("decision.made", tenant_id="t1")
    obs.audit.log("decision.made", tenant_id="t10")
    obs.audit.log("approval.granted", tenant_id="t1")
    obs.audit.log("system.started")

    assert [e.event for e in obs.audit.events(tenant_id="t1")] == [
        "decision.made", "approval.granted"]
    assert len(obs.audit.events(event="decision.made")) == 2
    assert len(obs.audit.events(event="decision.made", tenant_id="t10")) == 1
    assert obs.audit.events(tenant_id="t2") == ()
    assert obs.audit.events(event="nothing") == ()


def test_buffer_is_bounded(make_obs: MakeObs) -> None:
    obs = make_obs(audit_buffer_size=3)
    for index in range(5):
        obs.audit.log("tick", n=index)

    assert [e.data["n"] for e in obs.audit.events()] == [2, 3, 4]


@pytest.mark.parametrize(
    ("event", "fields", "error", "match"),
    [
        (None, {}, TypeError, "event"),
        (b"x", {}, TypeError, "event"),
        ("", {}, ValueError, "event"),
        ("x", {"timestamp": "now"}, ValueError, "timestamp"),
        ("x", {"audit": False}, ValueError, "audit"),
    ],
)
def test_bad_events_are_refused_at_once(
    obs: Observability, event: Any, fields: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        obs.audit.log(event, **fields)

    assert obs.flush()
    assert obs.audit.events() == ()
    stats = obs.health().collectors["audit"]
    assert stats.handler_errors == 0 and stats.dropped_total == 0


def test_events_are_logged_through_structlog(
    obs: Observability, log_capture: LogCapture
) -> None:
    obs.audit.log("decision.made", tenant_id="t1", decision="approve")
    assert obs.flush()

    (line,) = [e for e in log_capture.entries if e["event"] == "decision.made"]
    assert line["audit"] is True
    assert line["tenant_id"] == "t1" and line["decision"] == "approve"
    assert line["log_level"] == "info"
    datetime.fromisoformat(line["timestamp"])


def test_concurrent_emitters_lose_nothing(obs: Observability) -> None:
    def worker(index: int) -> None:
        for n in range(250):
            obs.audit.log("tick", tenant_id=f"t{index}", n=n)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for index in range(4):
        events = obs.audit.events(tenant_id=f"t{index}")
        assert [e.data["n"] for e in events] == list(range(250))  # per-producer order kept


def test_two_containers_keep_their_own_events(make_obs: MakeObs) -> None:
    first, second = make_obs(), make_obs()

    first.audit.log("only.here")

    assert len(first.audit.events()) == 1
    assert second.audit.events() == ()
