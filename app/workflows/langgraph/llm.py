"""A deterministic, offline stand-in for the scoring LLM.

:class:`SimulatedLLM` never touches the network. Its score is a function of the
transaction's features, the model version and a small jitter drawn with
BLAKE2b from ``(seed, request_id)``; token counts come from the rendered prompt
and the rationale; an infrastructure fault is another stable draw. The same
input and seed give the same response in every process.

Latency is simulated too, so that traces and latency percentiles look like a
real run: each call awaits ``asyncio.sleep`` for a log-normal draw around a
median (``latency_seconds``) with a spread (``latency_spread``, the standard
deviation of the logarithm), drawn from ``(seed, request_id)`` like the jitter.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from types import MappingProxyType

from app.errors import InfrastructureError
from app.workflows.langgraph._reference import stable_fraction, to_usd
from app.workflows.langgraph.registry import PromptVersion
from app.workflows.langgraph.state import Transaction

__all__ = (
    "HIGH_RISK_MERCHANT_CATEGORIES",
    "MAX_LATENCY_SPREAD",
    "LLMResponse",
    "SimulatedLLM",
    "count_tokens",
)

#: Merchant categories the simulated model considers risky.
HIGH_RISK_MERCHANT_CATEGORIES: frozenset[str] = frozenset(
    {"gambling", "crypto_exchange", "money_transfer", "gift_cards"}
)

_MODEL_BIAS: Mapping[str, float] = MappingProxyType(
    {
        "risk-llm-v2": 0.0,
        "risk-llm-v1": 0.03,
        "risk-llm-mini-v1": 0.05,
    }
)
_CHANNEL_RISK: Mapping[str, float] = MappingProxyType(
    {
        "api": 0.05,
        "web": 0.02,
        "mobile": 0.01,
        "branch": 0.0,
    }
)
_JITTER_SPAN = 0.04
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
#: Latency draws stay within this many standard deviations of the median's
#: logarithm: a log-normal tail is unbounded, a simulated call is not.
_LATENCY_Z_LIMIT = 4.0
_STANDARD_NORMAL = NormalDist()
#: The largest latency spread accepted (a factor of e**(4 * 3) ~ 160,000 either way).
MAX_LATENCY_SPREAD = 3.0


def count_tokens(text: str) -> int:
    """Count tokens with a simple word/punctuation tokenizer.

    Args:
        text: Any text.

    Returns:
        The number of words plus punctuation marks.
    """
    return len(_TOKEN_RE.findall(text))


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMResponse:
    """One scoring answer of the model.

    Attributes:
        risk_score: Risk in ``[0, 1]``.
        confidence: The model's confidence in ``[0, 1]``.
        rationale: Explanation of the score; never contains the description.
        input_tokens: Tokens in the rendered prompt.
        output_tokens: Tokens in the rationale.
        latency_seconds: Simulated latency of this call (the draw awaited).
        model_version: Model that answered.
        prompt_version: Prompt id that was rendered.
    """

    risk_score: float
    confidence: float
    rationale: str
    input_tokens: int
    output_tokens: int
    latency_seconds: float
    model_version: str
    prompt_version: str


class SimulatedLLM:
    """A deterministic scoring model with optional latency and infrastructure faults.

    Args:
        seed: Seed of the jitter, latency and fault draws.
        latency_seconds: Median simulated latency; ``0`` means the call never awaits.
        infra_failure_rate: Share of requests, in ``[0, 1]``, whose call fails
            with :class:`~app.errors.InfrastructureError`.
        latency_spread: Standard deviation of the latency's logarithm (a
            log-normal around the median; ``0``, the default, is the median
            every time). Draws are kept within four deviations of the median.

    Raises:
        ValueError: If the latency is negative or not finite, the spread is
            outside ``[0, 3]``, or the failure rate is outside ``[0, 1]``.
    """

    __slots__ = ("_infra_failure_rate", "_latency_seconds", "_latency_spread", "_seed")

    def __init__(
        self,
        seed: int = 0,
        latency_seconds: float = 0.0,
        infra_failure_rate: float = 0.0,
        *,
        latency_spread: float = 0.0,
    ) -> None:
        if not math.isfinite(latency_seconds) or latency_seconds < 0.0:
            raise ValueError(f"latency_seconds must be finite and >= 0, got {latency_seconds!r}")
        if not 0.0 <= infra_failure_rate <= 1.0:
            raise ValueError(f"infra_failure_rate must be in [0, 1], got {infra_failure_rate!r}")
        if not 0.0 <= latency_spread <= MAX_LATENCY_SPREAD:  # also refuses NaN
            raise ValueError(
                f"latency_spread must be in [0, {MAX_LATENCY_SPREAD:g}], got {latency_spread!r}"
            )
        self._seed = seed
        self._latency_seconds = latency_seconds
        self._latency_spread = latency_spread
        self._infra_failure_rate = infra_failure_rate

    @property
    def seed(self) -> int:
        """Seed of the jitter and fault draws."""
        return self._seed

    @property
    def latency_seconds(self) -> float:
        """Median simulated latency of a call."""
        return self._latency_seconds

    @property
    def latency_spread(self) -> float:
        """Standard deviation of the simulated latency's logarithm."""
        return self._latency_spread

    def latency_for(self, request_id: str) -> float:
        """The simulated latency of ``request_id``'s call, in seconds (deterministic).

        ``median * exp(spread * z)`` with ``z`` a standard normal drawn from
        ``(seed, request_id)`` and kept within ``[-4, 4]``.
        """
        median, spread = self._latency_seconds, self._latency_spread
        if median == 0.0 or spread == 0.0:
            return median
        fraction = stable_fraction("latency", self._seed, request_id)
        z = _STANDARD_NORMAL.inv_cdf(min(max(fraction, 1e-12), 1.0 - 1e-12))
        z = min(max(z, -_LATENCY_Z_LIMIT), _LATENCY_Z_LIMIT)
        return median * math.exp(spread * z)

    @property
    def infra_failure_rate(self) -> float:
        """Share of requests whose call fails."""
        return self._infra_failure_rate

    async def score(
        self,
        transaction: Transaction,
        request_id: str,
        model_version: str,
        prompt: PromptVersion,
    ) -> LLMResponse:
        """Score a transaction.

        Args:
            transaction: The validated transaction.
            request_id: The request, seeding the jitter and the fault draw.
            model_version: Registry name of the model to simulate.
            prompt: The prompt to render.

        Returns:
            The model's answer.

        Raises:
            InfrastructureError: When the request falls in the simulated
                failure share.
            ValueError: If the model version is unknown.
        """
        try:
            bias = _MODEL_BIAS[model_version]
        except KeyError:
            raise ValueError(f"unknown model version {model_version!r}") from None
        rendered = prompt.render(_prompt_fields(transaction))
        latency = self.latency_for(request_id)
        if latency > 0.0:
            await asyncio.sleep(latency)  # the simulated model call itself
        if (
            self._infra_failure_rate > 0.0
            and stable_fraction("infra", self._seed, request_id) < self._infra_failure_rate
        ):
            raise InfrastructureError(f"simulated model endpoint failure for {model_version}")

        amount_usd = float(to_usd(transaction.amount, transaction.currency))
        raw = 0.05 + 0.30 * min(1.0, math.log10(1.0 + amount_usd) / 5.0)
        if transaction.account_age_days < 30:
            raw += 0.15
        elif transaction.account_age_days < 180:
            raw += 0.05
        raw += 0.12 * min(transaction.prior_chargebacks, 3)
        if transaction.merchant_category in HIGH_RISK_MERCHANT_CATEGORIES:
            raw += 0.15
        raw += _CHANNEL_RISK[transaction.channel] + bias
        raw += (stable_fraction("jitter", self._seed, request_id) - 0.5) * _JITTER_SPAN
        risk_score = min(1.0, max(0.0, raw))

        confidence_jitter = stable_fraction("confidence", self._seed, request_id) - 0.5
        confidence = 0.55 + 0.4 * abs(risk_score - 0.5) * 2.0 + 0.05 * confidence_jitter
        confidence = min(1.0, max(0.0, confidence))

        rationale = (
            f"Risk {risk_score:.2f} ({model_version}): amount {amount_usd:.2f} USD; "
            f"account age {transaction.account_age_days} days; "
            f"{transaction.prior_chargebacks} prior chargebacks; "
            f"merchant category {transaction.merchant_category}; "
            f"channel {transaction.channel}."
        )
        return LLMResponse(
            risk_score=risk_score,
            confidence=confidence,
            rationale=rationale,
            input_tokens=count_tokens(rendered),
            output_tokens=count_tokens(rationale),
            latency_seconds=latency,
            model_version=model_version,
            prompt_version=prompt.id,
        )


def _prompt_fields(transaction: Transaction) -> dict[str, object]:
    return {
        "amount": transaction.amount,
        "currency": transaction.currency,
        "country": transaction.country,
        "merchant_category": transaction.merchant_category,
        "account_age_days": transaction.account_age_days,
        "prior_chargebacks": transaction.prior_chargebacks,
        "channel": transaction.channel,
        "description": transaction.description,
    }
