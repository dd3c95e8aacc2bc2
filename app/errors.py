"""The risk engine's own exception hierarchy.

Every failure the workflow raises on purpose is one of these. The
:class:`~app.observability.failure_classifier.FailureClassifier` maps them onto
:class:`~app.observability.failure_classifier.FailureCategory` by class
hierarchy, so a subclass inherits its parent's category unless registered
otherwise.
"""

from __future__ import annotations

__all__ = (
    "HighRiskError",
    "InfrastructureError",
    "InputValidationError",
    "PolicyViolationError",
    "RiskEngineError",
    "WorkflowError",
)


class RiskEngineError(Exception):
    """Base class of every error the risk engine raises deliberately."""


class InputValidationError(RiskEngineError, ValueError):
    """The request failed validation before any scoring (category VALIDATION_ERROR).

    Args:
        message: What is wrong, naming the field.
        field: The offending field, when one is known.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PolicyViolationError(RiskEngineError):
    """A hard policy rule was breached (category POLICY_VIOLATION).

    Args:
        message: Human-readable description.
        policy: The identifier of the breached policy.
    """

    def __init__(self, message: str, *, policy: str) -> None:
        super().__init__(message)
        self.policy = policy


class HighRiskError(RiskEngineError):
    """A case was judged too risky for automatic handling (category HIGH_RISK)."""


class WorkflowError(RiskEngineError):
    """The workflow itself misbehaved: bad routing, missing state (category WORKFLOW_ERROR)."""


class InfrastructureError(RiskEngineError, ConnectionError):
    """A dependency (model endpoint, store, network) failed (category INFRA_ERROR)."""
