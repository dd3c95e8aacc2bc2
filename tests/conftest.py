"""Shared fixtures. Every container a test starts is closed by its fixture."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import structlog

from app.observability import Observability, ObservabilitySettings

# Library code logs through structlog; keep test output to warnings and up.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


@pytest.fixture(autouse=True)
def _no_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The containers read ``OTEL_*`` variables; the caller's must not reach the tests.

    A test that wants them sets them with ``monkeypatch.setenv``.
    """
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def obs() -> Iterator[Observability]:
    """A running container with default settings and deterministic ids."""
    container = Observability(ObservabilitySettings(id_seed=1234, drain_at_exit=False))
    try:
        yield container
    finally:
        container.close(timeout=5.0)


@pytest.fixture
def make_obs() -> Iterator[object]:
    """Factory for containers with custom settings; closes all of them."""
    made: list[Observability] = []

    def factory(**overrides: object) -> Observability:
        overrides.setdefault("drain_at_exit", False)
        container = Observability(ObservabilitySettings(**overrides))  # type: ignore[arg-type]
        made.append(container)
        return container

    try:
        yield factory
    finally:
        for container in made:
            container.close(timeout=5.0)
