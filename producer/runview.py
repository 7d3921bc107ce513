"""What the dashboard shows of a run, built from its state and provenance (pure functions).

A run page reads as the run happened: per attempt, the output, the cheap checks that rejected
it, each issue's votes with their reasonings and the decision, and the feedback the next
attempt was shown; then a timeline of every event, with its time since submit and the latency
of the LLM call it records. The runs list needs one row per run: status, task, age, attempts,
tokens and cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from quorum.shared.events import (
    CallEvent,
    CheckFailed,
    Event,
    Failed,
    IssueDecided,
    OtherEvent,
    Output,
    OutputInvalid,
    RetryScheduled,
    ValidationFailed,
    ValidationPassed,
    VoteCast,
    VoteSkipped,
)
from quorum.shared.keys import workflow_of
from quorum.shared.models import TaskStatus
from quorum.shared.state import RunState

__all__ = [
    "AttemptView",
    "IssueView",
    "RunPage",
    "RunRow",
    "TimelineRow",
    "VoteRow",
    "age",
    "run_page",
    "run_row",
]


@dataclass(frozen=True)
class RunRow:
    """One line of the runs list."""

    run_id: str
    status: TaskStatus
    task: str
    model: str
    created_at: float
    attempts: int
    tokens: int
    cost_usd: float
    workflow_id: str | None = None
    node: str = ""


def run_row(state: RunState) -> RunRow:
    """The runs list's line for `state` (a node run's names its workflow and node)."""
    return RunRow(
        run_id=state.run_id,
        status=state.status,
        task=state.spec.task or "ad hoc",
        model=state.spec.model,
        created_at=state.created_at,
        attempts=state.attempt,
        tokens=state.usage.total_tokens,
        cost_usd=state.usage.cost_usd,
        workflow_id=workflow_of(state.run_id),
        node=str(state.spec.metadata.get("node", "")),
    )


@dataclass(frozen=True)
class VoteRow:
    """One validator vote: `valid`, `invalid` or `error` (the validator call failed)."""

    index: int
    verdict: str
    reasoning: str
    latency_s: float | None
    worker: str


@dataclass
class IssueView:
    """One issue of one attempt: its text, its votes, the votes not cast, its decision."""

    number: int
    text: str
    votes: list[VoteRow] = field(default_factory=list)
    skipped: list[VoteSkipped] = field(default_factory=list)
    decision: IssueDecided | None = None

    @property
    def margin(self) -> int:
        """Valid votes minus invalid ones so far."""
        return sum(v.verdict == "valid" for v in self.votes) - sum(
            v.verdict == "invalid" for v in self.votes
        )


@dataclass
class AttemptView:
    """One attempt: its output, why it was rejected, its issues, the feedback that followed."""

    number: int
    output: Any = None
    has_output: bool = False
    output_error: str = ""
    latency_s: float | None = None
    checks: list[CheckFailed] = field(default_factory=list)
    issues: dict[int, IssueView] = field(default_factory=dict)
    passed: bool | None = None
    failed_reasons: list[str] = field(default_factory=list)
    feedback: str = ""


@dataclass(frozen=True)
class TimelineRow:
    """One event on the timeline: seconds since the first event, and what happened."""

    at_s: float
    type: str
    attempt: int
    latency_s: float | None
    summary: str
    worker: str


@dataclass
class RunPage:
    """Everything the run page shows."""

    state: RunState
    issues: list[str]
    attempts: list[AttemptView]
    timeline: list[TimelineRow]
    duration_s: float

    @property
    def terminal(self) -> bool:
        """Whether the run has ended (the page stops updating)."""
        return self.state.status.terminal

    @property
    def workflow(self) -> str | None:
        """The workflow a node run belongs to (its page links back to it)."""
        return workflow_of(self.state.run_id)


def _verdict(is_valid: bool | None) -> str:
    return "error" if is_valid is None else "valid" if is_valid else "invalid"


def _summary(event: Event | OtherEvent) -> str:
    """One line saying what the event recorded."""
    if isinstance(event, VoteCast):
        return f"issue {event.issue + 1}, vote {event.index + 1}: {_verdict(event.is_valid)}"
    if isinstance(event, VoteSkipped):
        return f"issue {event.issue + 1}, vote {event.index + 1} skipped: {event.reason}"
    if isinstance(event, IssueDecided):
        return (
            f"issue {event.issue + 1} {event.outcome} "
            f"({event.passing} valid, {event.failing} invalid, {event.errors} errors)"
        )
    if isinstance(event, CheckFailed):
        return f"{event.check} check {event.name!r}: {event.message}"
    if isinstance(event, OutputInvalid | Failed):
        return event.error
    if isinstance(event, RetryScheduled):
        return f"attempt {event.next_attempt} follows"
    if isinstance(event, ValidationFailed):
        return "failed issues: " + ", ".join(str(i + 1) for i in event.failed_issues)
    return ""


def _attempt(attempts: dict[int, AttemptView], number: int) -> AttemptView:
    if number not in attempts:
        attempts[number] = AttemptView(number=number)
    return attempts[number]


def _issue(attempt: AttemptView, number: int, texts: Sequence[str]) -> IssueView:
    if number not in attempt.issues:
        text = texts[number] if 0 <= number < len(texts) else ""
        attempt.issues[number] = IssueView(number=number, text=text)
    return attempt.issues[number]


def _apply(attempt: AttemptView, event: Event | OtherEvent, texts: Sequence[str]) -> None:
    """Fold one attempt-level event into its attempt's view."""
    if isinstance(event, Output | OutputInvalid | CheckFailed):
        attempt.output, attempt.has_output, attempt.latency_s = event.output, True, event.latency_s
    if isinstance(event, OutputInvalid):
        attempt.output_error = event.error
    elif isinstance(event, CheckFailed):
        attempt.checks.append(event)
    elif isinstance(event, VoteCast):
        row = VoteRow(
            index=event.index,
            verdict=_verdict(event.is_valid),
            reasoning=event.reasoning,
            latency_s=event.latency_s,
            worker=event.worker,
        )
        _issue(attempt, event.issue, texts).votes.append(row)
    elif isinstance(event, VoteSkipped):
        _issue(attempt, event.issue, texts).skipped.append(event)
    elif isinstance(event, IssueDecided):
        _issue(attempt, event.issue, texts).decision = event
    elif isinstance(event, ValidationPassed):
        attempt.passed = True
    elif isinstance(event, ValidationFailed):
        attempt.passed, attempt.failed_reasons = False, list(event.reasons)
    elif isinstance(event, RetryScheduled):
        attempt.feedback = event.feedback


