"""Prometheus text 0.0.4 and OpenMetrics 1.0 rendering of metric snapshots.

Pure functions over :class:`collectors.snapshots.MetricFamily` snapshots: they
never touch a live store, take no lock and keep no state besides a bounded
cache of formatted label sets (label sets repeat from one scrape to the next).

The two formats differ only in their metadata lines:

* 0.0.4 names a counter family ``<prom_name>_total`` in ``# HELP``/``# TYPE``
  and escapes backslash and newline in help text;
* OpenMetrics names it ``<prom_name>``, also escapes ``"`` in help text, adds
  ``# UNIT`` when the family name ends with ``_<unit>``, and ends with
  ``# EOF``.

Sample lines are identical: counters ``<prom_name>_total``, gauges
``<prom_name>``, histograms cumulative ``_bucket{le="..."}`` lines (``+Inf``
last) followed by ``_sum`` and ``_count``. Numbers are formatted like
prometheus_client's ``floatToGoString``; ``int`` and :class:`~decimal.Decimal`
values render exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Decimal
from functools import lru_cache

from collectors.snapshots import HistogramSeries, MetricFamily, ValueSeries

__all__ = (
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "format_value",
    "render_openmetrics",
    "render_text",
)

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_INF = math.inf
_NEG_INF = -math.inf
#: Decimals whose adjusted exponent lies outside this range render in
#: scientific notation (still exact) instead of thousands of digits.
_MAX_PLAIN_EXPONENT = 40
#: Distinct label sets kept formatted between scrapes; bounded by the
#: cardinality cap in practice, and by LRU eviction beyond it.
_LABEL_CACHE_SIZE = 16_384


def render_text(families: Iterable[MetricFamily]) -> str:
    """Render snapshots in the Prometheus text exposition format 0.0.4.

    Args:
        families: Metric families in the order they should appear.

    Returns:
        The exposition text (serve it as :data:`CONTENT_TYPE_TEXT`).

    Raises:
        ValueError: Two families share a Prometheus name, or a series does
            not match its family's type (for instance a histogram series
            whose buckets do not end with ``+Inf``).
        TypeError: A sample value is not an ``int``, ``float`` or ``Decimal``.
    """
    return "".join(_render(families, openmetrics=False))


def render_openmetrics(families: Iterable[MetricFamily]) -> str:
    """Render snapshots in the OpenMetrics 1.0 text format, ``# EOF`` included.

    Args:
        families: Metric families in the order they should appear.

    Returns:
        The exposition text (serve it as :data:`CONTENT_TYPE_OPENMETRICS`).

    Raises:
        ValueError: Two families share a Prometheus name, or a series does
            not match its family's type.
        TypeError: A sample value is not an ``int``, ``float`` or ``Decimal``.
    """
    out = _render(families, openmetrics=True)
    out.append("# EOF\n")
    return "".join(out)


def format_value(value: int | float | Decimal) -> str:
    """Format one sample value for either text format.

    Floats follow prometheus_client's ``floatToGoString`` (``+Inf``, ``-Inf``,
    ``NaN``, ``1.0``, ``1.5e+07``); ints render exactly; a ``Decimal`` renders
    exactly in plain notation without trailing zeros (``12.5``, ``100``).

    Args:
        value: The sample value.

    Returns:
        The value as it appears after the space in a sample line.

    Raises:
        TypeError: ``value`` is not an ``int``, ``float`` or ``Decimal``.
    """
    if type(value) is float:
        return _format_float(value)
    if type(value) is int:
        return str(value)
    if isinstance(value, Decimal):
        return _format_decimal(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return _format_float(float(value))
    raise TypeError(f"cannot render a sample value of type {type(value).__name__}")


# --- implementation ---------------------------------------------------------


def _render(families: Iterable[MetricFamily], *, openmetrics: bool) -> list[str]:
    """Render all families into a list of string pieces (joined by the caller)."""
    out: list[str] = []
    seen: set[str] = set()
    le_tails = _LeTails()
    for family in families:
        spec = family.spec
        name = spec.prom_name
        kind = spec.type
        if name in seen:
            raise ValueError(f"duplicate metric family {name!r}")
        seen.add(name)
        sample_name = name + "_total" if kind == "counter" else name
        meta_name = name if openmetrics else sample_name
        help_text = _escape_help(spec.help, quote=openmetrics)
        out.append(f"# HELP {meta_name} {help_text}\n# TYPE {meta_name} {kind}\n")
        if openmetrics and spec.unit and name.endswith("_" + spec.unit):
            out.append(f"# UNIT {name} {spec.unit}\n")
        try:
            if kind == "histogram":
                _render_histograms(out, name, family.series, le_tails)
            else:
                _render_values(out, sample_name, family.series)
        except ValueError as exc:
            raise ValueError(f"cannot render metric family {name!r}: {exc}") from exc
    return out


def _render_values(
    out: list[str], sample_name: str, series: tuple[ValueSeries | HistogramSeries, ...]
) -> None:
    """Append one sample line per counter or gauge series."""
    append = out.append
    labelled = sample_name + "{"
    unlabelled = sample_name + " "
    for item in series:
        if not isinstance(item, ValueSeries):
            raise ValueError(f"a counter or gauge family holds a {type(item).__name__}")
        labels, value = item
        # Inline fast paths of format_value for the two common types.
        if type(value) is float:
            text = _format_float(value)
        elif type(value) is int:
            text = str(value)
        else:
            text = format_value(value)
        if labels:
            append(f"{labelled}{_label_body(labels)}}} {text}\n")
        else:
            append(f"{unlabelled}{text}\n")


def _render_histograms(
    out: list[str],
    name: str,
    series: tuple[ValueSeries | HistogramSeries, ...],
    le_tails: _LeTails,
) -> None:
    """Append the bucket, sum and count lines of every histogram series."""
    append = out.append
    extend = out.extend
    for item in series:
        if not isinstance(item, HistogramSeries):
            raise ValueError(f"a histogram family holds a {type(item).__name__}")
        buckets = item.buckets
        if not buckets or buckets[-1][0] != _INF:
            raise ValueError("histogram buckets must end with +Inf")
        total = item.sum
        total_text = _format_float(total) if type(total) is float else format_value(total)
        if item.labels:
            body = _label_body(item.labels)
            prefix = f'{name}_bucket{{{body},le="'
            tail = f"{{{body}}} "
        else:
            prefix = f'{name}_bucket{{le="'
            tail = " "
        extend([f"{prefix}{le_tails[bound]}{count}\n" for bound, count in buckets])
        append(f"{name}_sum{tail}{total_text}\n{name}_count{tail}{item.count}\n")


class _LeTails(dict[float, str]):
    """Per-render cache: bucket bound -> ``'<le>"} '`` (the rest of the label set)."""

    def __missing__(self, bound: float) -> str:
        tail = self[bound] = _format_float(float(bound)) + '"} '
        return tail


@lru_cache(maxsize=_LABEL_CACHE_SIZE)
def _label_body(labels: tuple[tuple[str, str], ...]) -> str:
    """Format sorted label pairs as ``a="x",b="y"`` (no braces), values escaped."""
    return ",".join([f'{key}="{_escape_label_value(value)}"' for key, value in labels])


def _escape_label_value(value: str) -> str:
    """Escape backslash, double quote and newline in a label value."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str, *, quote: bool) -> str:
    """Escape help text: backslash and newline, plus ``"`` for OpenMetrics."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def _format_float(value: float) -> str:
    """Format a float like prometheus_client's ``floatToGoString``."""
    if value != value:  # NaN
        return "NaN"
    if value == _INF:
        return "+Inf"
    if value == _NEG_INF:
        return "-Inf"
    text = repr(value)
    if value > 0:
        dot = text.find(".")
        # Go switches to exponent notation sooner than Python's repr.
        if dot > 6:
            mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
            return f"{mantissa}e+{dot - 1:02d}"
    return text


def _format_decimal(value: Decimal) -> str:
    """Format a Decimal exactly: plain notation, no trailing zeros."""
    if not value.is_finite():
        if value.is_nan():
            return "NaN"
        return "+Inf" if value > 0 else "-Inf"
    if not -_MAX_PLAIN_EXPONENT <= value.adjusted() <= _MAX_PLAIN_EXPONENT:
        return str(value)  # exact scientific notation, e.g. 1.5E+100
    text = format(value, "f")  # no precision given: exact, never rounded
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
