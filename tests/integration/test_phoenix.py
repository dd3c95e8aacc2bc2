"""The main job's spans reach a real Arize Phoenix over OTLP/HTTP protobuf.

Phoenix (PyPI ``arize-phoenix``, pinned in the Makefile) lives in its own
virtual environment, ``.venv-phoenix`` (``make phoenix``; ``make test``
builds it). The fixture runs ``phoenix serve`` on 127.0.0.1 with free HTTP
and gRPC ports, a temporary working folder (its SQLite database) and
telemetry and external resources off, waits for ``/healthz`` with a deadline
and stops it afterwards. The test runs ``python -m app --otlp-endpoint
.../v1/traces`` as a subprocess and reads the spans back through Phoenix's
REST API (``GET /v1/projects/default/spans``, paged by ``next_cursor``):
one root per request, no orphans, every LLM call an LLM span with the model
and token counts the run itself recorded (its ``traces.json``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration._services import (
    REPO,
    Service,
    StartService,
    clean_environment,
    free_port,
    report_rows,
)

PHOENIX = REPO / ".venv-phoenix" / "bin" / "phoenix"
REQUESTS = 24
TENANTS = 3
SEED = 13
#: Phoenix takes some 10-15 s to start here; CI machines may be slower.
START_DEADLINE_SECONDS = 120.0
RUN_TIMEOUT_SECONDS = 90
PAGE_SIZE = 100


@pytest.fixture
def phoenix(tmp_path: Path, start_service: StartService) -> Service:
    """A ``phoenix serve`` on loopback, ready; stopped by ``start_service``."""
    if not PHOENIX.exists():
        pytest.fail(f"{PHOENIX} is missing: run `make phoenix` (part of `make test`); "
                    "this test never skips", pytrace=False)
    port, grpc_port = free_port(), free_port()
    workdir = tmp_path / "phoenix-home"
    workdir.mkdir()
    env = clean_environment(
        PHOENIX_HOST="127.0.0.1",
        PHOENIX_PORT=str(port),
        PHOENIX_GRPC_PORT=str(grpc_port),
        PHOENIX_WORKING_DIR=str(workdir),
        PHOENIX_TELEMETRY_ENABLED="false",
        PHOENIX_ALLOW_EXTERNAL_RESOURCES="false",
        PHOENIX_DISABLE_AGENT_ASSISTANT="true",
        PHOENIX_ENABLE_MCP_SERVER="false",
        HOME=str(workdir),
    )
    for key in [k for k in env if k.startswith("PHOENIX_") and k not in (
            "PHOENIX_HOST", "PHOENIX_PORT", "PHOENIX_GRPC_PORT", "PHOENIX_WORKING_DIR",
            "PHOENIX_TELEMETRY_ENABLED", "PHOENIX_ALLOW_EXTERNAL_RESOURCES",
            "PHOENIX_DISABLE_AGENT_ASSISTANT", "PHOENIX_ENABLE_MCP_SERVER")]:
        del env[key]  # nothing from the caller's environment reconfigures it
    service = start_service("phoenix", [str(PHOENIX), "serve"], port=port,
                            deadline_seconds=START_DEADLINE_SECONDS, env=env)
    service.poll("a healthy Phoenix (/healthz)", lambda: service.get("/healthz") or None)
    return service


def _all_spans(phoenix: Service) -> list[dict[str, Any]]:
    """Every span of the default project, following ``next_cursor``."""
    spans: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": str(PAGE_SIZE)}
        if cursor is not None:
            params["cursor"] = cursor
        page = phoenix.get_json("/v1/projects/default/spans", **params)
        spans.extend(page["data"])
        cursor = page.get("next_cursor")
        if not cursor:
            return spans


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_main_jobs_spans_reach_phoenix_tree_and_tokens_intact(
    tmp_path: Path, phoenix: Service
) -> None:
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "app", "--requests", str(REQUESTS), "--tenants", str(TENANTS),
         "--seed", str(SEED), "--failure-rate", "0.3", "--out", str(out),
         "--otlp-endpoint", f"{phoenix.base_url}/v1/traces",
         "--otlp-header", "X-Test-Secret=do-not-print-me"],
        cwd=REPO, env=clean_environment(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, encoding="utf-8", timeout=RUN_TIMEOUT_SECONDS, check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "do-not-print-me" not in run.stdout + run.stderr

    # What the run itself recorded.
    recorded = json.loads((out / "traces.json").read_text(encoding="utf-8"))
    assert f"exporter otlp: {len(recorded)} spans exported, 0 failed" in run.stdout
    generations = {s["span_id"]: s for s in recorded if s["kind"] == "generation"}
    assert generations and any(s["status"] == "error" for s in recorded)

    # Phoenix stores spans asynchronously: poll until all of them are there.
    spans = phoenix.poll(f"{len(recorded)} spans in Phoenix", lambda: (
        found if len(found := _all_spans(phoenix)) >= len(recorded) else None))
    by_id = {span["context"]["span_id"]: span for span in spans}
    assert len(by_id) == len(spans) == len(recorded)
    assert set(by_id) == {s["span_id"] for s in recorded}

    # One root per request, each its own trace; no orphans.
    roots = [span for span in spans if span["parent_id"] is None]
    assert len(roots) == REQUESTS
    assert len({root["context"]["trace_id"] for root in roots}) == REQUESTS
    assert sorted(root["attributes"]["request_id"] for root in roots) == sorted(
        s["attributes"]["request_id"] for s in recorded if s["parent_span_id"] is None)
    orphans = [span for span in spans
               if span["parent_id"] is not None and span["parent_id"] not in by_id]
    assert orphans == []
    for span in spans:
        if span["parent_id"] is not None:
            parent = by_id[span["parent_id"]]
            assert parent["context"]["trace_id"] == span["context"]["trace_id"]

    # Every LLM call is an LLM span with the model and the token counts we recorded.
    llm = {span["context"]["span_id"]: span for span in spans if span["span_kind"] == "LLM"}
    assert set(llm) == set(generations)
    tokens: Counter[str] = Counter()
    for span_id, recorded_span in generations.items():
        attrs, ours = llm[span_id]["attributes"], recorded_span["attributes"]
        assert llm[span_id]["name"] == recorded_span["name"] == (
            f"chat {ours['gen_ai.request.model']}")
        assert attrs["llm.model_name"] == ours["gen_ai.response.model"]
        assert attrs["gen_ai.provider.name"] == attrs["llm.provider"]
        assert "gen_ai.system" not in attrs
        if recorded_span["status"] == "error":  # a failed call: still an LLM span
            assert llm[span_id]["status_code"] == "ERROR"
            assert attrs["error.type"] == ours["error.type"]
            continue
        assert llm[span_id]["status_code"] == "OK"
        assert attrs["llm.token_count.prompt"] == ours["gen_ai.usage.input_tokens"]
        assert attrs["llm.token_count.completion"] == ours["gen_ai.usage.output_tokens"]
        assert attrs["llm.token_count.total"] == (
            ours["gen_ai.usage.input_tokens"] + ours["gen_ai.usage.output_tokens"])
        assert attrs["gen_ai.usage.cost.amount"] == pytest.approx(
            ours["gen_ai.usage.cost.amount"])
        tokens["prompt"] += attrs["llm.token_count.prompt"]
        tokens["completion"] += attrs["llm.token_count.completion"]
    # ... and their totals are the report's.
    rows = [row for row in report_rows(run.stdout) if row["tenant"].startswith("tenant-")]
    assert tokens["prompt"] == sum(int(row["tokens in"]) for row in rows) > 0
    assert tokens["completion"] == sum(int(row["tokens out"]) for row in rows) > 0
    chains = [span for span in spans if span["span_kind"] == "CHAIN"]
    assert len(chains) == sum(1 for s in recorded if s["kind"] in ("workflow", "node"))
