"""The messages Quorum stores and sends: configs, run spec, status, votes, events."""

from __future__ import annotations

import enum
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

__all__ = [
    "MAX_EXPRESSION_CHARS",
    "VOTE_FREE_RETRIES",
    "ExpressionCheck",
    "KAheadVotingValidationConfig",
    "ProvenanceEvent",
    "RunSpec",
    "SingleShotValidationConfig",
    "TaskStatus",
    "ThresholdVotingValidationConfig",
    "Usage",
    "ValidationConfig",
    "Vote",
    "can_transition",
]


class TaskStatus(enum.StrEnum):
    """Where a run stands. The last three are terminal and never change again."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    VALIDATING = "VALIDATING"
    RETRYING = "RETRYING"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """True for SUCCESSFUL, FAILED and CANCELLED."""
        return self in _TERMINAL


_TERMINAL = frozenset({TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.CANCELLED})
_ENDS = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})
_NEXT: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.RUNNING}) | _ENDS,
    TaskStatus.RUNNING: frozenset({TaskStatus.VALIDATING, TaskStatus.RETRYING}) | _TERMINAL,
    TaskStatus.VALIDATING: frozenset({TaskStatus.RETRYING}) | _TERMINAL,
    TaskStatus.RETRYING: frozenset({TaskStatus.RUNNING}) | _ENDS,
    TaskStatus.SUCCESSFUL: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


def can_transition(current: TaskStatus, new: TaskStatus) -> bool:
    """Whether the status machine allows `current → new`."""
    return new in _NEXT[current]


def sources_of(new: TaskStatus) -> frozenset[TaskStatus]:
    """Every status from which `new` may be reached."""
    return frozenset(s for s, targets in _NEXT.items() if new in targets)


Issue = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]


class _BaseConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    issues: list[Issue] = Field(min_length=1, description="Criteria the output must meet.")
    max_retries: int = Field(ge=0, le=50, description="Retries after the first attempt.")


class SingleShotValidationConfig(_BaseConfig):
    """One vote per issue; the issue passes iff that vote passes."""

    mode: Literal["single_shot"] = "single_shot"
    max_retries: int = Field(3, ge=0, le=50)

    @property
    def count(self) -> int:
        """Votes per issue: always 1."""
        return 1

    @property
    def required_ahead(self) -> int:
        """Margin needed to pass: always 1."""
        return 1

    @property
    def max_votes(self) -> int:
        """Votes per issue at most: always 1."""
        return 1


class ThresholdVotingValidationConfig(_BaseConfig):
    """One round of `count` votes per issue; pass iff passing − failing ≥ `required_ahead`."""

    mode: Literal["threshold"] = "threshold"
    max_retries: int = Field(0, ge=0, le=50)
    count: int = Field(3, ge=1, le=99)
    required_ahead: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> ThresholdVotingValidationConfig:
        if self.count % 2 == 0:
            raise ValueError(f"count must be odd, got {self.count}")
        if self.required_ahead > self.count:
            raise ValueError(
                f"required_ahead must be between 1 and count ({self.count}), "
                f"got {self.required_ahead}"
            )
        return self

    @property
    def max_votes(self) -> int:
        """Votes per issue at most: one round of `count`."""
        return self.count


class KAheadVotingValidationConfig(_BaseConfig):
    """Rounds of votes per issue until one side leads by `required_ahead`, or `max_votes`."""

    mode: Literal["k_ahead"] = "k_ahead"
    max_retries: int = Field(0, ge=0, le=50)
    count: int = Field(5, ge=1, le=99)
    required_ahead: int = Field(3, ge=1)
    max_votes: int = Field(20, ge=1, le=999, description="Cap on votes per issue; 4×count.")
    first_round: int | None = Field(
        None,
        ge=1,
        description="Votes per issue in the first round; None: `count`. `required_ahead` "
        "starts with the fewest votes that could decide: fewer votes, more rounds.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_cap(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_votes") is None:
            try:
                return {**data, "max_votes": 4 * int(data.get("count", 5))}
            except (TypeError, ValueError):
                return data  # the count's own error explains it
        return data

    @model_validator(mode="after")
    def _check(self) -> KAheadVotingValidationConfig:
        if self.count % 2 == 0:
            raise ValueError(f"count must be odd, got {self.count}")
        if self.max_votes < max(self.count, self.required_ahead):
            raise ValueError(
                f"max_votes must be at least max(count, required_ahead) = "
                f"{max(self.count, self.required_ahead)}, got {self.max_votes}"
            )
        if self.first_round is not None and self.first_round > self.max_votes:
            raise ValueError(
                f"first_round must be at most max_votes = {self.max_votes}, got {self.first_round}"
            )
        return self


ValidationConfig = Annotated[
    SingleShotValidationConfig | ThresholdVotingValidationConfig | KAheadVotingValidationConfig,
    Field(discriminator="mode"),
]


class Usage(BaseModel):
    """Tokens one call (or a whole run) was billed for."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = Field(0.0, description="What the tokens cost, by the price table.")


