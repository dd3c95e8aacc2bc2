"""``LangfuseClient``: Langfuse-style generation logging, entirely in-process.

One :meth:`LangfuseClient.log_generation` call records an LLM generation the
way Langfuse would show it, without any network call:

* the cost store gets the priced usage (per tenant, request, model version);
* the metrics get ``model_usage_count``, ``prompt_usage_count`` and
  ``token_usage`` (input and output), sent as one batch;
* the trace gets a ``generation`` span under the current span, carrying the
  OpenTelemetry GenAI attributes' sources (model, tokens) and the project's
  own (tenant, correlation id, prompt version, cost, event id).

That is three queue puts per generation, whatever the number of metrics. When
a team moves to real Langfuse, the OTLP/JSON export (``app.observability.otlp``)
carries the same generation spans with the GenAI semantic-convention names
that Langfuse's OTLP endpoint reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import NamedTuple

from app.observability.cost_tracker import CostTracker
from app.observability.tracing import TracingService, _check_attribute
from collectors.metrics import MetricsStoreCollector
from collectors.records import AttributeValue, Batch, Labels

__all__ = ("Generation", "LangfuseClient")

_new_tuple = tuple.__new__  # a NamedTuple without its Python-level __new__

#: Usage label sets kept ready-made (tenants x models x prompts).
_LABEL_CACHE_SIZE = 4_096


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
        tracing: The tracing service (parent span, ids).
        costs: The cost tracker (pricing and the cost store).
        metrics: The metrics actor (usage counters are sent as one batch).
    """

    def __init__(
        self, *, tracing: TracingService, costs: CostTracker, metrics: MetricsStoreCollector
    ) -> None:
        self._tracing = tracing
        self._costs = costs
        self._metrics = metrics
        #: (tenant, model, prompt) -> the usage metrics' label sets (bounded).
        self._usage_labels: dict[tuple[str, str, str], tuple[Labels, Labels, Labels, Labels]] = {}

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
        name: str = "llm.generation",
        provider: str = "simulated",
        metadata: Mapping[str, AttributeValue] | None = None,
    ) -> Generation:
        """Record one generation (see the module docstring for what it feeds).

        Args:
            tenant_id: The tenant billed.
            model_version: The model version called (priced from the table).
            prompt_version: The prompt template version used.
            input_tokens: Prompt tokens (int >= 0).
            output_tokens: Completion tokens (int >= 0).
            latency: Seconds the call took (finite, >= 0); the span ends now.
            estimated_cost: An explicit cost; default: priced from the table.
            event_id: Idempotency id of the generation; generated if omitted.
            request_id: Defaults to the current span's request id.
            name: The generation span's name.
            provider: The model provider (``gen_ai.provider.name`` on export).
            metadata: Extra span attributes (str, bool, int or float values).

        Returns:
            A :class:`Generation` with the event id, cost and span ids.

        Raises:
            ValueError: Empty ids, negative tokens or latency, non-finite values.
            TypeError: Wrong types.
        """
        for field, text in (("prompt_version", prompt_version), ("name", name),
                            ("provider", provider)):
            if type(text) is not str:
                raise TypeError(f"{field} must be a str, got {type(text).__name__}")
            if not text:
                raise ValueError(f"{field} must not be empty")
        if type(latency) is not float and type(latency) is not int:
            raise TypeError(f"latency must be a float (seconds), got {type(latency).__name__}")
        if not 0 <= latency < math.inf:
            raise ValueError(f"latency must be finite and >= 0 seconds, got {latency!r}")
        end_ns = time.time_ns()
        duration_ns = round(latency * 1e9) if latency <= end_ns / 1e9 else -1
        if not 0 <= duration_ns <= end_ns:  # the start would precede the Unix epoch
            raise ValueError(f"latency must not exceed the time since the epoch, got {latency!r}")
        if event_id is not None and (type(event_id) is not str or not event_id):
            raise ValueError("event_id must be a non-empty str")
        # Everything is checked before anything is sent: a refused call records nothing.
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
            for key, value in metadata.items():
                try:
                    _check_attribute(key, value)
                except (TypeError, ValueError) as exc:
                    raise type(exc)(f"metadata: {exc}") from None
        parent = self._tracing.current_span()
        if request_id is None and parent is not None:
            request_id = parent.request_id
        cost_record = self._costs.build_record(
            tenant_id=tenant_id, model_version=model_version, input_tokens=input_tokens,
            output_tokens=output_tokens, request_id=request_id, cost=estimated_cost,
        )
        cost, priced = cost_record.cost, cost_record.priced
        labels = self._usage_labels.get((tenant_id, model_version, prompt_version))
        if labels is None:
            labels = self._usage_label_sets(tenant_id, model_version, prompt_version)
        model, prompt, tokens_in, tokens_out = labels
        # Plain (metric, labels, value) tuples sharing ready-made labels: see
        # collectors.records on why both matter to the garbage collector.
        usage = (
            ("model_usage_count", model, 1),
            ("prompt_usage_count", prompt, 1),
            ("token_usage", tokens_in, input_tokens),
            ("token_usage", tokens_out, output_tokens),
        )
        outbox = parent.outbox if parent is not None else None
        if outbox is not None and not outbox.open:
            outbox = None
        if outbox is not None:  # inside a batched workflow run: enqueued when it ends
            outbox.costs.append(cost_record)
            outbox.metrics.extend(usage)
            if not outbox.open:  # closed by its root meanwhile: send it ourselves
                self._tracing.send_outbox(outbox)
        else:
            self._costs.send_record(cost_record)
            self._metrics.send(Batch(usage), len(usage))
        if event_id is None:
            event_id = f"gen-{self._tracing.new_id()}"
        # The span's attributes, flat: the records' wire form (collectors.records).
        attributes: tuple[AttributeValue, ...] = (
            "tenant_id", tenant_id,
            "model_version", model_version,
            "prompt_version", prompt_version,
            "input_tokens", input_tokens,
            "output_tokens", output_tokens,
            "cost_usd", str(cost),
            "priced", priced,
            "event_id", event_id,
            "provider", provider,
        )
        if parent is not None and parent.correlation_id is not None:
            attributes += ("correlation_id", parent.correlation_id)
        if request_id is not None:
            attributes += ("request_id", request_id)
        if metadata:
            taken = set(attributes[::2])
            for key, value in metadata.items():
                if key not in taken:
                    attributes += (key, value)
        record = self._tracing.record_finished(
            name, "generation", end_ns - duration_ns, end_ns, attributes
        )
        result: Generation = _new_tuple(Generation, (event_id, cost, priced, record[0], record[1]))
        return result

    def _usage_label_sets(
        self, tenant_id: str, model_version: str, prompt_version: str
    ) -> tuple[Labels, Labels, Labels, Labels]:
        labels = (
            (("model_version", model_version), ("tenant_id", tenant_id)),
            (("prompt_version", prompt_version), ("tenant_id", tenant_id)),
            (("direction", "input"), ("model_version", model_version), ("tenant_id", tenant_id)),
            (("direction", "output"), ("model_version", model_version), ("tenant_id", tenant_id)),
        )
        if len(self._usage_labels) >= _LABEL_CACHE_SIZE:  # a tenant flood must not grow it
            self._usage_labels.clear()
        self._usage_labels[(tenant_id, model_version, prompt_version)] = labels
        return labels

    async def log_generation(self, **kwargs: object) -> Generation:
        """Async form of :meth:`log_generation_sync` (same keyword arguments)."""
        return self.log_generation_sync(**kwargs)  # type: ignore[arg-type]
