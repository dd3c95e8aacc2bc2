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
from typing import Any, TypeVar

from collectors.records import (
    AuditRecord,
    SpanEvent,
    SpanRecord,
    flat_attributes,
    paired_attributes,
)

SpanRecordT = TypeVar("SpanRecordT", SpanRecord, tuple[Any, ...])

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
_PLAIN_TYPES = (int, float, bool, type(None))

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
#: Token *counts* under the names LLM APIs and Langfuse use (``total_tokens``,
#: ``prompt_tokens``, ``gen_ai.usage.cache_read_input_tokens``...).
_TOKEN_COUNT_KEY = re.compile(
    r"^(?:[a-z_]+\.)*(?:(?:input|output|prompt|completion|total|cached|reasoning|max|"
    r"cache_read_input|cache_creation_input)_)?tokens$"
)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer <token> / Basic <b64>
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE), r"\1 " + MASK),
    # key=value / key: value pairs for secret-looking keys, also with a prefix
    # (DB_PASSWORD=, aws_secret_access_key=) and as JSON ("password": "...")
    (re.compile(
        r"(?i)(?<![A-Za-z0-9])((?:[A-Za-z0-9]+[_.-])*"
        r"(?:pass(?:word|wd|phrase)?|pwd|secret(?:[_-]?key)?|token|api[_-]?key|apikey|"
        r"access[_-]?key|client[_-]?secret|private[_-]?key)"
        r"[\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&]+)"
    ), r"\1" + MASK),
    # well-known API key shapes: OpenAI/Anthropic sk-... (sk-proj-..., sk-ant-api03-...,
    # with "_" and "-" inside), Stripe sk_live_..., AWS AKIA..., GitHub ghp_... and
    # github_pat_..., Slack xox..., Google AIza...
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9][A-Za-z0-9_-]{15,}"), MASK),
    (re.compile(r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{10,}"), MASK),
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"), MASK),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}"), MASK),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"), MASK),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), MASK),
    # JSON Web Tokens
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\b"), MASK),
    # e-mail addresses
    (re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), "[EMAIL]"),
    # US social security numbers
    (re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"), "[SSN]"),
)
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
#: Substrings (of the lower-cased text) that at least one pattern above needs.
_TRIGGERS = (
    "@", "=", ":", "bearer", "basic", "sk-", "pk-", "rk-", "sk_", "pk_", "rk_", "akia", "asia",
    "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "aiza", "eyj",
)
#: Texts shorter than this can only match the patterns that need "@", "=" or ":".
_SHORTEST_NO_SEPARATOR_MATCH = 11
_DIGITS3 = re.compile(r"\d\d\d")
_DIGIT_SHAPES = re.compile(r"\d{3}-\d{2}-\d{4}|(?:\d[ -]?){12}\d")


