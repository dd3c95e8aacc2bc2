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

import secrets
import time
from collections.abc import Callable, Mapping
from decimal import Context, Decimal
from typing import Literal, NamedTuple

from app.observability.settings import InputLimits, ModelPrice
from app.observability.validation import check_count, check_decimal, check_id
from collectors.cost import BudgetStatus, CostSnapshot, CostStoreCollector, ResetRecord
from collectors.logs import get_logger
from collectors.records import CostRecord

__all__ = ("CostEstimate", "CostTracker")

_logger = get_logger(__name__)
_WARN_INTERVAL = 60.0


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
        limits: Bounds on ids, token counts and a call's cost.
        new_id: Makes an event id for a call recorded without one.
    """

    def __init__(
        self,
        collector: CostStoreCollector,
        price_table: Mapping[str, ModelPrice],
        *,
        unpriced_policy: Literal["flag", "raise"] = "flag",
        read_timeout: float = 5.0,
        limits: InputLimits | None = None,
        new_id: Callable[[], str] | None = None,
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
        self._limits = limits if limits is not None else InputLimits()
        self._new_id = new_id if new_id is not None else _random_id
        self._last_unpriced_warning = 0.0

    @property
    def priced_models(self) -> frozenset[str]:
        """Model versions with a price."""
        return frozenset(self._rates)

    def estimate_cost(
        self, model_version: str, input_tokens: int, output_tokens: int
    ) -> CostEstimate:
        """Price usage without recording it (an unpriced model costs 0, ``priced=False``).

        Raises:
            ValueError: An invalid model version, token counts out of range.
            TypeError: Wrong types.
        """
        limits = self._limits
        check_id("model_version", model_version, max_length=limits.max_id_length)
        check_count("input_tokens", input_tokens, maximum=limits.max_tokens_per_call)
        check_count("output_tokens", output_tokens, maximum=limits.max_tokens_per_call)
        rates = self._rates.get(model_version)
        if rates is None:
            return CostEstimate(Decimal(0), False)
        ctx = self._context
        cost = ctx.add(ctx.multiply(rates[0], input_tokens), ctx.multiply(rates[1], output_tokens))
        return CostEstimate(cost, True)

    def add_cost(
        self,
        *,
        tenant_id: str,
        model_version: str,
        input_tokens: int,
        output_tokens: int,
        request_id: str | None = None,
        prompt_version: str | None = None,
        cost: Decimal | None = None,
        event_id: str | None = None,
    ) -> Decimal:
        """Price one model call and record it.

        Args:
            tenant_id: The tenant billed.
            model_version: A model version (priced from the table).
            input_tokens: Prompt tokens (int, within ``max_tokens_per_call``).
            output_tokens: Completion tokens (likewise).
            request_id: The request the call belongs to (for per-request cost).
            prompt_version: The prompt template version used.
            cost: An explicit cost overriding the table (a Decimal within
                ``[0, max_cost_per_call_usd]``).
            event_id: The call's idempotency key (generated if omitted): the
                same event recorded twice is billed once.

        Returns:
            The recorded cost (``Decimal``).

        Raises:
            ValueError: An invalid id, a number out of range, or an unpriced
                model under ``unpriced_policy="raise"``.
            TypeError: Wrong types.
        """
        record = self.build_record(
            tenant_id=tenant_id, model_version=model_version, input_tokens=input_tokens,
            output_tokens=output_tokens, request_id=request_id, prompt_version=prompt_version,
            cost=cost, event_id=event_id,
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
        prompt_version: str | None = None,
        cost: Decimal | None = None,
        event_id: str | None = None,
    ) -> CostRecord:
        """Validate and price usage into a record without sending it (see :meth:`add_cost`).

        The one function that builds a :class:`~collectors.records.CostRecord`.
        """
        max_id = self._limits.max_id_length
        check_id("tenant_id", tenant_id, max_length=max_id)
        if request_id is not None:
            check_id("request_id", request_id, max_length=max_id)
        if prompt_version is not None:
            check_id("prompt_version", prompt_version, max_length=max_id)
        if event_id is None:
            event_id = self._new_id()
        else:
            check_id("event_id", event_id, max_length=max_id)
        estimate = self.estimate_cost(model_version, input_tokens, output_tokens)
        priced = estimate.priced
        if cost is None:
            cost = estimate.cost
            if cost > self._limits.max_cost_per_call_usd:
                raise ValueError(
                    f"cost of {input_tokens} input and {output_tokens} output tokens of "
                    f"{model_version} is {cost} USD, above max_cost_per_call_usd "
                    f"{self._limits.max_cost_per_call_usd}"
                )
        else:
            cost = check_decimal("cost", cost, maximum=self._limits.max_cost_per_call_usd)
            priced = True
        if not priced:
            self._unpriced(model_version)
        return CostRecord(
            event_id=event_id, tenant_id=tenant_id, request_id=request_id,
            model_version=model_version, prompt_version=prompt_version,
            input_tokens=input_tokens, output_tokens=output_tokens, cost=cost, priced=priced,
            time_ns=time.time_ns(),
        )

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
        check_id("tenant_id", tenant_id, max_length=self._limits.max_id_length)
        return self._collector.tenant_cost(tenant_id, self._read_timeout)

    def get_request_cost(self, request_id: str) -> Decimal | None:
        """A request's cost, or ``None`` if unknown or evicted.

        Only the most recent requests are kept, counted by their first cost: at most
        ``max_tracked_requests`` and more than 7/8 of it (93,751 to 100,000 by
        default; see :class:`collectors.cost.CostStoreCollector`).
        """
        check_id("request_id", request_id, max_length=self._limits.max_id_length)
        return self._collector.request_cost(request_id, self._read_timeout)

    def get_model_cost(self, model_version: str) -> Decimal:
        """A model version's cumulative cost."""
        check_id("model_version", model_version, max_length=self._limits.max_id_length)
        return self._collector.model_cost(model_version, self._read_timeout)

    def remaining_budget(self, tenant_id: str) -> Decimal | None:
        """What is left of a tenant's budget in the current period; ask before an LLM call.

        ``None`` when the tenant has no budget; never below ``0``. With a
        ledger, the spend is every process's (see
        :class:`collectors.cost.CostStoreCollector` for how stale it may be).
        """
        status = self.budget_status(tenant_id)
        return None if status is None else status.remaining

    def budget_status(self, tenant_id: str) -> BudgetStatus | None:
        """A tenant's spend against its budget in the current period (``None``: no budget)."""
        check_id("tenant_id", tenant_id, max_length=self._limits.max_id_length)
        return self._collector.budget_status(tenant_id, self._read_timeout)

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


def _random_id() -> str:
    """A random event id (``cost-`` and 24 hex digits)."""
    return f"cost-{secrets.token_hex(12)}"
