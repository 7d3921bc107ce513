"""What the benchmark runs: the task, the validation configs, the workload sizes per profile,
and the statistics the report is made of (pure functions)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ISSUES",
    "TEMPLATE",
    "Profile",
    "kahead_accuracy",
    "majority_accuracy",
    "percentile",
    "profile",
    "spread",
    "validation_config",
]

TEMPLATE = "Extract the purchase from this message: {{ message }}"
ISSUES = (
    "The product is a physical item named in the message",
    "The quantity is a whole number of items",
    "Nothing is invented that the message does not say",
)
PURCHASE_SCHEMA: dict[str, Any] = {
    "title": "Purchase",
    "type": "object",
    "properties": {"product": {"type": "string"}, "quantity": {"type": "integer"}},
    "required": ["product", "quantity"],
}


def message(tag: str, index: int) -> str:
    """A distinct message per run, so that the simulator draws independent verdicts."""
    return f"I want 5 apples (order {tag}-{index})"


def validation_config(mode: str, *, issues: int, count: int, required_ahead: int) -> dict[str, Any]:
    """A validation config in Quorum's JSON form (the reference driver translates it)."""
    config: dict[str, Any] = {"mode": mode, "issues": list(ISSUES[:issues]), "max_retries": 0}
    if mode != "single_shot":
        config |= {"count": count, "required_ahead": required_ahead}
    return config


@dataclass(frozen=True)
class Profile:
    """Workload sizes: `full` for the report, `quick` for a seconds-long smoke run."""

    name: str
    latency_levels: tuple[float, ...]
    latency_runs: int
    latency_warmup: int
    burst_runs: int
    burst_latency: float
    burst_workers: tuple[int, ...]
    burst_repeat: int
    cpu_runs: int
    cpu_repeat: int
    inflight_runs: int
    inflight_latency: float
    inflight_concurrency: int
    economy_runs: int
    economy_latency: float
    accuracies: tuple[float, ...]
    issues: int = 3
    count: int = 3
    kahead: tuple[int, int] = (5, 3)
    threshold: tuple[int, int] = (5, 1)
    timeout_s: float = 600.0
    reference_kahead: bool = True
    notes: list[str] = field(default_factory=list)


_PROFILES = {
    "full": Profile(
        name="full",
        latency_levels=(0.0, 0.05, 0.2),
        latency_runs=15,
        latency_warmup=2,
        burst_runs=1000,
        burst_latency=0.2,
        burst_workers=(1, 2),
        burst_repeat=2,
        cpu_runs=200,
        cpu_repeat=3,
        inflight_runs=700,
        inflight_latency=1.0,
        inflight_concurrency=1000,
        economy_runs=1000,
        economy_latency=0.02,
        accuracies=(0.6, 0.8, 0.95),
    ),
    "quick": Profile(
        name="quick",
        latency_levels=(0.0, 0.05),
        latency_runs=3,
        latency_warmup=1,
        burst_runs=30,
        burst_latency=0.05,
        burst_workers=(1,),
        burst_repeat=1,
        cpu_runs=20,
        cpu_repeat=1,
        inflight_runs=40,
        inflight_latency=0.3,
        inflight_concurrency=100,
        economy_runs=10,
        economy_latency=0.0,
        accuracies=(0.8,),
        timeout_s=60.0,
        reference_kahead=False,
    ),
}


def profile(name: str) -> Profile:
    """The named profile (`full` or `quick`)."""
    return _PROFILES[name]


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0–100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """Median, minimum and maximum of repeated measurements."""
    if not values:
        return math.nan, math.nan, math.nan
    return statistics.median(values), min(values), max(values)


def kahead_accuracy(p: float, k: int) -> float:
    """Probability that a race to `k` votes ahead ends on the right side, with validators
    right with probability `p` (gambler's ruin): 1 / (1 + ((1 − p) / p)^k)."""
    return 1 / (1 + ((1 - p) / p) ** k)


def majority_accuracy(p: float, count: int, required_ahead: int = 1) -> float:
    """Probability that `count` votes, each right with probability `p`, pass by a margin of at
    least `required_ahead`."""
    need = math.ceil((count + required_ahead) / 2)
    return sum(math.comb(count, s) * p**s * (1 - p) ** (count - s) for s in range(need, count + 1))


def race(
    p: float,
    *,
    count: int,
    k: int,
    max_votes: int,
    full_rounds: bool,
    first_round: int | None = None,
) -> tuple[float, float]:
    """Exact expected votes and accuracy of a k-ahead race, validators right with probability
    `p`: a first round of `first_round` (default `count`) votes, then rounds of `count`
    (`full_rounds`) or of `k − |margin|` (Quorum's rule) until `|margin| ≥ k`; undecided at
    `max_votes` is a fail."""
    open_states: dict[tuple[int, int], float] = {(0, 0): 1.0}  # (margin, votes) → probability
    expected, right = 0.0, 0.0
    while open_states:
        step: dict[tuple[int, int], float] = {}
        for (margin, votes), prob in open_states.items():
            size = (
                (first_round or count) if votes == 0 else count if full_rounds else k - abs(margin)
            )
            size = min(size, max_votes - votes)
            for s in range(size + 1):
                m, n = margin + 2 * s - size, votes + size
                chance = prob * math.comb(size, s) * p**s * (1 - p) ** (size - s)
                if abs(m) >= k or n >= max_votes:
                    expected += chance * n
                    right += chance if m >= k else 0.0
                else:
                    step[m, n] = step.get((m, n), 0.0) + chance
        open_states = step
    return expected, right
