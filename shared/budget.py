"""Budgets as pure functions: what a call costs, what the next call may cost, and whether a
run has gone (or would go) over its `max_tokens` or `max_cost`.

Tokens are counted as the API reports them: `total_tokens` (prompt + completion, where the
completion includes any reasoning tokens). Cost is priced per million tokens by model:
uncached prompt tokens at `prompt`, cached ones at `cached`, completion tokens other than
reasoning at `completion`, reasoning tokens at `reasoning`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from quorum.shared.models import RunSpec, Usage
from quorum.shared.settings import Price

__all__ = ["estimate", "exceeded", "limited", "priced"]

_CHARS_PER_TOKEN = 4


def limited(spec: RunSpec) -> bool:
    """Whether the run has a budget (`max_tokens` or `max_cost`)."""
    return spec.max_tokens is not None or spec.max_cost is not None


def priced(usage: Usage, price: Price | None) -> Usage:
    """`usage` with its cost filled in from the model's price (0 without one)."""
    if price is None:
        return usage if usage.cost_usd == 0.0 else usage.model_copy(update={"cost_usd": 0.0})
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    reasoning = min(usage.reasoning_tokens, usage.completion_tokens)
    cost = (
        (usage.prompt_tokens - cached) * price.prompt
        + cached * (price.prompt if price.cached is None else price.cached)
        + (usage.completion_tokens - reasoning) * price.completion
        + reasoning * (price.completion if price.reasoning is None else price.reasoning)
    ) / 1_000_000
    return usage.model_copy(update={"cost_usd": cost})


def estimate(messages: Sequence[Mapping[str, str]], price: Price | None) -> Usage:
    """A floor on what a call with these messages will cost: its prompt, at ~4 characters per
    token (the completion is not known before the call)."""
    chars = sum(len(m.get("content", "")) for m in messages)
    tokens = math.ceil(chars / _CHARS_PER_TOKEN)
    return priced(Usage(prompt_tokens=tokens, total_tokens=tokens), price)


def _tokens(usage: Usage) -> int:
    return usage.total_tokens or usage.prompt_tokens + usage.completion_tokens


def exceeded(spec: RunSpec, spent: Usage, next_call: Usage | None = None) -> str | None:
    """Why the run is over budget (or would be after `next_call`), else None."""
    tokens, cost = _tokens(spent), spent.cost_usd
    if next_call is not None:
        tokens, cost = tokens + _tokens(next_call), cost + next_call.cost_usd
    verb = "would reach" if next_call is not None else "spent"
    if spec.max_tokens is not None and tokens > spec.max_tokens:
        return f"budget exceeded: {verb} {tokens} tokens, over max_tokens {spec.max_tokens}"
    if spec.max_cost is not None and cost > spec.max_cost:
        return f"budget exceeded: {verb} ${cost:.6f}, over max_cost ${spec.max_cost:g}"
    return None
