"""Fixtures shared by the workflow tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from langsmith import utils as ls_utils


@pytest.fixture
def langsmith_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every variable that would turn LangSmith tracing on, set."""
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2"):
        monkeypatch.setenv(name, "true")
    for name in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY"):
        monkeypatch.setenv(name, "lsv2-not-a-real-key")
    # langsmith caches what it read from the environment (functools.lru_cache).
    ls_utils.get_env_var.cache_clear()  # type: ignore[attr-defined]
    yield
    monkeypatch.undo()
    ls_utils.get_env_var.cache_clear()  # type: ignore[attr-defined]


@pytest.fixture
def network_attempts(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record and refuse every connection (and name lookup) the test makes."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    # Name resolution comes before any connect; without it a sandbox with no
    # DNS would fail before reaching the patched connect.
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts
