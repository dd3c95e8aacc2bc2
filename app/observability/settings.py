"""Configuration of the observability layer (pydantic; validated once at the boundary)."""

from __future__ import annotations

import math
from decimal import Decimal
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from collectors.snapshots import DEFAULT_LATENCY_BUCKETS

__all__ = (
    "DEFAULT_PRICE_TABLE",
    "MetricsServerSettings",
    "ModelPrice",
    "ObservabilitySettings",
)


class ModelPrice(BaseModel):
    """Fixed USD rates for one model version, per 1,000 tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_per_1k: Decimal = Field(ge=0, allow_inf_nan=False)
    output_per_1k: Decimal = Field(ge=0, allow_inf_nan=False)


#: Rates of the simulated models in the workflow's registry.
DEFAULT_PRICE_TABLE: MappingProxyType[str, ModelPrice] = MappingProxyType({
    "risk-llm-v2": ModelPrice(input_per_1k=Decimal("0.0030"), output_per_1k=Decimal("0.0060")),
    "risk-llm-v1": ModelPrice(input_per_1k=Decimal("0.0015"), output_per_1k=Decimal("0.0020")),
    "risk-llm-mini-v1": ModelPrice(
        input_per_1k=Decimal("0.00015"), output_per_1k=Decimal("0.0006")
    ),
})


class MetricsServerSettings(BaseModel):
    """The optional ``/metrics`` HTTP endpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class ObservabilitySettings(BaseModel):
    """Everything the :class:`~app.observability.Observability` container is built from.

    Every field has a default, so ``ObservabilitySettings()`` is a working
    configuration.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    service_name: str = Field(default="ai-risk-engine", min_length=1)
    service_version: str = "0.7.0"

    # --- the pipeline ---
    queue_maxsize: int = Field(default=65_536, ge=1)
    drain_batch_size: int = Field(default=4_096, ge=1)
    overflow_policy: Literal["drop_newest", "block"] = "drop_newest"
    block_timeout_seconds: float = Field(default=0.25, ge=0, allow_inf_nan=False)
    linger_seconds: float = Field(default=0.1, ge=0, le=1, allow_inf_nan=False)
    flush_timeout_seconds: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    close_timeout_seconds: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    drain_at_exit: bool = True

    # --- metrics ---
    latency_buckets: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS
    node_latency_buckets: tuple[float, ...] | None = None
    max_series_per_metric: int = Field(default=2_000, ge=1)
    quantile_relative_accuracy: float = Field(default=0.01, gt=0, lt=1)
    max_label_value_length: int = Field(default=256, ge=1)

    # --- traces ---
    trace_buffer_size: int = Field(default=10_000, ge=1)
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    id_seed: int | None = None  # deterministic span/trace ids (tests, replays)

    # --- costs ---
    price_table: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_PRICE_TABLE))
    unpriced_policy: Literal["flag", "raise"] = "flag"
    #: Upper bound N on the requests whose cost ``get_request_cost`` still knows. They
    #: are kept in generations of max(1, N // 16) requests (by first cost); when a new
    #: generation starts, the oldest is dropped whole (its requests counted as evicted)
    #: if there were N // max(1, N // 16) already. So more than 7/8 of N of the
    #: most recent requests are kept (93,751 to 100,000 for the default; exactly the
    #: latest N when N < 32). Totals never forget.
    max_tracked_requests: int = Field(default=100_000, ge=1)
    budgets: dict[str, Decimal] = Field(default_factory=dict)
    budget_thresholds: tuple[Decimal, ...] = (Decimal("0.8"), Decimal("1.0"))

    # --- audit, redaction, export ---
    audit_buffer_size: int = Field(default=10_000, ge=1)
    redact: bool = True
    metrics_server: MetricsServerSettings = MetricsServerSettings()

    # --- span export (off by default) ---
    #: OTLP/HTTP traces URL (``http://127.0.0.1:4318/v1/traces``); ``None``: no export.
    otlp_endpoint: str | None = None
    otlp_timeout_seconds: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    #: Extra OTLP/HTTP request headers, e.g. ``{"Authorization": "Basic ..."}`` for
    #: Langfuse's OTLP endpoint. Secret: masked in ``repr`` and dumps, never logged.
    otlp_headers: dict[str, SecretStr] = Field(default_factory=dict)
    #: Retries of a retryable OTLP answer (429, 502, 503, 504) or network error, with
    #: exponential backoff or the receiver's ``Retry-After``, within 90 % of
    #: ``export_timeout_seconds``.
    otlp_max_retries: int = Field(default=3, ge=0, le=10)
    #: An export call running longer than this is counted as timed out.
    export_timeout_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    #: Span batches each exporter may have waiting; more are dropped and counted.
    export_queue_batches: int = Field(default=64, ge=1)

    @field_validator("latency_buckets", "node_latency_buckets")
    @classmethod
    def _check_buckets(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("at least one bucket bound is required")
        if any(not math.isfinite(b) or b <= 0 for b in value):
            raise ValueError("bucket bounds must be finite and positive")
        if list(value) != sorted(set(value)):
            raise ValueError("bucket bounds must be strictly ascending")
        return value

    @field_validator("budgets")
    @classmethod
    def _check_budgets(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for tenant, budget in value.items():
            if not tenant:
                raise ValueError("budget tenant ids must be non-empty")
            if not budget.is_finite() or budget <= 0:
                raise ValueError(f"budget for tenant {tenant!r} must be a positive amount")
        return value

    @model_validator(mode="after")
    def _check_thresholds(self) -> ObservabilitySettings:
        for threshold in self.budget_thresholds:
            if not threshold.is_finite() or threshold <= 0:
                raise ValueError("budget thresholds must be positive fractions")
        return self
