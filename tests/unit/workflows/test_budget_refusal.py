"""``WorkflowConfig(refuse_over_budget=True)``: a tenant whose budget is spent is refused
with a POLICY_VIOLATION before the model is called (nothing more is spent)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.errors import PolicyViolationError
from app.workflows.langgraph import WorkflowConfig
from tests.unit.workflows.payloads import APPROVE
from tests.unit.workflows.test_graph import run


@pytest.mark.asyncio
async def test_a_tenant_with_no_budget_left_is_refused_before_the_model_call() -> None:
    asked: list[str] = []

    def remaining(tenant: str) -> Decimal | None:
        asked.append(tenant)
        return Decimal(0)

    with pytest.raises(PolicyViolationError, match="spent its budget") as caught:
        await run(APPROVE, WorkflowConfig(refuse_over_budget=True), tenant="t9",
                  remaining_budget=remaining)
    assert caught.value.policy == "budget"
    assert asked == ["t9"]


@pytest.mark.asyncio
@pytest.mark.parametrize("left", [Decimal("0.01"), None])
async def test_a_tenant_with_budget_left_or_none_runs(left: Decimal | None) -> None:
    state = await run(APPROVE, WorkflowConfig(refuse_over_budget=True),
                      remaining_budget=lambda tenant: left)
    assert state.risk_score is not None  # the model was called


@pytest.mark.asyncio
async def test_the_check_is_off_by_default() -> None:
    state = await run(APPROVE, WorkflowConfig(), remaining_budget=lambda tenant: Decimal(0))
    assert state.risk_score is not None  # the model was called
