"""Every facade method against arbitrary input (hypothesis).

Each argument is drawn either from its valid values or from an arbitrary
strategy (``None``, numbers including NaN and infinities, text, bytes,
decimals, containers, ``st.from_type`` values). A call must then either

* raise ``ValueError``/``TypeError`` whose message names one of the
  arguments that were drawn arbitrarily (a valid argument is never blamed,
  and a call with only valid arguments never fails), or
* succeed and record exactly what it returned.

Afterwards the collectors must be alive, without handler errors or dropped
records (nothing invalid reached a store), and the totals must equal what
the successful calls recorded. Only ``ValueError``/``TypeError`` are caught:
any other exception fails the test.

One container serves all examples of a test (hypothesis runs the inner
function many times; the container is created outside ``@given``).
Docstrings marked "Regression" describe defects found and fixed.
"""

from __future__ import annotations

import contextvars
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import HighRiskError, InputValidationError
from app.observability import Observability, PipelineState
from app.observability.catalog import NO_NODE, NO_TENANT, build_catalog

MakeObs = Callable[..., Observability]

_CATALOG = build_catalog()
_SETTINGS = settings(max_examples=120, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])

ARBITRARY: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=6),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.from_type(complex),
    st.from_type(frozenset),
    st.builds(object),
)
#: Arbitrary values that can be hashed (see test_tracing's reported ``kind`` defect).
HASHABLE: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.binary(max_size=6), st.from_type(complex),
)
COUNTERS = ("request_count", "workflow_execution_count", "failure_count",
            "approval_required_count", "model_usage_count", "prompt_usage_count", "token_usage")
HISTOGRAMS = ("node_execution_latency", "request_latency", "quality_score")
MODELS = ("risk-llm-v2", "risk-llm-v1", "risk-llm-mini-v1")
#: Valid ids and label values: non-empty, no control characters, no lone surrogates.
_ID_CHARS = st.characters(blacklist_categories=("Cc", "Cs"))
IDS = st.text(_ID_CHARS, min_size=1, max_size=20)
#: Valid span attribute and metadata keys (the id rule).
KEYS = st.text(_ID_CHARS, min_size=1, max_size=8)


