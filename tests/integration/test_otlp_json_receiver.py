"""The main job exports OTLP/JSON to a receiver that takes JSON only.

The receiver is a loopback stand-in (standard library HTTP server) for
backends that speak OTLP/JSON, such as MLflow: it answers ``415`` to anything
but ``Content-Type: application/json``, undoes ``Content-Encoding: gzip``, and
parses every body strictly with protobuf's ``json_format`` into an
``ExportTraceServiceRequest`` (after checking the OTLP/JSON hex ids and
turning them into the base64 that proto3 JSON expects). The main job is
configured twice: by the standard ``OTEL_*`` variables alone, and by its own
options, which win over them.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests._http import RecordedRequest, RecordingServer, serving
from tests.integration._services import REPO, clean_environment

RUN_TIMEOUT_SECONDS = 90
_HEX_IDS = {"traceId": 32, "spanId": 16, "parentSpanId": 16}


def _parse_otlp_json(document: dict[str, Any]) -> ExportTraceServiceRequest:
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans.get("spans", ()):
                for name, digits in _HEX_IDS.items():
                    if name in span:
                        assert re.fullmatch(f"[0-9a-f]{{{digits}}}", span[name]), span[name]
                        span[name] = base64.b64encode(bytes.fromhex(span[name])).decode()
    message = ExportTraceServiceRequest()
    ParseDict(document, message, ignore_unknown_fields=False)
    return message


class _JsonReceiver(RecordingServer):
    """Takes OTLP/JSON only: ``requests`` holds ``(path, headers, parsed message)``."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []

    def answer(self, request: RecordedRequest) -> tuple[int, bytes]:
        content_type = request.headers.get("Content-Type", "")
        if content_type != "application/json":
            with self.lock:
                self.refused.append(content_type)
            return 415, b'{"message": "Unsupported content type"}'
        body = request.body
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = _parse_otlp_json(json.loads(body))
        with self.lock:
            self.requests.append((request.path, request.headers, message))
        return 200, b"{}"


@pytest.fixture
def receiver() -> Iterator[_JsonReceiver]:
    with serving(_JsonReceiver()) as server:
        yield server


def _run(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "--requests", "12", "--tenants", "2", "--seed", "3",
         "--out", str(out), *args],
        cwd=REPO, env=clean_environment(**env), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, encoding="utf-8", timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )


def _received_spans(receiver: _JsonReceiver) -> dict[bytes, Span]:
    spans: dict[bytes, Span] = {}
    for _, _, message in receiver.requests:
        for resource_spans in message.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                spans.update({span.span_id: span for span in scope_spans.spans})
    return spans


def _resource(receiver: _JsonReceiver) -> dict[str, str]:
    (_, _, message), *_ = receiver.requests
    return {kv.key: kv.value.string_value
            for kv in message.resource_spans[0].resource.attributes}


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_the_otel_variables_alone_configure_a_json_export(
    tmp_path: Path, receiver: _JsonReceiver
) -> None:
    out = tmp_path / "out"
    run = _run(
        out,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url,  # a base URL: /v1/traces is appended
        OTEL_EXPORTER_OTLP_PROTOCOL="http/json",
        OTEL_EXPORTER_OTLP_COMPRESSION="gzip",
        OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer%20s3cr3t-token,X-Scope=risk",
        OTEL_SERVICE_NAME="risk-engine-ci",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=ci",
    )
    assert run.returncode == 0, run.stderr
    assert "s3cr3t" not in run.stdout + run.stderr

    assert receiver.refused == []
    assert {path for path, _, _ in receiver.requests} == {"/v1/traces"}
    for _, headers, _ in receiver.requests:
        assert headers["Authorization"] == "Bearer s3cr3t-token"
        assert headers["X-Scope"] == "risk"
        assert headers["Content-Encoding"] == "gzip"
    recorded = json.loads((out / "traces.json").read_text(encoding="utf-8"))
    spans = _received_spans(receiver)
    assert {span_id.hex() for span_id in spans} == {s["span_id"] for s in recorded}
    assert f"exporter otlp: {len(recorded)} spans exported, 0 failed" in run.stdout
    # The tree arrived whole: every parent is there.
    assert all(not span.parent_span_id or span.parent_span_id in spans
               for span in spans.values())
    assert _resource(receiver) == {
        "service.name": "risk-engine-ci", "service.version": "0.7.0",
        "deployment.environment.name": "ci",
    }
    # The file export carries the same resource.
    document = json.loads((out / "traces.otlp.json").read_text(encoding="utf-8"))
    assert _parse_otlp_json(document).resource_spans[0].resource == (
        receiver.requests[0][2].resource_spans[0].resource)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_the_options_win_over_the_variables(tmp_path: Path, receiver: _JsonReceiver) -> None:
    out = tmp_path / "out"
    run = _run(
        out,
        "--otlp-endpoint", f"{receiver.base_url}/custom/traces",
        "--otlp-protocol", "http/json",
        "--otlp-header", "Authorization=Bearer from-the-option",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9/",  # nothing listens there
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer%20from-the-variable",
    )
    assert run.returncode == 0, run.stderr
    assert "from-the-option" not in run.stdout + run.stderr

    assert receiver.refused == []
    assert {path for path, _, _ in receiver.requests} == {"/custom/traces"}
    assert {headers["Authorization"] for _, headers, _ in receiver.requests} == {
        "Bearer from-the-option"}
    assert all("Content-Encoding" not in headers for _, headers, _ in receiver.requests)
    recorded = json.loads((out / "traces.json").read_text(encoding="utf-8"))
    assert len(_received_spans(receiver)) == len(recorded)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_protobuf_to_a_json_only_receiver_is_reported_as_failed(
    tmp_path: Path, receiver: _JsonReceiver
) -> None:
    run = _run(tmp_path / "out", "--otlp-endpoint", f"{receiver.base_url}/v1/traces")

    assert run.returncode == 0, run.stderr  # the batch itself ran
    assert receiver.requests == []
    assert receiver.refused and set(receiver.refused) == {"application/x-protobuf"}
    assert re.search(r"exporter otlp: 0 spans exported, \d+ failed", run.stdout), run.stdout
    assert re.search(r"warning: \d+ spans were not exported", run.stderr), run.stderr


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_an_unsupported_protocol_variable_is_a_clear_error(tmp_path: Path) -> None:
    run = _run(tmp_path / "out", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
               OTEL_EXPORTER_OTLP_PROTOCOL="grpc")

    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "python -m app: OTEL_EXPORTER_OTLP_PROTOCOL must be one of 'http/protobuf', "
        "'http/json', got 'grpc'")
