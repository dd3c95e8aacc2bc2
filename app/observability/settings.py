"""Configuration of the observability layer (pydantic; validated once at the boundary)."""

from __future__ import annotations

import math
from decimal import Decimal
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from collectors.ledger import check_ledger_url
from collectors.snapshots import DEFAULT_LATENCY_BUCKETS

__all__ = (
    "DEFAULT_NODE_LATENCY_BUCKETS",
    "DEFAULT_PRICE_TABLE",
    "InputLimits",
    "MetricsServerSettings",
    "ModelPrice",
    "ObservabilitySettings",
)


#: Seconds; resolves sub-millisecond workflow nodes (a bucket edge at 5 s for the
#: ``NodeLatencyP95High`` alert threshold).
DEFAULT_NODE_LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
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


class InputLimits(BaseModel):
    """Bounds every door applies to what it is given (see ``app.observability.validation``).

    A value past a bound is refused with a ``ValueError`` naming the field and
    the bound; free text past ``max_attribute_length`` is truncated, visibly.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Ids (tenant, request, correlation, event, model and prompt versions) and label values.
    max_id_length: int = Field(default=256, ge=1, le=65_536)
    #: Span, event and audit attribute values, error messages: truncated past this.
    max_attribute_length: int = Field(default=4_096, ge=16, le=1_048_576)
    #: Input or output tokens of one LLM call.
    max_tokens_per_call: int = Field(default=10_000_000, ge=1)
    #: One counter increment.
    max_counter_increment: float = Field(default=1e9, gt=0, allow_inf_nan=False)
    #: One latency or histogram observation, in seconds.
    max_latency_seconds: float = Field(default=86_400.0, gt=0, allow_inf_nan=False)
    #: The cost of one LLM call, in USD.
    max_cost_per_call_usd: Decimal = Field(default=Decimal("1000"), gt=0, allow_inf_nan=False)


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
    #: Upper bounds of ``node_execution_latency``; ``None``: ``latency_buckets``.
    #: Most nodes run in well under a millisecond, so the default starts at 50 µs.
    node_latency_buckets: tuple[float, ...] | None = DEFAULT_NODE_LATENCY_BUCKETS
    max_series_per_metric: int = Field(default=2_000, ge=1)
    quantile_relative_accuracy: float = Field(default=0.01, gt=0, lt=1)
    #: Bounds on every input (ids, text, tokens, amounts, latencies, costs).
    limits: InputLimits = InputLimits()

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
    #: When budgets reset: never (``"none"``), each UTC day or each UTC month.
    budget_period: Literal["none", "day", "month"] = "none"

    # --- the ledger (durable costs, budget crossings, audit trail; off by default) ---
    #: ``sqlite:///PATH`` (one machine) or ``postgresql://user:pw@host:port/db``
    #: (several machines); ``None`` keeps everything in memory only.
    ledger_url: str | None = None
    #: Rows each collector keeps while the ledger is unreachable; past it they are
    #: dropped from the ledger (still applied in memory) and counted.
    ledger_buffer_size: int = Field(default=100_000, ge=1)
    #: Cost reads reflect other processes' committed records at most this many
    #: seconds late (the cost collector reloads the ledger's totals when older).
    ledger_refresh_seconds: float = Field(default=1.0, ge=0, le=3_600, allow_inf_nan=False)
    #: Ceiling of the retry backoff while the ledger is unreachable.
    ledger_retry_max_seconds: float = Field(default=5.0, gt=0, le=600, allow_inf_nan=False)

    # --- audit, redaction, export ---
    audit_buffer_size: int = Field(default=10_000, ge=1)
    redact: bool = True
    metrics_server: MetricsServerSettings = MetricsServerSettings()

    # --- span export (off by default) ---
    # Each otlp_* field left unset falls back to its standard OTEL_EXPORTER_OTLP_*
    # variable, read when the container is built (app.observability.otlp.OtlpConfig).
    #: OTLP/HTTP traces URL (``http://127.0.0.1:4318/v1/traces``); ``None``: the
    #: ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` variables, or no export.
    otlp_endpoint: str | None = None
    #: ``http/protobuf`` (binary protobuf) or ``http/json``; ``None``:
    #: ``OTEL_EXPORTER_OTLP_PROTOCOL``, else ``http/protobuf``.
    otlp_protocol: Literal["http/protobuf", "http/json"] | None = None
    #: Request body compression; ``None``: ``OTEL_EXPORTER_OTLP_COMPRESSION``, else none.
    otlp_compression: Literal["gzip", "none"] | None = None
    otlp_timeout_seconds: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    #: Extra OTLP/HTTP request headers, e.g. ``{"Authorization": "Basic ..."}`` for
    #: Langfuse's OTLP endpoint. Secret: masked in ``repr`` and dumps, never logged.
    #: They override ``OTEL_EXPORTER_OTLP_HEADERS`` name by name.
    otlp_headers: dict[str, SecretStr] = Field(default_factory=dict)
    #: Resource attributes of exported spans (``deployment.environment.name``...),
    #: over those of ``OTEL_RESOURCE_ATTRIBUTES``; ``service.name``/``service.version``
    #: come from ``service_name``/``service_version`` (or ``OTEL_SERVICE_NAME``).
    otlp_resource_attributes: dict[str, str] = Field(default_factory=dict)
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

    @field_validator("otlp_resource_attributes")
    @classmethod
    def _check_resource_attributes(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = {"service.name", "service.version"}.intersection(value)
        if reserved:
            raise ValueError(
                f"must not set {sorted(reserved)}: use service_name/service_version")
        if any(not key for key in value):
            raise ValueError("resource attribute keys must be non-empty")
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

    @field_validator("ledger_url")
    @classmethod
    def _check_ledger_url(cls, value: str | None) -> str | None:
        return None if value is None else check_ledger_url(value)

    @model_validator(mode="after")
    def _check_thresholds(self) -> ObservabilitySettings:
        for threshold in self.budget_thresholds:
            if not threshold.is_finite() or threshold <= 0:
                raise ValueError("budget thresholds must be positive fractions")
        return self
