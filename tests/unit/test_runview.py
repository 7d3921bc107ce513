"""The dashboard's view of a run (pure), and its templates (autoescaped)."""

from __future__ import annotations

from quorum.producer.dashboard import TEMPLATES, session_value
from quorum.producer.runview import age, run_page, run_row
from quorum.shared.events import (
    CheckFailed,
    IssueDecided,
    Output,
    RetryScheduled,
    Submitted,
    Succeeded,
    ValidationFailed,
    ValidationPassed,
    VoteCast,
    VoteSkipped,
)
from quorum.shared.models import RunSpec, TaskStatus, ThresholdVotingValidationConfig, Usage
from quorum.shared.state import RunState

SPEC = RunSpec(
    template="t",
    kwargs={},
    response_schema={"type": "object"},
    config=ThresholdVotingValidationConfig(issues=["is polite", "is short"], count=3),
    model="big",
    validator_model="small",
    task="greet",
)


def state(status: TaskStatus = TaskStatus.SUCCESSFUL) -> RunState:
    return RunState(
        run_id="r1",
        status=status,
        attempt=3,
        spec=SPEC,
        result={"text": "hi"},
        usage=Usage(total_tokens=42, cost_usd=0.5),
        created_at=100.0,
        updated_at=104.0,
        outputs={1: {"text": "x"}},
    )


def vote(attempt: int, issue: int, index: int, valid: bool | None, ts: float) -> VoteCast:
    return VoteCast(
        attempt=attempt,
        issue=issue,
        index=index,
        is_valid=valid,
        reasoning=f"<b>reason {index}</b>",
        latency_s=0.5,
        ts=ts,
    )


EVENTS = [
    Submitted(model="big", mode="threshold", ts=100.0),
    CheckFailed(
        attempt=1, check="expression", name="len(x) < 3", message="too long", output="x", ts=101
    ),
    RetryScheduled(attempt=1, next_attempt=2, feedback="shorter please", ts=101.1),
    Output(attempt=2, output={"text": "rude"}, latency_s=0.3, ts=102.0),
    vote(2, 0, 0, False, 102.5),
    vote(2, 0, 1, None, 102.6),
    VoteSkipped(attempt=2, issue=1, index=2, reason="issue decided", ts=102.6),
    IssueDecided(attempt=2, issue=0, outcome="failed", failing=1, errors=1, ts=102.7),
    ValidationFailed(attempt=2, failed_issues=[0], reasons=["not polite"], ts=102.8),
    RetryScheduled(attempt=2, next_attempt=3, feedback="be polite", ts=102.9),
    Output(attempt=3, output={"text": "hi"}, ts=103.0),
    vote(3, 0, 0, True, 103.5),
    vote(3, 1, 0, True, 103.6),
    ValidationPassed(attempt=3, ts=103.8),
    Succeeded(attempt=3, ts=104.0),
]


def test_a_run_page_groups_outputs_checks_votes_decisions_and_feedback_by_attempt():
    page = run_page(state(), EVENTS)
    first, second, third = page.attempts
    assert (first.number, first.output, first.checks[0].message) == (1, "x", "too long")
    assert first.feedback == "shorter please"
    polite = second.issues[0]
    assert polite.text == "is polite"
    assert [v.verdict for v in polite.votes] == ["invalid", "error"]
    assert polite.decision is not None and polite.decision.outcome == "failed"
    assert second.issues[1].skipped[0].reason == "issue decided"
    assert (second.passed, second.failed_reasons, second.feedback) == (
        False,
        ["not polite"],
        "be polite",
    )
    assert second.latency_s == 0.3
    assert third.passed is True and third.issues[1].margin == 1
    assert page.duration_s == 4.0 and page.terminal
    assert [t.at_s for t in page.timeline][:2] == [0.0, 1.0]
    assert page.timeline[4].summary == "issue 1, vote 1: invalid"


def test_a_run_without_events_still_shows_its_stored_outputs():
    page = run_page(state(TaskStatus.RUNNING), [])
    assert [(a.number, a.output) for a in page.attempts] == [(1, {"text": "x"})]
    assert page.timeline == [] and not page.terminal


def test_a_runs_row_and_ages():
    row = run_row(state())
    assert (row.task, row.attempts, row.tokens, row.cost_usd) == ("greet", 3, 42, 0.5)
    assert [age(s) for s in (3, 75, 7300, 200000, -1)] == ["3 s", "1 min", "2 h", "2 d", "0 s"]


def test_the_templates_escape_what_models_wrote():
    html = TEMPLATES.get_template("run.html").render(
        page=run_page(state(), EVENTS), refresh_s=2, now=105.0, signed_in=True
    )
    assert "&lt;b&gt;reason 0&lt;/b&gt;" in html and "<b>reason" not in html
    assert "Feedback sent to attempt 2" in html and 'http-equiv="refresh"' not in html
    live = TEMPLATES.get_template("run.html").render(
        page=run_page(state(TaskStatus.RUNNING), EVENTS), refresh_s=2, now=105.0
    )
    assert 'http-equiv="refresh"' in live


def test_the_session_cookie_is_not_the_token():
    assert session_value("secret") != "secret" and len(session_value("secret")) == 64
    assert session_value("secret") != session_value("other")
