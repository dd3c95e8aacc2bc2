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
from collections.abc import Mapping
from decimal import Decimal
from time import time_ns as _time_ns
from typing import NamedTuple

from app.observability.cost_tracker import CostTracker, Price
from app.observability.tracing import Span, SpanContext, TracingService, _check_attribute
from collectors.metrics import MetricsStoreCollector
from collectors.records import AttributeValue, Batch, CostRecord, Labels

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
        # The fast path's shortcuts, both fixed for the life of their owners: the
        # tracer's current-span variable and the cost tracker's price cache.
        self._current = tracing._current
        self._prices = costs.price_cache
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

        The workflow instrumentation calls this once per request, inside a
        node span of a batched run, and it used to be the most expensive call
        of the instrumentation. So the common call -- valid arguments, a priced
        model, no ``metadata`` and no ``estimated_cost`` -- takes a fast path:
        one merged validation (it only says *whether* everything is valid),
        the price from :attr:`CostTracker.price_cache`, the records built as
        plain tuples, and in a batched run the generation span appended to the
        outbox here rather than by :meth:`TracingService.record_finished`.
        Every other call, including every invalid one, takes
        :meth:`_log_generation_checked`, which checks the arguments one by one
        in the documented order (same errors, same messages) and applies the
        unpriced policy. Both paths record the same things and draw the same
        ids from the tracer's generator, in the same order.
        """
        end_ns = _time_ns()
        current = self._current.get()
        parent = current if isinstance(current, Span) else None
        if request_id is None and parent is not None:
            request_id = parent.request_id
        price: Price | None = None
        duration_ns = 0
        if (
            metadata is None and estimated_cost is None
            and type(tenant_id) is str and tenant_id
            and type(model_version) is str and model_version
            and type(prompt_version) is str and prompt_version
            and type(input_tokens) is int and input_tokens >= 0
            and type(output_tokens) is int and output_tokens >= 0
            # (a NaN fails the comparison; end_ns / 1e9 bounds it below infinity)
            and (type(latency) is float or type(latency) is int)
            and 0 <= latency <= end_ns / 1e9
            and type(name) is str and name
            and type(provider) is str and provider
            and (event_id is None or (type(event_id) is str and event_id))
            and (request_id is None or (type(request_id) is str and request_id))
        ):
            duration_ns = round(latency * 1e9)
            if duration_ns <= end_ns:  # (rounding may say otherwise at the very edge)
                price = self._prices.get((model_version, input_tokens, output_tokens))
                if price is None:  # not cached yet, or an unpriced model (None again)
                    price = self._costs.price(model_version, input_tokens, output_tokens)
        if price is None:
            return self._log_generation_checked(
                end_ns, current, parent, tenant_id=tenant_id, model_version=model_version,
                prompt_version=prompt_version, input_tokens=input_tokens,
                output_tokens=output_tokens, latency=latency, estimated_cost=estimated_cost,
                event_id=event_id, request_id=request_id, name=name, provider=provider,
                metadata=metadata,
            )
        cost, cost_usd = price
        cost_record: CostRecord = _new_tuple(CostRecord, (
            tenant_id, request_id, model_version, input_tokens, output_tokens, cost, True,
            _time_ns(),
        ))
        usage = self._usage(tenant_id, model_version, prompt_version, input_tokens,
                            output_tokens)
        tracing = self._tracing
        rng = tracing._rng  # read per call: replaced in a forked child
        if event_id is None:
            # The string TracingService.new_id() formats (24 hex digits), without the
            # method call and ~3x cheaper: int formatting with a width is slow.
            event_id = "gen-" + rng.getrandbits(96).to_bytes(12, "big").hex()
        attributes = _generation_attributes(
            tenant_id, model_version, prompt_version, input_tokens, output_tokens, cost_usd,
            True, event_id, provider, parent.correlation_id if parent is not None else None,
            request_id,
        )
        outbox = parent.outbox if parent is not None else None
        if parent is None or outbox is None or not outbox.open:
            self._costs.send_record(cost_record)
            self._metrics.send(Batch(usage), 4)
            record = tracing.record_finished(
                name, "generation", end_ns - duration_ns, end_ns, attributes, current)
            result: Generation = _new_tuple(
                Generation, (event_id, cost, True, record[0], record[1]))
            return result
        # Inside a batched workflow run: what record_finished() does for a local
        # parent with an open outbox, the same span id draw and the same record.
        trace_id = parent.trace_id
        span_id = rng.getrandbits(64) or 1
        outbox.costs.append(cost_record)
        metrics = outbox.metrics
        metrics.extend(usage)
        if parent.sampled:
            spans = outbox.spans
            spans.append((
                trace_id, span_id, parent.span_id, name, "generation", end_ns - duration_ns,
                end_ns, "ok", None, None, attributes, (), False,
            ))
            if not outbox.open or len(spans) + len(metrics) >= outbox.limit:
                tracing.send_outbox(outbox)  # closed by its root meanwhile, or a long run
        elif not outbox.open:  # closed by its root meanwhile: send it ourselves
            tracing.send_outbox(outbox)
        result = _new_tuple(Generation, (event_id, cost, True, trace_id, span_id))
        return result

    def _log_generation_checked(
        self,
        end_ns: int,
        current: Span | SpanContext | None,
        parent: Span | None,
        *,
        tenant_id: str,
        model_version: str,
        prompt_version: str,
        input_tokens: int,
        output_tokens: int,
        latency: float,
        estimated_cost: Decimal | None,
        event_id: str | None,
        request_id: str | None,
        name: str,
        provider: str,
        metadata: Mapping[str, AttributeValue] | None,
    ) -> Generation:
        """:meth:`log_generation_sync` for every call its fast path does not take.

        Checks each argument in turn (the first bad one raises, with its own
        message), applies the unpriced policy through
        :meth:`CostTracker.build_record`, and records the generation.
        ``current`` is the current span or remote context, ``parent`` the
        current local span (or ``None``), and ``request_id`` already defaults
        to the parent's.
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
        cost_record = self._costs.build_record(
            tenant_id=tenant_id, model_version=model_version, input_tokens=input_tokens,
            output_tokens=output_tokens, request_id=request_id, cost=estimated_cost,
        )
        cost, priced = cost_record.cost, cost_record.priced
        usage = self._usage(tenant_id, model_version, prompt_version, input_tokens,
                            output_tokens)
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
        attributes = _generation_attributes(
            tenant_id, model_version, prompt_version, input_tokens, output_tokens, str(cost),
            priced, event_id, provider, parent.correlation_id if parent is not None else None,
            request_id,
        )
        if metadata:
            taken = set(attributes[::2])
            for key, value in metadata.items():
                if key not in taken:
                    attributes += (key, value)
        record = self._tracing.record_finished(
            name, "generation", end_ns - duration_ns, end_ns, attributes, current
        )
        result: Generation = _new_tuple(Generation, (event_id, cost, priced, record[0], record[1]))
        return result

    def _usage(
        self, tenant_id: str, model_version: str, prompt_version: str, input_tokens: int,
        output_tokens: int,
    ) -> tuple[tuple[str, Labels, int], ...]:
        """The four usage records of a generation.

        Plain (metric, labels, value) tuples sharing ready-made labels: see
        collectors.records on why both matter to the garbage collector.
        """
        labels = self._usage_labels.get((tenant_id, model_version, prompt_version))
        if labels is None:
            labels = self._usage_label_sets(tenant_id, model_version, prompt_version)
        model, prompt, tokens_in, tokens_out = labels
        return (
            ("model_usage_count", model, 1),
            ("prompt_usage_count", prompt, 1),
            ("token_usage", tokens_in, input_tokens),
            ("token_usage", tokens_out, output_tokens),
        )

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


def _generation_attributes(
    tenant_id: str, model_version: str, prompt_version: str, input_tokens: int,
    output_tokens: int, cost_usd: str, priced: bool, event_id: str, provider: str,
    correlation_id: str | None, request_id: str | None,
) -> tuple[AttributeValue, ...]:
    """A generation span's attributes, flat: the records' wire form (collectors.records)."""
    attributes: tuple[AttributeValue, ...] = (
        "tenant_id", tenant_id,
        "model_version", model_version,
        "prompt_version", prompt_version,
        "input_tokens", input_tokens,
        "output_tokens", output_tokens,
        "cost_usd", cost_usd,
        "priced", priced,
        "event_id", event_id,
        "provider", provider,
    )
    if correlation_id is not None:
        attributes += ("correlation_id", correlation_id)
    if request_id is not None:
        attributes += ("request_id", request_id)
    return attributes
