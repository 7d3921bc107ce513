"""Run-level metrics: the facts taken from a run, and the families built from them."""

from __future__ import annotations

from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest

from quorum.producer.metrics import RunMetrics, facts_of, families
from quorum.shared.events import IssueDecided, Output, RetryScheduled, VoteCast
from quorum.shared.models import RunSpec, TaskStatus, ThresholdVotingValidationConfig, Usage
from quorum.shared.state import RunState

SPEC = RunSpec(
    template="t",
    kwargs={},
    response_schema={"type": "object"},
    config=ThresholdVotingValidationConfig(issues=["a"], count=3),
    model="big",
    validator_model="small",
)


def state(status: TaskStatus, attempt: int = 2) -> RunState:
    return RunState(
        run_id="r", status=status, attempt=attempt, spec=SPEC, created_at=10.0, updated_at=13.5
    )


def vote(attempt: int, **usage: int) -> VoteCast:
    return VoteCast(
        attempt=attempt, issue=0, index=0, is_valid=True, reasoning="", usage=Usage(**usage)
    )


EVENTS = [
    Output(attempt=1, output={}, usage=Usage(prompt_tokens=10, completion_tokens=5)),
    vote(1, prompt_tokens=3),
    vote(1, prompt_tokens=3),
    IssueDecided(attempt=1, issue=0, outcome="failed"),
    RetryScheduled(attempt=1, next_attempt=2, feedback=""),
    Output(attempt=2, output={}, usage=Usage(prompt_tokens=20, completion_tokens=5)),
    vote(2, completion_tokens=1),
    IssueDecided(attempt=2, issue=0, outcome="passed"),
]


def test_facts_count_attempts_retries_votes_per_decision_tokens_by_model_and_duration():
    facts = facts_of(state(TaskStatus.SUCCESSFUL), EVENTS)
    assert (facts.attempts, facts.retries, facts.duration_s) == (2, 1, 3.5)
    assert facts.issue_votes == (("failed", 2), ("passed", 1))
    assert facts.tokens == {
        ("big", "prompt"): 30,
        ("big", "completion"): 10,
        ("small", "prompt"): 6,
        ("small", "completion"): 1,
    }
    assert facts_of(state(TaskStatus.RUNNING), EVENTS).duration_s is None


def test_families_render_as_prometheus_text():
    runs = [facts_of(state(TaskStatus.SUCCESSFUL), EVENTS), facts_of(state(TaskStatus.RUNNING), [])]

    class Fixed(RunMetrics):
        def runs(self):  # no store: the facts above
            return runs

    registry = CollectorRegistry()
    registry.register(Fixed(None, window_s=60, max_runs=10))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'quorum_runs{status="SUCCESSFUL"} 1.0' in text
    assert 'quorum_runs{status="RUNNING"} 1.0' in text
    assert 'quorum_run_attempts_bucket{le="2.0",status="SUCCESSFUL"} 1.0' in text
    assert 'quorum_issue_votes_bucket{le="1.0",outcome="passed"} 1.0' in text
    assert 'quorum_tokens{kind="prompt",model="small"} 6.0' in text
    assert "quorum_retries 1.0" in text
    assert len(families(runs, window_s=60)) == 7
