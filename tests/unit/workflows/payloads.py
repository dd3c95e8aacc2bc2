"""Request payloads shared by the workflow tests (scores under the default seed 0).

``test_graph.py::test_payload_scores_match_their_paths`` pins which path each
one takes.
"""

from __future__ import annotations

from typing import Any

APPROVE: dict[str, Any] = {
    "applicant_id": "app-1",
    "amount": "120.50",
    "currency": "USD",
    "country": "US",
    "merchant_category": "retail",
    "account_age_days": 400,
    "prior_chargebacks": 0,
    "channel": "web",
    "description": "birthday present for jane@example.com",
}
REVIEW: dict[str, Any] = {
    **APPROVE, "amount": "800", "account_age_days": 60, "prior_chargebacks": 1,
}
REJECT: dict[str, Any] = {
    **APPROVE,
    "amount": "1500",
    "merchant_category": "gambling",
    "account_age_days": 10,
    "prior_chargebacks": 2,
}
HIGH_RISK: dict[str, Any] = {
    **APPROVE,
    "amount": "9000",
    "currency": "EUR",
    "merchant_category": "gambling",
    "account_age_days": 5,
    "prior_chargebacks": 3,
    "channel": "api",
}
