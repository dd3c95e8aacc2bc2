"""The anchor stacks the benchmarks compare against, built the way their docs show.

Everything here imports the anchor packages (``opentelemetry-sdk``,
``prometheus_client``, ``langfuse``) inside the functions, so that importing a
benchmark module (the runner discovers them all) costs nothing and needs none
of them.

Settings that differ from the packages' defaults are chosen to make the
comparison symmetric, never to slow an anchor down:

* the OpenTelemetry ``BatchSpanProcessor`` gets the same queue bound as our
  collectors (65,536) instead of 2,048, so that it never drops a span in a
  round (each round checks the exported count);
* each prometheus_client registry is private (not the process-global one);
* the Langfuse client gets its own ``TracerProvider`` so that its processor
  sees only its generations (on a shared provider it would also filter every
  node span: more work for the anchor).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from collectors.snapshots import DEFAULT_LATENCY_BUCKETS

__all__ = (
    "ANCHOR_QUEUE_SIZE",
    "NetworkGuard",
    "OtelTracing",
    "PromNodeMetrics",
    "no_network",
    "otel_tracing",
    "prom_node_metrics",
)

#: Span queue bound given to the anchors' batch processors (= our collectors' default).
ANCHOR_QUEUE_SIZE = 65_536


@dataclass(slots=True)
class OtelTracing:
    """An OpenTelemetry SDK tracer exporting through a batch processor to memory."""

    provider: Any
    tracer: Any
    exporter: Any

    def drain(self) -> int:
        """Force-flush the batch processor; return and forget the exported spans' count."""
        self.provider.force_flush()
        count = len(self.exporter.get_finished_spans())
        self.exporter.clear()
        return count

    def shutdown(self) -> None:
        """Stop the processor's worker thread."""
        self.provider.shutdown()


def otel_tracing(service: str = "bench") -> OtelTracing:
    """``TracerProvider`` + ``BatchSpanProcessor`` + ``InMemorySpanExporter``."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=ANCHOR_QUEUE_SIZE))
    return OtelTracing(provider=provider, tracer=provider.get_tracer(service), exporter=exporter)


@dataclass(slots=True)
class PromNodeMetrics:
    """prometheus_client metrics equal to our catalog's for one node."""

    registry: Any
    requests: Any
    node_latency: Any
    model_usage: Any
    prompt_usage: Any
    tokens: Any
    cost: Any


def prom_node_metrics() -> PromNodeMetrics:
    """A private registry with the node's and a generation's metric families.

    Names, label names and histogram buckets are those of our catalog
    (``app.observability.catalog``).
    """
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    return PromNodeMetrics(
        registry=registry,
        requests=Counter("risk_engine_requests", "Risk requests received, by tenant.",
                         ["tenant_id"], registry=registry),
        node_latency=Histogram(
            "risk_engine_node_execution_latency_seconds",
            "Latency of one workflow node execution.", ["node", "tenant_id", "status"],
            buckets=DEFAULT_LATENCY_BUCKETS, registry=registry,
        ),
        model_usage=Counter("risk_engine_model_usage", "LLM calls, by model version.",
                            ["model_version", "tenant_id"], registry=registry),
        prompt_usage=Counter("risk_engine_prompt_usage", "LLM calls, by prompt version.",
                             ["prompt_version", "tenant_id"], registry=registry),
        tokens=Counter("risk_engine_tokens", "LLM tokens, by direction (input or output).",
                       ["tenant_id", "model_version", "direction"], registry=registry),
        cost=Counter("risk_engine_cost_usd", "Estimated LLM cost in US dollars.",
                     ["tenant_id", "model_version"], registry=registry),
    )


@dataclass(slots=True)
class NetworkGuard:
    """What :func:`no_network` saw: every attempted connection or name lookup."""

    attempts: list[str]
    lock: threading.Lock

    def record(self, what: str) -> None:
        """Remember one attempt (called from any thread)."""
        with self.lock:
            self.attempts.append(what)


@contextmanager
def no_network() -> Iterator[NetworkGuard]:
    """Refuse and record every socket connection and DNS lookup while active.

    Patches ``socket.socket.connect``/``connect_ex``, ``socket.create_connection``
    and ``socket.getaddrinfo``: an attempt is recorded and fails with
    ``OSError`` (nothing ever leaves the process). The benchmark reports the
    recorded attempts; any attempt invalidates the anchor's numbers.
    """
    guard = NetworkGuard(attempts=[], lock=threading.Lock())
    saved: dict[str, Any] = {
        "connect": socket.socket.connect,
        "connect_ex": socket.socket.connect_ex,
        "create_connection": socket.create_connection,
        "getaddrinfo": socket.getaddrinfo,
    }

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            guard.record(f"{what}{args[1:] if what.startswith('socket.') else args}")
            raise OSError(f"benchmark network guard: {what} refused")

        return refused

    socket.socket.connect = refuse("socket.connect")  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse("socket.connect_ex")  # type: ignore[method-assign]
    socket.create_connection = refuse("create_connection")
    socket.getaddrinfo = refuse("getaddrinfo")
    try:
        yield guard
    finally:
        socket.socket.connect = saved["connect"]  # type: ignore[method-assign]
        socket.socket.connect_ex = saved["connect_ex"]  # type: ignore[method-assign]
        socket.create_connection = saved["create_connection"]
        socket.getaddrinfo = saved["getaddrinfo"]
