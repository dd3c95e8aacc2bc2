"""Business policy rules applied to a validated transaction.

Hard rules stop the workflow with :class:`~app.errors.PolicyViolationError`;
soft rules produce :class:`~app.workflows.langgraph.state.PolicyResult` entries,
and a failed soft rule sends the case to review.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from app.errors import PolicyViolationError
from app.workflows.langgraph._reference import to_usd
from app.workflows.langgraph.state import PolicyResult, Transaction

__all__ = (
    "DEFAULT_ELEVATED_RISK_COUNTRIES",
    "DEFAULT_SANCTIONED_COUNTRIES",
    "PolicyEngine",
)

#: Countries under comprehensive sanctions in this simulation (hard rule).
DEFAULT_SANCTIONED_COUNTRIES: frozenset[str] = frozenset({"CU", "IR", "KP", "SY"})
#: Countries whose transactions are reviewed by a human (soft rule).
DEFAULT_ELEVATED_RISK_COUNTRIES: frozenset[str] = frozenset({"AF", "MM", "VE", "YE"})


class PolicyEngine:
    """Evaluates the hard and soft policy rules.

    Args:
        sanctioned_countries: Hard rule: no transaction from these countries.
        amount_cap_usd: Hard rule: no transaction above this many US dollars.
        review_amount_usd: Soft rule ``large_amount``: review above this.
        new_account_days: Soft rule ``new_account_high_value``: an account
            younger than this...
        new_account_amount_usd: ...may not move more than this without review.
        max_prior_chargebacks: Soft rule ``chargeback_history``: review at or
            above this many chargebacks.
        elevated_risk_countries: Soft rule ``elevated_risk_country``.

    Raises:
        ValueError: If a limit is not positive or the caps are inconsistent.
    """

    __slots__ = (
        "_amount_cap_usd",
        "_elevated_risk_countries",
        "_max_prior_chargebacks",
        "_new_account_amount_usd",
        "_new_account_days",
        "_review_amount_usd",
        "_sanctioned_countries",
    )

    def __init__(
        self,
        *,
        sanctioned_countries: Iterable[str] = DEFAULT_SANCTIONED_COUNTRIES,
        amount_cap_usd: Decimal = Decimal("1000000"),
        review_amount_usd: Decimal = Decimal("10000"),
        new_account_days: int = 30,
        new_account_amount_usd: Decimal = Decimal("2000"),
        max_prior_chargebacks: int = 3,
        elevated_risk_countries: Iterable[str] = DEFAULT_ELEVATED_RISK_COUNTRIES,
    ) -> None:
        if amount_cap_usd <= 0 or review_amount_usd <= 0 or new_account_amount_usd <= 0:
            raise ValueError("policy amounts must be positive")
        if review_amount_usd > amount_cap_usd:
            raise ValueError("review_amount_usd must not exceed amount_cap_usd")
        if new_account_days < 0 or max_prior_chargebacks < 1:
            raise ValueError("new_account_days must be >= 0 and max_prior_chargebacks >= 1")
        self._sanctioned_countries = frozenset(sanctioned_countries)
        self._amount_cap_usd = amount_cap_usd
        self._review_amount_usd = review_amount_usd
        self._new_account_days = new_account_days
        self._new_account_amount_usd = new_account_amount_usd
        self._max_prior_chargebacks = max_prior_chargebacks
        self._elevated_risk_countries = frozenset(elevated_risk_countries)

    def evaluate(self, transaction: Transaction) -> list[PolicyResult]:
        """Apply every rule, hard ones first.

        Args:
            transaction: The validated transaction.

        Returns:
            One result per rule, the hard rules (all passed) included.

        Raises:
            PolicyViolationError: On a hard breach; ``policy`` is ``sanctions``
                or ``amount_cap``.
        """
        amount_usd = to_usd(transaction.amount, transaction.currency)
        if transaction.country in self._sanctioned_countries:
            raise PolicyViolationError(
                f"transactions from {transaction.country} are sanctioned", policy="sanctions"
            )
        if amount_usd > self._amount_cap_usd:
            raise PolicyViolationError(
                f"amount {amount_usd:.2f} USD exceeds the hard cap of {self._amount_cap_usd} USD",
                policy="amount_cap",
            )
        new_account = transaction.account_age_days < self._new_account_days
        return [
            PolicyResult(name="sanctions", passed=True, detail="country not sanctioned"),
            PolicyResult(name="amount_cap", passed=True, detail="amount within the hard cap"),
            PolicyResult(
                name="large_amount",
                passed=amount_usd <= self._review_amount_usd,
                detail=f"{amount_usd:.2f} USD against a review limit of "
                f"{self._review_amount_usd} USD",
            ),
            PolicyResult(
                name="new_account_high_value",
                passed=not (new_account and amount_usd > self._new_account_amount_usd),
                detail=f"account {transaction.account_age_days} days old, {amount_usd:.2f} USD",
            ),
            PolicyResult(
                name="chargeback_history",
                passed=transaction.prior_chargebacks < self._max_prior_chargebacks,
                detail=f"{transaction.prior_chargebacks} prior chargebacks, review at "
                f"{self._max_prior_chargebacks}",
            ),
            PolicyResult(
                name="elevated_risk_country",
                passed=transaction.country not in self._elevated_risk_countries,
                detail=f"country {transaction.country}",
            ),
        ]
