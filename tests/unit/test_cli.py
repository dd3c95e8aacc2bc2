"""Tests for :mod:`app.cli`: the main job ``python -m app``.

In process, :func:`app.cli.main` runs a small batch and its report and output
files are checked with independent parsers: ``prometheus_client``'s text
parser and ``promtool check metrics`` for ``metrics.prom``, the OTLP protobuf
schema for ``traces.otlp.json``. As subprocesses, ``python -m app`` runs the
way a person runs it, once serving ``/metrics`` for a moment.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from google.protobuf.json_format import ParseDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families

from app.cli import _duration, main

REPO = Path(__file__).resolve().parents[2]
SMALL = ("--requests", "40", "--tenants", "3", "--concurrency", "8", "--seed", "3", "--quiet")
TENANTS = ("tenant-01", "tenant-02", "tenant-03")
OUTPUTS = ("metrics.prom", "traces.otlp.json", "traces.json")
#: The ledger the main job writes by default (``--ledger``), next to the outputs.
LEDGER_FILES = ("ledger.sqlite", "ledger.sqlite-shm", "ledger.sqlite-wal")
#: How long a subprocess may take to run a small batch and exit (below pytest's 60 s).
SUBPROCESS_TIMEOUT = 45.0

# Loopback only: never route these requests through an HTTP(S)_PROXY from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_OTLP_KINDS = {
    "workflow": Span.SPAN_KIND_SERVER,
    "node": Span.SPAN_KIND_INTERNAL,
    "generation": Span.SPAN_KIND_CLIENT,
}
_HEX_IDS = {"traceId": 32, "spanId": 16, "parentSpanId": 16}


# --- helpers --------------------------------------------------------------------


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: install Debian's `prometheus` package "
            "(apt-get install -y prometheus); these tests never skip",
            pytrace=False,
        )
    return path


def _parse_otlp(doc: dict[str, Any]) -> ExportTraceServiceRequest:
    """Parse OTLP/JSON strictly with the protobuf schema.

    As in ``tests/unit/observability/test_otlp.py``: OTLP/JSON ids are hex,
    proto3 JSON reads ``bytes`` as base64, so each id is checked to be
    lowercase hex of the OTLP length and re-encoded as base64 first.
    """
    doc = copy.deepcopy(doc)
    for resource_spans in doc["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for key, digits in _HEX_IDS.items():
                    if key in span:
                        value = span[key]
                        assert re.fullmatch(f"[0-9a-f]{{{digits}}}", value), (key, value)
                        span[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
    message = ExportTraceServiceRequest()
    ParseDict(doc, message, ignore_unknown_fields=False)
    return message


def _section(report: str, title: str) -> str:
    """The lines of one report section: from its title line to the next blank line."""
    start = report.index(f"\n{title}")
    end = report.find("\n\n", start + 1)
    return report[start + 1:] if end == -1 else report[start + 1:end]


def _tenant_rows(report: str) -> dict[str, list[str]]:
    """The per-tenant table: tenant -> [requests, failed, approvals, tokens in, tokens
    out, cost USD, budget...]."""
    rows = {}
    for line in _section(report, "Per tenant").splitlines():
        cells = line.split()
        if cells and cells[0].startswith("tenant-"):
            rows[cells[0]] = cells[1:]
    return rows


def _deterministic_part(report: str) -> str:
    """Per-tenant usage, costs, budgets and failures: everything but timings."""
    return _section(report, "Per tenant") + "\n" + _section(report, "Failures by category")


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = "."
    return env


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """``main`` configures structlog to print to the (captured) stderr; undo it."""
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Factory: ``python -m app ARGS`` in the repository root; killed if still running."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, stderr: Any = subprocess.PIPE) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", *args],
            cwd=REPO, env=_subprocess_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=stderr, text=True, encoding="utf-8",
        )
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)  # reap and close the pipes


# --- the batch in process -------------------------------------------------------


def test_main_prints_the_report_and_writes_the_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"

    assert main([*SMALL, "--out", str(out)]) == 0

    report = capsys.readouterr().out
    assert "Risk engine batch: 40 requests, 3 tenants, concurrency 8, seed 3" in report
    for title in ("Per tenant", "Per node latency", "Failures by category", "Slowest trace",
                  "Pipeline health: healthy", "Outputs"):
        assert f"\n{title}" in report, title
    tree = _section(report, "Slowest trace")
    assert re.search(r"^  risk_workflow \[workflow\] ", tree, re.MULTILINE), tree
    assert re.search(r"^    \w+ \[node\] ", tree, re.MULTILINE), tree
    assert re.search(r"^      \S.* \[generation\] .*model=\S+ prompt=\S+ tokens=\d+/\d+",
                     tree, re.MULTILINE), tree
    rows = _tenant_rows(report)
    assert set(rows) == set(TENANTS)
    assert sum(int(cells[0]) for cells in rows.values()) == 40
    health = _section(report, "Pipeline health")
    for collector in ("metrics", "cost", "trace", "audit"):
        assert re.search(rf"^  {collector} +running +yes ", health, re.MULTILINE), health
    for name in OUTPUTS:
        assert f"  {out / name}\n" in report
        assert (out / name).is_file()

    # metrics.prom: the Prometheus text format, by prometheus_client's parser ...
    text = (out / "metrics.prom").read_text(encoding="utf-8")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    requests_by_tenant = {
        sample.labels["tenant_id"]: sample.value
        for sample in families["risk_engine_requests"].samples
        if sample.name == "risk_engine_requests_total"
    }
    assert requests_by_tenant == {tenant: float(cells[0]) for tenant, cells in rows.items()}
    assert families["risk_engine_node_execution_latency_seconds"].type == "histogram"
    assert "observability_collector_up" in families
    # ... and by promtool's parser and linter.
    checked = subprocess.run(
        [_promtool(), "check", "metrics"], input=text, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout
    assert checked.stdout + checked.stderr == ""

    # traces.otlp.json: a valid OTLP ExportTraceServiceRequest.
    otlp_doc = json.loads((out / "traces.otlp.json").read_text(encoding="utf-8"))
    assert otlp_doc["resourceSpans"]
    message = _parse_otlp(otlp_doc)
    otlp_spans = [
        span
        for resource_spans in message.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]

    # traces.json: the same spans, plain.
    plain = json.loads((out / "traces.json").read_text(encoding="utf-8"))
    assert len(plain) == len(otlp_spans) > 40
    assert {s["span_id"] for s in plain} == {s.span_id.hex() for s in otlp_spans}
    assert len({s["span_id"] for s in plain}) == len(plain)
    kinds = Counter(s["kind"] for s in plain)
    assert kinds["workflow"] == 40  # one root per request, failed ones too
    assert Counter(s.kind for s in otlp_spans) == {
        _OTLP_KINDS[kind]: n for kind, n in kinds.items()
    }
    generations = re.search(r"total cost(?: \([^)]*\))?: \$[0-9.]+ over (\d+) generations",
                            report)
    assert generations is not None
    # A model call that failed has a generation span (status error) and no cost.
    billed = sum(s["kind"] == "generation" and s["status"] == "ok" for s in plain)
    assert billed == int(generations.group(1)) > 0
    assert len({s["trace_id"] for s in plain}) == 40


def test_same_seed_gives_the_same_report_apart_from_timings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = []
    for run, seed in enumerate(("3", "3", "4")):
        args = [*SMALL, "--seed", seed, "--failure-rate", "0.2", "--out", str(tmp_path / str(run))]
        assert main(args) == 0
        reports.append(capsys.readouterr().out)

    first, again, other = (_deterministic_part(report) for report in reports)
    assert first == again
    assert first != other  # the comparison can tell seeds apart
    rows = _tenant_rows(reports[0])
    assert sum(int(cells[1]) for cells in rows.values()) > 0  # failures are part of it
    assert all(float(cells[5]) > 0 for cells in rows.values())  # and costs


# --- bad options ----------------------------------------------------------------


BAD_OPTIONS = [
    (["--requests", "0"], "argument --requests: 0 is not between 1 and 1000000"),
    (["--requests", "abc"], "argument --requests: 'abc' is not a whole number"),
    (["--failure-rate", "1.5"], "argument --failure-rate: 1.5 is not between 0.0 and 1.0"),
    (["--failure-rate", "nan"], "argument --failure-rate: nan is not between 0.0 and 1.0"),
    (["--tenant-budget", "-1"], "argument --tenant-budget: -1 must be a positive amount in USD"),
    (["--concurrency", "0"], "argument --concurrency: 0 is not between 1 and 10000"),
    (["--metrics-port", "70000"], "argument --metrics-port: 70000 is not between 0 and 65535"),
    (["--otlp-endpoint", "127.0.0.1:4318"],
     "argument --otlp-endpoint: '127.0.0.1:4318' is not an http(s)://host[:port]/... URL"),
    (["--otlp-protocol", "grpc"], "argument --otlp-protocol: invalid choice: 'grpc'"),
    (["--otlp-header", "Authorization"],
     "argument --otlp-header: expected KEY=VALUE (the value is not shown)"),
    (["--pushgateway", "ftp://gw"],
     "argument --pushgateway: 'ftp://gw' is not an http(s)://host[:port]/... URL"),
]


def test_a_bad_otlp_header_never_shows_its_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["--otlp-header", "=Bearer s3cr3t", "--out", str(tmp_path / "out"), "--quiet"])

    captured = capsys.readouterr()
    assert "expected KEY=VALUE" in captured.err
    assert "s3cr3t" not in captured.err + captured.out


@pytest.mark.parametrize(
    ("args", "message"),
    [pytest.param(args, message, id=" ".join(args)) for args, message in BAD_OPTIONS],
)
def test_bad_options_exit_2_with_a_clear_message(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "out"), "--quiet"])

    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"python -m app: error: {message}" in captured.err
    assert captured.err.startswith("usage: python -m app")
    assert captured.out == ""  # refused before running anything
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("below", [False, True], ids=["file", "folder-under-a-file"])
def test_out_that_is_a_file_exits_2_before_running(
    below: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "report.txt"
    existing.write_text("keep me", encoding="utf-8")
    out = existing / "out" if below else existing

    with pytest.raises(SystemExit) as exit_info:
        main(["--requests", "5", "--quiet", "--out", str(out)])

    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"python -m app: error: argument --out: {existing} exists and is not a folder" in (
        captured.err
    )
    assert captured.out == ""  # no batch, no report
    assert existing.read_text(encoding="utf-8") == "keep me"


# --- as a process -----------------------------------------------------------------


def test_serve_metrics_serves_while_waiting_then_exits_on_its_own(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    # The endpoint must be fetched inside the serving window: 2 s rather than 0.5 s
    # leaves a loaded CI runner room between reading the line and connecting.
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w", encoding="utf-8") as stderr:
        process = spawn("--requests", "20", "--tenants", "2", "--quiet",
                        "--out", str(tmp_path / "out"),
                        "--serve-metrics", "2", "--metrics-port", "0", stderr=stderr)
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, name="cli-test-stdout", daemon=True)
    reader.start()
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    seen: list[str] = []
    url = None
    while url is None:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no 'Serving' line in time; stdout so far:\n{''.join(seen)}")
        if line is None:
            pytest.fail(f"exited with {process.wait(timeout=10)} before serving:\n"
                        f"{''.join(seen)}\n{stderr_path.read_text(encoding='utf-8')}")
        seen.append(line)
        match = re.fullmatch(r"Serving (http://127\.0\.0\.1:(\d+)/metrics) for 2 s "
                             r"\(Ctrl-C to stop\)\n", line)
        if match is not None:
            url = match.group(1)
            assert int(match.group(2)) > 0  # port 0 became a real port

    with _OPENER.open(url, timeout=5) as response:
        status, body = response.status, response.read().decode("utf-8")

    assert status == 200
    assert "\nrisk_engine_requests_total{" in body
    # Exits 0 on its own once the window is over; we send no signal.
    assert process.wait(timeout=max(5.0, deadline - time.monotonic())) == 0
    reader.join(timeout=10)
    assert "Per tenant" in "".join(seen)
    assert "Traceback" not in stderr_path.read_text(encoding="utf-8")


def test_python_m_app_runs_the_main_job(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    out = tmp_path / "out"
    process = spawn("--requests", "50", "--quiet", "--out", str(out))

    stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)

    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stdout.startswith("\nRisk engine batch: 50 requests, 5 tenants")
    assert "\nPer tenant\n" in stdout
    assert "\nPipeline health: healthy\n" in stdout
    assert sum(int(cells[0]) for cells in _tenant_rows(stdout).values()) == 50
    assert sorted(p.name for p in out.iterdir() if p.name not in LEDGER_FILES) == sorted(OUTPUTS)
    assert (out / "ledger.sqlite").is_file()



# --- the main job under real use --------------------------------------------------


def _all_rows(report: str) -> list[list[str]]:
    """Every row of the per-tenant table, aggregate rows included: [name, requests, ...]."""
    rows = []
    for line in _section(report, "Per tenant").splitlines()[3:]:
        text = line.strip()
        if text.startswith(("total cost", "UNPRICED", "ledger")):
            break
        if text.startswith("("):  # "(175 more tenants)", "(other tenants, over the series cap)"
            name, _, rest = text.partition(")")
            name += ")"
        else:
            name, _, rest = text.partition(" ")
        rows.append([name, *rest.split()])
    return rows


@pytest.mark.timeout(120)
@pytest.mark.parametrize("max_series", ["2000", "200"])
def test_300_tenants_report_every_request_also_past_the_series_cap(
    max_series: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--requests", "600", "--tenants", "300", "--seed", "5", "--quiet",
            "--max-series", max_series, "--out", str(tmp_path / "out")]

    assert main(args) == 0

    report = capsys.readouterr().out
    rows = _all_rows(report)
    names = [row[0] for row in rows]
    assert "-" not in names  # never an unexplained row
    assert sum(int(row[1]) for row in rows) == 600  # every request is in some row
    assert all(re.fullmatch(r"tenant-\d{3}", n) or n.startswith("(") for n in names), names
    assert sum(n.startswith("tenant-") for n in names) == 25  # the busiest, then the rest
    assert any(re.fullmatch(r"\(\d+ more tenants\)", n) for n in names)
    nodes = _section(report, "Per node latency")
    if max_series == "200":
        assert "(other tenants, over the series cap)" in names
        assert "\n  (over the series cap) " in nodes
    else:
        assert "(other tenants, over the series cap)" not in names
    assert (tmp_path / "out" / "metrics.prom").is_file()


def test_latencies_below_a_millisecond_read_in_microseconds() -> None:
    assert [_duration(s) for s in (None, 0.0, 4e-6, 8.5e-4, 0.0124, 0.5, 1.52, 250.0)] == [
        "-", "0 µs", "4 µs", "850 µs", "12.4 ms", "500 ms", "1.52 s", "250 s"]


def test_the_default_run_has_tenants_on_both_sides_of_the_budget_and_names_the_warm_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--quiet", "--out", str(tmp_path / "out")]) == 0

    report = capsys.readouterr().out
    budgets = [" ".join(cells[6:]) for cells in _tenant_rows(report).values()]
    assert len(budgets) == 5
    assert 0 < sum(b.endswith("OVER") for b in budgets) < 5, budgets
    assert re.search(r"\nSlowest trace [0-9a-f]{32} \(request req-7-\d{6}, tenant-\d\d; "
                     r"left out: the first request, which warmed the process up in "
                     r"[0-9.]+ (µs|ms|s)", report), report
    assert " µs" in _section(report, "Per node latency")  # not "0.00" ms


def test_llm_latency_makes_the_model_calls_take_a_seeded_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"

    assert main([*SMALL, "--llm-latency", "0.02:0.3", "--out", str(out)]) == 0

    nodes = _section(capsys.readouterr().out, "Per node latency")
    scoring = next(line.split() for line in nodes.splitlines() if "risk_scoring" in line)
    assert scoring[3] == "ms" and 10 <= float(scoring[2]) <= 60, scoring  # p50 near 20 ms
    spans = json.loads((out / "traces.json").read_text(encoding="utf-8"))
    generations = [s["duration_ms"] for s in spans if s["kind"] == "generation"]
    # A log-normal around 20 ms, within four deviations of its log (0.3 each).
    assert generations
    assert 20 * math.exp(-4 * 0.3) * 0.99 <= min(generations) <= max(generations)
    assert max(generations) <= 20 * math.exp(4 * 0.3) * 1.01
    assert len({round(g, 1) for g in generations}) > 5  # a spread, not one value


@pytest.mark.parametrize(
    ("value", "message"),
    [("abc", "'abc' is not MEDIAN[:SPREAD]"), ("-1", "median -1 is not between 0 and 60"),
     ("0.2:9", "spread 9 is not between 0 and 3")],
)
def test_a_bad_llm_latency_exits_2(
    value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--llm-latency", value, "--out", str(tmp_path / "out")])

    assert exit_info.value.code == 2
    assert f"argument --llm-latency: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("out", ["/proc/self/risk-engine-out", "/proc/risk-engine-out/x"])
def test_an_out_that_cannot_be_written_exits_2_before_the_batch(
    out: str, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["--requests", "1000000", "--quiet", "--out", out])  # a batch would take minutes

    assert exit_info.value.code == 2
    assert time.monotonic() - started < 5
    captured = capsys.readouterr()
    assert f"python -m app: error: argument --out: cannot write to {out}: " in captured.err
    assert captured.out == ""


def test_a_stdout_closed_before_the_report_ends_quietly_with_the_files_written(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    out = tmp_path / "out"
    process = spawn(*SMALL, "--out", str(out))
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the report: writing it fails

    stderr = process.stderr.read()

    assert process.wait(timeout=SUBPROCESS_TIMEOUT) == 0, stderr
    assert stderr == ""  # no traceback, no "Exception ignored" at exit
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0


def test_piped_into_head_it_exits_0(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    out = tmp_path / "out"
    command = (f"{sys.executable} -m app --requests 300 --tenants 20 --quiet --out {out} "
               "| head -3; echo \"app=${PIPESTATUS[0]}\" >&2")

    done = subprocess.run(
        [bash, "-c", command], cwd=REPO, env=_subprocess_env(), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False,
    )

    assert done.stdout.splitlines()[1].startswith("Risk engine batch: 300 requests")
    assert len(done.stdout.splitlines()) == 3
    assert done.stderr == "app=0\n"
    assert sorted(p.name for p in out.iterdir() if p.name in OUTPUTS) == sorted(OUTPUTS)


@pytest.mark.timeout(90)
def test_ctrl_c_during_the_batch_stops_writes_what_it_has_and_exits_130(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    out = tmp_path / "out"
    process = spawn("--requests", "20000", "--tenants", "8", "--out", str(out))
    assert process.stderr is not None
    lines = []
    for line in process.stderr:  # the batch has started once it reports progress
        lines.append(line)
        if re.fullmatch(r"  \d+/20000 requests\n", line):
            break
    else:
        pytest.fail(f"no progress line; stderr:\n{''.join(lines)}")

    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()

    assert process.wait(timeout=60) == 130
    messages = [line for line in rest.splitlines()
                if not re.fullmatch(r"  \d+/20000 requests", line)]
    assert len(messages) == 1, rest
    match = re.fullmatch(r"python -m app: interrupted after (\d+) of 20000 requests; "
                         rf"what was collected is in {re.escape(str(out))}", messages[0])
    assert match is not None, messages
    done = int(match.group(1))
    assert 2_000 <= done < 20_000
    spans = json.loads((out / "traces.json").read_text(encoding="utf-8"))
    assert sum(s["kind"] == "workflow" for s in spans) >= done
    metrics = (out / "metrics.prom").read_text(encoding="utf-8")
    assert "risk_engine_requests_total{" in metrics
    assert process.stdout is not None and process.stdout.read() == ""  # no report
