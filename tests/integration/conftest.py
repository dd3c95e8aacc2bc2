"""Fixtures of the integration tests (defined in :mod:`tests.integration._services`)."""

from tests.integration._services import start_prometheus, start_service

__all__ = ("start_prometheus", "start_service")
