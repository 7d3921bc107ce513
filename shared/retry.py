"""The transient-retry policy: how long a job waits before it tries an LLM call again."""

from __future__ import annotations

import random

__all__ = ["backoff_s"]


def backoff_s(retries: int, *, retry_after: float | None = None, cap: float = 30.0) -> float:
    """Seconds before transient retry number `retries` (from 0): exponential, jittered, capped.

    A server's `Retry-After` is honoured when it asks for longer (up to five minutes).
    """
    ceiling = min(cap, 0.5 * 2**retries)
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return max(delay, min(retry_after or 0.0, 300.0))