VOTE_FREE_RETRIES = 3
"""Retries of a run without a config (`config=None`) whose cheap checks fail."""
MAX_EXPRESSION_CHARS = 4000
"""Longest sandboxed expression a producer may send: a check's, or a workflow node's `skip_if`."""


class ExpressionCheck(BaseModel):
    """A cheap check: a sandboxed Jinja expression over `output` and `kwargs` that must be
    true, and the message that is the next attempt's feedback when it is not."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    expr: str = Field(
        min_length=1, max_length=MAX_EXPRESSION_CHARS, description="Jinja expression."
    )
    message: str = Field(min_length=1, max_length=4000, description="Feedback when false.")


class RunSpec(BaseModel):  # type: ignore[no-redef]  # the mypy plugin clashes with **kwargs
    """Everything a worker needs to run a task, as submitted and validated."""

    model_config = ConfigDict(frozen=True)

    template: str
    kwargs: dict[str, Any]
    response_schema: dict[str, Any]
    config: ValidationConfig | None
    model: str
    validator_model: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    response_name: str = "response"
    timeout_s: float | None = Field(None, gt=0, description="Seconds the run may take in all.")
    max_tokens: int | None = Field(None, gt=0, description="Token budget of the whole run.")
    max_cost: float | None = Field(None, gt=0, description="Cost budget (USD) of the run.")
    # Defined tasks and cheap checks (docs/defined-tasks.md).
    task: str | None = Field(None, description="The defined task's name, if submitted by name.")
    task_hash: str | None = Field(None, description="Its content hash at submit.")
    wrapped: bool = Field(False, description='A non-object response type, sent as {"value": …}.')
    checks: tuple[ExpressionCheck, ...] = ()
    temperature: float | None = Field(None, ge=0, le=2, description="Task calls' temperature.")
    max_output_tokens: int | None = Field(None, gt=0, description="Task calls' output cap.")
    system: str | None = Field(None, description="System prompt prepended to task calls.")

    @property
    def voting(
        self,
    ) -> (
        SingleShotValidationConfig | ThresholdVotingValidationConfig | KAheadVotingValidationConfig
    ):
        """The config of a run that votes (only such a run reaches a vote or a tally)."""
        if self.config is None:
            raise ValueError("a vote-free run (config=None) has no voting config")
        return self.config

    @property
    def max_retries(self) -> int:
        """Retries after the first attempt: the config's, or `VOTE_FREE_RETRIES` without one."""
        return VOTE_FREE_RETRIES if self.config is None else self.config.max_retries

    callback_url: str | None = Field(None, description="Where the run's final view is POSTed.")


class Vote(BaseModel):
    """One validator's verdict on one issue. `is_valid` is None for an error vote."""

    issue: int
    index: int
    is_valid: bool | None
    reasoning: str


class ProvenanceEvent(BaseModel):
    """One entry of a run's provenance stream."""

    model_config = ConfigDict(extra="allow")

    id: str | None = Field(
        None, description="Its stream id: a live stream's Last-Event-ID resumes after it."
    )
    type: str
    attempt: int = 0
    worker: str = ""
    ts: float = Field(default_factory=time.time)
