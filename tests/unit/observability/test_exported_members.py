"""Pin the public surface of :mod:`app.observability` (like httpx's test of the same name).

Adding or removing a public name is an API change: update ``EXPECTED`` here
and the CHANGELOG together.
"""

from __future__ import annotations

import importlib

import pytest

import app.observability

EXPECTED = (
    "AuditLogger",
    "BoundCounter",
    "BoundHistogram",
    "CostEstimate",
    "CostTracker",
    "CounterFamily",
    "EvaluationResult",
    "EvaluationService",
    "FailureCategory",
    "FailureClassifier",
    "FlushResult",
    "Generation",
    "HistogramFamily",
    "InputLimits",
    "LangfuseClient",
    "LedgerStats",
    "MetricsCollector",
    "MetricsServerSettings",
    "ModelPrice",
    "Observability",
    "ObservabilitySettings",
    "PipelineHealth",
    "PipelineState",
    "Span",
    "SpanContext",
    "TracingService",
)

SUBMODULES = (
    "audit", "catalog", "cost_tracker", "evaluation", "exposition", "failure_classifier",
    "http_server", "langfuse_client", "metrics", "otlp", "pushgateway", "redaction", "settings",
    "tracing", "validation",
)


def test_all_is_pinned() -> None:
    assert app.observability.__all__ == EXPECTED


def test_all_is_sorted_unique_and_public() -> None:
    names = app.observability.__all__
    assert isinstance(names, tuple)
    assert list(names) == sorted(names, key=str.casefold)
    assert len(set(names)) == len(names)
    assert not [name for name in names if name.startswith("_")]


def test_every_exported_name_resolves_to_project_code() -> None:
    for name in app.observability.__all__:
        member = getattr(app.observability, name)
        assert member.__name__ == name
        assert member.__module__.startswith(("app.observability", "collectors.")), name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from app.observability import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(EXPECTED)


@pytest.mark.parametrize("module", SUBMODULES)
def test_submodule_all_names_exist(module: str) -> None:
    imported = importlib.import_module(f"app.observability.{module}")
    names = getattr(imported, "__all__", ())
    assert names, f"{module} declares __all__"
    for name in names:
        assert hasattr(imported, name), f"{module}.{name}"
