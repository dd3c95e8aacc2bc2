"""``FailureClassifier``: maps exceptions onto the failure taxonomy.

Classification walks the exception's class hierarchy (its MRO) and takes the
category of the most specific registered class, so a subclass inherits its
parent's category unless registered itself. Anything unknown is
``UNEXPECTED_ERROR``. The registry belongs to the instance: registering a
class in one container never changes another.

:meth:`FailureClassifier.classify` also *records* the failure: it counts
``failure_count{category,...}`` and emits a ``failure.classified`` audit
event. :meth:`FailureClassifier.category_of` only looks the category up.
"""

from __future__ import annotations

import enum

import pydantic

from app.errors import (
    HighRiskError,
    InfrastructureError,
    InputValidationError,
    PolicyViolationError,
    WorkflowError,
)
from app.observability.audit import AuditLogger
from app.observability.catalog import NO_NODE, NO_TENANT
from app.observability.metrics import MetricsCollector
from app.observability.tracing import exception_type_name

__all__ = ("FailureCategory", "FailureClassifier")


class FailureCategory(enum.StrEnum):
    """The specification's failure taxonomy."""

    VALIDATION_ERROR = "VALIDATION_ERROR"
    POLICY_VIOLATION = "POLICY_VIOLATION"
    HIGH_RISK = "HIGH_RISK"
    WORKFLOW_ERROR = "WORKFLOW_ERROR"
    INFRA_ERROR = "INFRA_ERROR"
    UNEXPECTED_ERROR = "UNEXPECTED_ERROR"


def _default_registry() -> dict[type[BaseException], FailureCategory]:
    registry: dict[type[BaseException], FailureCategory] = {
        InputValidationError: FailureCategory.VALIDATION_ERROR,
        pydantic.ValidationError: FailureCategory.VALIDATION_ERROR,
        PolicyViolationError: FailureCategory.POLICY_VIOLATION,
        HighRiskError: FailureCategory.HIGH_RISK,
        WorkflowError: FailureCategory.WORKFLOW_ERROR,
        InfrastructureError: FailureCategory.INFRA_ERROR,
        TimeoutError: FailureCategory.INFRA_ERROR,
        ConnectionError: FailureCategory.INFRA_ERROR,
        OSError: FailureCategory.INFRA_ERROR,
    }
    try:  # LangGraph's own workflow errors, when langgraph is installed
        from langgraph.errors import GraphRecursionError, InvalidUpdateError

        registry[GraphRecursionError] = FailureCategory.WORKFLOW_ERROR
        registry[InvalidUpdateError] = FailureCategory.WORKFLOW_ERROR
    except ImportError:  # pragma: no cover - langgraph is a dependency
        pass
    return registry


class FailureClassifier:
    """Classifies exceptions and records failures.

    Args:
        metrics: Where ``failure_count`` is counted (optional).
        audit: Where ``failure.classified`` events go (optional).
    """

    def __init__(
        self, *, metrics: MetricsCollector | None = None, audit: AuditLogger | None = None
    ) -> None:
        self._registry = _default_registry()
        self._cache: dict[type[BaseException], FailureCategory] = {}
        self._metrics = metrics
        self._audit = audit

    def register(self, exc_type: type[BaseException], category: FailureCategory) -> None:
        """Map ``exc_type`` (and its subclasses) onto ``category``.

        Raises:
            TypeError: ``exc_type`` is not an exception class, or ``category``
                is not a :class:`FailureCategory`.
        """
        if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
            raise TypeError(f"exc_type must be an exception class, got {exc_type!r}")
        if not isinstance(category, FailureCategory):
            raise TypeError(f"category must be a FailureCategory, got {category!r}")
        self._registry[exc_type] = category
        self._cache.clear()

    def category_of(self, exc: BaseException | type[BaseException]) -> FailureCategory:
        """The category of an exception (or exception class); records nothing."""
        cls = exc if isinstance(exc, type) else type(exc)
        cached = self._cache.get(cls)
        if cached is not None:
            return cached
        category = FailureCategory.UNEXPECTED_ERROR
        for base in cls.__mro__:
            found = self._registry.get(base)
            if found is not None:
                category = found
                break
        self._cache[cls] = category
        return category

    def classify(
        self,
        exc: BaseException,
        *,
        tenant_id: str | None = None,
        node: str | None = None,
        correlation_id: str | None = None,
        request_id: str | None = None,
    ) -> FailureCategory:
        """Classify a failure, count it and emit an audit event.

        Args:
            exc: The exception.
            tenant_id: The tenant the failure belongs to.
            node: The workflow node it happened in.
            correlation_id: The request's correlation id.
            request_id: The request id.

        Returns:
            The failure's category.

        Raises:
            TypeError: ``exc`` is not an exception.
        """
        if not isinstance(exc, BaseException):
            raise TypeError(f"classify needs an exception, got {type(exc).__name__}")
        category = self.category_of(exc)
        self.record(category, exc=exc, tenant_id=tenant_id, node=node,
                    correlation_id=correlation_id, request_id=request_id)
        return category

    def record(
        self,
        category: FailureCategory | str,
        *,
        exc: BaseException | None = None,
        tenant_id: str | None = None,
        node: str | None = None,
        correlation_id: str | None = None,
        request_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Count a failure of a known category (e.g. HIGH_RISK routing) and audit it.

        Raises:
            TypeError: ``category`` is not a :class:`FailureCategory` (or its
                string value), or a label value is not a str.
            ValueError: ``category`` is not a category of the taxonomy.
        """
        if not isinstance(category, FailureCategory):
            if type(category) is not str:
                raise TypeError(
                    f"category must be a FailureCategory, got {type(category).__name__}"
                )
            try:
                category = FailureCategory(category)
            except ValueError:
                raise ValueError(f"category must be one of {[c.value for c in FailureCategory]},"
                                 f" got {category!r}") from None
        if self._metrics is not None:
            # Every series has the declared labels: a failure outside any node
            # (or of no known tenant) is counted under "none" ("unknown").
            self._metrics.increment(
                "failure_count", 1, category=category.value,
                tenant_id=NO_TENANT if tenant_id is None else tenant_id,
                node=NO_NODE if node is None else node,
            )
        if self._audit is not None:
            self._audit.log(
                "failure.classified",
                category=category.value,
                error_type=exception_type_name(exc) if exc is not None else None,
                message=_message(exc) if exc is not None else reason,
                tenant_id=tenant_id,
                node=node,
                correlation_id=correlation_id,
                request_id=request_id,
            )


def _message(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when the exception's ``__str__`` itself fails.

    The classifier runs inside ``except`` blocks: it must not replace the
    failure it records with one of its own.
    """
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__qualname__}>"