class _Draw:
    """Draws arguments, remembering which ones came from the arbitrary strategy."""

    def __init__(self, data: st.DataObject) -> None:
        self._data = data
        self.suspects: list[str] = []

    def __call__(
        self, name: str, valid: st.SearchStrategy[Any],
        arbitrary: st.SearchStrategy[Any] = ARBITRARY, *, aliases: tuple[str, ...] = (),
    ) -> Any:
        wild, value = self._data.draw(
            st.one_of(valid.map(lambda v: (False, v)), arbitrary.map(lambda v: (True, v))),
            label=name,
        )
        if wild:
            self.suspects.extend(aliases or (name,))
        return value

    def call(self, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """Run ``fn``; ``(True, result)`` or ``(False, None)`` after a checked refusal."""
        try:
            return True, fn()
        except (ValueError, TypeError) as exc:
            message = str(exc)
            assert self.suspects, f"valid arguments refused: {exc!r}"
            assert any(alias in message for alias in self.suspects), (
                f"{type(exc).__name__}({message!r}) names none of {self.suspects}")
            return False, None


def _assert_sound(obs: Observability) -> None:
    """The pipeline is alive and every record that reached it was applied."""
    assert obs.flush()
    health = obs.health()
    assert health.healthy
    for name, stats in health.collectors.items():
        assert stats.handler_errors == 0, (name, stats.last_error)
        assert dict(stats.dropped) == {}, name


def _series(obs: Observability, metric: str) -> dict[tuple[tuple[str, str], ...], Any]:
    return {tuple(sorted(s["labels"].items())): s
            for s in obs.metrics.export_metrics()[metric]["series"]}


# --- metrics ------------------------------------------------------------------


def _labels(draw: _Draw, data: st.DataObject, metric: Any) -> dict[str, Any]:
    """The metric's declared labels, each drawn; maybe one left out, maybe one added.

    Every series must carry exactly its declared labels: a missing one
    ("needs label") and an undeclared one ("has no label") are refused,
    naming the label.
    """
    known = isinstance(metric, str) and metric in _CATALOG
    declared = _CATALOG[metric].label_names if known else ("tenant_id",)
    labels = {name: draw(name, IDS) for name in declared}
    missing = data.draw(st.sampled_from((None, *declared)))
    if missing is not None and data.draw(st.integers(0, 3)) == 0:
        del labels[missing]
        draw.suspects.append(missing)
    extra = data.draw(st.sampled_from((None, "colour", "node", "status", "workflow")))
    if extra is not None:
        labels[extra] = draw(extra, st.nothing() if extra not in declared else IDS,
                             st.one_of(IDS, ARBITRARY), aliases=(extra,))
    return labels



def test_increment_arbitrary_input(make_obs: MakeObs) -> None:
    obs = make_obs()
    expected: dict[tuple[str, tuple[tuple[str, str], ...]], int | float] = defaultdict(int)

    @_SETTINGS
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        draw = _Draw(data)
        metric = draw("metric", st.sampled_from(COUNTERS))
        amount = draw("amount", st.one_of(st.integers(0, 10**6),
                                          st.floats(0, 1e6, allow_nan=False)))
        labels = _labels(draw, data, metric)
        ok, _ = draw.call(lambda: obs.metrics.increment(metric, amount, **labels))
        if ok:
            expected[metric, tuple(sorted(labels.items()))] += amount

    run()
    _assert_sound(obs)
    found = {(metric, labels): series["value"]
             for metric in COUNTERS for labels, series in _series(obs, metric).items()}
    assert found == dict(expected)


def test_observe_latency_arbitrary_input(make_obs: MakeObs) -> None:
    obs = make_obs()
    expected: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = defaultdict(list)

    @_SETTINGS
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        draw = _Draw(data)
        metric = draw("metric", st.sampled_from(HISTOGRAMS))
        seconds = draw("seconds", st.one_of(st.integers(0, 1000),
                                            st.floats(0, 1e4, allow_nan=False)),
                       aliases=("latency", "value"))  # quality_score observes a "value"
        labels = _labels(draw, data, metric)
        observe = data.draw(st.sampled_from((obs.metrics.observe_latency,
                                             obs.metrics.observe)))
        ok, _ = draw.call(lambda: observe(metric, seconds, **labels))
        if ok:
            expected[metric, tuple(sorted(labels.items()))].append(seconds)

    run()
    _assert_sound(obs)
    found = {(metric, labels): (series["count"], series["sum"])
             for metric in HISTOGRAMS for labels, series in _series(obs, metric).items()}
    want = {key: (len(values), sum(values, 0.0)) for key, values in expected.items()}
    assert found == want


# --- costs -----------------------------------------------------------------------


def test_add_cost_arbitrary_input(make_obs: MakeObs) -> None:
    obs = make_obs()
    by_tenant: dict[str, Decimal] = defaultdict(Decimal)
    by_request: dict[str, Decimal] = defaultdict(Decimal)
    returned: list[Decimal] = []

    @_SETTINGS
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        draw = _Draw(data)
        tenant = draw("tenant_id", IDS)
        model = draw("model_version", st.sampled_from(MODELS))
        input_tokens = draw("input_tokens", st.integers(0, 10**6))
        output_tokens = draw("output_tokens", st.integers(0, 10**6))
        request = draw("request_id", st.one_of(st.none(), IDS))
        cost = draw("cost", st.one_of(st.none(), st.decimals(0, 1000, places=6)))
        ok, result = draw.call(lambda: obs.costs.add_cost(
            tenant_id=tenant, model_version=model, input_tokens=input_tokens,
            output_tokens=output_tokens, request_id=request, cost=cost,
        ))
        if ok:
            assert isinstance(result, Decimal) and result.is_finite() and result >= 0
            returned.append(result)
            by_tenant[tenant] += result
            if request is not None:
                by_request[request] += result
        ok, read = draw.call(lambda: obs.costs.get_tenant_cost(tenant))
        if ok:
            assert read == by_tenant.get(tenant, 0)  # reads see the caller's own records

    run()
    _assert_sound(obs)
    snapshot = obs.costs.snapshot()
    assert snapshot.total == sum(returned, Decimal(0))
    assert dict(snapshot.by_tenant) == dict(by_tenant)
    for request, cost in by_request.items():
        assert obs.costs.get_request_cost(request) == cost
    assert sum(u.generations for u in snapshot.usage.values()) == len(returned)


# --- tracing ----------------------------------------------------------------------

_ATTRIBUTE_VALUES = st.one_of(st.text(max_size=8), st.booleans(), st.integers(),
                              st.floats(allow_nan=False, allow_infinity=False))


def test_spans_arbitrary_input(make_obs: MakeObs) -> None:
    obs = make_obs()
    tenants: Counter[str | None] = Counter()

    @_SETTINGS
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        # A fresh context per example: a failing example cannot leave its span current.
        contextvars.Context().run(example, data)

    def example(data: st.DataObject) -> None:
        draw = _Draw(data)
        name = draw("name", IDS)
        kind = draw("kind", st.sampled_from(("workflow", "node", "generation", "internal")),
                    HASHABLE)
        tenant = draw("tenant_id", st.one_of(st.none(), IDS))
        correlation = draw("correlation_id", st.one_of(st.none(), IDS))
        request = draw("request_id", st.one_of(st.none(), IDS))
        attributes = draw(
            "attributes",
            st.dictionaries(KEYS, _ATTRIBUTE_VALUES, max_size=3),
            st.dictionaries(st.text(max_size=8), ARBITRARY, min_size=1, max_size=3),
            aliases=("attribute",),
        )
        ok, span = draw.call(lambda: obs.tracing.start_span_sync(
            name, kind=kind, tenant_id=tenant, correlation_id=correlation,
            request_id=request, attributes=attributes,
        ))
        assert obs.tracing.current_span() is span  # a refused start leaves nothing current
        if ok:
            status = data.draw(st.sampled_from((None, "ok", "error", "unset")))
            error = data.draw(st.sampled_from((None, ValueError("x"), TimeoutError())))
            record = obs.tracing.end_span_sync(span, status=status, error=error)
            assert record.attrs.get("tenant_id") == tenant
            tenants[tenant] += 1

    run()
    _assert_sound(obs)
    spans = obs.tracing.finished_spans()
    assert Counter(span.attrs.get("tenant_id") for span in spans) == tenants


# --- generations --------------------------------------------------------------------


def test_log_generation_arbitrary_input(make_obs: MakeObs) -> None:
    obs = make_obs()
    returned: list[Decimal] = []

    @_SETTINGS
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        draw = _Draw(data)
        arguments = {
            "tenant_id": draw("tenant_id", IDS),
            "model_version": draw("model_version", st.sampled_from(MODELS)),
            "prompt_version": draw("prompt_version", IDS),
            "input_tokens": draw("input_tokens", st.integers(0, 10**6)),
            "output_tokens": draw("output_tokens", st.integers(0, 10**6)),
            "latency": draw("latency", st.floats(0, 60, allow_nan=False)),
            "estimated_cost": draw("estimated_cost", st.none(), aliases=("cost",)),
            "event_id": draw("event_id", st.one_of(st.none(), IDS)),
            "request_id": draw("request_id", st.one_of(st.none(), IDS)),
            "operation": draw("operation", IDS),
            "provider": draw("provider", IDS),
            "metadata": draw("metadata", st.one_of(st.none(), st.dictionaries(
                KEYS, _ATTRIBUTE_VALUES, max_size=3)), aliases=("metadata", "attribute")),
        }
        ok, generation = draw.call(lambda: obs.langfuse.log_generation_sync(**arguments))
        if ok:
            returned.append(generation.cost)

    run()
    _assert_sound(obs)
    assert obs.costs.get_total_cost() == sum(returned, Decimal(0))
    spans = obs.tracing.finished_spans()
    assert len(spans) == len(returned)
    assert all(span.kind == "generation" for span in spans)
    usage = sum(s["value"] for s in _series(obs, "model_usage_count").values())
    assert usage == len(returned)


# --- evaluation ---------------------------------------------------------------------

_RESULTS = st.lists(st.fixed_dictionaries({"passed": st.booleans()},
                                          optional={"score": st.floats(0, 1)}), max_size=4)


def test_evaluate_decision_arbitrary_input(make_obs: MakeObs) -> None:
    obs = make_obs()
    successes = Counter[str]()

    @_SETTINGS
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        draw = _Draw(data)
        if data.draw(st.integers(0, 9)) == 0:  # not a mapping at all: scored as an object
            state: Any = data.draw(ARBITRARY)
        else:
            state = {
                "tenant_id": draw("tenant_id", IDS),
                "risk_score": draw("risk_score", st.floats(0, 1)),
                "confidence": draw("confidence", st.one_of(st.none(), st.floats(0, 1))),
                "decision": draw("decision", st.sampled_from(("approve", "reject", "review"))),
                "policy_results": draw("policy_results", _RESULTS),
                "guardrail_results": draw("guardrail_results", _RESULTS),
            }
        ok, result = draw.call(lambda: obs.evaluation.evaluate_decision_sync(state))
        if ok:
            for value in result.model_dump().values():
                assert 0.0 <= value <= 1.0
            tenant = state.get("tenant_id") if isinstance(state, dict) else None
            labelled = isinstance(tenant, str) and tenant
            successes["labelled" if labelled else "bare"] += 1

    run()
    _assert_sound(obs)
    series = _series(obs, "quality_score")
    # A decision of no known tenant is scored under tenant_id="unknown".
    bare = series.get((("tenant_id", NO_TENANT),), {"count": 0})["count"]
    labelled = sum(s["count"] for labels, s in series.items()
                   if labels != (("tenant_id", NO_TENANT),))
    assert (labelled, bare) == (successes["labelled"], successes["bare"])
    assert len(obs.audit.events(event="evaluation.completed")) == successes.total()


# --- failures -------------------------------------------------------------------------

_EXCEPTIONS = st.sampled_from((HighRiskError("h"), InputValidationError("v"), TimeoutError(),
                               KeyError("k"), RuntimeError("r")))


def test_classify_arbitrary_input(make_obs: MakeObs) -> None:
    obs = make_obs()
    expected: Counter[tuple[tuple[str, str], ...]] = Counter()

    @_SETTINGS
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        draw = _Draw(data)
        exc = draw("exc", _EXCEPTIONS, aliases=("exception",))
        tenant = draw("tenant_id", st.one_of(st.none(), IDS))
        node = draw("node", st.one_of(st.none(), IDS))
        ok, category = draw.call(lambda: obs.failures.classify(exc, tenant_id=tenant,
                                                               node=node))
        if ok:  # every series has every label: no tenant is "unknown", no node "none"
            labels = {"category": category.value,
                      "tenant_id": NO_TENANT if tenant is None else tenant,
                      "node": NO_NODE if node is None else node}
            expected[tuple(sorted(labels.items()))] += 1

    run()
    _assert_sound(obs)
    found = {labels: s["value"] for labels, s in _series(obs, "failure_count").items()}
    assert found == dict(expected)
    assert len(obs.audit.events(event="failure.classified")) == expected.total()


# --- audit ---------------------------------------------------------------------------


def test_audit_log_arbitrary_input(make_obs: MakeObs) -> None:
    obs = make_obs()
    expected: Counter[str] = Counter()

    @_SETTINGS
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        draw = _Draw(data)
        event = draw("event", IDS)
        fields = data.draw(st.dictionaries(st.one_of(st.text(max_size=8),
                                                     st.sampled_from(("audit", "timestamp"))),
                                           ARBITRARY, max_size=4))
        draw.suspects.extend(fields)  # any field name may be the one refused
        ok, _ = draw.call(lambda: obs.audit.log(event, **fields))
        if ok:
            expected[event] += 1

    run()
    _assert_sound(obs)
    assert Counter(e.event for e in obs.audit.events()) == expected


# --- the container's own methods -------------------------------------------------------

_TIMEOUTS = (math.nan, math.inf, -1.0, 0.0, "5", None, 10**400, [1.0])
_TIMEOUT_IDS = ("nan", "inf", "negative", "zero", "str", "None", "huge-int", "list")


@pytest.mark.parametrize("timeout", _TIMEOUTS, ids=_TIMEOUT_IDS)
def test_flush_timeout_is_validated(obs: Observability, timeout: Any) -> None:
    """Regression: ``collectors/pipeline.py`` ``flush`` feeds ``timeout`` to ``max()``
    and ``wait()`` unchecked: ``inf`` raises ``OverflowError`` (timestamp out of
    range), a str or list a ``TypeError`` that does not name ``timeout``."""
    obs.metrics.increment("request_count", tenant_id="t1")
    try:
        result = obs.flush(timeout=timeout)
    except (ValueError, TypeError) as exc:
        assert "timeout" in str(exc)
    else:
        assert result.complete or result.timed_out
    _assert_sound(obs)


@pytest.mark.parametrize("timeout", _TIMEOUTS, ids=_TIMEOUT_IDS)
def test_close_with_a_bad_timeout_still_stops_every_collector(
    obs: Observability, timeout: Any
) -> None:
    """Regression: ``collectors/pipeline.py`` ``close`` marks the pipeline CLOSED,
    then ``Collector.stop`` calls ``thread.join(nan)`` (``ValueError``) or
    ``max(str, float)`` fails: the exception escapes, collector threads keep
    running and accepting records, and every later ``close()`` is a no-op."""
    try:
        result = obs.close(timeout=timeout)
    except (ValueError, TypeError) as exc:
        assert "timeout" in str(exc)
        assert obs.state is PipelineState.RUNNING  # refused before anything changed
        assert obs.health().healthy
        result = obs.close()
    assert obs.state is PipelineState.CLOSED
    if result.complete:
        assert all(not stats.alive for stats in obs.health().collectors.values())
    else:  # a zero or negative budget may end before the threads do: it says so
        assert result.timed_out
