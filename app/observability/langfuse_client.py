"""``LangfuseClient``: Langfuse-style generation logging, entirely in-process.

One :meth:`LangfuseClient.log_generation` call records an LLM generation the
way Langfuse would show it, without any network call:

* the cost store gets the priced usage (per tenant, request, model version),
  keyed by the generation's event id, so the same generation logged twice is
  billed once;
* the metrics get ``model_usage_count``, ``prompt_usage_count``,
  ``token_usage`` and the GenAI semantic conventions' client histograms
  (``gen_ai.client.operation.duration``, ``gen_ai.client.token.usage``);
* the trace gets a ``generation`` span under the current span, named
  ``{operation} {model}`` and carrying the GenAI attributes
  (``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ...), with the
  engine's own (tenant, prompt version, event id).

A failed call (``error=...``) still gets its generation span, with status
error and ``error.type``, and its duration; it costs nothing.

Inside a batched workflow run every record goes into the run's outbox and
leaves with the run. When a team moves to real Langfuse, the OTLP export
(:mod:`app.observability.otlp`) carries the same generation spans.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal
from typing import NamedTuple

from app.observability.cost_tracker import CostTracker
from app.observability.metrics import MetricsCollector
from app.observability.tracing import TracingService, exception_type_name
from app.observability.validation import check_attribute, check_count, check_id, check_number
from collectors.records import AttributeValue, MetricRecord

__all__ = ("Generation", "LangfuseClient")

#: Span attributes the tracing service sets from the span's identity.
_IDENTITY_KEYS = frozenset({"tenant_id", "correlation_id", "request_id"})
#: The currency of ``gen_ai.usage.cost.amount`` (the price table is in US dollars).
COST_CURRENCY = "USD"


class Generation(NamedTuple):
    """What one logged generation recorded."""

    event_id: str
    cost: Decimal
    priced: bool
    trace_id: int
    span_id: int


class LangfuseClient:
    """Logs generations to the cost store, the metrics and the trace.

    Args:
        tracing: The tracing service (parent span, ids, where records go).
        costs: The cost tracker (pricing and the cost record).
        metrics: The metrics facade (the usage families' children).
    """

    def __init__(
        self, *, tracing: TracingService, costs: CostTracker, metrics: MetricsCollector
    ) -> None:
        self._tracing = tracing
        self._costs = costs
        self._limits = tracing.limits
        self._model_usage = metrics.counter("model_usage_count")
        self._prompt_usage = metrics.counter("prompt_usage_count")
        self._tokens = metrics.counter("token_usage")
        self._duration = metrics.histogram("gen_ai_client_operation_duration")
        self._token_histogram = metrics.histogram("gen_ai_client_token_usage")

    def log_generation_sync(
        self,
        *,
        tenant_id: str,
        model_version: str,
        prompt_version: str,
        input_tokens: int,
        output_tokens: int,
        latency: float,
        estimated_cost: Decimal | None = None,
        event_id: str | None = None,
        request_id: str | None = None,
        operation: str = "chat",
        provider: str = "simulated",
        response_model: str | None = None,
        metadata: Mapping[str, AttributeValue] | None = None,
        error: BaseException | None = None,
    ) -> Generation:
        """Record one generation (see the module docstring for what it feeds).

        Args:
            tenant_id: The tenant billed.
            model_version: The model version called (priced from the table).
            prompt_version: The prompt template version used.
            input_tokens: Prompt tokens.
            output_tokens: Completion tokens.
            latency: Seconds the call took; the generation span ends now. A
                latency longer than the parent span has run is clamped to the
                parent's start (the span says so in an attribute).
            estimated_cost: An explicit cost; default: priced from the table.
            event_id: The generation's idempotency id; generated if omitted.
            request_id: Defaults to the current span's request id.
            operation: The GenAI operation (``gen_ai.operation.name``).
            provider: The model provider (``gen_ai.provider.name``).
            response_model: The model that answered (default ``model_version``).
            metadata: Extra span attributes (str, bool, int or float values); a key
                the generation already sets (its GenAI attributes, ids) is ignored.
            error: The exception the call failed with: the span gets status
                error and ``error.type``, and nothing is billed.

        Returns:
            A :class:`Generation` with the event id, cost and span ids.

        Raises:
            ValueError: An invalid id, a number out of range, a bad attribute.
            TypeError: Wrong types.
        """
        end_ns = time.time_ns()
        limits = self._limits
        max_id = limits.max_id_length
        tracing = self._tracing
        parent = tracing.current_span()
        if request_id is None and parent is not None:
            request_id = parent.request_id
        check_id("operation", operation, max_length=max_id)
        check_id("provider", provider, max_length=max_id)
        check_id("model_version", model_version, max_length=max_id)
        if response_model is None:
            response_model = model_version
        else:
            check_id("response_model", response_model, max_length=max_id)
        latency = check_number("latency", latency, maximum=limits.max_latency_seconds)
        if error is not None and not isinstance(error, BaseException):
            raise TypeError(f"error must be an exception, got {type(error).__name__}")
        extra: dict[str, AttributeValue] = {}
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
            for key, value in metadata.items():
                extra[key] = check_attribute(key, value, max_length=limits.max_attribute_length)
        if event_id is None:
            event_id = f"gen-{tracing.new_id()}"
        if error is None:  # the cost door checks the ids and token counts
            cost_record = self._costs.build_record(
                tenant_id=tenant_id, model_version=model_version, input_tokens=input_tokens,
                output_tokens=output_tokens, request_id=request_id,
                prompt_version=prompt_version, cost=estimated_cost, event_id=event_id,
            )
            cost, priced = cost_record.cost, cost_record.priced
        else:  # a failed call is not billed, but its arguments are held to the same rules
            check_id("tenant_id", tenant_id, max_length=max_id)
            check_id("prompt_version", prompt_version, max_length=max_id)
            check_id("event_id", event_id, max_length=max_id)
            if request_id is not None:
                check_id("request_id", request_id, max_length=max_id)
            check_count("input_tokens", input_tokens, maximum=limits.max_tokens_per_call)
            check_count("output_tokens", output_tokens, maximum=limits.max_tokens_per_call)
            cost_record, cost, priced = None, Decimal(0), False
        # Everything is checked: from here on nothing raises, so a refused call records nothing.

        # Label values in each family's declared order (see the catalog).
        gen_ai = (operation, provider, model_version, response_model)
        error_type = exception_type_name(error) if error is not None else None
        metrics: list[MetricRecord] = [
            self._duration.labels(*gen_ai, error_type or "none").record(latency),
        ]
        if cost_record is not None:
            metrics += (
                self._model_usage.labels(model_version, tenant_id).record(1),
                self._prompt_usage.labels(prompt_version, tenant_id).record(1),
                self._tokens.labels(tenant_id, model_version, "input").record(input_tokens),
                self._tokens.labels(tenant_id, model_version, "output").record(output_tokens),
                self._token_histogram.labels(*gen_ai, "input").record(input_tokens),
                self._token_histogram.labels(*gen_ai, "output").record(output_tokens),
            )

        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model_version,
            "gen_ai.response.model": response_model,
            "gen_ai.usage.input_tokens": input_tokens,
            "gen_ai.usage.output_tokens": output_tokens,
            "gen_ai.usage.cost.amount": float(cost),
            "gen_ai.usage.cost.currency": COST_CURRENCY,
            "prompt_version": prompt_version,
            "event_id": event_id,
            "priced": priced,
        }
        if error_type is not None:
            attributes["error.type"] = error_type
        for key, value in extra.items():  # metadata never overrides what the engine records
            if key not in attributes and key not in _IDENTITY_KEYS:
                attributes[key] = value
        name = f"{operation} {model_version}"[:max_id]
        start_ns = end_ns - round(latency * 1e9)
        if parent is not None and (parent.tenant_id, parent.request_id) == (tenant_id, request_id):
            span = tracing.start_span_sync(name, kind="generation", start_ns=start_ns)
        else:  # not the parent's identity: the span carries its own
            span = tracing.start_span_sync(name, kind="generation", start_ns=start_ns,
                                           tenant_id=tenant_id, request_id=request_id)
        # Every value above was checked at this door: the attributes are set as
        # they are (beside what the span already has, such as a clamped start).
        if span.attributes:
            attributes.update(span.attributes)
        span.attributes = attributes
        if cost_record is not None:
            span.sink.add_cost(cost_record)
        tracing.end_span_sync(span, error=error, metrics=metrics)
        return Generation(event_id, cost, priced, span.trace_id, span.span_id)

    async def log_generation(self, **kwargs: object) -> Generation:
        """Async form of :meth:`log_generation_sync` (same keyword arguments)."""
        return self.log_generation_sync(**kwargs)  # type: ignore[arg-type]
