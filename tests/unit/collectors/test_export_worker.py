"""Tests for :mod:`collectors.export` and its wiring into the trace collector.

Exporters here are small fakes: one that keeps what it gets, one that
raises, one that blocks on an ``Event`` (released at teardown: a hung
export cannot be interrupted, only contained). Timeouts are driven by a
fake clock, so nothing sleeps. The OTLP test runs a real ``http.server``
receiver on loopback.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from app.observability import Observability, ObservabilitySettings
from collectors.base import CollectorState
from collectors.export import CallableExporter, ExportStats, ExportWorker
from collectors.records import SpanRecord
from collectors.trace import TraceStoreCollector

JOIN = 10.0


def span(span_id: int, **attributes: Any) -> SpanRecord:
    return SpanRecord(1, span_id, 0, f"span-{span_id}", "internal", 0, 1, "ok", None, None,
                      tuple(attributes.items()))


def spans(first: int, count: int) -> tuple[SpanRecord, ...]:
    return tuple(span(i) for i in range(first, first + count))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Keeper:
    """Keeps every batch and the thread that exported it."""

    def __init__(self, name: str = "keeper") -> None:
        self.name = name
        self.batches: list[tuple[SpanRecord, ...]] = []
        self.threads: set[str] = set()
        self.shutdown_thread: str | None = None

    def export(self, batch: Sequence[SpanRecord]) -> None:
        self.threads.add(threading.current_thread().name)
        self.batches.append(tuple(batch))

    def shutdown(self) -> None:
        self.shutdown_thread = threading.current_thread().name

    @property
    def span_ids(self) -> list[int]:
        return [s.span_id for batch in self.batches for s in batch]


class Blocking:
    """Each export signals ``entered``, then waits for a :meth:`step` or :meth:`release`."""

    name = "blocking"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.calls = 0
        self._cond = threading.Condition()
        self._steps = 0
        self._released = False

    def export(self, batch: Sequence[SpanRecord]) -> bool:
        with self._cond:
            self.calls += 1
            self.entered.set()
            if not self._cond.wait_for(lambda: self._released or self._steps > 0, JOIN * 3):
                raise TimeoutError("never released")
            if not self._released:
                self._steps -= 1
        return True

    def step(self, calls: int = 1) -> None:
        """Let ``calls`` export calls through."""
        with self._cond:
            self._steps += calls
            self._cond.notify_all()

    def release(self) -> None:
        """Let every call through, now and later (the end of a hang)."""
        with self._cond:
            self._released = True
            self._cond.notify_all()


class Workers:
    """Makes workers; releases blocked exporters, stops and joins everything at teardown."""

    def __init__(self) -> None:
        self.workers: list[ExportWorker] = []
        self.blockers: list[Blocking] = []

    def make(self, exporter: Any, *, start: bool = True, **kwargs: Any) -> ExportWorker:
        kwargs.setdefault("name", getattr(exporter, "name", "w"))
        worker = ExportWorker(exporter, **kwargs)
        self.workers.append(worker)
        if isinstance(exporter, Blocking):
            self.blockers.append(exporter)
        if start:
            worker.start()
        return worker

    def close(self) -> None:
        for blocker in self.blockers:
            blocker.release()
        for worker in self.workers:
            worker.stop(JOIN)
            if worker._thread is not None:
                worker._thread.join(JOIN)
                assert not worker._thread.is_alive()


@pytest.fixture
def workers() -> Iterator[Workers]:
    w = Workers()
    try:
        yield w
    finally:
        w.close()


def accounted(stats: ExportStats) -> int:
    return stats.exported + stats.failed + stats.timed_out + stats.dropped_total


# --- the worker -------------------------------------------------------------------


def test_batches_are_exported_in_order_on_the_workers_own_thread(workers: Workers) -> None:
    keeper = Keeper()
    worker = workers.make(keeper, name="mine")
    for first in (0, 3, 6):
        assert worker.submit(spans(first, 3))
    assert worker.submit(()) is True  # an empty batch is no batch
    assert worker.flush(JOIN)
    assert keeper.span_ids == list(range(9))
    assert keeper.threads == {"exporter-mine"}
    stats = worker.stats()
    assert (stats.submitted, stats.exported, stats.exported_batches) == (9, 9, 3)
    assert (stats.failed, stats.timed_out, stats.dropped_total, stats.in_flight) == (0, 0, 0, 0)
    assert stats.alive and not stats.busy and not stats.stuck
    assert stats.state is CollectorState.RUNNING


def test_a_raising_exporter_is_counted_and_the_worker_goes_on(workers: Workers) -> None:
    calls: list[int] = []

    def export(batch: Sequence[SpanRecord]) -> None:
        calls.append(len(batch))
        if len(calls) % 2 == 0:
            raise ConnectionError("receiver down")

    worker = workers.make(CallableExporter(export, name="flaky"))
    for first in range(0, 40, 4):
        worker.submit(spans(first, 4))
    assert worker.flush(JOIN)
    stats = worker.stats()
    assert (stats.exported_batches, stats.failed_batches) == (5, 5)
    assert (stats.exported, stats.failed) == (20, 20)
    assert stats.last_error == "ConnectionError: receiver down"
    assert stats.alive and accounted(stats) == stats.submitted == 40


@pytest.mark.parametrize(("returned", "exported"), [(None, 2), (True, 2), (False, 0)])
def test_false_means_failed_and_true_or_none_exported(
    workers: Workers, returned: bool | None, exported: int,
) -> None:
    worker = workers.make(CallableExporter(lambda batch: returned, name="r"))
    worker.submit(spans(0, 2))
    assert worker.flush(JOIN)
    stats = worker.stats()
    assert (stats.exported, stats.failed) == (exported, 2 - exported)
    assert stats.last_error == (None if exported else "export returned False")


def test_a_slow_exporter_drops_exactly_what_does_not_fit(workers: Workers) -> None:
    blocking = Blocking()
    worker = workers.make(blocking, max_queued_batches=4)
    assert worker.submit(spans(0, 5))
    assert blocking.entered.wait(JOIN)  # the worker is busy with the first batch
    results = [worker.submit(spans(100 + 10 * i, 5)) for i in range(10)]
    assert results == [True] * 4 + [False] * 6
    stats = worker.stats()
    assert stats.busy and not stats.stuck
    assert stats.queue_depth == 4
    assert dict(stats.dropped) == {"queue_full": 30}
    assert stats.dropped_batches == 6
    assert stats.in_flight == 25  # one batch in the call, four queued
    blocking.step(5)
    assert worker.flush(JOIN)
    stats = worker.stats()
    assert (stats.exported, stats.exported_batches, stats.in_flight) == (25, 5, 0)
    assert stats.submitted == 55 == accounted(stats)


def test_a_hung_export_times_out_once_and_later_batches_are_dropped(workers: Workers) -> None:
    clock = FakeClock()
    blocking = Blocking()
    worker = workers.make(blocking, export_timeout=2.0, clock=clock)
    worker.submit(spans(0, 3))
    assert blocking.entered.wait(JOIN)
    clock.now += 1.5
    assert worker.submit(spans(10, 2))  # within the timeout: queued
    assert worker.stats().timed_out == 0
    clock.now += 1.0
    stats = worker.stats()  # detected here
    assert stats.stuck and stats.busy
    assert (stats.timed_out, stats.timed_out_batches) == (3, 1)
    assert stats.last_error == "export exceeded 2s"
    assert worker.stats().timed_out == 3  # counted once, however often it is seen
    assert worker.submit(spans(20, 4)) is False
    assert worker.submit(spans(30, 1)) is False
    assert dict(worker.stats().dropped) == {"exporter_stuck": 5}
    started = time.monotonic()
    assert worker.flush(JOIN) is False  # fails fast instead of waiting for the hung call
    assert worker.stop(0.05) is False  # bounded: gives up on the thread
    assert time.monotonic() - started < 2.0
    assert worker.submit(spans(40, 1)) is False
    stats = worker.stats()
    # The queued batch (2 spans) is swept as closed when stop gives up, then one more.
    assert dict(stats.dropped) == {"exporter_stuck": 5, "closed": 3}
    assert stats.alive  # the hung call still holds the thread
    assert accounted(stats) == stats.submitted == 11
    # Teardown of the hang: the call returns, the thread exits on its own.
    blocking.release()
    worker._thread.join(JOIN)  # type: ignore[union-attr]
    stats = worker.stats()
    assert not stats.alive and stats.state is CollectorState.STOPPED
    assert (stats.timed_out, stats.exported) == (3, 0)  # the late result is not recounted
    assert accounted(stats) == stats.submitted
    assert blocking.calls == 1


def test_stop_exports_what_is_queued_then_shuts_the_exporter_down(workers: Workers) -> None:
    keeper = Keeper("k")
    worker = workers.make(keeper)
    for first in range(0, 30, 10):
        worker.submit(spans(first, 10))
    assert worker.stop(JOIN)
    assert keeper.span_ids == list(range(30))
    assert keeper.shutdown_thread == "exporter-k"
    assert worker.submit(spans(99, 2)) is False
    stats = worker.stats()
    assert stats.state is CollectorState.STOPPED and not stats.alive
    assert (stats.exported, dict(stats.dropped)) == (30, {"closed": 2})
    assert worker.stop(JOIN)  # idempotent
    assert worker.flush(0) is True


def test_a_failing_shutdown_is_logged_not_raised(workers: Workers) -> None:
    def boom() -> None:
        raise OSError("cannot close")

    worker = workers.make(CallableExporter(lambda b: None, name="s", shutdown=boom))
    worker.submit(spans(0, 1))
    assert worker.stop(JOIN)
    assert worker.stats().exported == 1


def test_batches_queued_before_start_are_counted_as_closed_if_never_started(
    workers: Workers,
) -> None:
    worker = workers.make(Keeper(), start=False)
    worker.submit(spans(0, 4))
    assert worker.flush(0) is False
    assert worker.stop(JOIN)
    stats = worker.stats()
    assert (stats.submitted, dict(stats.dropped), stats.exported) == (4, {"closed": 4}, 0)


def test_an_exporter_raising_a_base_exception_kills_only_its_worker(
    workers: Workers, monkeypatch: pytest.MonkeyPatch,
) -> None:
    died: list[tuple[str, type[BaseException]]] = []
    monkeypatch.setattr(
        threading, "excepthook",
        lambda args: died.append((args.thread.name if args.thread else "?", args.exc_type)),
    )

    def export(batch: Sequence[SpanRecord]) -> None:
        raise KeyboardInterrupt

    worker = workers.make(CallableExporter(export, name="ki"))
    worker.submit(spans(0, 3))
    worker._thread.join(JOIN)  # type: ignore[union-attr]
    assert died == [("exporter-ki", KeyboardInterrupt)]
    assert worker.submit(spans(5, 2)) is False
    assert worker.flush(0) is False
    stats = worker.stats()
    assert stats.state is CollectorState.DEAD and not stats.alive
    assert dict(stats.dropped) == {"exporter_dead": 5}
    assert accounted(stats) == stats.submitted == 5


def test_after_fork_the_child_counts_the_inherited_batches_as_fork(workers: Workers) -> None:
    keeper = Keeper()
    worker = workers.make(keeper, start=False)
    worker.submit(spans(0, 3))
    worker.submit(spans(3, 2))
    assert worker.after_fork_in_child() == 5  # as the child would after os.fork()
    stats = worker.stats()
    assert (stats.submitted, dict(stats.dropped), stats.queue_depth) == (5, {"fork": 5}, 0)
    worker.start()
    worker.submit(spans(10, 1))
    assert worker.flush(JOIN)
    assert keeper.span_ids == [10]


@pytest.mark.parametrize(
    ("exporter", "kwargs", "error"),
    [
        (object(), {}, TypeError),
        (Keeper(), {"max_queued_batches": 0}, ValueError),
        (Keeper(), {"export_timeout": 0.0}, ValueError),
        (Keeper(), {"export_timeout": float("inf")}, ValueError),
    ],
)
def test_bad_arguments_are_refused(exporter: Any, kwargs: dict[str, Any],
                                   error: type[Exception]) -> None:
    with pytest.raises(error):
        ExportWorker(exporter, name="bad", **kwargs)


# --- the trace collector --------------------------------------------------------------


def _redact(record: SpanRecord) -> SpanRecord:
    return record._replace(attributes=tuple(
        (k, "[REDACTED]" if k == "secret" else v) for k, v in record.attributes))


def test_the_trace_collector_hands_redacted_spans_to_every_exporter_off_its_thread() -> None:
    first, second = Keeper("first"), Keeper("second")
    collector = TraceStoreCollector(redactor=_redact, exporters=[first, second],
                                    export_batch_size=4, capacity=5)
    collector.start()
    try:
        for i in range(10):
            collector.send(span(i, secret="hunter2"))
        assert collector.flush_exporters(JOIN)
        for keeper in (first, second):
            assert keeper.span_ids == list(range(10))  # even those evicted from the store
            assert all(len(batch) <= 4 for batch in keeper.batches)
            assert {dict(s.attributes)["secret"] for b in keeper.batches for s in b} == {
                "[REDACTED]"}
        assert first.threads == {"exporter-first"} and second.threads == {"exporter-second"}
        assert [s.name for s in collector.exporter_stats()] == ["first", "second"]
        assert all(s.exported == 10 for s in collector.exporter_stats())
        assert collector.counts() == (10, 5)
    finally:
        assert collector.stop(JOIN)
    assert first.shutdown_thread == "exporter-first"  # the workers stopped with it
    assert all(s.state is CollectorState.STOPPED for s in collector.exporter_stats())


def test_exporter_names_are_unique() -> None:
    collector = TraceStoreCollector(exporters=[Keeper("x"), Keeper("x"), Blocking()])
    assert [s.name for s in collector.exporter_stats()] == ["x", "x-2", "blocking"]
    collector.stop(JOIN)


@pytest.fixture
def obs_with() -> Iterator[Any]:
    """Factory for containers given exporter objects; closes all of them."""
    made: list[Observability] = []

    def factory(exporters: list[Any], **overrides: Any) -> Observability:
        obs = Observability(ObservabilitySettings(drain_at_exit=False, **overrides),
                            exporters=exporters)
        made.append(obs)
        return obs

    try:
        yield factory
    finally:
        for obs in made:
            obs.close(JOIN)


def test_a_hung_exporter_never_holds_up_the_pipeline(obs_with: Any) -> None:
    blocking = Blocking()
    obs: Observability = obs_with([blocking], export_queue_batches=2)
    trace = obs.pipeline.collectors["trace"]
    (worker,) = trace._workers
    try:
        total = 0
        for _ in range(20):
            for _ in range(10):
                with obs.tracing.span("work", tenant_id="t"):
                    obs.metrics.increment("request_count", tenant_id="t")
                total += 1
            assert obs.flush(JOIN)  # every flush completes: export is off the path
            assert blocking.entered.wait(JOIN)
        assert obs.metrics.export_metrics()["request_count"]["series"][0]["value"] == total
        assert trace.counts()[0] == total
        (stats,) = trace.exporter_stats()
        assert stats.submitted == total and stats.exported == 0
        assert stats.busy and stats.queue_depth <= 2
        assert stats.in_flight + stats.dropped_total == total
        assert set(stats.dropped) == {"queue_full"}
        started = time.monotonic()
        result = obs.close(timeout=0.3)
        assert time.monotonic() - started < 2.0
        assert result.complete  # every collector drained; only the exporter is stuck
        assert all(s.state is CollectorState.STOPPED for s in obs.health().collectors.values())
        (stats,) = trace.exporter_stats()
        assert stats.alive and stats.busy
        assert "closed" in stats.dropped  # what was queued behind the hung call
        assert stats.in_flight + stats.dropped_total == total
        assert blocking.calls == 1
    finally:
        blocking.release()
        assert worker._thread is not None
        worker._thread.join(JOIN)
        assert not worker._thread.is_alive()


# --- OTLP over HTTP ---------------------------------------------------------------------


def _as_otlp_json(body: bytes, content_type: str | None) -> dict[str, Any]:
    """A request body, protobuf or OTLP/JSON, as an OTLP/JSON document (hex ids)."""
    if content_type == "application/json":
        document: dict[str, Any] = json.loads(body)
        return document
    assert content_type == "application/x-protobuf", content_type
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    document = MessageToDict(message, use_integers_for_enums=True)
    for resource_spans in document.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return document


class Receiver:
    """A loopback OTLP/HTTP receiver: keeps each POSTed body (protobuf or JSON) as JSON."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.authorization: list[str | None] = []
        #: Answered first, one per request, before ``status``.
        self.statuses: list[int] = []
        self.status = status
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.paths.append(self.path)
                receiver.authorization.append(self.headers.get("Authorization"))
                receiver.bodies.append(
                    _as_otlp_json(body, self.headers.get("Content-Type")))
                reply = b"{}"
                status = receiver.statuses.pop(0) if receiver.statuses else receiver.status
                self.send_response(status)
                if status == 503:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def spans(self) -> list[dict[str, Any]]:
        return [s for body in self.bodies for rs in body["resourceSpans"]
                for ss in rs["scopeSpans"] for s in ss.get("spans", ())]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()
        r.thread.join(JOIN)