def _may_contain_secret(text: str) -> bool:
    """A cheap pre-check every pattern needs to pass: most ids, versions and names fail it.

    Substring tests run in C; the regular expressions run only when the text
    has three digits in a row (SSNs and card numbers). Measured here, that is
    ~0.5 us for a typical id against ~2-5 us for one alternation regex.
    """
    if len(text) < _SHORTEST_NO_SEPARATOR_MATCH:
        # Only the e-mail and key=value patterns fit in so few characters
        # (an SSN takes 11, a card number 13, every key shape more).
        return "@" in text or "=" in text or ":" in text
    low = text.lower()
    for trigger in _TRIGGERS:
        if trigger in low:
            return True
    return _DIGITS3.search(text) is not None and _DIGIT_SHAPES.search(text) is not None


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
    if not _may_contain_secret(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _CARD.sub(_mask_card, text)


def _sensitive_key(key: str) -> bool:
    return (
        key not in _SAFE_KEYS
        and _SENSITIVE_KEY.search(key) is not None
        and _TOKEN_COUNT_KEY.match(key) is None
    )


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

    __slots__ = (
        "_cache_size", "_flat_sets", "_keys", "_last_in", "_last_out", "_pair_sets", "_texts",
    )

    def __init__(self, cache_size: int = 8_192) -> None:
        self._cache_size = cache_size
        self._texts: dict[str, str] = {}
        self._keys: dict[str, bool] = {}
        #: Whole attribute tuples: the spans of one run repeat the same ones.
        self._pair_sets: dict[tuple[tuple[str, Any], ...], tuple[tuple[str, Any], ...]] = {}
        self._flat_sets: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        #: The last attribute tuple redacted, and its result (by identity).
        self._last_in: object = None
        self._last_out: Any = None

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
            sensitive = self._key_is_sensitive(key)
        if sensitive:
            return MASK
        if type(value) is str:
            return self.text(value)
        if type(value) in (int, float, bool) or value is None:
            return value
        return redact_value(key, value)

    def _pairs(self, pairs: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
        """Redact ``(key, value)`` pairs; returns ``pairs`` itself when nothing changes.

        The common case (known keys, cached strings, numbers) is two dict
        lookups per pair, inlined here because this runs for every span.
        """
        try:
            cached = self._pair_sets.get(pairs)
        except TypeError:  # an unhashable value: redact without the cache
            return self._redact_pairs(pairs)
        if cached is None:
            cached = self._redact_pairs(pairs)
            if len(self._pair_sets) >= self._cache_size:
                self._pair_sets.clear()
            self._pair_sets[pairs] = cached
        return cached

    def _flat(self, flat: tuple[Any, ...]) -> tuple[Any, ...]:
        """Like :meth:`_pairs` for flat attributes (``("k1", v1, ...)``)."""
        try:
            cached = self._flat_sets.get(flat)
        except TypeError:  # an unhashable value: redact without the cache
            return flat_attributes(self._redact_pairs(paired_attributes(flat)))
        if cached is None:
            pairs = paired_attributes(flat)
            redacted = self._redact_pairs(pairs)
            cached = flat if redacted is pairs else flat_attributes(redacted)
            if len(self._flat_sets) >= self._cache_size:
                self._flat_sets.clear()
            self._flat_sets[flat] = cached
        return cached

    def _redact_pairs(self, pairs: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
        keys, texts = self._keys, self._texts
        changed: list[tuple[str, Any]] | None = None
        for index, pair in enumerate(pairs):
            key, item = pair
            sensitive = keys.get(key)
            if sensitive is None:
                sensitive = self._key_is_sensitive(key)
            if sensitive:
                new: Any = MASK
            elif type(item) is str:
                new = texts.get(item)
                if new is None:
                    new = self.text(item)
            elif type(item) in _PLAIN_TYPES:
                new = item
            else:
                new = redact_value(key, item)
            if new is not item and new != item:
                if changed is None:
                    changed = list(pairs[:index])
                changed.append((key, new))
            elif changed is not None:
                changed.append(pair)
        return pairs if changed is None else tuple(changed)

    def _key_is_sensitive(self, key: str) -> bool:
        sensitive = _sensitive_key(key)
        if len(self._keys) >= self._cache_size:
            self._keys.clear()
        self._keys[key] = sensitive
        return sensitive

    def span(self, span: SpanRecordT) -> SpanRecordT:
        """``span`` with name, attributes, events and error message redacted.

        Takes a :class:`SpanRecord` or a plain tuple in its field order (how
        the trace store keeps spans) and returns the same type; returns the
        very same object when nothing needed masking (the common case).
        """
        name, message, attributes, events = span[3], span[9], span[10], span[11]
        new_name = self._texts.get(name) or self.text(name)
        if attributes is self._last_in:  # the spans of one run share their identity tuple
            new_attributes = self._last_out
        else:
            if attributes and type(attributes[0]) is not tuple:  # flat: a plain stored tuple
                new_attributes = self._flat(attributes)
            else:
                new_attributes = self._pairs(attributes)
            self._last_in, self._last_out = attributes, new_attributes
        if not message and not events and new_name is name and (
                new_attributes is attributes or new_attributes == attributes):
            return span  # the common case: nothing to mask, no error, no events
        new_message = self.text(message) if message else message
        new_events = events
        if events:
            new_events = tuple(
                SpanEvent(self.text(e.name), e.time_ns, self._pairs(e.attributes))
                for e in events
            )
        if (new_name is name and new_attributes == attributes
                and new_message is message and new_events == events):
            return span
        values = (*span[:3], new_name, *span[4:9], new_message, new_attributes, new_events,
                  *span[12:])
        if type(span) is tuple:
            return values  # type: ignore[return-value]
        return type(span)._make(values)  # type: ignore[attr-defined,no-any-return]

    #: The trace collector may pass stored spans as plain tuples (read by position).
    span.accepts_plain_tuples = True  # type: ignore[attr-defined]

    def audit(self, record: AuditRecord) -> AuditRecord:
        """``record`` with every field redacted (the same record if nothing changed)."""
        fields = self._pairs(record.fields)
        return record if fields == record.fields else record._replace(fields=fields)


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
