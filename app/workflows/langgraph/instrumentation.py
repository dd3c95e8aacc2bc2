"""Instrumentation of the risk workflow, applied when the graph is built.

Node code stays untouched: :meth:`WorkflowInstrumentation.wrap_node` is the
``node_wrapper`` hook of :func:`~app.workflows.langgraph.graph.build_risk_graph`.
It keeps sync nodes sync and async nodes async and preserves ``__wrapped__``
(LangGraph inspects node signatures). Per node it:

* starts a ``node`` span, child of the workflow span, in the node's own task
  (or executor thread: LangGraph copies the context into both);
* measures the latency and records ``node_execution_latency{node,tenant_id,status}``;
* when the node made a (simulated) LLM call -- its update carries ``llm_call``
  -- logs a generation through :class:`~app.observability.LangfuseClient`
  (cost, model and prompt usage, tokens, a ``generation`` span under the node);
* on failure classifies the exception (``failure_count{category}``, a
  ``failure.classified`` audit event), marks the span as an error with the
  exception's class, and re-raises the original exception unchanged.
  LangGraph's interrupts (``GraphBubbleUp``) are not failures.

:meth:`WorkflowInstrumentation.begin_run` and
:meth:`~WorkflowInstrumentation.end_run` wrap one request
(:meth:`WorkflowInstrumentation.run` wraps a callable with both): a ``workflow``
root span (tenant and correlation id also travel in ``config["metadata"]``), the
request's latency, ``request_count``, ``workflow_execution_count``,
``approval_required_count``, and a ``HIGH_RISK`` failure count for
high-risk cases routed to approval.

The root span is a *batched* span: every node span, latency, generation
and request metric of the run goes into the run's outbox, and the run reaches
the collectors as one batch each for trace, metrics and cost when it ends.
The metric children (the family's bound label sets) are resolved through the
metrics facade's public ``labels()``; nothing here validates twice.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from langgraph.errors import GraphBubbleUp

from app.observability import FailureCategory, Observability
from app.observability.catalog import NO_TENANT
from app.observability.tracing import Span, SpanContext
from app.workflows.langgraph.config import WorkflowConfig
from app.workflows.langgraph.graph import GRAPH_NAME, RiskGraph, build_risk_graph
from app.workflows.langgraph.llm import SimulatedLLM
from app.workflows.langgraph.runner import resume_risk_workflow, run_risk_workflow
from app.workflows.langgraph.state import LLMCall, RiskRequest, RiskState

__all__ = ("InstrumentedRiskWorkflow", "WorkflowInstrumentation", "build_instrumented_workflow")

#: Paused runs whose trace a resume continues (the oldest forgotten past this).
_PAUSED_TRACES = 10_000

#: Attribute set on an exception once it has been classified and counted, so
#: the workflow level does not count a node's failure a second time.
_CLASSIFIED = "__risk_engine_failure_category__"


class WorkflowInstrumentation:
    """Wraps nodes and runs with spans, metrics, generations and failure capture.

    Args:
        obs: The observability container (injected; never a global).
        workflow_name: The ``workflow`` label and root span name.
    """

    def __init__(self, obs: Observability, *, workflow_name: str = GRAPH_NAME) -> None:
        self._obs = obs
        self._tracing = obs.tracing
        self._failures = obs.failures
        self._langfuse = obs.langfuse
        metrics = obs.metrics
        self._node_latency = metrics.histogram("node_execution_latency")
        self._request_latency = metrics.histogram("request_latency")
        self._requests = metrics.counter("request_count")
        self._executions = metrics.counter("workflow_execution_count")
        self._approvals = metrics.counter("approval_required_count")
        self._workflow = workflow_name
        #: (tenant, request id) -> the root span of a run paused for approval, so
        #: that its resume continues the same trace (bounded, oldest out first).
        self._paused: dict[tuple[str, str], SpanContext] = {}
        self._paused_lock = threading.Lock()

    # --- nodes ----------------------------------------------------------------

    def wrap_node(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """The ``node_wrapper`` hook: instrument node ``name``.

        Returns:
            A coroutine function for a coroutine function, a plain function
            for a plain one, with ``__wrapped__`` set to ``fn``.
        """
        start = self._tracing.start_span_sync
        done = self._node_done
        failed = self._node_failed

        if inspect.iscoroutinefunction(fn):
            async_fn: Callable[..., Awaitable[Any]] = fn

            @functools.wraps(fn)
            async def async_node(*args: Any, **kwargs: Any) -> Any:
                span = start(name, kind="node")
                try:
                    result = await async_fn(*args, **kwargs)
                except BaseException as exc:
                    failed(span, name, exc)
                    raise
                done(span, name, result)
                return result

            return async_node

        @functools.wraps(fn)
        def sync_node(*args: Any, **kwargs: Any) -> Any:
            span = start(name, kind="node")
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                failed(span, name, exc)
                raise
            done(span, name, result)
            return result

        return sync_node

    def _node_done(self, span: Span, name: str, result: Any) -> None:
        """A node returned: log its LLM call, if any, then end its span."""
        try:
            if type(result) is dict:
                call = result.get("llm_call")
                if type(call) is LLMCall:
                    self._log_generation(span, call, None)
        except BaseException as exc:  # the node's span and latency end either way
            self._node_failed(span, name, exc)
            raise
        self._end_node(span, name, "ok", None)

    def _log_generation(self, span: Span, call: LLMCall, error: BaseException | None) -> None:
        self._langfuse.log_generation_sync(
            tenant_id=span.tenant_id or NO_TENANT,
            model_version=call.model_version,
            prompt_version=call.prompt_version,
            input_tokens=call.input_tokens,
            output_tokens=call.output_tokens,
            latency=call.latency_seconds,
            provider=call.provider,
            error=error,
        )

    def _node_failed(self, span: Span, name: str, exc: BaseException) -> None:
        if isinstance(exc, GraphBubbleUp):  # an interrupt, not a failure
            span.set_attribute("interrupted", True)
            self._end_node(span, name, "ok", None)
            return
        call = getattr(exc, "llm_call", None)
        if type(call) is LLMCall:  # the node's model call failed: still a generation
            self._log_generation(span, call, exc)
        if isinstance(exc, Exception):
            category = self._failures.classify(
                exc, tenant_id=span.tenant_id, node=name,
                correlation_id=span.correlation_id, request_id=span.request_id,
            )
            _mark_classified(exc, category)
            span.set_attribute("failure_category", category.value)
        self._end_node(span, name, "error", exc)

    def _end_node(self, span: Span, name: str, status: str, exc: BaseException | None) -> None:
        """End a node's span; its duration is recorded as ``node_execution_latency``."""
        end_ns = span.now_ns()
        latency = self._node_latency.labels(  # declared order: node, tenant_id, status
            name, span.tenant_id or NO_TENANT, status,
        ).record((end_ns - span.start_ns) / 1e9)
        self._tracing.end_span_sync(span, status=status, error=exc, end_ns=end_ns,
                                    metrics=(latency,))

    # --- runs -----------------------------------------------------------------

    async def run(
        self,
        request: RiskRequest,
        invoke: Callable[[], Awaitable[RiskState]],
        *,
        parent_headers: Mapping[str, str] | None = None,
        resumed: bool = False,
    ) -> RiskState:
        """Run ``invoke()`` for ``request`` inside an instrumented workflow span.

        :meth:`begin_run`, the run, then :meth:`end_run`: what
        :class:`InstrumentedRiskWorkflow` does for every request.

        Args:
            request: The request (tenant, correlation and request ids).
            invoke: Runs the graph and returns the final state.
            parent_headers: See :meth:`begin_run`.
            resumed: See :meth:`begin_run`.

        Returns:
            The final state.

        Raises:
            Exception: Whatever the workflow raised, unchanged, after it was
                classified and counted.
        """
        root = self.begin_run(request, parent_headers=parent_headers, resumed=resumed)
        try:
            state = await invoke()
        except BaseException as exc:
            self.end_run(root, request, None, exc, resumed)
            raise
        self.end_run(root, request, state, None, resumed)
        return state

    def begin_run(
        self,
        request: RiskRequest,
        *,
        parent_headers: Mapping[str, str] | None = None,
        resumed: bool = False,
    ) -> Span:
        """Start the run's ``workflow`` root span (batched) and make it current.

        Args:
            request: The request (tenant, correlation and request ids).
            parent_headers: Incoming headers with a W3C ``traceparent`` to
                continue a caller's trace.
            resumed: The run resumes a paused request: the request and a
                HIGH_RISK routing were already counted when it paused (the
                approval is counted once, when the escalation node completes).
                Without ``parent_headers``, its root span is a child of the
                paused run's root when this process saw the pause, so the
                request stays one trace.

        Returns:
            The root span; end it with :meth:`end_run` in the same context.
        """
        parent = self._tracing.extract(parent_headers) if parent_headers else None
        if resumed:
            with self._paused_lock:
                paused = self._paused.pop((request.tenant_id, request.request_id), None)
            if parent is None:
                parent = paused
        root = self._tracing.start_span_sync(
            self._workflow, kind="workflow", parent=parent, root=parent is None,
            tenant_id=request.tenant_id, correlation_id=request.correlation_id,
            request_id=request.request_id, batch=True,
            attributes={"resumed": True} if resumed else None,
        )
        return root

    def end_run(
        self, root: Span, request: RiskRequest, state: RiskState | None,
        error: BaseException | None, resumed: bool = False,
    ) -> None:
        """End a run started by :meth:`begin_run`: its metrics, then its root span.

        Args:
            root: The run's root span.
            request: The request.
            state: The final state (``None`` when the run raised).
            error: What the run raised, if anything (classified and counted
                here unless a node already did).
            resumed: As given to :meth:`begin_run`.
        """
        tenant = request.tenant_id
        status = "ok"
        if error is not None:
            if isinstance(error, GraphBubbleUp):
                status = "interrupted"
                self._remember_paused(tenant, request.request_id, root.context)
            else:
                status = "error"
                if isinstance(error, Exception) and not hasattr(error, _CLASSIFIED):
                    category = self._failures.classify(
                        error, tenant_id=tenant, correlation_id=request.correlation_id,
                        request_id=request.request_id,
                    )
                    _mark_classified(error, category)
                category_value = getattr(error, _CLASSIFIED, None)
                if isinstance(category_value, str):
                    root.set_attribute("failure_category", category_value)
        elif state is not None:
            if state.status == "awaiting_approval":
                status = "interrupted"
                self._remember_paused(tenant, request.request_id, root.context)
            if state.decision is not None:
                root.set_attribute("decision", state.decision)
            root.set_attribute("approval_required", state.approval_required)
            if state.high_risk and not resumed:
                self._failures.record(
                    FailureCategory.HIGH_RISK, tenant_id=tenant,
                    correlation_id=request.correlation_id, request_id=request.request_id,
                    reason="high-risk case routed to approval",
                )
        end_ns = root.now_ns()  # the run's latency and its root span end at the same instant
        latency = (end_ns - root.start_ns) / 1e9
        records = [  # label values in each family's declared order (see the catalog)
            self._executions.labels(self._workflow, tenant, status).record(1),
            self._request_latency.labels(tenant, self._workflow, status).record(latency),
        ]
        if not resumed:
            records.append(self._requests.labels(tenant).record(1))
        if state is not None and state.approval_required:
            records.append(self._approvals.labels(tenant).record(1))
        self._tracing.end_span_sync(
            root, status="ok" if status == "interrupted" else None,
            error=error if status == "error" else None, end_ns=end_ns, metrics=records,
        )

    def _remember_paused(self, tenant: str, request_id: str, context: SpanContext) -> None:
        """Keep a paused run's root context for its resume (bounded, oldest out first)."""
        with self._paused_lock:
            paused = self._paused
            paused.pop((tenant, request_id), None)  # re-inserted last: the newest
            if len(paused) >= _PAUSED_TRACES:
                del paused[next(iter(paused))]
            paused[(tenant, request_id)] = context