def test_otlp_export_to_a_loopback_receiver(make_obs: Any, receiver: Receiver) -> None:
    obs: Observability = make_obs(otlp_endpoint=receiver.url, id_seed=42)
    with obs.tracing.span("workflow", kind="workflow", tenant_id="acme") as root:
        root.set_attribute("password", "hunter2")
        obs.langfuse.log_generation_sync(
            tenant_id="acme", model_version="risk-llm-v2", prompt_version="p1",
            input_tokens=100, output_tokens=20, latency=0.5)
    assert obs.flush(JOIN)
    trace = obs.pipeline.collectors["trace"]
    assert trace.flush_exporters(JOIN)
    (stats,) = trace.exporter_stats()
    assert (stats.name, stats.exported, stats.failed) == ("otlp", 2, 0)
    assert set(receiver.paths) == {"/v1/traces"}
    exported = {s["name"]: s for s in receiver.spans()}
    assert set(exported) == {"workflow", "chat risk-llm-v2"}
    assert exported["chat risk-llm-v2"]["parentSpanId"] == exported["workflow"]["spanId"]
    assert exported["workflow"]["traceId"] == f"{root.trace_id:032x}"
    attrs = {a["key"]: a["value"] for a in exported["workflow"]["attributes"]}
    assert attrs["password"] != {"stringValue": "hunter2"}  # redacted before export
    assert "hunter2" not in json.dumps(receiver.bodies)
    resource = {a["key"]: a["value"]["stringValue"]
                for a in receiver.bodies[0]["resourceSpans"][0]["resource"]["attributes"]}
    assert resource["service.name"] == "ai-risk-engine"


