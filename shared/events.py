"""A run's provenance events: one typed model per event type, and their union `Event`.

Each event carries its `type`, the `attempt` it belongs to (0: the run as a whole), the
`worker` hostname that wrote it and a timestamp `ts`; the rest depends on its type. The store
appends them to the run's stream as JSON and reads them back as these models. Events also
read like the JSON they are stored as (`event["type"]`, `event.get("usage")`), for code that
handles them as plain data.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from quorum.shared.models import Usage

__all__ = [
    "TERMINAL_EVENTS",
    "AttemptStarted",
    "CallEvent",
    "Cancelled",
    "CheckFailed",
    "Event",
    "Failed",
    "IssueDecided",
    "OtherEvent",
    "Output",
    "OutputInvalid",
    "RetryScheduled",
    "StoredEvent",
    "Submitted",
    "Succeeded",
    "ValidationFailed",
    "ValidationPassed",
    "VoteCast",
    "VoteSkipped",
    "parse_event",
]


class StoredEvent(BaseModel):
    """An event read like the JSON it is stored as: `event["type"]`, `event.get("usage")`."""

    model_config = ConfigDict(frozen=True)

    ts: float = Field(default_factory=time.time)

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        """The field `name`, or `default` if this type of event has none."""
        return getattr(self, name, default)


class _Event(StoredEvent):
    attempt: int = 0
    worker: str = ""


class CallEvent(_Event):
    """An event that records an LLM call."""

    latency_s: float | None = Field(None, description="Seconds the call took.")
    usage: Usage | None = Field(None, description="Tokens (and cost) the call was billed.")


class Submitted(_Event):
    """The run was written, PENDING."""

    type: Literal["submitted"] = "submitted"
    model: str
    mode: str = Field(description="The config's mode; `none`: a vote-free run.")
    task: str | None = Field(None, description="The defined task's name, if one.")
    task_hash: str | None = Field(None, description="Its content hash at submit.")


class AttemptStarted(_Event):
    """A task job moved the run into `attempt` (RUNNING)."""

    type: Literal["attempt_started"] = "attempt_started"


class Output(CallEvent):
    """The task model's output passed the checks; the run is VALIDATING."""

    type: Literal["output"] = "output"
    output: Any


class OutputInvalid(CallEvent):
    """The task model's output failed a check (`error` says which): a failed attempt."""

    type: Literal["output_invalid"] = "output_invalid"
    output: Any
    error: str


class CheckFailed(CallEvent):
    """A cheap check rejected the output before any vote (`shared.checks`): a failed
    attempt whose feedback is `message`."""

    type: Literal["check_failed"] = "check_failed"
    check: Literal["model", "validator", "expression"]
    name: str = Field(description="The model, the validator function, or the expression.")
    message: str
    output: Any
    task: str | None = None
    definition_hash: str | None = Field(None, description="Of the code the worker ran.")


class VoteCast(CallEvent):
    """A validator's vote on one issue; `is_valid` None: an error vote."""

    type: Literal["vote"] = "vote"
    issue: int
    index: int
    is_valid: bool | None
    reasoning: str


class VoteSkipped(_Event):
    """A vote not cast, and why: the run or attempt ended, or its issue was decided."""

    type: Literal["vote_skipped"] = "vote_skipped"
    issue: int
    index: int
    reason: str


class IssueDecided(_Event):
    """An issue's outcome (`passed` or `failed`) and the votes that decided it."""

    type: Literal["issue_decided"] = "issue_decided"
    issue: int
    outcome: Literal["passed", "failed"]
    reason: str = ""
    passing: int = 0
    failing: int = 0
    errors: int = 0


class ValidationPassed(_Event):
    """Every issue of the attempt passed."""

    type: Literal["validation_passed"] = "validation_passed"


class ValidationFailed(_Event):
    """Issues of the attempt failed, with every failing reasoning."""

    type: Literal["validation_failed"] = "validation_failed"
    failed_issues: list[int]
    reasons: list[str]


class RetryScheduled(_Event):
    """Another attempt follows, shown `feedback`."""

    type: Literal["retry_scheduled"] = "retry_scheduled"
    next_attempt: int
    feedback: str


class Succeeded(_Event):
    """The run ended SUCCESSFUL."""

    type: Literal["succeeded"] = "succeeded"


class Failed(_Event):
    """The run ended FAILED: `code` says why in one word, `reasons` in full."""

    type: Literal["failed"] = "failed"
    error: str
    reasons: list[str] = Field(default_factory=list)
    code: str = ""


class Cancelled(_Event):
    """The run ended CANCELLED."""

    type: Literal["cancelled"] = "cancelled"


class OtherEvent(_Event):
    """An event of a type this version does not know (written by a newer one), kept as is."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str


Event = Annotated[
    Submitted
    | AttemptStarted
    | Output
    | OutputInvalid
    | CheckFailed
    | VoteCast
    | VoteSkipped
    | IssueDecided
    | ValidationPassed
    | ValidationFailed
    | RetryScheduled
    | Succeeded
    | Failed
    | Cancelled,
    Field(discriminator="type"),
]
"""Any provenance event, told apart by its `type`."""

TERMINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled"})
"""The types of the event that ends a run."""

_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(text: str | bytes) -> Event | OtherEvent:
    """An event from its stored JSON; one of an unknown type (or shape) as `OtherEvent`."""
    try:
        return _EVENT.validate_json(text)
    except ValidationError:
        return OtherEvent.model_validate_json(text)
