"""A scripted workout of the hot path; prints what it observed as JSON.

Run in a subprocess by ``test_hotpath.py`` once with the compiled hot path and
once with ``RISK_ENGINE_PURE_PYTHON=1``: the two outputs must be equal. Ids
come from a seeded generator; times are reduced to their order.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import json
import math
import sys
from collections.abc import Callable
from typing import Any

from app.observability import Observability, ObservabilitySettings
from collectors.hotpath import COMPILED
from collectors.records import Batch


class Tier(enum.StrEnum):
    GOLD = "gold"


def outcome(fn: Callable[[], Any]) -> list[str] | str:
    try:
        fn()
    except Exception as exc:  # the error's type and message are what we compare
        return [type(exc).__name__, str(exc)]
    return "ok"


def main() -> None:
    out: dict[str, Any] = {"compiled": COMPILED}
    settings = ObservabilitySettings(id_seed=7)
    with Observability(settings) as obs:
        m, t = obs.metrics, obs.tracing
        out["metric_calls"] = [
            outcome(lambda: m.increment("request_count", tenant_id="t1")),
            outcome(lambda: m.increment("request_count", 2, tenant_id="t1")),
            outcome(lambda: m.increment("request_count", 0.5, tenant_id="t1")),
            outcome(lambda: m.increment("request_count", tenant_id=Tier.GOLD)),
            outcome(lambda: m.increment("request_count", -1, tenant_id="t1")),
            outcome(lambda: m.increment("request_count", math.nan, tenant_id="t1")),
            outcome(lambda: m.increment("request_count", math.inf, tenant_id="t1")),
            outcome(lambda: m.increment("request_count", True, tenant_id="t1")),
            outcome(lambda: m.increment("request_count", "1", tenant_id="t1")),
            outcome(lambda: m.increment("request_count", 2**1100, tenant_id="t1")),
            outcome(lambda: m.increment("request_count", tenant_id=["t1"])),
            outcome(lambda: m.increment("request_count", tenant_id="")),
            outcome(lambda: m.increment("request_count", tenant_id=3)),
            outcome(lambda: m.increment("request_count", colour="red")),
            outcome(lambda: m.increment("no_such_metric")),
            outcome(lambda: m.increment("node_execution_latency", node="n")),
            outcome(lambda: m.observe_latency("node_execution_latency", 0.25, node="n")),
            outcome(lambda: m.observe_latency("node_execution_latency", 2, node="n")),
            outcome(lambda: m.observe_latency("node_execution_latency", 0, node="n")),
            outcome(lambda: m.observe_latency("node_execution_latency", -0.1, node="n")),
            outcome(lambda: m.observe_latency("node_execution_latency", "1", node="n")),
            outcome(lambda: m.observe_latency("request_count", 1.0, tenant_id="t1")),
            outcome(lambda: m.observe("node_execution_latency", 1e300, node="n")),
        ]
        out["span_calls"] = [
            outcome(lambda: t.span("")),
            outcome(lambda: t.span(3)),  # type: ignore[arg-type]
            outcome(lambda: t.span("x", kind="bogus")),
            outcome(lambda: t.span("x", kind=3)),  # type: ignore[arg-type]
            outcome(lambda: t.span("x", colour="red")),  # type: ignore[call-arg]
            outcome(lambda: t.span("x", tenant_id="")),
        ]
        assert t.current_span() is None  # none of those started a span

        # Plain spans (the compiled path), nested, and one failing inside `with`.
        with t.span("root", kind="workflow"):
            with t.span("child", kind="node"):
                m.increment("request_count", tenant_id="t2")
            try:
                with t.span("failing", kind="node"):
                    raise KeyError("boom")
            except KeyError:
                pass
            child = t.start_child_span("direct", "node")
            t.finish(child, None, None, "node_execution_latency",
                     (("node", "direct"), ("status", "ok")))
            attributed = t.span("attributed")
            attributed.set_attribute("k", 1)
            attributed.add_event("evt", n=2)
            t.end_span_sync(attributed, status="unset")
            out["end_twice"] = outcome(lambda: t.end_span_sync(attributed))
        out["after_root"] = t.current_span() is None
        out["child_without_parent"] = t.start_child_span("orphan", "node").parent is None
        t.finish(t.current_span())  # type: ignore[arg-type]

        # Identity, a batched run (outbox), and a remote parent.
        with (
            t.span("run", kind="workflow", tenant_id="t3", correlation_id="c", batch=True),
            t.span("step", kind="node"),
            t.span("gen", kind="generation"),
        ):
            pass
        # A run as the workflow instrumentation starts and ends one: a new trace
        # with every id and an outbox, a child with an explicit parent and one id
        # of its own, attributes on the root; then a clash with an identity key.
        run = t.start_span_sync("run2", kind="workflow", root=True, tenant_id="t4",
                                correlation_id="c4", request_id="r4", batch=True)
        step = t.start_span_sync("step2", kind="node", parent=run, request_id="r5")
        t.finish(step, None, None, "node_execution_latency",
                 (("node", "step2"), ("status", "ok"), ("tenant_id", "t4")))
        run.attribute_map()["decision"] = "approve"
        run.attribute_map()["approval_required"] = False
        out["run_record"] = list(t.finish(
            run, "ok", None, "request_latency",
            (("status", "ok"), ("tenant_id", "t4"), ("workflow", "risk")))[10])
        clash = t.start_span_sync("clash", tenant_id="t5", batch=True)
        clash.attribute_map()["tenant_id"] = "t6"
        clash.set_attribute("n", 2)
        out["clash_record"] = list(t.finish(clash)[10])
        remote = t.extract({"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"})
        assert remote is not None
        token = t.attach(remote)
        with t.span("remote-child", kind="node"):
            pass
        t.detach(token)

        # A span ended in another context than the one it started in.
        async def ends_elsewhere() -> None:
            span = t.span("cross", kind="node")
            await asyncio.create_task(_end(t, span))
        asyncio.run(ends_elsewhere())
        ctx = contextvars.copy_context()
        out["ctx_clean"] = ctx.run(t.current_span) is None

        # Quantile sketches over the whole float range: zeros, subnormals, tiny and
        # huge values (the compiled sketch keeps far indices outside its bin array),
        # through the facade one by one and straight to the store in batches.
        wide = [0, 0.0, 5e-324, 1e-310, 1e-300, 1e-9, 1e-3, 0.25, 1, 7.5, 1e3, 10**15,
                1e250, 1e300, sys.float_info.max]
        for value in wide:
            m.observe("node_execution_latency", value, node="wide")
        actor = obs.pipeline.collectors["metrics"]
        labels = (("node", "batched"),)
        actor.send(("node_execution_latency", labels, 0.5))  # a new series: resolved first
        for i in range(40):
            values = [0.0005 * (1 + (i * 7 + j * 13) % 97) for j in range(16)]
            if i % 10 == 9:
                values[3] = 10.0 ** (i - 20)  # wider: the bin array grows
            if i == 29:
                values[5] = 1e-200  # far outside the array: the batch is declined
            actor.send(Batch(tuple(("node_execution_latency", labels, v) for v in values)), 16)
        out["quantiles"] = actor.query(_quantiles)

        out["flushed"] = bool(obs.flush(5.0))
        spans = t.finished_spans()
        names = {s.span_id: s.name for s in spans}
        out["spans"] = [
            [s.name, s.kind, names.get(s.parent_span_id, "-" if s.parent_span_id else None),
             s.status, s.error_type, s.error_message, sorted(s.attrs.items()),
             [e.name for e in s.events], s.remote_parent, s.end_ns >= s.start_ns, s.trace_id_hex]
            for s in spans
        ]
        exported = m.export_metrics()
        out["metrics"] = {
            name: [_timeless(series) for series in exported[name]["series"]]
            for name in ("request_count", "node_execution_latency", "request_latency")
        }
        out["dropped"] = obs.pipeline.health().dropped_total
    sys.stdout.write(json.dumps(out, sort_keys=True, default=repr) + "\n")


def _quantiles(store: Any) -> dict[str, Any]:
    """Every histogram series' count and quantiles at each 1/40 (answered by the actor)."""
    family = store.series["node_execution_latency"]
    return {
        repr(labels): [family[labels].count, *(family[labels].quantile(q / 40) for q in range(41))]
        for labels in sorted(family)
        # the spans' latencies ("direct", "step2") are measured durations
        if dict(labels).get("node") not in ("direct", "step2")
    }


def _timeless(series: dict[str, Any]) -> dict[str, Any]:
    """The series without what depends on a measured duration (the ``direct`` span's, the runs')."""
    labels = series["labels"]
    if labels.get("node") in ("direct", "step2") or labels.get("workflow") == "risk":
        return {"labels": series["labels"], "count": series["count"]}
    return series


async def _end(t: Any, span: Any) -> None:
    t.finish(span)


if __name__ == "__main__":
    main()
    sys.exit(0)