def _mark_classified(exc: BaseException, category: FailureCategory) -> None:
    # Exceptions with __slots__ refuse the attribute: they may then count twice.
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, _CLASSIFIED, category.value)


class InstrumentedRiskWorkflow:
    """The risk workflow with observability: build once, run many requests.

    Args:
        obs: The observability container.
        config: Workflow configuration.
        llm: A custom scoring model (default: simulated from ``config``).
        instrument: ``False`` builds the bare graph (for overhead benchmarks).
    """

    def __init__(
        self,
        obs: Observability,
        *,
        config: WorkflowConfig | None = None,
        llm: SimulatedLLM | None = None,
        instrument: bool = True,
    ) -> None:
        self.obs = obs
        self.config = config if config is not None else WorkflowConfig()
        self.instrumentation = WorkflowInstrumentation(obs) if instrument else None
        self.graph: RiskGraph = build_risk_graph(
            config=self.config,
            llm=llm,
            evaluator=obs.evaluation,
            node_wrapper=self.instrumentation.wrap_node if self.instrumentation else None,
            remaining_budget=obs.costs.remaining_budget,
        )

    async def run(
        self, request: RiskRequest, *, parent_headers: Mapping[str, str] | None = None
    ) -> RiskState:
        """Run one request; failures propagate unchanged (after being counted)."""
        invoke = functools.partial(run_risk_workflow, self.graph, request, config=self.config)
        if self.instrumentation is None:
            return await invoke()
        return await self.instrumentation.run(request, invoke, parent_headers=parent_headers)

    async def resume(
        self, request: RiskRequest, answer: Any, *,
        parent_headers: Mapping[str, str] | None = None,
    ) -> RiskState:
        """Resume a run paused for approval (interrupt mode) with the human's answer.

        The resumed run continues the paused run's trace (its root span is a
        child of the paused root) when this process ran the pause; pass the
        ``traceparent`` in ``parent_headers`` to link it otherwise (for
        example after a restart with a durable checkpointer).
        """
        invoke = functools.partial(
            resume_risk_workflow, self.graph, request, answer, config=self.config
        )
        if self.instrumentation is None:
            return await invoke()
        return await self.instrumentation.run(
            request, invoke, parent_headers=parent_headers, resumed=True
        )


def build_instrumented_workflow(
    obs: Observability, config: WorkflowConfig | None = None, **kwargs: Any
) -> InstrumentedRiskWorkflow:
    """Factory: the instrumented risk workflow, wired to ``obs`` by injection."""
    return InstrumentedRiskWorkflow(obs, config=config, **kwargs)
