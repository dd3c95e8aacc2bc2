"""Tests for :mod:`app.observability.redaction`: no secret or PII survives anywhere.

A corpus of secrets and personal data is placed everywhere telemetry can
carry text -- span names, attributes, events and error messages, generation
metadata, audit fields, failure messages and structlog lines -- and after a
flush none of it may be found in the finished spans, the audit buffer, the
OTLP/JSON export or the captured log output. Non-secrets (token counts,
tenant ids, model versions) must come through unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, timedelta, timezone
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import LogCapture

from app.observability import Observability
from app.observability import redaction as redaction_module
from app.observability.otlp import spans_to_otlp
from app.observability.redaction import (
    MASK,
    Redactor,
    redact_audit_record,
    redact_span_record,
    redact_text,
    redact_value,
    structlog_redactor,
)
from collectors.records import AuditRecord, SpanEvent, SpanRecord

MakeObs = Callable[..., Observability]

#: (name, text carrying the secret, the part that must not survive)
CORPUS: tuple[tuple[str, str, str], ...] = (
    ("openai-key", "key sk-4fJ9kL2mN8pQ1rS7tU3vW6xY0zA5bC2dE9fG1hI4jK7lM0nO in use",
     "4fJ9kL2mN8pQ1rS7tU3vW6xY0zA5bC2dE9fG1hI4jK7lM0nO"),
    ("openai-project-key", "sk-proj-Ab3dE_fGh1JkLmNoPqRsTuVwXyZ0123456789-abcDEF_ghi",
     "Ab3dE_fGh1JkLmNoPqRsTuVwXyZ0123456789"),
    ("anthropic-key", "x-api-key sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv_wxYZ-0123456789abcdefAA",
     "AbCdEfGhIjKlMnOpQrStUv_wxYZ-0123456789abcdefAA"),
    ("stripe-key", "charge with sk_live_51HxYzAbCdEfGhIjKlMnOpQr", "51HxYzAbCdEfGhIjKlMnOpQr"),
    ("aws-access-key", "AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("aws-secret", "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("github-token", "ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R",
     "1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R"),
    ("github-fine-grained", "github_pat_11ABCDEFG0aBcDeFgHiJkLmN_oPqRsTuVwXyZ0123456789abcdef",
     "11ABCDEFG0aBcDeFgHiJkLmN_oPqRsTuVwXyZ0123456789abcdef"),
    ("slack-token", "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp", "AbCdEfGhIjKlMnOp"),
    ("google-key", "key=AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY&q=1",
     "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"),
    ("google-key-bare", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
     "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"),
    ("jwt", "session eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_Xg",
     "dozjgNryP4J3jVmNHl0w5N_Xg"),
    ("bearer", "Authorization: Bearer abcdef0123456789ghijkl", "abcdef0123456789ghijkl"),
    ("basic-auth", "Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy"),
    ("password-kv", "login failed: password=hunter2! for user bob", "hunter2!"),
    ("password-prefixed", "DB_PASSWORD=Tr0ub4dor-3x", "Tr0ub4dor-3x"),
    ("password-json", '{"user": "bob", "password": "correct horse battery staple"}',
     "correct horse battery staple"),
    ("api-key-json", '{"api_key":"zz-secret-value-123"}', "zz-secret-value-123"),
    ("api-key-colon", "api_key: 'q1w2e3r4t5'", "q1w2e3r4t5"),
    ("secret-kv", "secret: swordfish42", "swordfish42"),
    ("client-secret", "client_secret=9f8e7d6c5b4a3210", "9f8e7d6c5b4a3210"),
    ("django-secret", "SECRET_KEY=django-insecure-x9y8z7", "django-insecure-x9y8z7"),
    ("token-kv", "token=abc123def456", "abc123def456"),
    ("email", "contact jane.doe+risk@example.co.uk now", "jane.doe+risk@example.co.uk"),
    ("card-spaces", "card 4111 1111 1111 1111 declined", "4111 1111 1111 1111"),
    ("card-dashes", "card 5500-0000-0000-0004 ok", "5500-0000-0000-0004"),
    ("card-plain", "pan=4012888888881881", "4012888888881881"),
    ("card-amex", "amex 3782 822463 10005", "3782 822463 10005"),
    ("ssn", "applicant SSN 078-05-1120 on file", "078-05-1120"),
    ("url-password", "connect postgres://admin:Pa55w0rd!@db.internal:5432/risk failed",
     "Pa55w0rd!"),
    ("url-password-no-user", "cache redis://:s3cr3t-r3d1s@cache:6379/0 down", "s3cr3t-r3d1s"),
    ("url-password-with-at", "https://svc:p@ss-w0rd@api.example.com/v1 refused", "p@ss-w0rd"),
    ("iban-grouped", "refund to DE89 3704 0044 0532 0130 00 today", "3704 0044 0532 0130"),
    ("iban-compact", "iban=GB82WEST12345698765432;", "WEST12345698765432"),
    ("phone-international", "call +44 20 7946 0958 back", "7946 0958"),
    ("phone-nanp", "call (202) 555-0173 back", "555-0173"),
)
SECRETS = tuple(secret for _, _, secret in CORPUS)

#: Keys whose values are replaced whole, whatever they hold.
SENSITIVE_FIELDS: dict[str, str] = {
    "password": "pw-plain-value-1",
    "api_key": "plainkey123",
    "authorization": "plain-authz-value",
    "session_id": "sess-plain-value",
    "x-auth-token": "plain-header-token",
    "card_number": "plain-card-value",
}
SECRETS_ALL = SECRETS + tuple(SENSITIVE_FIELDS.values())

#: Things that look a little like secrets but are not, and must survive as they are.
SAFE_ATTRIBUTES: dict[str, Any] = {
    "tenant_id": "tenant-alpha",
    "model_version": "risk-llm-mini-v1",
    "prompt_version": "risk-prompt-v3",
    "correlation_id": "3f2b8c1e-9d4a-4b6e-8f7a-1c2d3e4f5a6b",
    "input_tokens": 1234,
    "output_tokens": 56,
    "total_tokens": 1290,
    "prompt_tokens": 1234,
    "completion_tokens": 56,
    "gen_ai.usage.input_tokens": 1234,
    "amount": 1234.56,
    "note": "order 1234-5678 for 42 units, card 4111 1111 1111 1112 (invalid), risk-llm-v2",
}


def _leaks(text: str, secrets: tuple[str, ...] = SECRETS_ALL) -> list[str]:
    return [secret for secret in secrets if secret in text]


@pytest.fixture
def log_capture() -> Iterator[LogCapture]:
    """structlog at every level through exception formatting, the redactor and a capture.

    ``format_exc_info`` runs before the redactor so that exception text is a
    string the redactor can see. The previous configuration is restored.
    """
    previous = structlog.get_config()
    capture = LogCapture()
    structlog.configure(
        processors=[structlog.processors.format_exc_info, structlog_redactor, capture],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    try:
        yield capture
    finally:
        structlog.configure(**previous)


# --- the text and value functions ------------------------------------------------


@pytest.mark.parametrize(("text", "secret"), [(t, s) for _, t, s in CORPUS],
                         ids=[name for name, _, _ in CORPUS])
def test_redact_text_masks_each_secret(text: str, secret: str) -> None:
    redacted = redact_text(text)

    assert secret not in redacted
    assert any(mask in redacted for mask in (
        "[REDACTED]", "[EMAIL]", "[CARD]", "[SSN]", "[IBAN]", "[PHONE]"))


def test_redact_text_keeps_the_surrounding_text() -> None:
    assert redact_text("login failed: password=hunter2! for user bob") == (
        "login failed: password=[REDACTED] for user bob")
    assert redact_text("card 4111 1111 1111 1111 declined") == "card [CARD] declined"
    assert redact_text("contact jane@example.com now") == "contact [EMAIL] now"
    assert redact_text("applicant SSN 078-05-1120 on file") == "applicant SSN [SSN] on file"
    assert redact_text("connect postgres://admin:PASSWORD@db/x failed") == (
        "connect postgres://admin:[REDACTED]@db/x failed")
    assert redact_text("refund DE89 3704 0044 0532 0130 00 now") == "refund [IBAN] now"
    assert redact_text("call +1 (202) 555-0173, or 202.555.0199") == (
        "call [PHONE], or [PHONE]")


@pytest.mark.parametrize(
    "text",
    [
        "risk-llm-v2", "risk-llm-mini-v1", "tenant-alpha", "input_tokens=120 output_tokens: 5",
        "max_tokens=7 tokens=5 total_tokens=9", "card 4111 1111 1111 1112 (fails Luhn)",
        "order 1234-5678", "phone 555-0100", "3f2b8c1e-9d4a-4b6e-8f7a-1c2d3e4f5a6b",
        "policies passed=3 bypass=0", "desk-assessment-for-tenant-one", "", "plain words",
        "https://example.com/path:with@colon", "see http://host/x", "user@ handle",
        "GB82WEST12345698765433 (wrong check digits)", "BE12ABCDEF123456",
        "2024-05-01T12:30:45.123456+05:30", "epoch ns 1733625600123456789",
        "1234567.89", "+12345678.9", "offset +0100", "v1.202.555",
        "4bf92f3577b34da6a3ce929d0e0e4736",
    ],
)
def test_redact_text_leaves_non_secrets_unchanged(text: str) -> None:
    assert redact_text(text) == text


def test_redact_value_by_key_and_inside_containers() -> None:
    assert redact_value("password", 1234) == MASK
    assert redact_value("API-Key", "x") == MASK
    assert redact_value("input_tokens", 5) == 5
    assert redact_value("total_tokens", 5) == 5
    assert redact_value("refresh_token", "r") == MASK
    assert redact_value("note", "mail bob@example.com") == "mail [EMAIL]"
    assert redact_value("payload", {"secret": "s", "ok": "bob@example.com", "n": 1}) == {
        "secret": MASK, "ok": "[EMAIL]", "n": 1}
    assert redact_value("items", ["a@b.io", 3]) == ["[EMAIL]", 3]
    assert redact_value("items", ("a@b.io",)) == ("[EMAIL]",)


def test_record_redactors_return_the_same_record_when_clean() -> None:
    span = SpanRecord(1, 2, 0, "node", "node", 1, 2, "ok", None, None,
                      (("tenant_id", "t1"), ("input_tokens", 3)),
                      (SpanEvent("e", 1, (("k", "v"),)),))
    audit = AuditRecord("x", 1, (("tenant_id", "t1"),))

    redactor = Redactor()
    assert redactor.span(span) is span
    assert redactor.audit(audit) is audit
    dirty = span._replace(name="mail bob@example.com", error_message="password=abc")
    cleaned = redact_span_record(dirty)
    assert (cleaned.name, cleaned.error_message) == ("mail [EMAIL]", "password=[REDACTED]")
    assert redact_audit_record(audit._replace(fields=(("token", "abc"),))).fields == (
        ("token", MASK),)


def test_redactor_cache_is_bounded() -> None:
    redactor = Redactor(cache_size=4)
    for index in range(20):
        assert redactor.text(f"user{index}@example.com") == "[EMAIL]"
    assert len(redactor._texts) <= 4


# --- end to end: nothing survives anywhere ------------------------------------------


def _emit_everything(obs: Observability) -> None:
    tracing = obs.tracing
    logger = structlog.get_logger("test.redaction")
    for name, text, _ in CORPUS:
        with pytest.raises(ValueError), tracing.span(
            f"call {text}", tenant_id="tenant-alpha",
            attributes={"note": text, **SENSITIVE_FIELDS, "input_tokens": 1234},
        ) as span:
            span.add_event(f"event {text}", detail=text, password="pw-plain-value-1")
            obs.langfuse.log_generation_sync(
                tenant_id="tenant-alpha", model_version="risk-llm-mini-v1",
                prompt_version="risk-prompt-v3", input_tokens=1234, output_tokens=56,
                latency=0.01, metadata={"note": text, **SENSITIVE_FIELDS,
                                        "total_tokens": 1290},
            )
            obs.audit.log(
                "redaction.probe", tenant_id="tenant-alpha", case=name, note=text,
                nested={"detail": text, "token": "plain-header-token"}, items=[text],
                **SENSITIVE_FIELDS,
            )
            obs.failures.classify(RuntimeError(f"upstream said: {text}"),
                                  tenant_id="tenant-alpha")
            logger.warning(f"log line {text}", detail=text, **SENSITIVE_FIELDS)
            try:
                raise KeyError(text)
            except KeyError:
                logger.exception("handled", case=name)
            raise ValueError(f"failed with {text}")


def test_no_secret_survives_anywhere(obs: Observability, log_capture: LogCapture) -> None:
    _emit_everything(obs)
    assert obs.flush()

    spans = obs.tracing.finished_spans()
    events = obs.audit.events()
    assert len(spans) == 2 * len(CORPUS)
    assert len(events) == 2 * len(CORPUS)
    assert _leaks(repr(spans)) == []
    assert _leaks(repr(events)) == []
    assert _leaks(json.dumps(spans_to_otlp(spans))) == []
    logged = repr(log_capture.entries)
    assert _leaks(logged) == []
    audit_lines = [e for e in log_capture.entries if e.get("audit") is True]
    assert len(audit_lines) == len(events)  # the audit log lines were captured too
    assert any(e.get("exception") for e in log_capture.entries)  # tracebacks were checked


def test_errors_are_redacted_in_status_and_exception_event(obs: Observability) -> None:
    with pytest.raises(RuntimeError), obs.tracing.span("node"):
        raise RuntimeError("auth failed for jane@example.com with password=hunter2!")

    (span,) = obs.tracing.finished_spans()
    assert span.error_message == "auth failed for [EMAIL] with password=[REDACTED]"
    (event,) = span.events
    assert dict(event.attributes)["exception.message"] == span.error_message
    document = json.dumps(spans_to_otlp([span]))
    assert "hunter2" not in document and "jane@example.com" not in document


def test_non_secrets_survive_unchanged(obs: Observability) -> None:
    with obs.tracing.span("risk_scoring", kind="node", attributes=SAFE_ATTRIBUTES):
        obs.langfuse.log_generation_sync(
            tenant_id="tenant-alpha", model_version="risk-llm-mini-v1",
            prompt_version="risk-prompt-v3", input_tokens=1234, output_tokens=56,
            latency=0.01, metadata={"total_tokens": 1290, "prompt_tokens": 1234},
        )
    obs.audit.log("decision.made", **SAFE_ATTRIBUTES)

    spans = {span.name: span for span in obs.tracing.finished_spans()}
    assert spans["risk_scoring"].attrs == SAFE_ATTRIBUTES
    generation = spans["chat risk-llm-mini-v1"].attrs
    assert generation["gen_ai.usage.input_tokens"] == 1234
    assert generation["gen_ai.usage.output_tokens"] == 56
    assert generation["total_tokens"] == 1290
    assert generation["prompt_tokens"] == 1234
    assert generation["tenant_id"] == "tenant-alpha"
    assert generation["gen_ai.request.model"] == "risk-llm-mini-v1"
    assert generation["prompt_version"] == "risk-prompt-v3"
    (event,) = obs.audit.events()
    assert event.data == SAFE_ATTRIBUTES


def test_structlog_redactor_processor(log_capture: LogCapture) -> None:
    logger = structlog.get_logger("test")
    logger.info("user jane@example.com logged in", password="pw", tokens=12,
                payload={"api_key": "k", "note": "ssn 078-05-1120"}, input_tokens=5)

    (entry,) = log_capture.entries
    assert entry["event"] == "user [EMAIL] logged in"
    assert entry["password"] == MASK
    assert entry["payload"] == {"api_key": MASK, "note": "ssn [SSN]"}
    assert (entry["tokens"], entry["input_tokens"]) == (12, 5)


def test_structlog_redactor_with_capture_logs() -> None:
    with structlog.testing.capture_logs(processors=[structlog_redactor]) as logs:
        structlog.get_logger("test").warning("secret: swordfish42", token="abc")

    assert logs == [{"event": "secret: [REDACTED]", "token": MASK, "log_level": "warning"}]


def test_redaction_can_be_switched_off(make_obs: MakeObs) -> None:
    obs = make_obs(redact=False)
    with obs.tracing.span("mail bob@example.com"):
        pass
    obs.audit.log("x", password="visible")

    assert obs.tracing.finished_spans()[0].name == "mail bob@example.com"
    assert obs.audit.events()[0].data["password"] == "visible"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789 -_.+/~abcdefxyzSKAIJ@=:"), max_size=10))
def test_short_texts_skip_only_what_no_pattern_could_match(text: str) -> None:
    """The short-text shortcut of the pre-check never hides a match of the full patterns."""
    from app.observability import redaction

    by_patterns = redaction._apply_patterns(text)
    if by_patterns != text:
        assert redaction._may_contain_secret(text)
    assert redact_text(text) == by_patterns


# --- URL credentials, IBANs, phone numbers: the general rules ----------------------


_SCHEMES = st.sampled_from(
    ["postgres", "postgresql", "mysql", "redis", "amqp", "https", "mongodb+srv", "ftp"])
_USERS = st.from_regex(r"[a-z][a-z0-9_.-]{0,15}", fullmatch=True).filter(
    lambda user: not redaction_module._SENSITIVE_KEY.search(user))
_PASSWORDS = st.text(
    alphabet=st.sampled_from("abcXYZ0189!$%^*()_-+=~.,;'@:"), min_size=1, max_size=30)
_HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){0,2}(:[0-9]{2,5})?", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(scheme=_SCHEMES, user=_USERS, password=_PASSWORDS, host=_HOSTS)
def test_a_url_password_is_masked_and_scheme_user_host_kept(
    scheme: str, user: str, password: str, host: str
) -> None:
    text = f"connect failed: {scheme}://{user}:{password}@{host}/db?x=1"

    assert redact_text(text) == f"connect failed: {scheme}://{user}:[REDACTED]@{host}/db?x=1"


def _with_check_digits(country: str, bban: str) -> str:
    number = int("".join(str(int(char, 36)) for char in bban + country + "00"))
    return f"{country}{98 - number % 97:02d}{bban}"


@settings(max_examples=300, deadline=None)
@given(data=st.data(), grouped=st.booleans())
def test_every_valid_iban_is_masked_and_a_wrong_check_digit_is_not_an_iban(
    data: st.DataObject, grouped: bool
) -> None:
    country = data.draw(st.sampled_from(sorted(redaction_module._IBAN_LENGTHS)))
    length = redaction_module._IBAN_LENGTHS[country]
    bban = data.draw(st.text(alphabet="0123456789", min_size=length - 4, max_size=length - 4))
    iban = _with_check_digits(country, bban)
    wrong = iban[:2] + f"{(int(iban[2:4]) + 1) % 100:02d}" + iban[4:]

    def show(value: str) -> str:
        return " ".join(value[i:i + 4] for i in range(0, len(value), 4)) if grouped else value

    assert redact_text(f"pay to {show(iban)} today") == "pay to [IBAN] today"
    assert "[IBAN]" not in redact_text(f"pay to {show(wrong)} today")


@settings(max_examples=200, deadline=None)
@given(
    country=st.integers(1, 999),
    groups=st.lists(st.integers(0, 9_999).map(lambda n: f"{n:04d}"), min_size=2, max_size=3),
    separator=st.sampled_from([" ", "-", ""]),
)
def test_international_phone_numbers_are_masked(
    country: int, groups: list[str], separator: str
) -> None:
    number = f"+{country} " + separator.join(groups)

    assert redact_text(f"call {number} today") == "call [PHONE] today"


_UTC_OFFSETS = st.sampled_from([UTC, timezone(timedelta(hours=1)),
                                timezone(timedelta(hours=-5)),
                                timezone(timedelta(hours=5, minutes=30))])
#: Ids, timestamps and numbers telemetry is full of; none of them is a secret.
_NOT_SECRETS = st.one_of(
    st.integers(0, 2**128 - 1).map(lambda n: f"{n:032x}"),  # W3C trace ids
    st.integers(0, 2**64 - 1).map(lambda n: f"{n:016x}"),  # span ids
    st.integers(0, 2**64 - 1).map(lambda n: f"{n:016X}"),
    st.uuids().map(str),
    st.integers(0, 2**48 - 1).map(lambda n: f"corr-{n:012x}"),
    st.builds(lambda seed, i: f"req-{seed}-{i:06d}", st.integers(0, 10**6), st.integers(0, 10**6)),
    st.integers(1, 10_000).map(lambda n: f"tenant-{n:02d}"),
    st.datetimes(timezones=_UTC_OFFSETS).map(lambda d: d.isoformat()),
    st.integers(10**18, 2 * 10**18 - 1).map(str),  # epoch nanoseconds
    st.integers(10**12, 2 * 10**12 - 1).map(str),  # epoch milliseconds
    st.decimals(min_value=-(10**12) + 1, max_value=10**12 - 1, places=6).map(str),
    st.floats(min_value=-1e12, max_value=1e12, allow_nan=False).map(repr),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_NOT_SECRETS, min_size=1, max_size=4).map(", ".join))
def test_ids_trace_ids_timestamps_and_decimals_are_never_masked(text: str) -> None:
    assert redact_text(text) == text