def run_page(state: RunState, events: Sequence[Event | OtherEvent]) -> RunPage:
    """The run page's content for a run and its provenance, oldest event first."""
    texts = list(state.spec.config.issues) if state.spec.config else []
    attempts: dict[int, AttemptView] = {}
    for event in events:
        if event.attempt > 0:
            _apply(_attempt(attempts, event.attempt), event, texts)
    for number, output in state.outputs.items():  # outputs whose event has expired
        view = _attempt(attempts, number)
        if not view.has_output:
            view.output, view.has_output = output, True
    start = events[0].ts if events else state.created_at
    timeline = [
        TimelineRow(
            at_s=max(event.ts - start, 0.0),
            type=event.type,
            attempt=event.attempt,
            latency_s=event.latency_s if isinstance(event, CallEvent) else None,
            summary=_summary(event),
            worker=event.worker,
        )
        for event in events
    ]
    end = events[-1].ts if events else state.updated_at
    return RunPage(
        state=state,
        issues=texts,
        attempts=[attempts[n] for n in sorted(attempts)],
        timeline=timeline,
        duration_s=max(end - start, 0.0),
    )


def age(seconds: float) -> str:
    """A duration the way people read it: `45 s`, `12 min`, `3 h`, `2 d`."""
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:.0f} s"
