"""``CostTracker``: deterministic LLM cost, metered per tenant, request and model.

Cost is ``input_tokens x input rate + output_tokens x output rate`` with the
fixed per-1,000-token rates of the model version in the settings' price
table, computed in ``Decimal`` with an explicit context (28 significant
digits are never reached by realistic token counts, so every result is
exact). The same inputs always give the same cost.

A model version missing from the table is never a silent $0: under the
default ``unpriced_policy="flag"`` the usage is recorded with cost 0, flagged
``priced=False``, counted (``risk_engine_unpriced_generations_total``) and
logged; under ``"raise"`` :meth:`CostTracker.add_cost` raises ``ValueError``.

The aggregates live in :class:`collectors.cost.CostStoreCollector`; reads ask
that actor and reflect every cost the caller added before.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Context, Decimal, InvalidOperation
from typing import Literal, NamedTuple

import structlog

from app.observability.settings import ModelPrice
from collectors.cost import CostSnapshot, CostStoreCollector, ResetRecord
from collectors.records import CostRecord

__all__ = ("PRICE_CACHE_SIZE", "CostEstimate", "CostTracker", "Price")

_logger = structlog.get_logger(__name__)
_WARN_INTERVAL = 60.0
#: Upper bound of an explicit per-call cost (USD); far above any real call.
_MAX_COST = Decimal("1E+15")
#: Priced usages remembered (model version x token counts); cleared when full.
PRICE_CACHE_SIZE = 4_096

_new_tuple = tuple.__new__  # a NamedTuple without its Python-level __new__

#: A priced usage: the cost and ``str(cost)`` (the generation span's ``cost_usd``).
Price = tuple[Decimal, str]


class CostEstimate(NamedTuple):
    """A price and whether the model version had one."""

    cost: Decimal
    priced: bool


class CostTracker:
    """Prices token usage and records it per tenant, request and model version.

    Args:
        collector: The cost actor.
        price_table: Model version -> rates per 1,000 tokens.
        unpriced_policy: ``"flag"`` (record at $0, flagged and counted) or ``"raise"``.
        read_timeout: Seconds a read waits for the collector's answer.
    """

    def __init__(
        self,
        collector: CostStoreCollector,
        price_table: Mapping[str, ModelPrice],
        *,
        unpriced_policy: Literal["flag", "raise"] = "flag",
        read_timeout: float = 5.0,
    ) -> None:
        self._collector = collector
        self._context = Context(prec=28)
        # Per-token rates, exact: a per-1k rate shifted by three decimal places.
        self._rates = {
            model: (price.input_per_1k.scaleb(-3), price.output_per_1k.scaleb(-3))
            for model, price in price_table.items()
        }
        self._policy = unpriced_policy
        self._read_timeout = read_timeout
        self._last_unpriced_warning = 0.0
        #: (model version, input tokens, output tokens) -> its :data:`Price`, priced
        #: models only (see :meth:`price`). Read directly by trusted hot paths
        #: (``LangfuseClient``); never replaced, only cleared.
        self.price_cache: dict[tuple[str, int, int], Price] = {}

    @property
    def priced_models(self) -> frozenset[str]:
        """Model versions with a price."""
        return frozenset(self._rates)

    def estimate_cost(
        self, model_version: str, input_tokens: int, output_tokens: int
    ) -> CostEstimate:
        """Price usage without recording it.

        Raises:
            ValueError: Empty model version, negative token counts.
            TypeError: Non-integer token counts.
        """
        _check_text("model_version", model_version)
        _check_tokens("input_tokens", input_tokens)
        _check_tokens("output_tokens", output_tokens)
        price = self.price(model_version, input_tokens, output_tokens)
        if price is None:
            return CostEstimate(Decimal(0), False)
        estimate: CostEstimate = _new_tuple(CostEstimate, (price[0], True))
        return estimate

    def price(self, model_version: str, input_tokens: int, output_tokens: int) -> Price | None:
        """The cost of validated usage and its ``str``; ``None`` for an unpriced model.

        For trusted callers: ``model_version`` a non-empty ``str``, the token
        counts ``int`` (not ``bool``) ``>= 0``. Nothing is recorded and the
        unpriced policy is not applied (the caller does that, see
        :meth:`build_record`), which is why an unpriced model is never cached.

        Why a cache: pricing is two ``Decimal`` multiplications and an
        addition in a fixed context (~0.7 µs) and ``str(cost)`` (~0.2 µs),
        the most expensive part of logging a generation, while the same model
        and token counts recur (a workflow's prompts have few sizes). The
        result depends only on the key and the fixed rates, so a cached price
        equals a fresh one. The cache is bounded: past
        :data:`PRICE_CACHE_SIZE` entries it is cleared, so arbitrary token
        counts cannot grow memory. ``dict`` operations are atomic, so threads
        may share it; at worst two of them price the same usage twice.
        """
        key = (model_version, input_tokens, output_tokens)
        price = self.price_cache.get(key)
        if price is None:
            rates = self._rates.get(model_version)
            if rates is None:
                return None
            ctx = self._context
            cost = ctx.add(ctx.multiply(rates[0], input_tokens),
                           ctx.multiply(rates[1], output_tokens))
            price = (cost, str(cost))
            cache = self.price_cache
            if len(cache) >= PRICE_CACHE_SIZE:
                cache.clear()
            cache[key] = price
        return price

    def add_cost(
        self,
        *,
        tenant_id: str,
        model_version: str,
        input_tokens: int,
        output_tokens: int,
        request_id: str | None = None,
        cost: Decimal | None = None,
    ) -> Decimal:
        """Price one model call and record it.

        Args:
            tenant_id: The tenant billed.
            model_version: A model version (priced from the table).
            input_tokens: Prompt tokens (int >= 0).
            output_tokens: Completion tokens (int >= 0).
            request_id: The request the call belongs to (for per-request cost).
            cost: An explicit cost overriding the table (finite, >= 0).

        Returns:
            The recorded cost (``Decimal``).

        Raises:
            ValueError: Empty ids, negative tokens, a non-finite, negative or
                absurdly large (>= 1E+15) cost, or an unpriced model under
                ``unpriced_policy="raise"``.
            TypeError: Wrong types.
        """
        record = self.build_record(
            tenant_id=tenant_id, model_version=model_version, input_tokens=input_tokens,
            output_tokens=output_tokens, request_id=request_id, cost=cost,
        )
        self._collector.send(record)
        return record.cost

    def build_record(
        self,
        *,
        tenant_id: str,
        model_version: str,
        input_tokens: int,
        output_tokens: int,
        request_id: str | None = None,
        cost: Decimal | None = None,
    ) -> CostRecord:
        """Validate and price usage into a record without sending it (see :meth:`add_cost`)."""
        _check_text("tenant_id", tenant_id)
        if request_id is not None:
            _check_text("request_id", request_id)
        estimate = self.estimate_cost(model_version, input_tokens, output_tokens)
        priced = estimate.priced
        if cost is None:
            cost = estimate.cost
        else:
            cost = _check_cost(cost)
            priced = True
        if not priced:
            self._unpriced(model_version)
        record: CostRecord = _new_tuple(CostRecord, (
            tenant_id, request_id, model_version, input_tokens, output_tokens, cost, priced,
            time.time_ns(),
        ))
        return record

    def send_record(self, record: CostRecord) -> None:
        """Send a record from :meth:`build_record` to the cost store."""
        self._collector.send(record)

    def _unpriced(self, model_version: str) -> None:
        if self._policy == "raise":
            raise ValueError(f"model_version {model_version!r} has no price in the price table")
        now = time.monotonic()
        if now - self._last_unpriced_warning >= _WARN_INTERVAL:
            self._last_unpriced_warning = now
            _logger.warning("observability.unpriced_model", model_version=model_version)

    # --- reads ----------------------------------------------------------------

    def get_tenant_cost(self, tenant_id: str) -> Decimal:
        """A tenant's cumulative cost (``Decimal('0')`` if it has none)."""
        _check_text("tenant_id", tenant_id)
        return self._collector.tenant_cost(tenant_id, self._read_timeout)

    def get_request_cost(self, request_id: str) -> Decimal | None:
        """A request's cost, or ``None`` if unknown or evicted.

        Only the most recent requests are kept, counted by their first cost: at most
        ``max_tracked_requests`` and more than 7/8 of it (93,751 to 100,000 by
        default; see :class:`collectors.cost.CostStoreCollector`).
        """
        _check_text("request_id", request_id)
        return self._collector.request_cost(request_id, self._read_timeout)

    def get_model_cost(self, model_version: str) -> Decimal:
        """A model version's cumulative cost."""
        _check_text("model_version", model_version)
        return self._collector.model_cost(model_version, self._read_timeout)

    def get_total_cost(self) -> Decimal:
        """The cumulative cost over all tenants."""
        return self._collector.total_cost(self._read_timeout)

    def snapshot(self) -> CostSnapshot:
        """Every aggregate at once (per tenant, model, tenant x model, usage, budgets)."""
        return self._collector.snapshot(self._read_timeout)

    def reset(self) -> None:
        """Forget every aggregate, after all costs enqueued before this call.

        The reset travels through the collector's queue like a record, so it
        is ordered with them, and it is never dropped for a full queue.
        """
        self._collector.send_control(ResetRecord())


def _check_text(field: str, value: object) -> None:
    if type(value) is not str:
        raise TypeError(f"{field} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{field} must not be empty")


def _check_tokens(field: str, value: object) -> None:
    if type(value) is not int:
        raise TypeError(f"{field} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{field} must be >= 0, got {value}")


def _check_cost(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        raise TypeError(f"cost must be a Decimal, got {type(value).__name__}")
    try:
        cost = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"cost is not a number: {value!r}") from exc
    if not cost.is_finite() or cost < 0:
        raise ValueError(f"cost must be finite and >= 0, got {value!r}")
    if cost >= _MAX_COST:  # the store's sums would overflow Decimal's range and be lost
        raise ValueError(f"cost must be below {_MAX_COST} USD, got {value!r}")
    return cost