def test_otlp_headers_from_settings_reach_the_receiver_and_stay_secret(
    make_obs: Any, receiver: Receiver
) -> None:
    obs: Observability = make_obs(
        otlp_endpoint=receiver.url, otlp_headers={"Authorization": "Basic c2VjcmV0"}
    )
    with obs.tracing.span("s"):
        pass
    assert obs.flush(JOIN)
    assert obs.pipeline.collectors["trace"].flush_exporters(JOIN)

    assert receiver.authorization == ["Basic c2VjcmV0"]
    assert "c2VjcmV0" not in repr(obs.settings)
    assert "c2VjcmV0" not in obs.settings.model_dump_json()


def test_the_container_retries_a_retryable_otlp_answer(
    make_obs: Any, receiver: Receiver
) -> None:
    receiver.statuses = [503]
    obs: Observability = make_obs(otlp_endpoint=receiver.url)
    with obs.tracing.span("s"):
        pass
    assert obs.flush(JOIN, exporters=True)

    (stats,) = obs.exporter_stats()
    assert (stats.exported, stats.failed) == (1, 0)
    assert len(receiver.bodies) == 2  # refused once, then accepted
    assert receiver.bodies[0] == receiver.bodies[1]


def test_the_container_reads_the_otel_variables_when_it_is_built(
    make_obs: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.removesuffix("/v1/traces"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Basic%20ZW52")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    obs: Observability = make_obs()
    with obs.tracing.span("s"):
        pass
    assert obs.flush(JOIN, exporters=True)

    (stats,) = obs.exporter_stats()
    assert (stats.name, stats.exported) == ("otlp", 1)
    assert receiver.paths == ["/v1/traces"]
    assert receiver.authorization == ["Basic ZW52"]
    resource = {a["key"]: a["value"]["stringValue"]
                for a in receiver.bodies[0]["resourceSpans"][0]["resource"]["attributes"]}
    assert resource["service.name"] == "from-env"


def test_a_malformed_otel_variable_is_refused_when_the_container_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL must be one of"):
        Observability(ObservabilitySettings(), start=False)


def test_an_otlp_header_with_a_line_break_is_refused_when_the_container_is_built() -> None:
    settings = ObservabilitySettings(
        otlp_endpoint="http://127.0.0.1:9/v1/traces", otlp_headers={"X-Bad": "a\r\nb"}
    )
    with pytest.raises(ValueError, match="line break"):
        Observability(settings, start=False)


def test_otlp_receiver_errors_are_counted_as_failed(make_obs: Any, receiver: Receiver) -> None:
    receiver.status = 503
    obs: Observability = make_obs(otlp_endpoint=receiver.url, otlp_max_retries=0)
    for _ in range(3):
        with obs.tracing.span("s"):
            pass
    assert obs.flush(JOIN)
    trace = obs.pipeline.collectors["trace"]
    assert trace.flush_exporters(JOIN)
    (stats,) = trace.exporter_stats()
    assert (stats.exported, stats.failed) == (0, 3)
    assert stats.last_error == "export returned False"
    assert len(receiver.spans()) == 3


def test_export_is_off_by_default(obs: Observability) -> None:
    assert obs.settings.otlp_endpoint is None
    assert obs.pipeline.collectors["trace"].exporter_stats() == ()


def test_exporter_objects_are_passed_to_the_container(obs_with: Any) -> None:
    keeper = Keeper("kept")
    obs: Observability = obs_with([keeper], id_seed=1)
    with obs.tracing.span("one"):
        pass
    assert obs.flush(JOIN)
    assert obs.pipeline.collectors["trace"].flush_exporters(JOIN)
    assert [s.name for b in keeper.batches for s in b] == ["one"]
    assert keeper.threads == {"exporter-kept"}
    obs.close(JOIN)
    assert keeper.shutdown_thread == "exporter-kept"


def test_exporter_outcomes_are_exported_as_a_metric(obs_with: Any) -> None:
    keeper = Keeper("kept")
    obs: Observability = obs_with([keeper], id_seed=1)
    for name in ("one", "two"):
        with obs.tracing.span(name):
            pass
    assert obs.flush(JOIN)
    assert obs.pipeline.collectors["trace"].flush_exporters(JOIN)

    (stats,) = obs.exporter_stats()
    assert (stats.name, stats.exported) == ("kept", 2)
    series = {
        tuple(sorted(s["labels"].items())): s["value"]
        for s in obs.metrics.export_metrics()["spans_exported"]["series"]
    }
    assert series[(("exporter", "kept"), ("outcome", "exported"))] == 2
    assert series[(("exporter", "kept"), ("outcome", "failed"))] == 0
    assert "observability_spans_exported_total" in obs.metrics.render_prometheus()


def test_flush_with_exporters_waits_for_the_exporters_too(obs_with: Any) -> None:
    keeper = Keeper("kept")
    obs: Observability = obs_with([keeper], id_seed=1)
    for name in ("one", "two"):
        with obs.tracing.span(name):
            pass

    result = obs.flush(JOIN, exporters=True)

    assert result and not result.timed_out
    assert [s.name for b in keeper.batches for s in b] == ["one", "two"]


@pytest.mark.asyncio
async def test_aflush_with_exporters_waits_for_the_exporters_too(obs_with: Any) -> None:
    keeper = Keeper("kept")
    obs: Observability = obs_with([keeper], id_seed=1)
    with obs.tracing.span("one"):
        pass

    assert await obs.aflush(JOIN, exporters=True)
    assert [s.name for b in keeper.batches for s in b] == ["one"]


def test_flush_with_exporters_reports_a_stuck_exporter_as_incomplete(obs_with: Any) -> None:
    blocking = Blocking()
    obs: Observability = obs_with([blocking])
    with obs.tracing.span("one"):
        pass
    try:
        stores_only = obs.flush(JOIN)
        with_exporters = obs.flush(0.2, exporters=True)
    finally:
        blocking.release()

    assert stores_only and blocking.entered.is_set()
    assert not with_exporters
    assert with_exporters.timed_out and with_exporters.dropped == 0
    assert obs.flush(JOIN, exporters=True)  # released: everything handled


def test_flush_with_exporters_and_no_exporter_is_a_plain_flush(obs: Observability) -> None:
    with obs.tracing.span("one"):
        pass
    assert obs.flush(JOIN, exporters=True)
    assert obs.flush_exporters(JOIN)
