"""A real PostgreSQL server for tests: ``initdb`` and ``pg_ctl`` in a temporary folder.

Debian's ``postgresql`` package (installed by ``make tools``) puts its
programs in ``/usr/lib/postgresql/<version>/bin``. ``initdb`` refuses to run
as root, and CI runs as root, so as root the folder is handed to the
``postgres`` user and every server program runs as that user (``runuser``).
The server listens on 127.0.0.1 on a free port, and on a Unix socket in its
own folder; nothing else on the machine is touched. A missing binary fails
the test: it never skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

__all__ = ("PostgresServer", "postgres_server")

#: Starting or stopping the server must finish within this.
DEADLINE_SECONDS = 60.0
_PAUSE = threading.Event()  # never set: wait(t) is a bounded pause


def _bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:
        pytest.fail(
            "PostgreSQL is not installed: install Debian's `postgresql` package "
            "(apt-get install -y postgresql, or `make tools`); this test never skips",
            pytrace=False,
        )
    return found[-1].parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, started and stopped on demand."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="risk-engine-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        self._databases = 0
        if self._as_root:
            shutil.chown(self.root, user="postgres", group="postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")
        self.start()

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=DEADLINE_SECONDS, check=False, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr}\n{log}")

    def start(self) -> None:
        """Start the server (waits until it accepts connections)."""
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
                   " -c fsync=off -c max_connections=50")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", str(int(DEADLINE_SECONDS)), "start")
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                _PAUSE.wait(0.1)

    def stop(self) -> None:
        """Stop the server at once (``-m fast``: clients are disconnected)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w",
                  "-t", str(int(DEADLINE_SECONDS)), "stop")

    def url(self, database: str) -> str:
        """A libpq URL of ``database`` on this server (TCP on 127.0.0.1)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; returns its URL."""
        self._databases += 1
        name = f"ledger_{self._databases}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        """Stop the server (if running) and remove its folder."""
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A running server, stopped and removed on exit."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()
