"""The metric catalog: every metric family the risk engine records.

Callers use the catalog names of the specification (``request_count``,
``node_execution_latency``...). Prometheus sees conventional names: a
``risk_engine_`` namespace, base units (``_seconds``), ``_total`` on counters
(added by the renderers, see :class:`collectors.snapshots.MetricSpec`).

The ``observability_*`` families describe the pipeline itself; they are not
recorded through the facade but read live from the collectors at export time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from collectors.snapshots import DEFAULT_LATENCY_BUCKETS, MetricSpec

__all__ = (
    "GEN_AI_DURATION_BUCKETS",
    "GEN_AI_LABELS",
    "GEN_AI_TOKEN_BUCKETS",
    "NO_NODE",
    "NO_TENANT",
    "PIPELINE_METRICS",
    "QUALITY_SCORE_BUCKETS",
    "build_catalog",
)

#: The ``tenant_id`` label of a series of no known tenant (every series has every label).
NO_TENANT = "unknown"
#: The ``node`` label of a failure outside any workflow node.
NO_NODE = "none"
QUALITY_SCORE_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: The GenAI semantic conventions' advice for ``gen_ai.client.operation.duration``.
GEN_AI_DURATION_BUCKETS: tuple[float, ...] = tuple(0.01 * 2**i for i in range(14))
#: The GenAI semantic conventions' advice for ``gen_ai.client.token.usage``.
GEN_AI_TOKEN_BUCKETS: tuple[float, ...] = tuple(float(4**i) for i in range(14))
#: Labels of the GenAI client metrics (the conventions' attributes, in Prometheus form).
GEN_AI_LABELS: tuple[str, ...] = (
    "gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
    "gen_ai_response_model",
)


def build_catalog(
    *,
    latency_buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
    node_latency_buckets: Sequence[float] | None = None,
) -> Mapping[str, MetricSpec]:
    """Build the recordable metric catalog, keyed by catalog name.

    Args:
        latency_buckets: Upper bounds (seconds) for ``request_latency``.
        node_latency_buckets: Upper bounds for ``node_execution_latency``;
            defaults to ``latency_buckets``.

    Returns:
        A read-only mapping of catalog name to :class:`MetricSpec`.
    """
    request_buckets = tuple(float(b) for b in latency_buckets)
    node_buckets = tuple(float(b) for b in (node_latency_buckets or latency_buckets))
    specs = (
        MetricSpec(
            name="request_count", prom_name="risk_engine_requests", type="counter",
            help="Risk requests received, by tenant.",
            label_names=("tenant_id",),
        ),
        MetricSpec(
            name="workflow_execution_count", prom_name="risk_engine_workflow_executions",
            type="counter", help="Workflow executions, by workflow, tenant and outcome.",
            label_names=("workflow", "tenant_id", "status"),
        ),
        MetricSpec(
            name="node_execution_latency", prom_name="risk_engine_node_execution_latency_seconds",
            type="histogram", help="Latency of one workflow node execution.",
            label_names=("node", "tenant_id", "status"), unit="seconds", buckets=node_buckets,
        ),
        MetricSpec(
            name="request_latency", prom_name="risk_engine_request_latency_seconds",
            type="histogram", help="End-to-end latency of one risk request.",
            label_names=("tenant_id", "workflow", "status"), unit="seconds",
            buckets=request_buckets,
        ),
        MetricSpec(
            name="failure_count", prom_name="risk_engine_failures", type="counter",
            help="Failures, by failure category.",
            label_names=("category", "tenant_id", "node"),
        ),
        MetricSpec(
            name="approval_required_count", prom_name="risk_engine_approvals_required",
            type="counter", help="Requests escalated for human approval.",
            label_names=("tenant_id",),
        ),
        MetricSpec(
            name="model_usage_count", prom_name="risk_engine_model_usage", type="counter",
            help="LLM calls, by model version.",
            label_names=("model_version", "tenant_id"),
        ),
        MetricSpec(
            name="prompt_usage_count", prom_name="risk_engine_prompt_usage", type="counter",
            help="LLM calls, by prompt version.",
            label_names=("prompt_version", "tenant_id"),
        ),
        MetricSpec(
            name="token_usage", prom_name="risk_engine_tokens", type="counter",
            help="LLM tokens, by direction (input or output).",
            label_names=("tenant_id", "model_version", "direction"),
        ),
        MetricSpec(
            name="quality_score", prom_name="risk_engine_quality_score", type="histogram",
            help="Overall decision quality score in [0, 1] from the evaluation service.",
            label_names=("tenant_id",), buckets=QUALITY_SCORE_BUCKETS,
        ),
        MetricSpec(
            name="budget_threshold_crossed", prom_name="risk_engine_budget_threshold_crossings",
            type="counter", help="Tenant cost budget thresholds crossed (once per crossing).",
            label_names=("tenant_id", "threshold"),
        ),
        MetricSpec(
            name="gen_ai_client_operation_duration",
            prom_name="gen_ai_client_operation_duration_seconds", type="histogram",
            help="GenAI operation duration (gen_ai.client.operation.duration); error_type is "
                 "the failed call's exception type, none for a successful call.",
            label_names=(*GEN_AI_LABELS, "error_type"), unit="seconds",
            buckets=GEN_AI_DURATION_BUCKETS,
        ),
        MetricSpec(
            name="gen_ai_client_token_usage", prom_name="gen_ai_client_token_usage",
            type="histogram",
            help="Tokens used per GenAI operation (gen_ai.client.token.usage), by token type.",
            label_names=(*GEN_AI_LABELS, "gen_ai_token_type"),
            buckets=GEN_AI_TOKEN_BUCKETS,
        ),
    )
    return MappingProxyType({spec.name: spec for spec in specs})


#: Families exported beside the catalog, computed at export time from the
#: cost store and from the collectors' own accounting.
PIPELINE_METRICS: Mapping[str, MetricSpec] = MappingProxyType({
    spec.name: spec
    for spec in (
        MetricSpec(
            name="cost_usd", prom_name="risk_engine_cost_usd", type="counter",
            help="Estimated LLM cost in US dollars, by tenant and model version.",
            label_names=("tenant_id", "model_version"), unit="usd",
        ),
        MetricSpec(
            name="unpriced_generations", prom_name="risk_engine_unpriced_generations",
            type="counter",
            help="Generations whose model version is missing from the price table.",
            label_names=("model_version",),
        ),
        MetricSpec(
            name="records_dropped", prom_name="observability_records_dropped", type="counter",
            help="Telemetry records dropped, by collector and reason.",
            label_names=("collector", "reason"),
        ),
        MetricSpec(
            name="records_applied", prom_name="observability_records_applied", type="counter",
            help="Telemetry records applied to a store, by collector.",
            label_names=("collector",),
        ),
        MetricSpec(
            name="queue_depth", prom_name="observability_queue_depth", type="gauge",
            help="Items waiting in a collector's queue (a batch of records counts as one).",
            label_names=("collector",),
        ),
        MetricSpec(
            name="collector_up", prom_name="observability_collector_up", type="gauge",
            help="1 while the collector thread is alive, 0 otherwise.",
            label_names=("collector",),
        ),
        MetricSpec(
            name="spans_evicted", prom_name="observability_spans_evicted", type="counter",
            help="Finished spans evicted from the bounded in-memory trace buffer.",
            label_names=(),
        ),
        MetricSpec(
            name="spans_exported", prom_name="observability_spans_exported", type="counter",
            help="Spans handed to a span exporter, by exporter and outcome "
            "(exported, failed, timed_out, dropped_<reason>).",
            label_names=("exporter", "outcome"),
        ),
        MetricSpec(
            name="series_overflow", prom_name="observability_series_overflow", type="counter",
            help="Records (for cost_usd: series) folded into the overflow series by the "
                 "cardinality cap.",
            label_names=("metric",),
        ),
        MetricSpec(
            name="ledger_rows", prom_name="observability_ledger_rows", type="counter",
            help="Ledger rows by collector and outcome: committed, duplicate (already in "
                 "the ledger, not billed again) or dropped (never committed).",
            label_names=("collector", "outcome"),
        ),
        MetricSpec(
            name="ledger_lag", prom_name="observability_ledger_lag", type="gauge",
            help="Rows applied in memory but not committed to the ledger yet.",
            label_names=("collector",),
        ),
        MetricSpec(
            name="ledger_up", prom_name="observability_ledger_up", type="gauge",
            help="1 while the collector's ledger connection is up, else 0.",
            label_names=("collector",),
        ),
    )
})
