"""Real external programs on loopback: start, poll with a deadline, always stop.

Helpers and fixtures shared by the integration tests; ``conftest.py``
registers the fixtures.

Every program (prometheus, prometheus-pushgateway, phoenix) runs on
127.0.0.1 with a free port and its own temporary folder, is started by a
fixture and stopped by the same fixture. A missing program fails the test
with the command that installs it; nothing here skips.

Waiting for an external program is polling with a deadline: a never-set
``threading.Event().wait(t)`` is the bounded pause between two polls. Our own
background work is never waited for this way (tests flush it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
#: The job name of the engine's own scrape config (ops/prometheus/alerts.yml expects it).
JOB = "risk-engine"
#: Pause between polls of an external process (never a wait for our own threads).
POLL_INTERVAL_SECONDS = 0.25

# Loopback only: never route these requests through an HTTP(S)_PROXY from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PAUSE = threading.Event()  # never set: wait(t) is a bounded pause

Vector = dict[str, float]


def pause(seconds: float = POLL_INTERVAL_SECONDS) -> None:
    """A bounded pause between two polls of an external program."""
    _PAUSE.wait(seconds)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def require_binary(name: str, install: str) -> str:
    """The path of an executable, or a test failure that says how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: {install} (or `make tools`); "
                    "this test never skips", pytrace=False)
    return path


def clean_environment(**extra: str) -> dict[str, str]:
    """The test process's environment without ``OTEL_*`` variables, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(extra)
    return env


def report_rows(report: str, title: str = "Per tenant") -> list[dict[str, str]]:
    """The rows of one table in the main job's report, as ``{column: cell}``.

    Columns are found from the dashed rule under the header, so headers with
    spaces ("cost USD") stay whole.
    """
    header, rule, *rows = report.split(f"\n{title}\n", 1)[1].splitlines()
    spans = [match.span() for match in re.finditer(r"-+", rule)]
    names = [header[start:end].strip() for start, end in spans]
    table: list[dict[str, str]] = []
    for line in rows:
        if not line.startswith("  ") or not line.strip() or len(line) < spans[-1][0]:
            break
        table.append({name: line[start:end].strip()
                      for name, (start, end) in zip(names, spans, strict=True)})
    return table


def by_label(result: list[dict[str, Any]], label: str) -> Vector:
    """An instant-vector result as ``{label value: sample value}``."""
    vector: Vector = {}
    for sample in result:
        key = sample["metric"].get(label, "")
        assert key not in vector, ("duplicate", label, key, result)
        vector[key] = float(sample["value"][1])
    return vector


@dataclass
class Service:
    """A running external program on loopback and the files it writes."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    stdout_path: Path
    stderr_path: Path
    deadline: float = field(default=0.0)

    def logs(self) -> str:
        out = self.stdout_path.read_text(encoding="utf-8", errors="replace")
        err = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        return (f"--- {self.name} stdout ---\n{out[-6000:]}\n"
                f"--- {self.name} stderr ---\n{err[-6000:]}")

    def get(self, path: str, **params: str | Sequence[str]) -> bytes:
        """GET a path (raises OSError while the program is not listening)."""
        url = f"{self.base_url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        with OPENER.open(url, timeout=10) as response:
            body: bytes = response.read()
        return body

    def get_json(self, path: str, **params: str | Sequence[str]) -> Any:
        return json.loads(self.get(path, **params).decode("utf-8"))

    def poll(self, what: str, probe: Callable[[], Any]) -> Any:
        """Call ``probe`` until it returns something other than ``None`` (bounded).

        Fails the test with the program's logs when it exits or the deadline
        passes. ``probe`` may raise ``OSError``/``ValueError`` while the
        program is not ready.
        """
        last: object = None
        while True:
            code = self.process.poll()
            if code is not None:
                pytest.fail(f"{self.name} exited with {code} while waiting for {what}\n"
                            f"{self.logs()}", pytrace=False)
            try:
                result = probe()
            except (OSError, ValueError) as exc:  # not listening / not ready yet
                last = exc
            else:
                if result is not None:
                    return result
                last = "no result yet"
            if time.monotonic() > self.deadline:
                pytest.fail(f"{self.name}: no {what} before the deadline (last: {last!r})\n"
                            f"{self.logs()}", pytrace=False)
            pause()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


class PrometheusService(Service):
    """A running ``prometheus`` and its HTTP API."""

    def api(self, path: str, **params: str) -> Any:
        """GET an API path and return its ``data`` (raises OSError/ValueError if not ready)."""
        body = self.get_json(path, **params)
        if body.get("status") != "success":
            raise ValueError(f"{path}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def settle(self, promql: str, label: str, expected: Callable[[Vector], bool]) -> Vector:
        """Poll ``promql`` until ``expected`` accepts the vector keyed by ``label``.

        Returns the last vector seen, also after the deadline, so the caller's
        plain ``assert`` shows the difference.
        """
        vector: Vector = {}
        while True:
            try:
                vector = by_label(self.query(promql), label)
            except (OSError, ValueError):
                vector = {}
            if expected(vector) or time.monotonic() > self.deadline:
                return vector
            if self.process.poll() is not None:
                return vector
            pause()


StartService = Callable[..., Service]


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[StartService]:
    """Factory: start an external program; every one started is stopped afterwards.

    ``start(name, argv, port=..., deadline_seconds=..., env=None, kind=Service)``.
    """
    started: list[Service] = []

    def start(
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        deadline_seconds: float,
        env: Mapping[str, str] | None = None,
        kind: type[Service] = Service,
    ) -> Service:
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        stdout_path, stderr_path = workdir / "stdout.log", workdir / "stderr.log"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=workdir,
                env=dict(env) if env is not None else clean_environment(),
            )
        service = kind(
            name=name, process=process, base_url=f"http://127.0.0.1:{port}",
            stdout_path=stdout_path, stderr_path=stderr_path,
            deadline=time.monotonic() + deadline_seconds,
        )
        started.append(service)
        return service

    try:
        yield start
    finally:
        for service in started:
            service.stop()


StartPrometheus = Callable[..., PrometheusService]


@pytest.fixture
def start_prometheus(
    start_service: StartService, tmp_path: Path
) -> StartPrometheus:
    """Factory: ``prometheus`` scraping one target every second.

    ``start(target, *, job=JOB, honor_labels=False, rule_files=(),
    deadline_seconds=30.0)``. The config is written to a temporary folder;
    JSON is YAML, so no YAML library is needed.
    """
    binary = require_binary("prometheus", "apt-get install -y prometheus")

    def start(
        target: str,
        *,
        job: str = JOB,
        honor_labels: bool = False,
        rule_files: Sequence[Path] = (),
        deadline_seconds: float = 30.0,
    ) -> PrometheusService:
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{
                "job_name": job,
                "scrape_timeout": "1s",
                "honor_labels": honor_labels,
                "static_configs": [{"targets": [target]}],
            }],
        }, indent=2), encoding="utf-8")
        port = free_port()
        service = start_service(
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            port=port, deadline_seconds=deadline_seconds, kind=PrometheusService,
        )
        assert isinstance(service, PrometheusService)
        return service

    return start
