"""Optional LangChain callback handler: node observability for graphs that cannot be rebuilt.

The default instrumentation is
:class:`~app.workflows.langgraph.instrumentation.WorkflowInstrumentation`, applied
through ``build_risk_graph(node_wrapper=...)`` while the graph is built.
When a compiled graph comes from elsewhere and cannot be rebuilt, pass
:class:`ObservabilityCallbackHandler` in the run's config instead::

    handler = ObservabilityCallbackHandler(obs)
    with langsmith_tracing_disabled():
        await graph.ainvoke(state, config={"callbacks": [handler], "metadata": {
            "tenant_id": "t1", "correlation_id": "c1", "request_id": "r1"}})

It is **off by default** -- nothing attaches it -- because it costs more than
the node wrapper: with a callback handler attached, LangChain dispatches a start
and an end event, each with its own run id, for every node and every internal
runnable.

What it records, with one instance shared by any number of concurrent runs:

* per node: ``node_execution_latency{node,tenant_id,status}`` when the node
  ends, and a ``node`` span, child of the run's ``workflow`` span;
* per run: a ``workflow`` root span (or a child of the caller's span when
  ``metadata["traceparent"]`` carries a W3C ``traceparent``);
* per failure: :meth:`~app.observability.FailureClassifier.classify` once
  (``failure_count{category}`` and a ``failure.classified`` audit event), at
  the node that raised it, or at the workflow level for an error no node
  raised; the spans carry ``error_type`` and ``failure_category`` attributes.
  LangGraph's interrupts (``GraphBubbleUp``) are not failures.

It does not record request-level metrics, generations or costs (the
generation logger parents its span on the *current* span, which a callback
cannot see), and it is meant to be used instead of the node wrapper, not with
it. ``tenant_id``, ``correlation_id`` and ``request_id`` come from the run's
``config["metadata"]`` (the runner puts them there), else from the graph's
input when it is a mapping holding them.

Runs are told apart by LangChain's ``run_id``, not by context variables: a
callback may run in another context than the node (an executor thread, a
copied context), so the handler keeps ``run_id -> (name, start
perf_counter_ns, start time_ns, parent run id)`` in a dict, and removes the
entry when the run ends or fails, so the state never grows. A *workflow* is a
run without ``langgraph_node`` metadata and without a parent run (the graph
invoked at top level); its *nodes* are its direct children that carry
``langgraph_node``. Other runs (routing functions, runnables inside a node,
an inner graph's nodes) store nothing. Node spans wait in their workflow's
entry until the workflow ends, because only then is the workflow span
recorded and its span id known.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, NamedTuple
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler
from langgraph.errors import GraphBubbleUp

from app.observability import Observability, SpanContext
from app.observability.catalog import NO_TENANT
from app.observability.tracing import exception_type_name
from collectors.logs import get_logger
from collectors.records import AttributeValue

__all__ = ("ObservabilityCallbackHandler",)

_logger = get_logger(__name__)

_WARN_INTERVAL = 60.0  # seconds between two warnings about failed callbacks
_ID_KEYS = ("tenant_id", "correlation_id", "request_id")
_NODE_KEY = "langgraph_node"


class _Run(NamedTuple):
    """An open run: what ``on_chain_end``/``on_chain_error`` need (they get no metadata)."""

    name: str
    start_perf_ns: int
    start_ns: int
    parent_run_id: UUID | None


class _NodeSpan(NamedTuple):
    """A finished node, waiting for its workflow span to be recorded."""

    name: str
    start_ns: int
    end_ns: int
    status: str
    attributes: tuple[tuple[str, AttributeValue], ...]


class _Workflow:
    """What one open workflow run needs beyond its :class:`_Run` entry."""

    __slots__ = ("category", "classified", "ids", "nodes", "parent")

    def __init__(self, ids: tuple[tuple[str, str], ...], parent: SpanContext | None) -> None:
        self.ids = ids
        self.parent = parent
        self.nodes: list[_NodeSpan] = []
        self.classified: list[BaseException] = []  # counted at a node already
        self.category: str | None = None


class ObservabilityCallbackHandler(AsyncCallbackHandler):
    """Records node latencies, node and workflow spans and failures from LangChain callbacks.

    Off by default; see the module docstring for when to use it and what it costs.

    Args:
        obs: The observability container (injected; never a global).
    """

    #: LangChain awaits inline handlers one at a time, in event order, instead of
    #: gathering them with the other handlers.
    run_inline = True

    def __init__(self, obs: Observability) -> None:
        super().__init__()
        self._tracing = obs.tracing
        self._metrics = obs.metrics
        self._failures = obs.failures
        #: run id -> open run; written and read by any thread, one key per run.
        self._runs: dict[UUID, _Run] = {}
        #: workflow run id -> its spans' identity and finished nodes.
        self._workflows: dict[UUID, _Workflow] = {}
        self._callback_errors = 0
        self._last_warning = -_WARN_INTERVAL

    @property
    def open_runs(self) -> int:
        """Runs started and not yet ended (0 when every run has finished)."""
        return len(self._runs) + len(self._workflows)

    @property
    def callback_errors(self) -> int:
        """Callbacks that failed to record (caught, counted and logged, never raised)."""
        return self._callback_errors

    # --- LangChain callbacks ------------------------------------------------

    async def on_chain_start(
        self,
        serialized: dict[str, Any],
        inputs: dict[str, Any],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Open a workflow run (top level, no ``langgraph_node``) or one of its nodes."""
        metadata = metadata or {}
        node = metadata.get(_NODE_KEY)
        try:
            if parent_run_id is None and node is None:
                name = kwargs.get("name")
                self._start_workflow(
                    run_id, name if isinstance(name, str) and name else "workflow",
                    metadata, inputs,
                )
            elif parent_run_id in self._workflows and isinstance(node, str) and node:
                self._runs[run_id] = _Run(
                    node, time.perf_counter_ns(), time.time_ns(), parent_run_id
                )
        except Exception:  # never hurt the graph run
            self._failed("on_chain_start")

    async def on_chain_end(
        self,
        outputs: dict[str, Any],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Close a node (latency, span) or a workflow (its span and its nodes' spans)."""
        self._finish(run_id, None)

    async def on_chain_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Close a failed node or workflow; classify the failure once (not interrupts)."""
        self._finish(run_id, error)

    # --- runs ---------------------------------------------------------------

    def _start_workflow(
        self, run_id: UUID, name: str, metadata: Mapping[str, Any], inputs: Any
    ) -> None:
        ids: list[tuple[str, str]] = []
        for key in _ID_KEYS:
            value = metadata.get(key)
            if value is None and isinstance(inputs, Mapping):
                value = inputs.get(key)
            if isinstance(value, str) and value:
                ids.append((key, value))
        parent: SpanContext | None = None
        traceparent = metadata.get("traceparent")
        if isinstance(traceparent, str):
            parent = self._tracing.extract({"traceparent": traceparent})
        self._workflows[run_id] = _Workflow(tuple(ids), parent)
        self._runs[run_id] = _Run(name, time.perf_counter_ns(), time.time_ns(), None)

    def _finish(self, run_id: UUID, error: BaseException | None) -> None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        end_perf_ns = time.perf_counter_ns()
        workflow = self._workflows.pop(run_id, None)
        try:
            if workflow is not None:
                self._end_workflow(run, workflow, end_perf_ns, error)
            else:
                self._end_node(run, end_perf_ns, error)
        except Exception:  # never hurt the graph run
            self._failed(run.name)

    def _failed(self, where: str) -> None:
        """Count a failed callback; warn at most once a minute (call from an ``except``)."""
        self._callback_errors += 1
        now = time.monotonic()
        if now - self._last_warning >= _WARN_INTERVAL:
            self._last_warning = now
            _logger.warning(
                "observability_callback_failed", where=where,
                failed_total=self._callback_errors, exc_info=True,
            )

    def _end_node(self, run: _Run, end_perf_ns: int, error: BaseException | None) -> None:
        duration_ns = end_perf_ns - run.start_perf_ns
        workflow = (
            self._workflows.get(run.parent_run_id) if run.parent_run_id is not None else None
        )
        ids = workflow.ids if workflow is not None else ()
        attributes: dict[str, AttributeValue] = dict(ids)
        status = "ok"
        if error is not None:
            if isinstance(error, GraphBubbleUp):  # an interrupt, not a failure
                attributes["interrupted"] = True
            else:
                status = "error"
                attributes["error_type"] = exception_type_name(error)
                if isinstance(error, Exception):
                    category = self._failures.classify(
                        error, tenant_id=_id(ids, "tenant_id"), node=run.name,
                        correlation_id=_id(ids, "correlation_id"),
                        request_id=_id(ids, "request_id"),
                    )
                    attributes["failure_category"] = category.value
                    if workflow is not None:
                        workflow.classified.append(error)
                        workflow.category = category.value
        if workflow is not None:  # recorded when the workflow span is
            workflow.nodes.append(_NodeSpan(
                run.name, run.start_ns, run.start_ns + duration_ns, status,
                tuple(attributes.items()),
            ))
        tenant = _id(ids, "tenant_id")
        self._metrics.observe_latency(
            "node_execution_latency", duration_ns / 1e9, node=run.name, status=status,
            tenant_id=NO_TENANT if tenant is None else tenant,
        )

    def _end_workflow(
        self, run: _Run, workflow: _Workflow, end_perf_ns: int, error: BaseException | None
    ) -> None:
        attributes: dict[str, AttributeValue] = dict(workflow.ids)
        status = "ok"
        if error is not None:
            if isinstance(error, GraphBubbleUp):
                attributes["interrupted"] = True
            else:
                status = "error"
                attributes["error_type"] = exception_type_name(error)
                if isinstance(error, Exception) and not any(
                    error is seen for seen in workflow.classified
                ):
                    ids = workflow.ids
                    workflow.category = self._failures.classify(
                        error, tenant_id=_id(ids, "tenant_id"),
                        correlation_id=_id(ids, "correlation_id"),
                        request_id=_id(ids, "request_id"),
                    ).value
                if workflow.category is not None:
                    attributes["failure_category"] = workflow.category
        # The run already happened: its spans are started and ended with the
        # times the callbacks saw, the root first so the nodes are its children.
        tracing = self._tracing
        root = tracing.start_span_sync(
            run.name, kind="workflow", parent=workflow.parent, root=workflow.parent is None,
            start_ns=run.start_ns, attributes=attributes,
        )
        for node in workflow.nodes:
            span = tracing.start_span_sync(
                node.name, kind="node", parent=root, start_ns=node.start_ns,
                attributes=dict(node.attributes),
            )
            tracing.end_span_sync(span, status=node.status, end_ns=node.end_ns)
        tracing.end_span_sync(
            root, status=status, end_ns=run.start_ns + (end_perf_ns - run.start_perf_ns)
        )


def _id(ids: tuple[tuple[str, str], ...], key: str) -> str | None:
    for name, value in ids:
        if name == key:
            return value
    return None
