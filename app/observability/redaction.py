"""Redaction of secrets and personal data before anything is stored, exported or logged.

Two layers:

* by *key*: a value whose key looks sensitive (``password``, ``secret``,
  ``token``, ``api_key``, ``authorization``, ``credential``...) is replaced whole;
* by *value*: inside any string, API keys, bearer tokens, ``password=...``
  pairs, e-mail addresses, payment card numbers (Luhn-checked) and US SSNs
  are masked in place.

The record redactors run on the collector threads (trace and audit), so the
producers' hot path pays nothing; :func:`structlog_redactor` is a structlog
processor for every log line (the main job installs it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

from collectors.records import AuditRecord, SpanEvent, SpanRecord

__all__ = (
    "MASK",
    "Redactor",
    "redact_audit_record",
    "redact_span_record",
    "redact_text",
    "redact_value",
    "structlog_redactor",
)

MASK = "[REDACTED]"

_SENSITIVE_KEY = re.compile(
    r"(pass(word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|auth(orization)?|"
    r"credential|private[_-]?key|session[_-]?id|cookie|ssn|card[_-]?number|cvv)",
    re.IGNORECASE,
)
#: Keys that match the pattern above but carry no secret.
_SAFE_KEYS = frozenset({
    "input_tokens", "output_tokens", "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
    "tokens", "token_usage", "max_tokens",
})

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer <token> / Basic <b64>
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE), r"\1 " + MASK),
    # key=value / key: value pairs for secret-looking keys
    (re.compile(
        r"(?i)\b((?:pass(?:word|wd)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|"
        r"client[_-]?secret)\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&]+)"
    ), r"\1" + MASK),
    # well-known API key shapes: OpenAI/Anthropic sk-..., AWS AKIA..., GitHub ghp_..., Slack xox..
    (re.compile(r"\b(sk|pk|rk)-(?:[A-Za-z0-9]+-)*[A-Za-z0-9]{16,}\b"), MASK),
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"), MASK),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"), MASK),
    # JSON Web Tokens
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\b"), MASK),
    # e-mail addresses
    (re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), "[EMAIL]"),
    # US social security numbers
    (re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"), "[SSN]"),
)
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_QUICK = re.compile(r"[@:=-]|\d{4}|Bearer|Basic|sk|AKIA|ASIA|gh|xox|eyJ", re.IGNORECASE)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    if 13 <= len(digits) <= 19 and _luhn_ok(digits):
        return "[CARD]"
    return match.group(0)


def redact_text(text: str) -> str:
    """Mask secrets and personal data inside ``text``."""
    if not _QUICK.search(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _CARD.sub(_mask_card, text)


def _sensitive_key(key: str) -> bool:
    return key not in _SAFE_KEYS and _SENSITIVE_KEY.search(key) is not None


def redact_value(key: str, value: Any) -> Any:
    """Redact one keyed value: whole if the key is sensitive, else inside strings."""
    if _sensitive_key(key):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(key, v) for v in value)
    return value


class Redactor:
    """Record redactor with bounded memo caches, for the collector threads.

    Telemetry repeats the same keys and values (tenant ids, model versions,
    node names) over and over; the regular expressions run once per distinct
    string. Each cache is bounded and cleared when full, so a flood of unique
    values costs time, never unbounded memory. One instance belongs to one
    container; its caches are only ever touched by the collector threads that
    call it (a dict get/set is atomic, and a race only repeats work).

    Args:
        cache_size: Distinct strings remembered per cache.
    """

    __slots__ = ("_cache_size", "_keys", "_texts")

    def __init__(self, cache_size: int = 8_192) -> None:
        self._cache_size = cache_size
        self._texts: dict[str, str] = {}
        self._keys: dict[str, bool] = {}

    def text(self, text: str) -> str:
        """:func:`redact_text`, memoised."""
        cached = self._texts.get(text)
        if cached is None:
            cached = redact_text(text)
            if len(self._texts) >= self._cache_size:
                self._texts.clear()
            self._texts[text] = cached
        return cached

    def value(self, key: str, value: Any) -> Any:
        """:func:`redact_value`, memoised for string keys and values."""
        sensitive = self._keys.get(key)
        if sensitive is None:
            sensitive = _sensitive_key(key)
            if len(self._keys) >= self._cache_size:
                self._keys.clear()
            self._keys[key] = sensitive
        if sensitive:
            return MASK
        if type(value) is str:
            return self.text(value)
        if type(value) in (int, float, bool) or value is None:
            return value
        return redact_value(key, value)

    def _pairs(self, pairs: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
        """Redact ``(key, value)`` pairs; returns ``pairs`` itself when nothing changes."""
        changed: list[tuple[str, Any]] | None = None
        value = self.value
        for index, pair in enumerate(pairs):
            key, item = pair
            new = value(key, item)
            if new is not item and new != item:
                if changed is None:
                    changed = list(pairs[:index])
                changed.append((key, new))
            elif changed is not None:
                changed.append(pair)
        return pairs if changed is None else tuple(changed)

    def span(self, span: SpanRecord) -> SpanRecord:
        """``span`` with name, attributes, events and error message redacted.

        Returns the same record when nothing needed masking (the common case).
        """
        name = self.text(span.name)
        attributes = self._pairs(span.attributes)
        message = span.error_message
        if message:
            message = self.text(message)
        events = span.events
        if events:
            events = tuple(
                SpanEvent(self.text(e.name), e.time_ns, self._pairs(e.attributes))
                for e in events
            )
        if (name is span.name and attributes is span.attributes
                and message is span.error_message and events == span.events):
            return span
        return span._replace(
            name=name, attributes=attributes, error_message=message, events=events
        )

    def audit(self, record: AuditRecord) -> AuditRecord:
        """``record`` with every field redacted (the same record if nothing changed)."""
        fields = self._pairs(record.fields)
        return record if fields is record.fields else record._replace(fields=fields)


def redact_span_record(span: SpanRecord) -> SpanRecord:
    """A copy of ``span`` with name, attributes, events and error message redacted."""
    return Redactor(cache_size=64).span(span)


def redact_audit_record(record: AuditRecord) -> AuditRecord:
    """A copy of ``record`` with every field redacted."""
    return Redactor(cache_size=64).audit(record)


def structlog_redactor(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: redact every key and value of a log line."""
    for key, value in list(event_dict.items()):
        event_dict[key] = redact_value(key, value) if key != "event" else (
            redact_text(value) if isinstance(value, str) else value
        )
    return event_dict
