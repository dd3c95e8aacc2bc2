"""The boundary validator: the one place every door checks what it is given.

Every public entry point of the observability layer (metrics, spans,
generations, costs, audit, the failure classifier) checks its arguments with
these functions and with nothing else, so a value is held to the same rule
whichever door it comes through.

* Ids and label values are non-empty ``str`` of valid Unicode (no lone
  surrogates, which could not be encoded to UTF-8 and would break every
  exposition and export), without control characters, and at most
  ``max_length`` characters.
* Free text (span and audit attribute values, error messages) is kept, but a
  lone surrogate is replaced and a value past the limit is truncated with a
  visible marker, like OpenTelemetry's attribute length limit.
* Numbers are finite and within ``[0, maximum]``; a bound is part of the
  error message.

Errors never echo a huge input back: they quote a short prefix
(:func:`preview`).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

__all__ = (
    "TRUNCATION_MARKER",
    "check_attribute",
    "check_count",
    "check_decimal",
    "check_id",
    "check_label_value",
    "check_number",
    "check_text",
    "preview",
)

#: Appended to a truncated text value; ``{n}`` is the number of characters cut.
TRUNCATION_MARKER = "...[truncated {n} chars]"

_PREVIEW_CHARS = 40
_PREVIEW_MAX = 80
# C0 and C1 control characters and DEL; not allowed in ids and label values.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def preview(value: object) -> str:
    """A short, printable quotation of ``value`` for an error message (at most ~100 chars)."""
    if isinstance(value, str):
        text = ascii(value[:_PREVIEW_CHARS])  # escapes control characters and surrogates
        if len(text) > _PREVIEW_MAX:
            text = text[:_PREVIEW_MAX] + "..."
        suffix = f"... ({len(value)} chars)" if len(value) > _PREVIEW_CHARS else ""
        return text + suffix
    text = repr(value)
    return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "..."


def check_id(field: str, value: object, *, max_length: int = 256) -> str:
    """Check an identifier (tenant, request, correlation id, model version, ...).

    Args:
        field: The argument's name, used in the error.
        value: What the caller passed.
        max_length: The longest value accepted, in characters.

    Returns:
        The value as a plain ``str`` (a ``str`` subclass such as a ``StrEnum``
        member becomes its plain string).

    Raises:
        TypeError: Not a ``str``.
        ValueError: Empty, too long, a lone surrogate or a control character.
    """
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {type(value).__name__}")
    if type(value) is not str:
        value = str.__str__(value)
    if not value:
        raise ValueError(f"{field} must not be empty")
    if len(value) > max_length:
        raise ValueError(
            f"{field} is longer than {max_length} characters ({len(value)}): {preview(value)}"
        )
    if not value.isprintable():  # rare: only then look for what is refused
        if _SURROGATE.search(value):
            raise ValueError(f"{field} is not valid Unicode (a lone surrogate): {preview(value)}")
        if _CONTROL.search(value):
            raise ValueError(f"{field} contains a control character: {preview(value)}")
    return value


#: Label values follow the same rule as ids.
check_label_value = check_id


def check_text(field: str, value: object, *, max_length: int = 4096) -> str:
    """Check free text; repair what can be repaired.

    Lone surrogates are replaced by U+FFFD and a value longer than
    ``max_length`` is cut, ending in :data:`TRUNCATION_MARKER`, so the value
    always encodes to UTF-8 and stays bounded.

    Raises:
        TypeError: Not a ``str``.
    """
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {type(value).__name__}")
    if type(value) is not str:
        value = str.__str__(value)
    if len(value) > max_length:
        marker = TRUNCATION_MARKER.format(n=len(value) - max_length)
        value = value[:max_length] + marker
    if not value.isascii() and _SURROGATE.search(value):
        value = _SURROGATE.sub("\ufffd", value)
    return value


def check_attribute(
    key: object, value: object, *, max_length: int = 4096
) -> str | bool | int | float:
    """Check one span or event attribute: a key and a str, bool, int or float value.

    Returns:
        The value, text repaired and truncated as :func:`check_text` does.

    Raises:
        TypeError: A key that is not a str, or a value of another type.
        ValueError: An empty or invalid key, or a non-finite float.
    """
    check_id("attribute key", key, max_length=256)
    kind = type(value)
    if kind is str:
        return check_text(f"attribute {key!s}", value, max_length=max_length)
    if kind is bool or kind is int:
        return value  # type: ignore[return-value]
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise ValueError(f"attribute {key!s} must be finite, got {value!r}")
        return value  # type: ignore[return-value]
    if isinstance(value, str):
        return check_text(f"attribute {key!s}", value, max_length=max_length)
    raise TypeError(f"attribute {key!s} must be str, bool, int or float, got {kind.__name__}")


def check_count(field: str, value: object, *, maximum: int) -> int:
    """Check a whole count (tokens): an ``int`` (not ``bool``) in ``[0, maximum]``.

    Raises:
        TypeError: Not an int.
        ValueError: Negative or above ``maximum``.
    """
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{field} must be an int, got {type(value).__name__}")
        value = int(value)
    if not 0 <= value <= maximum:
        raise ValueError(f"{field} must be within [0, {maximum}], got {preview(value)}")
    return value


def check_number(field: str, value: object, *, maximum: float) -> int | float:
    """Check an amount or a duration: a finite ``int`` or ``float`` in ``[0, maximum]``.

    Raises:
        TypeError: Not an int or float (``bool`` included).
        ValueError: NaN, infinite, negative or above ``maximum``.
    """
    kind = type(value)
    if kind is not float and kind is not int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{field} must be an int or float, got {kind.__name__}")
        value = float(value) if isinstance(value, float) else int(value)  # a subclass: plain
    number: int | float = value  # type: ignore[assignment]
    if not 0 <= number <= maximum:  # NaN fails here too
        raise ValueError(f"{field} must be finite and within [0, {maximum:g}], got {number!r}")
    return number


def check_decimal(field: str, value: object, *, maximum: Decimal) -> Decimal:
    """Check money: a finite ``Decimal`` (or int) in ``[0, maximum]``.

    Raises:
        TypeError: Not a Decimal or int (a float would not be exact).
        ValueError: NaN, infinite, negative or above ``maximum``.
    """
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{field} must be a Decimal, got {type(value).__name__}")
    amount = Decimal(value)
    try:
        in_range = amount.is_finite() and 0 <= amount <= maximum
    except InvalidOperation:  # a signalling NaN
        in_range = False
    if not in_range:
        raise ValueError(f"{field} must be finite and within [0, {maximum}], got {preview(value)}")
    return amount
