"""Voting rules as pure functions: when an issue is decided, and how many votes come next.

`s` passing votes, `f` failing, `e` error votes (neither side); `margin = s − f`;
`k = required_ahead`. An issue's votes are drawn in rounds: Threshold and SingleShot draw one
round of `count`; K-ahead draws `count` (or its `first_round`), then rounds of `k − |margin|`
until one side leads by `k` or `max_votes` is reached.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from quorum.shared.models import KAheadVotingValidationConfig, ValidationConfig

__all__ = [
    "EARLY_DECISIONS",
    "Decision",
    "Outcome",
    "Tally",
    "decide_after_round",
    "decide_early",
    "early_rule",
    "first_round_size",
    "next_round_size",
    "theoretical_accuracy",
]

NO_CONSENSUS = "no consensus"
VALIDATOR_UNAVAILABLE = "validator unavailable"


class Outcome(enum.StrEnum):
    """How an issue was decided."""

    PASSED = "passed"
    FAILED = "failed"


@dataclass(frozen=True)
class Decision:
    """An issue's outcome; `reason` explains a failure that the votes themselves did not give."""

    outcome: Outcome
    reason: str = ""

    @property
    def passed(self) -> bool:
        """True when the issue passed."""
        return self.outcome is Outcome.PASSED


PASSED = Decision(Outcome.PASSED)
FAILED = Decision(Outcome.FAILED)
EARLY_DECISIONS = (PASSED, FAILED, Decision(Outcome.FAILED, VALIDATOR_UNAVAILABLE))
"""What `decide_early` can decide, in the order `lua/decide_early.lua` numbers them (1 to 3)."""


@dataclass(frozen=True)
class Tally:
    """Votes counted for one issue."""

    passing: int = 0
    failing: int = 0
    errors: int = 0

    @classmethod
    def of(cls, verdicts: Iterable[bool | None]) -> Tally:
        """Count verdicts: True passes, False fails, None is an error vote."""
        verdicts = list(verdicts)
        return cls(
            passing=sum(v is True for v in verdicts),
            failing=sum(v is False for v in verdicts),
            errors=sum(v is None for v in verdicts),
        )

    @property
    def margin(self) -> int:
        """Passing minus failing votes."""
        return self.passing - self.failing

    @property
    def total(self) -> int:
        """Every vote cast, error votes included."""
        return self.passing + self.failing + self.errors


def _k_ahead(config: ValidationConfig) -> bool:
    return isinstance(config, KAheadVotingValidationConfig)


def first_round_size(config: ValidationConfig) -> int:
    """Votes drawn per issue in the first round: `count`, or K-ahead's `first_round`."""
    if isinstance(config, KAheadVotingValidationConfig) and config.first_round is not None:
        return config.first_round
    return config.count


def decide_early(config: ValidationConfig, tally: Tally, planned: int) -> Decision | None:
    """The issue's outcome if no vote still to come can change it, else None.

    `planned` is how many votes have been launched for the issue so far, `tally` the ones in.
    """
    k = config.required_ahead
    if _k_ahead(config):
        if tally.margin >= k:
            return PASSED
        if tally.margin <= -k:
            return FAILED
        return None
    pending = max(planned - tally.total, 0)
    if tally.margin - pending >= k:
        return PASSED
    if tally.margin + pending < k:
        unavailable = tally.margin + pending + tally.errors >= k
        return Decision(Outcome.FAILED, VALIDATOR_UNAVAILABLE) if unavailable else FAILED
    return None


def early_rule(config: ValidationConfig) -> tuple[str, int, int]:
    """`decide_early`'s rule for an issue of `config`, as `lua/decide_early.lua` takes it (a
    vote's record decides its issue in the same step): the mode (`k` K-ahead, `t` the others),
    the lead required, and the votes planned."""
    return ("k" if _k_ahead(config) else "t", config.required_ahead, config.count)


def decide_after_round(config: ValidationConfig, tally: Tally) -> Decision | None:
    """The issue's outcome once a round is complete; None means another round is needed."""
    decision = decide_early(config, tally, tally.total)
    if decision is None and tally.total >= config.max_votes:
        return Decision(Outcome.FAILED, NO_CONSENSUS)
    return decision


def next_round_size(config: ValidationConfig, tally: Tally) -> int:
    """Votes to draw in the next K-ahead round: the fewest that could decide, within the cap."""
    if not _k_ahead(config):
        return 0
    return max(min(config.required_ahead - abs(tally.margin), config.max_votes - tally.total), 0)


def theoretical_accuracy(p: float, k: int) -> float:
    """Chance that k-ahead voting with validators of accuracy p decides correctly."""
    if p in (0.0, 1.0):
        return p
    return 1.0 / (1.0 + ((1.0 - p) / p) ** k)
