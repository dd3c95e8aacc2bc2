"""Tests for :mod:`collectors._sketch`: the relative-error quantile sketch.

The property: for any sample, the estimate of the q-quantile is within the
configured relative accuracy of the exact lower nearest-rank quantile
(``sorted(values)[floor(q * (n - 1))]``), and always inside ``[min, max]``.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors._sketch import QuantileSketch

#: Float rounding in ``log``/``pow`` may put a value exactly on a bucket
#: boundary one bucket up: the error is then the accuracy itself, plus ulps.
SLACK = 1e-9

latencies = st.floats(min_value=1e-9, max_value=1e9, allow_nan=False, allow_subnormal=False)
samples = st.lists(st.one_of(latencies, st.just(0.0)), min_size=1, max_size=500)


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def assert_close(estimate: float | None, truth: float, accuracy: float) -> None:
    assert estimate is not None
    if truth == 0.0:
        assert estimate == 0.0
    else:
        assert abs(estimate - truth) <= (accuracy + SLACK) * truth, (estimate, truth)


@settings(max_examples=300, deadline=None, database=None)
@given(samples)
def test_p50_p95_p99_are_within_one_percent_of_the_exact_lower_rank(
    values: list[float],
) -> None:
    sketch = QuantileSketch(0.01)
    for value in values:
        sketch.add(value)
    assert sketch.count == len(values)
    for q in (0.5, 0.95, 0.99):
        estimate = sketch.quantile(q)
        assert_close(estimate, exact(values, q), 0.01)
        assert estimate is not None and min(values) <= estimate <= max(values)


@settings(max_examples=100, deadline=None, database=None)
@given(samples, st.sampled_from([0.001, 0.05, 0.2]),
       st.floats(min_value=0.0, max_value=1.0, allow_nan=False))
def test_any_quantile_at_any_accuracy_is_within_that_accuracy(
    values: list[float], accuracy: float, q: float,
) -> None:
    sketch = QuantileSketch(accuracy)
    for value in values:
        sketch.add(value)
    assert_close(sketch.quantile(q), exact(values, q), accuracy)


@settings(max_examples=50, deadline=None, database=None)
@given(st.lists(latencies, min_size=1, max_size=50), st.integers(min_value=1, max_value=40))
def test_repeated_values_do_not_move_the_estimate_out_of_bounds(
    values: list[float], repeat: int,
) -> None:
    sketch = QuantileSketch()
    for value in values:
        for _ in range(repeat):
            sketch.add(value)
    for q in (0.0, 0.5, 1.0):
        assert_close(sketch.quantile(q), exact(values * repeat, q), 0.01)


def test_extremes_are_min_and_max() -> None:
    sketch = QuantileSketch()
    for value in (0.003, 0.5, 7.0, 120.0):
        sketch.add(value)
    assert sketch.quantile(0.0) == pytest.approx(0.003, rel=0.01)
    assert sketch.quantile(1.0) == pytest.approx(120.0, rel=0.01)


def test_values_near_the_largest_float_do_not_overflow() -> None:
    sketch = QuantileSketch()
    sketch.add(1.0)
    sketch.add(1.79e308)
    assert sketch.quantile(1.0) == 1.79e308  # clamped to the maximum seen
    assert sketch.quantile(0.0) == pytest.approx(1.0, rel=0.01)


def test_an_empty_sketch_has_no_quantiles() -> None:
    assert QuantileSketch().quantile(0.5) is None
    assert QuantileSketch().count == 0


def test_only_zeros() -> None:
    sketch = QuantileSketch()
    for _ in range(3):
        sketch.add(0.0)
    assert sketch.quantile(0.99) == 0.0


@pytest.mark.parametrize("accuracy", [0.0, 1.0, -0.1, 2.0])
def test_accuracy_outside_zero_one_is_refused(accuracy: float) -> None:
    with pytest.raises(ValueError, match="relative_accuracy"):
        QuantileSketch(accuracy)


@pytest.mark.parametrize("q", [-0.01, 1.01])
def test_q_outside_zero_one_is_refused(q: float) -> None:
    sketch = QuantileSketch()
    sketch.add(1.0)
    with pytest.raises(ValueError, match="q must be"):
        sketch.quantile(q)
