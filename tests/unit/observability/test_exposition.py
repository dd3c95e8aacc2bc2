"""Tests for app/observability/exposition.py: Prometheus 0.0.4 and OpenMetrics 1.0 text."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from app.observability.exposition import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    format_value,
    render_openmetrics,
    render_text,
)
from collectors.snapshots import (
    DEFAULT_LATENCY_BUCKETS,
    HistogramSeries,
    MetricFamily,
    MetricSpec,
    ValueSeries,
)

Labels = tuple[tuple[str, str], ...]
Render = Callable[[Iterable[MetricFamily]], str]
Parse = Callable[[str], Iterable[Metric]]

NASTY_VALUES = (
    'back\\slash',
    'double"quote',
    "new\nline",
    "literal \\n not a newline",
    "trailing backslash \\",
    'all \\ " \n at once',
    "unicode: Zürich 東京 🚀",
    "{braces}, commas = and # hashes",
    "",
)


# --- builders ---------------------------------------------------------------


def counter(
    prom_name: str, *series: ValueSeries, unit: str = "", help: str = "A counter."
) -> MetricFamily:
    spec = MetricSpec(
        name=prom_name, prom_name=prom_name, type="counter", help=help,
        label_names=tuple(sorted({k for s in series for k, _ in s.labels})), unit=unit,
    )
    return MetricFamily(spec=spec, series=series)


def gauge(prom_name: str, *series: ValueSeries) -> MetricFamily:
    spec = MetricSpec(
        name=prom_name, prom_name=prom_name, type="gauge", help="A gauge.",
        label_names=tuple(sorted({k for s in series for k, _ in s.labels})),
    )
    return MetricFamily(spec=spec, series=series)


def hist_series(
    labels: Labels, observations: list[float], bounds: tuple[float, ...]
) -> HistogramSeries:
    cumulative = tuple(
        (bound, sum(1 for o in observations if o <= bound)) for bound in (*bounds, math.inf)
    )
    return HistogramSeries(
        labels=labels, count=len(observations), sum=math.fsum(observations),
        buckets=cumulative, p50=None, p95=None, p99=None,
    )


def histogram(prom_name: str, bounds: tuple[float, ...], *series: HistogramSeries) -> MetricFamily:
    spec = MetricSpec(
        name=prom_name, prom_name=prom_name, type="histogram", help="A histogram.",
        label_names=("node", "tenant_id"), unit="seconds", buckets=bounds,
    )
    return MetricFamily(spec=spec, series=series)


LATENCY_OBSERVATIONS: dict[Labels, list[float]] = {
    (("node", "score"), ("tenant_id", "acme")): [0.0004, 0.003, 0.02, 0.02, 0.7, 3.0, 75.0],
    (("node", "score"), ("tenant_id", "globex")): [0.001, 0.0025, 0.0025],
    (("node", "fetch"), ("tenant_id", "acme")): [],
}


@pytest.fixture
def families() -> list[MetricFamily]:
    """One of everything: int, float and Decimal counters, a gauge, a histogram, an empty family."""
    return [
        counter(
            "risk_engine_requests",
            ValueSeries(labels=(("tenant_id", "acme"),), value=12),
            ValueSeries(labels=(("tenant_id", "globex"),), value=0),
            ValueSeries(labels=(("otel_metric_overflow", "true"),), value=3),
            help="Risk requests received, by tenant.",
        ),
        counter(
            "risk_engine_tokens",
            ValueSeries(labels=(("direction", "input"), ("tenant_id", "acme")), value=1.5e7),
            ValueSeries(labels=(("direction", "output"), ("tenant_id", "acme")), value=0.25),
        ),
        counter(
            "risk_engine_cost_usd",
            ValueSeries(labels=(("model_version", "gpt-4o"), ("tenant_id", "acme")),
                        value=Decimal("0.1") + Decimal("0.2")),
            ValueSeries(labels=(("model_version", "o1"), ("tenant_id", "acme")),
                        value=Decimal("12345678901234567890.123456789000")),
            unit="usd",
        ),
        gauge(
            "observability_queue_depth",
            ValueSeries(labels=(("collector", "metrics"),), value=7),
            ValueSeries(labels=(("collector", "trace"),), value=0.5),
        ),
        histogram(
            "risk_engine_node_execution_latency_seconds",
            DEFAULT_LATENCY_BUCKETS,
            *(hist_series(lbl, obs, DEFAULT_LATENCY_BUCKETS)
              for lbl, obs in LATENCY_OBSERVATIONS.items()),
        ),
        counter("observability_spans_evicted"),
    ]


def samples_of(parsed_families: Iterable[Metric]) -> dict[str, list[Sample]]:
    return {f.name: list(f.samples) for f in parsed_families}


def _without_le(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != "le"}


# --- format 0.0.4 -----------------------------------------------------------


def test_content_types_name_the_format_versions() -> None:
    assert CONTENT_TYPE_TEXT == "text/plain; version=0.0.4; charset=utf-8"
    assert CONTENT_TYPE_OPENMETRICS == "application/openmetrics-text; version=1.0.0; charset=utf-8"


def test_text_exact_output_for_a_small_snapshot() -> None:
    bounds = (0.005, 1.0, 2.5)
    text = render_text([
        counter("risk_engine_requests", ValueSeries(labels=(("tenant_id", "acme"),), value=3),
                help="Requests.\nBy tenant \\ path."),
        gauge("observability_collector_up", ValueSeries(labels=(), value=1.0)),
        histogram("h_seconds", bounds, hist_series((), [0.001, 2.0], bounds)),
    ])
    assert text == (
        "# HELP risk_engine_requests_total Requests.\\nBy tenant \\\\ path.\n"
        "# TYPE risk_engine_requests_total counter\n"
        'risk_engine_requests_total{tenant_id="acme"} 3\n'
        "# HELP observability_collector_up A gauge.\n"
        "# TYPE observability_collector_up gauge\n"
        "observability_collector_up 1.0\n"
        "# HELP h_seconds A histogram.\n"
        "# TYPE h_seconds histogram\n"
        'h_seconds_bucket{le="0.005"} 1\n'
        'h_seconds_bucket{le="1.0"} 1\n'
        'h_seconds_bucket{le="2.5"} 2\n'
        'h_seconds_bucket{le="+Inf"} 2\n'
        "h_seconds_sum 2.001\n"
        "h_seconds_count 2\n"
    )


def test_text_round_trips_through_the_prometheus_parser(families: list[MetricFamily]) -> None:
    parsed = list(parse_text(render_text(families)))

    assert [(f.name, f.type) for f in parsed] == [
        ("risk_engine_requests", "counter"),
        ("risk_engine_tokens", "counter"),
        ("risk_engine_cost_usd", "counter"),
        ("observability_queue_depth", "gauge"),
        ("risk_engine_node_execution_latency_seconds", "histogram"),
        ("observability_spans_evicted", "counter"),
    ]
    assert parsed[0].documentation == "Risk requests received, by tenant."
    samples = samples_of(parsed)
    assert [(s.name, s.labels, s.value) for s in samples["risk_engine_requests"]] == [
        ("risk_engine_requests_total", {"tenant_id": "acme"}, 12.0),
        ("risk_engine_requests_total", {"tenant_id": "globex"}, 0.0),
        ("risk_engine_requests_total", {"otel_metric_overflow": "true"}, 3.0),
    ]
    assert [s.value for s in samples["risk_engine_tokens"]] == [1.5e7, 0.25]
    assert [s.value for s in samples["risk_engine_cost_usd"]] == [0.3, 1.2345678901234567e19]
    assert {s.labels["collector"]: s.value for s in samples["observability_queue_depth"]} == {
        "metrics": 7.0, "trace": 0.5,
    }
    assert samples["observability_spans_evicted"] == []


def test_text_counter_metadata_uses_the_total_name() -> None:
    text = render_text([counter("risk_engine_requests", ValueSeries(labels=(), value=1))])
    assert "# TYPE risk_engine_requests_total counter\n" in text
    assert "# HELP risk_engine_requests_total " in text
    assert "\nrisk_engine_requests_total 1\n" in text


# --- OpenMetrics ------------------------------------------------------------


def test_openmetrics_round_trips_through_the_openmetrics_parser(
    families: list[MetricFamily],
) -> None:
    text = render_openmetrics(families)
    parsed = list(parse_openmetrics(text))  # the parser validates histograms, units, EOF

    assert text.endswith("\n# EOF\n")
    assert [(f.name, f.type, f.unit) for f in parsed] == [
        ("risk_engine_requests", "counter", ""),
        ("risk_engine_tokens", "counter", ""),
        ("risk_engine_cost_usd", "counter", "usd"),
        ("observability_queue_depth", "gauge", ""),
        ("risk_engine_node_execution_latency_seconds", "histogram", "seconds"),
        ("observability_spans_evicted", "counter", ""),
    ]
    samples = samples_of(parsed)
    assert [s.name for s in samples["risk_engine_requests"]] == ["risk_engine_requests_total"] * 3
    assert [s.value for s in samples["risk_engine_requests"]] == [12, 0, 3]
    assert samples["observability_spans_evicted"] == []


def test_openmetrics_metadata_uses_the_family_name_and_unit() -> None:
    text = render_openmetrics([
        counter("risk_engine_cost_usd", ValueSeries(labels=(), value=Decimal("1.25")), unit="usd"),
        counter("risk_engine_token_usage", unit="tokens"),  # name does not end with the unit
    ])
    assert text == (
        "# HELP risk_engine_cost_usd A counter.\n"
        "# TYPE risk_engine_cost_usd counter\n"
        "# UNIT risk_engine_cost_usd usd\n"
        "risk_engine_cost_usd_total 1.25\n"
        "# HELP risk_engine_token_usage A counter.\n"
        "# TYPE risk_engine_token_usage counter\n"
        "# EOF\n"
    )


def test_help_is_escaped_for_each_format() -> None:
    help_text = 'Cost in "USD".\nPath C:\\costs'
    family = counter("risk_engine_cost_usd", help=help_text)

    (text_family,) = parse_text(render_text([family]))
    (om_family,) = parse_openmetrics(render_openmetrics([family]))

    assert text_family.documentation == help_text
    assert om_family.documentation == help_text
    assert '"USD"' in render_text([family])  # 0.0.4 does not escape quotes in HELP
    assert '\\"USD\\"' in render_openmetrics([family])


# --- both formats -----------------------------------------------------------


PARSERS = pytest.mark.parametrize(
    ("render", "parse"),
    [(render_text, parse_text), (render_openmetrics, parse_openmetrics)],
    ids=["text-0.0.4", "openmetrics-1.0"],
)


@PARSERS
def test_empty_family_emits_help_and_type_only(render: Render, parse: Parse) -> None:
    text = render([counter("observability_spans_evicted"), gauge("observability_queue_depth")])
    sample_lines = [line for line in text.splitlines() if not line.startswith("#")]
    (evicted, depth) = parse(text)

    assert sample_lines == []
    assert text.count("# HELP ") == 2
    assert text.count("# TYPE ") == 2
    assert (evicted.type, list(evicted.samples)) == ("counter", [])
    assert (depth.type, list(depth.samples)) == ("gauge", [])


@PARSERS
@pytest.mark.parametrize("value", NASTY_VALUES)
def test_nasty_label_values_round_trip(render: Render, parse: Parse, value: str) -> None:
    family = gauge(
        "observability_queue_depth",
        ValueSeries(labels=(("collector", value), ("reason", "ok")), value=1),
    )
    (parsed,) = parse(render([family]))
    assert [s.labels for s in parsed.samples] == [{"collector": value, "reason": "ok"}]


@given(value=st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_any_label_value_round_trips(value: str) -> None:
    family = counter("risk_engine_requests", ValueSeries(labels=(("tenant_id", value),), value=1))
    (text_family,) = parse_text(render_text([family]))
    (om_family,) = parse_openmetrics(render_openmetrics([family]))
    assert text_family.samples[0].labels == {"tenant_id": value}
    assert om_family.samples[0].labels == {"tenant_id": value}


@PARSERS
def test_histogram_buckets_sums_and_counts(
    render: Render, parse: Parse, families: list[MetricFamily]
) -> None:
    text = render(families)
    (parsed,) = [f for f in parse(text) if f.type == "histogram"]
    name = "risk_engine_node_execution_latency_seconds"

    for labels, observations in LATENCY_OBSERVATIONS.items():
        wanted = dict(labels)
        mine = [s for s in parsed.samples if _without_le(s.labels) == wanted]
        buckets = [(s.labels["le"], s.value) for s in mine if s.name == name + "_bucket"]
        expected_le = [floatToGoString(b) for b in DEFAULT_LATENCY_BUCKETS] + ["+Inf"]
        assert [le for le, _ in buckets] == expected_le
        assert [count for _, count in buckets] == [
            sum(1 for o in observations if o <= b) for b in (*DEFAULT_LATENCY_BUCKETS, math.inf)
        ]
        (total,) = [s.value for s in mine if s.name == name + "_sum"]
        (count,) = [s.value for s in mine if s.name == name + "_count"]
        assert total == pytest.approx(math.fsum(observations))
        assert count == len(observations)
    # The le strings prometheus_client would print, no float noise.
    assert 'le="0.005"' in text and 'le="1.0"' in text and 'le="2.5"' in text
    assert 'le="+Inf"' in text and 'le="0.0005"' in text


@PARSERS
def test_overflow_series_renders_like_any_label(render: Render, parse: Parse) -> None:
    family = counter(
        "risk_engine_requests",
        ValueSeries(labels=(("otel_metric_overflow", "true"), ("tenant_id", "")), value=9),
    )
    text = render([family])
    (parsed,) = parse(text)
    assert 'risk_engine_requests_total{otel_metric_overflow="true",tenant_id=""} 9\n' in text
    assert parsed.samples[0].labels == {"otel_metric_overflow": "true", "tenant_id": ""}


@PARSERS
def test_families_keep_the_given_order(render: Render, parse: Parse) -> None:
    names = ["zeta", "alpha", "mid"]
    text = render([gauge(n, ValueSeries(labels=(), value=1)) for n in names])
    assert [f.name for f in parse(text)] == names


@pytest.mark.parametrize("render", [render_text, render_openmetrics])
def test_duplicate_family_names_are_rejected(render: Render) -> None:
    with pytest.raises(ValueError, match="duplicate metric family 'risk_engine_requests'"):
        render([counter("risk_engine_requests"), gauge("risk_engine_requests")])


def test_series_of_the_wrong_kind_are_rejected() -> None:
    value = ValueSeries(labels=(), value=1)
    bounds = (1.0,)
    with pytest.raises(ValueError, match=r"'h_seconds'.*ValueSeries"):
        render_text([histogram("h_seconds", bounds, value)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'c'.*HistogramSeries"):
        render_text([counter("c", hist_series((), [0.5], bounds))])  # type: ignore[arg-type]


def test_histogram_without_an_inf_bucket_is_rejected() -> None:
    broken = HistogramSeries(labels=(), count=1, sum=0.5, buckets=((1.0, 1),),
                             p50=None, p95=None, p99=None)
    with pytest.raises(ValueError, match="must end with \\+Inf"):
        render_openmetrics([histogram("h_seconds", (1.0,), broken)])


def test_unsupported_value_types_are_rejected() -> None:
    with pytest.raises(TypeError, match="str"):
        render_text([gauge("g", ValueSeries(labels=(), value="1"))])  # type: ignore[arg-type]


# --- number formatting ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0"),
        (12, "12"),
        (10**20, "100000000000000000000"),  # ints are exact, no exponent
        (True, "1"),
        (1.0, "1.0"),
        (0.005, "0.005"),
        (2.5, "2.5"),
        (1.5e7, "1.5e+07"),
        (-3.25, "-3.25"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
        (Decimal("0.1") + Decimal("0.2"), "0.3"),
        (Decimal("1.500"), "1.5"),
        (Decimal("1E+3"), "1000"),
        (Decimal("100"), "100"),
        (Decimal("0.00000001"), "0.00000001"),  # str() would say 1E-8
        (Decimal("12345678901234567890.123456789"), "12345678901234567890.123456789"),
        (Decimal("-0.0"), "-0"),
        (Decimal("NaN"), "NaN"),
        (Decimal("-Infinity"), "-Inf"),
        (Decimal("1.5E+100"), "1.5E+100"),  # extraordinary exponents stay short and exact
    ],
)
def test_format_value(value: int | float | Decimal, expected: str) -> None:
    assert format_value(value) == expected


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_floats_format_like_prometheus_client(value: float) -> None:
    assert format_value(value) == floatToGoString(value)


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_decimals_render_exactly(value: Decimal) -> None:
    text = format_value(value)
    assert Decimal(text) == value
    if -40 <= value.adjusted() <= 40:
        assert "E" not in text and "e" not in text


@given(st.lists(st.integers(min_value=0, max_value=10**30), max_size=5))
def test_int_counters_render_exactly(values: list[int]) -> None:
    family = counter("c", *(ValueSeries(labels=(("i", str(i)),), value=v)
                           for i, v in enumerate(values)))
    lines = render_text([family]).splitlines()[2:]
    assert [int(line.rsplit(" ", 1)[1]) for line in lines] == values
