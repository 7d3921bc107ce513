"""Budgets: pricing every billable field, estimating a call, deciding when a run is over."""

from __future__ import annotations

import pytest

from quorum.shared.budget import estimate, exceeded, priced
from quorum.shared.models import RunSpec, SingleShotValidationConfig, Usage
from quorum.shared.settings import Price, Settings

PRICE = Price(prompt=1.0, completion=4.0, cached=0.5, reasoning=8.0)


def spec(**limits: float) -> RunSpec:
    return RunSpec(
        template="t",
        kwargs={},
        response_schema={"type": "object"},
        config=SingleShotValidationConfig(issues=["x"]),
        model="m",
        validator_model="m",
        **limits,
    )


def test_every_billable_field_is_priced_once() -> None:
    usage = Usage(
        prompt_tokens=1_000_000,
        completion_tokens=1_000_000,
        total_tokens=2_000_000,
        cached_tokens=400_000,
        reasoning_tokens=250_000,
    )
    # 600k uncached prompt at 1 + 400k cached at 0.5 + 750k completion at 4 + 250k reasoning at 8
    assert priced(usage, PRICE).cost_usd == pytest.approx(0.6 + 0.2 + 3.0 + 2.0)


def test_cached_and_reasoning_default_to_the_prompt_and_completion_prices() -> None:
    usage = Usage(prompt_tokens=10, completion_tokens=10, cached_tokens=10, reasoning_tokens=10)
    assert priced(usage, Price(prompt=1, completion=2)).cost_usd == pytest.approx(30 / 1e6)


def test_an_unpriced_model_costs_nothing() -> None:
    assert priced(Usage(prompt_tokens=5), None).cost_usd == 0


def test_the_estimate_is_the_prompt_at_four_characters_a_token() -> None:
    call = estimate([{"role": "user", "content": "x" * 401}], PRICE)
    assert (call.prompt_tokens, call.total_tokens) == (101, 101)
    assert call.cost_usd == pytest.approx(101 / 1e6)


def test_no_limits_never_exceed() -> None:
    assert exceeded(spec(), Usage(total_tokens=10**9, cost_usd=1e6)) is None


def test_tokens_over_the_budget_exceed() -> None:
    run = spec(max_tokens=100)
    assert exceeded(run, Usage(total_tokens=100)) is None
    assert exceeded(run, Usage(total_tokens=101)) == (
        "budget exceeded: spent 101 tokens, over max_tokens 100"
    )


def test_a_call_that_would_go_over_exceeds_before_it_is_made() -> None:
    run = spec(max_tokens=100)
    reason = exceeded(run, Usage(total_tokens=90), Usage(total_tokens=11))
    assert reason == "budget exceeded: would reach 101 tokens, over max_tokens 100"


def test_cost_over_the_budget_exceeds() -> None:
    assert "over max_cost $0.01" in (exceeded(spec(max_cost=0.01), Usage(cost_usd=0.0101)) or "")


def test_the_price_table_is_read_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUORUM_PRICES", '{"gpt-4o-mini": {"prompt": 0.15, "completion": 0.6}}')
    assert Settings().prices == {"gpt-4o-mini": Price(prompt=0.15, completion=0.6)}
