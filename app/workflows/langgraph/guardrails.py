"""Checks on the scoring model's output.

Each check yields a :class:`~app.workflows.langgraph.state.GuardrailResult`; a
failed check sends the case to review. No check ever copies the offending
text into its detail: it names what kind of problem it found.
"""

from __future__ import annotations

import math
import re

from app.workflows.langgraph._reference import to_usd
from app.workflows.langgraph.llm import HIGH_RISK_MERCHANT_CATEGORIES
from app.workflows.langgraph.state import GuardrailResult, Transaction

__all__ = (
    "GuardrailSuite",
    "find_pii",
    "luhn_valid",
)

_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13 to 19 digits, optionally grouped by single spaces or dashes.
_CARD_CANDIDATE_RE = re.compile(r"(?<![\d.])\d(?:[ -]?\d){12,18}(?![\d.])")
_SEPARATORS_RE = re.compile(r"[ -]")
_MIN_ECHO_LENGTH = 12


def luhn_valid(digits: str) -> bool:
    """Tell whether a digit string passes the Luhn checksum of card numbers.

    Args:
        digits: Only decimal digits.

    Returns:
        Whether the checksum holds.
    """
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def find_pii(text: str, *, description: str = "") -> list[str]:
    """Name the kinds of personal data found in a text.

    Args:
        text: Text to inspect, e.g. a model rationale.
        description: The transaction's free text; echoing it verbatim (when it
            is at least 12 characters long) counts as ``description_echo``.

    Returns:
        Sorted kinds found among ``card_number``, ``description_echo``, ``email``.
    """
    kinds: set[str] = set()
    if _EMAIL_RE.search(text):
        kinds.add("email")
    for match in _CARD_CANDIDATE_RE.finditer(text):
        if luhn_valid(_SEPARATORS_RE.sub("", match.group())):
            kinds.add("card_number")
            break
    echo = description.strip()
    if len(echo) >= _MIN_ECHO_LENGTH and echo.casefold() in text.casefold():
        kinds.add("description_echo")
    return sorted(kinds)


class GuardrailSuite:
    """The guardrails run on every scoring answer.

    Args:
        min_confidence: ``confidence_floor`` fails below this confidence.
        low_risk_ceiling: ``consistency`` fails when a case without red flags
            scores above this.
        red_flag_floor: ``consistency`` fails when a case with two or more red
            flags scores below this.

    Raises:
        ValueError: If a bound is outside ``[0, 1]``.
    """

    __slots__ = ("_low_risk_ceiling", "_min_confidence", "_red_flag_floor")

    def __init__(
        self,
        *,
        min_confidence: float = 0.5,
        low_risk_ceiling: float = 0.7,
        red_flag_floor: float = 0.3,
    ) -> None:
        for name, value in (
            ("min_confidence", min_confidence),
            ("low_risk_ceiling", low_risk_ceiling),
            ("red_flag_floor", red_flag_floor),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        self._min_confidence = min_confidence
        self._low_risk_ceiling = low_risk_ceiling
        self._red_flag_floor = red_flag_floor

    def check(
        self,
        transaction: Transaction,
        *,
        risk_score: float,
        rationale: str,
        confidence: float,
    ) -> list[GuardrailResult]:
        """Run every guardrail.

        Args:
            transaction: The transaction that was scored.
            risk_score: The model's score.
            rationale: The model's explanation.
            confidence: The model's confidence.

        Returns:
            ``score_range``, ``rationale_present``, ``no_pii_echo``,
            ``consistency`` and ``confidence_floor``, in that order.
        """
        in_range = math.isfinite(risk_score) and 0.0 <= risk_score <= 1.0
        results = [
            GuardrailResult(
                name="score_range",
                passed=in_range,
                score=1.0 if in_range else 0.0,
                detail="score in [0, 1]" if in_range else "score outside [0, 1]",
            ),
            _rationale_present(rationale),
            _no_pii_echo(rationale, transaction.description),
            self._consistency(transaction, risk_score if in_range else math.nan),
        ]
        confident = math.isfinite(confidence) and confidence >= self._min_confidence
        results.append(
            GuardrailResult(
                name="confidence_floor",
                passed=confident,
                score=min(1.0, max(0.0, confidence)) if math.isfinite(confidence) else 0.0,
                detail=f"confidence against a floor of {self._min_confidence}",
            )
        )
        return results

    def _consistency(self, transaction: Transaction, risk_score: float) -> GuardrailResult:
        flags = _red_flags(transaction)
        if math.isnan(risk_score):
            return GuardrailResult(
                name="consistency", passed=False, score=0.0, detail="no valid score to compare"
            )
        if flags >= 2 and risk_score < self._red_flag_floor:
            gap = self._red_flag_floor - risk_score
            return GuardrailResult(
                name="consistency",
                passed=False,
                score=max(0.0, 1.0 - gap / self._red_flag_floor),
                detail=f"{flags} red flags but score below {self._red_flag_floor}",
            )
        if flags == 0 and risk_score > self._low_risk_ceiling:
            gap = risk_score - self._low_risk_ceiling
            return GuardrailResult(
                name="consistency",
                passed=False,
                score=max(0.0, 1.0 - gap / (1.0 - self._low_risk_ceiling)),
                detail=f"no red flags but score above {self._low_risk_ceiling}",
            )
        return GuardrailResult(
            name="consistency", passed=True, score=1.0, detail=f"{flags} red flags"
        )


def _rationale_present(rationale: str) -> GuardrailResult:
    present = len(rationale.strip()) >= 20
    return GuardrailResult(
        name="rationale_present",
        passed=present,
        score=1.0 if present else 0.0,
        detail="rationale given" if present else "rationale missing or too short",
    )


def _no_pii_echo(rationale: str, description: str) -> GuardrailResult:
    kinds = find_pii(rationale, description=description)
    return GuardrailResult(
        name="no_pii_echo",
        passed=not kinds,
        score=0.0 if kinds else 1.0,
        detail=f"found {', '.join(kinds)}" if kinds else "no personal data found",
    )


def _red_flags(transaction: Transaction) -> int:
    amount_usd = to_usd(transaction.amount, transaction.currency)
    return (
        (amount_usd >= 10000)
        + (transaction.account_age_days < 30)
        + (transaction.prior_chargebacks >= 2)
        + (transaction.merchant_category in HIGH_RISK_MERCHANT_CATEGORIES)
    )
