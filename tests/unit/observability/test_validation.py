"""The boundary validator (app/observability/validation.py): the one rule set every door uses."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.observability.validation import (
    TRUNCATION_MARKER,
    check_attribute,
    check_count,
    check_decimal,
    check_id,
    check_number,
    check_text,
    preview,
)


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@given(st.text(max_size=300))
def test_an_accepted_id_is_the_value_and_always_encodes(value: str) -> None:
    try:
        checked = check_id("tenant_id", value)
    except ValueError as exc:
        assert "tenant_id" in str(exc)
        assert len(str(exc)) < 300  # never echoes a long value back
        return
    assert checked == value
    assert checked
    assert len(checked) <= 256
    assert _encodes(checked)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in checked)


@pytest.mark.parametrize(("value", "message"), [
    ("", "must not be empty"),
    ("bad\udcff", "lone surrogate"),
    ("tab\there", "control character"),
    ("new\nline", "control character"),
    ("x" * 257, "longer than 256"),
    ("nul\x00", "control character"),
    ("c1\x85", "control character"),
])
def test_ids_refused_name_the_field(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        check_id("tenant_id", value)
    assert "tenant_id" in str(info.value)


@pytest.mark.parametrize("value", [None, 1, b"bytes", ["t1"]])
def test_ids_must_be_str(value: object) -> None:
    with pytest.raises(TypeError, match="tenant_id must be a str"):
        check_id("tenant_id", value)


def test_ids_accept_unicode_and_plain_a_str_subclass() -> None:
    class Tenant(str):
        pass

    assert check_id("tenant_id", "Zürich ✓ 🙂") == "Zürich ✓ 🙂"
    checked = check_id("tenant_id", Tenant("t1"))
    assert type(checked) is str and checked == "t1"
    assert check_id("x", "y" * 10, max_length=10) == "y" * 10


def test_errors_quote_only_a_short_prefix() -> None:
    huge = "a" * 10_000_000
    with pytest.raises(ValueError) as info:
        check_id("model_version", huge)
    assert len(str(info.value)) < 200
    assert "10000000 chars" in str(info.value)


@given(st.text(max_size=200), st.integers(min_value=16, max_value=100))
def test_text_is_repaired_and_bounded(value: str, limit: int) -> None:
    checked = check_text("message", value, max_length=limit)
    assert _encodes(checked)
    if len(value) <= limit:
        assert len(checked) == len(value)
    else:
        marker = TRUNCATION_MARKER.format(n=len(value) - limit)
        assert checked.endswith(marker)
        assert len(checked) == limit + len(marker)


def test_text_replaces_lone_surrogates() -> None:
    assert check_text("message", "a\udcffb") == "a\ufffdb"


@pytest.mark.parametrize(("value", "expected"), [
    ("short", "short"), (True, True), (3, 3), (2.5, 2.5),
])
def test_attribute_values(value: object, expected: object) -> None:
    assert check_attribute("k", value) == expected


@pytest.mark.parametrize(("key", "value", "error"), [
    ("", "v", ValueError), (1, "v", TypeError), ("k", math.nan, ValueError),
    ("k", math.inf, ValueError), ("k", None, TypeError), ("k", [1], TypeError),
])
def test_attributes_refused(key: object, value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_attribute(key, value)


def test_a_long_attribute_is_truncated_visibly() -> None:
    value = check_attribute("k", "x" * 5_000, max_length=4_096)
    assert isinstance(value, str)
    assert value.endswith("...[truncated 904 chars]")


@given(st.integers(min_value=-10**40, max_value=10**40))
def test_counts_are_ints_within_bounds(value: int) -> None:
    if 0 <= value <= 1_000:
        assert check_count("input_tokens", value, maximum=1_000) == value
    else:
        with pytest.raises(ValueError, match=r"input_tokens must be within \[0, 1000\]"):
            check_count("input_tokens", value, maximum=1_000)


@pytest.mark.parametrize("value", [True, 1.0, "3", None])
def test_counts_refuse_other_types(value: object) -> None:
    with pytest.raises(TypeError, match="input_tokens must be an int"):
        check_count("input_tokens", value, maximum=10)


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                 st.integers(min_value=-10**30, max_value=10**30)))
def test_numbers_are_finite_and_bounded(value: float) -> None:
    maximum = 1e9
    ok = not (isinstance(value, float) and math.isnan(value)) and 0 <= value <= maximum
    if ok:
        assert check_number("amount", value, maximum=maximum) == value
    else:
        with pytest.raises(ValueError, match="amount must be finite and within"):
            check_number("amount", value, maximum=maximum)


@pytest.mark.parametrize("value", [True, "1", None, Decimal(1)])
def test_numbers_refuse_other_types(value: object) -> None:
    with pytest.raises(TypeError, match="amount must be an int or float"):
        check_number("amount", value, maximum=10)


@pytest.mark.parametrize(("value", "ok"), [
    (Decimal("0"), True), (Decimal("999.99"), True), (7, True), (Decimal("1000.01"), False),
    (Decimal("-1"), False), (Decimal("NaN"), False), (Decimal("sNaN"), False),
    (Decimal("Infinity"), False),
])
def test_money(value: Decimal, ok: bool) -> None:
    if ok:
        assert check_decimal("cost", value, maximum=Decimal(1000)) == value
    else:
        with pytest.raises(ValueError, match="cost must be finite"):
            check_decimal("cost", value, maximum=Decimal(1000))


def test_money_refuses_floats() -> None:
    with pytest.raises(TypeError, match="cost must be a Decimal"):
        check_decimal("cost", 0.1, maximum=Decimal(1))


def test_preview_is_short_and_printable() -> None:
    assert preview("a\udcff") == "'a\\udcff'"
    assert len(preview("\x80\U00010000" * 50)) < 120
    assert preview("x" * 100).endswith("... (100 chars)")
    assert len(preview(list(range(1000)))) <= 43
