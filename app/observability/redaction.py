"""Redaction of secrets and personal data before anything is stored, exported or logged.

Two layers:

* by *key*: a value whose key looks sensitive (``password``, ``secret``,
  ``token``, ``api_key``, ``authorization``, ``credential``...) is replaced whole;
* by *value*: inside any string, API keys, bearer tokens, ``password=...``
  pairs, the password of a URL (``postgres://admin:[REDACTED]@db/x``),
  e-mail addresses, payment card numbers (Luhn-checked), IBANs (length and
  check digits verified), phone numbers (international ``+...`` and North
  American forms) and US SSNs are masked in place. The checks keep ids, hex
  trace ids, timestamps and decimals as they are.

The record redactors run on the collector threads (trace and audit), so the
producers' hot path pays nothing; :func:`structlog_redactor` is a structlog
processor for every log line (the main job installs it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from collectors.records import (
    AuditRecord,
    SpanEvent,
    SpanRecord,
)

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

#: ``scheme://user:password@host``: the password goes, scheme, user and host stay.
#: The password runs to the last ``@`` of the authority (an unescaped ``@`` in a
#: password is common enough), and the user may be empty (``redis://:pw@host``).
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/?#@\[\]]*:)[^\s/?#]*@")

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (_URL_CREDENTIALS, r"\1" + MASK + "@"),
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

#: IBAN length by country (the SWIFT IBAN registry).
_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
#: Countries whose account part (BBAN) is digits only: an upper-case hex id that
#: happens to start like one of their IBANs is not taken for one.
_IBAN_DIGITS_ONLY = frozenset({
    "AT", "BA", "BE", "CZ", "DE", "DK", "EE", "ES", "FI", "FO", "GL", "HR", "HU", "IL", "LT",
    "ME", "NO", "PL", "PT", "RS", "SE", "SI", "SK", "TN", "XK",
})


def _iban_pattern() -> re.Pattern[str]:
    """Country code, check digits and exactly the country's length, spaces allowed."""
    by_length: dict[int, list[str]] = {}
    for country, length in _IBAN_LENGTHS.items():
        by_length.setdefault(length, []).append(country)
    alternatives = [
        rf"(?:{'|'.join(sorted(countries))})\d\d(?: ?[A-Z0-9]){{{length - 4}}}"
        for length, countries in sorted(by_length.items(), reverse=True)
    ]
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")(?![A-Za-z0-9])")


_IBAN = _iban_pattern()
#: International numbers: ``+``, then 8 to 15 digits (E.164) with spaces, dashes or
#: parentheses between them; not part of a longer number or word.
_PHONE_INTERNATIONAL = re.compile(r"(?<![\w+])\+\d(?:[ ()-]{0,2}\d){7,14}(?!\w|\.\d)")
#: North American numbers: ``(202) 555-0173``, ``202-555-0173``, ``202.555.0173``.
_PHONE_NANP = re.compile(r"(?<![\w.-])(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-]|\.\d)")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
#: Substrings (of the lower-cased text) that at least one pattern above needs.
_TRIGGERS = (
    "@", "=", ":", "bearer", "basic", "sk-", "pk-", "rk-", "sk_", "pk_", "rk_", "akia", "asia",
    "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "aiza", "eyj",
)
#: Texts shorter than this can only match the patterns that need "@", "=", ":"
#: or "+" (an SSN takes 11 characters, a card number 13, every key shape more).
_SHORTEST_NO_SEPARATOR_MATCH = 11
_DIGITS3 = re.compile(r"\d\d\d")
#: Some digit shape every digit pattern needs: SSN, card, phone, IBAN.
_DIGIT_SHAPES = re.compile(
    r"\d{3}-\d{2}-\d{4}|(?:\d[ -]?){12}\d|\+\d|\d{3}[ .-]\d{3}[ .-]\d{4}|\(\d{3}\)|[A-Z]{2}\d\d"
)


def _may_contain_secret(text: str) -> bool:
    """A cheap pre-check every pattern needs to pass: most ids, versions and names fail it.

    Substring tests for the textual triggers come first; the digit patterns
    (SSNs, card, phone and IBAN numbers) are only tried when the text has
    three digits in a row and one of their digit shapes, so a typical id
    costs a few substring tests instead of a regular expression.
    """
    if len(text) < _SHORTEST_NO_SEPARATOR_MATCH:
        return "@" in text or "=" in text or ":" in text or "+" in text
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
    """``[CARD]`` for a Luhn-valid 13-19 digit number issued by a card network.

    Card numbers start with 2 to 6 (Mastercard, Amex, Diners, JCB, Visa,
    Discover, UnionPay); epoch timestamps in ms, us and ns start with 1 for
    years to come, and must not be taken for cards.
    """
    digits = re.sub(r"[ -]", "", match.group(0))
    if 13 <= len(digits) <= 19 and digits[0] in "23456" and _luhn_ok(digits):
        return "[CARD]"
    return match.group(0)


def _iban_ok(iban: str) -> bool:
    """ISO 13616: the check digits make the rearranged number 1 modulo 97."""
    if iban[:2] in _IBAN_DIGITS_ONLY and not iban[4:].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _mask_iban(match: re.Match[str]) -> str:
    return "[IBAN]" if _iban_ok(match.group(0).replace(" ", "")) else match.group(0)


def _mask_phone(match: re.Match[str]) -> str:
    digits = sum(char.isdigit() for char in match.group(0))
    return "[PHONE]" if 8 <= digits <= 15 or match.re is _PHONE_NANP else match.group(0)


#: Applied after :data:`_PATTERNS`, in this order: the IBAN before the phone
#: and card numbers its digits could look like, the phone before the card.
_CHECKED_PATTERNS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (_IBAN, _mask_iban),
    (_PHONE_INTERNATIONAL, _mask_phone),
    (_PHONE_NANP, _mask_phone),
    (_CARD, _mask_card),
)


def _apply_patterns(text: str) -> str:
    """Every pattern, without the pre-check (what :func:`redact_text` does when it passes)."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    for checked, mask in _CHECKED_PATTERNS:
        text = checked.sub(mask, text)
    return text


def redact_text(text: str) -> str:
    """Mask secrets and personal data inside ``text``."""
    if not _may_contain_secret(text):
        return text
    return _apply_patterns(text)


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
        "_cache_size", "_keys", "_last_in", "_last_out", "_pair_sets", "_texts",
    )

    def __init__(self, cache_size: int = 8_192) -> None:
        self._cache_size = cache_size
        self._texts: dict[str, str] = {}
        self._keys: dict[str, bool] = {}
        #: Whole attribute tuples: the spans of one run repeat the same ones.
        self._pair_sets: dict[tuple[tuple[str, Any], ...], tuple[tuple[str, Any], ...]] = {}
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

    def span(self, span: SpanRecord) -> SpanRecord:
        """``span`` with name, attributes, events and error message redacted.

        Returns the very same record when nothing needed masking (the common case).
        """
        name, message, attributes, events = (
            span.name, span.error_message, span.attributes, span.events)
        new_name = self._texts.get(name) or self.text(name)
        if attributes is self._last_in:  # the spans of one run share their identity tuple
            new_attributes = self._last_out
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
        return span._replace(name=new_name, error_message=new_message,
                             attributes=new_attributes, events=new_events)

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
