"""Semantic retries with feedback (docs/architecture.md §4) and the transient and permanent
lanes (§5)."""

from __future__ import annotations

import json

import pytest

from quorum.shared.errors import TaskFailedError
from quorum.shared.models import (
    SingleShotValidationConfig,
    TaskStatus,
    ThresholdVotingValidationConfig,
)
from tests.integration.helpers import APPLES, PEARS, Purchase, events, submit_scripted

pytestmark = pytest.mark.integration

submit = submit_scripted


# -- semantic lane: failed votes and invalid outputs are retried with feedback ----------------


def test_failed_attempt_is_retried_with_its_output_and_every_failing_reasoning(
    client, simulator, scope
):
    config = ThresholdVotingValidationConfig(
        issues=["names a product", "is polite"], count=3, max_retries=1
    )
    run = submit(
        client,
        scope,
        config,
        outputs=[PEARS, APPLES],
        votes={"names a product": [False, False, False, True], "is polite": True},
    )

    assert run.result(timeout=20) == Purchase(**APPLES)
    # The simulator counts the "## Failure Reasonings" blocks of each task prompt.
    assert [c["attempt"] for c in simulator.calls(scope, "task")] == [1, 2]
    [scheduled] = events(run, "retry_scheduled")
    feedback = scheduled["feedback"]
    assert feedback.startswith("# Previous Evaluations\n")
    assert f"## Output\n{json.dumps(PEARS)}\n" in feedback
    failing = sorted(
        (e for e in events(run, "vote") if e["attempt"] == 1 and e["is_valid"] is False),
        key=lambda e: e["index"],
    )
    assert len(failing) >= 2  # two failing votes decide the issue
    lines = [line for line in feedback.splitlines() if line.startswith("- ")]
    assert lines == [f"- names a product: {e['reasoning']}" for e in failing]
    assert "is polite" not in feedback  # a passing issue is not feedback
    assert feedback.rstrip().endswith("Use this information to improve your next attempt.")
    assert run.state().attempt == 2


def test_exhausted_retries_fail_with_every_reason_and_the_last_output(client, simulator, scope):
    config = SingleShotValidationConfig(issues=["is polite"], max_retries=2)
    run = submit(client, scope, config, outputs=[PEARS, PEARS, APPLES], votes={"*": False})

    with pytest.raises(TaskFailedError) as failed:
        run.result(timeout=20)
    assert failed.value.status is TaskStatus.FAILED
    assert failed.value.last_output == APPLES
    reason = "is polite: The output does not meet the criterion: is polite"
    assert failed.value.reasons == [reason] * 3
    assert [c["attempt"] for c in simulator.calls(scope, "task")] == [1, 2, 3]
    assert len(events(run, "retry_scheduled")) == 2
    [ended] = events(run, "failed")
    assert ended["reasons"] == [reason] * 3
    assert run.status() is TaskStatus.FAILED


def test_max_retries_zero_never_passes_a_failed_output(client, simulator, scope):
    config = ThresholdVotingValidationConfig(issues=["is polite"], count=3, max_retries=0)
    run = submit(client, scope, config, outputs=[APPLES], votes={"*": False})

    with pytest.raises(TaskFailedError) as failed:
        run.result(timeout=20)
    assert failed.value.status is TaskStatus.FAILED
    assert run.state().result is None
    assert len(simulator.calls(scope, "task")) == 1
    assert events(run, "retry_scheduled") == []
    assert events(run, "succeeded") == []


def test_invalid_output_is_a_failed_attempt_without_votes(client, simulator, scope):
    config = SingleShotValidationConfig(issues=["is polite"], max_retries=2)
    run = submit(client, scope, config, outputs=["!json", "!schema", APPLES], votes={"*": True})

    assert run.result(timeout=20) == Purchase(**APPLES)
    invalid = events(run, "output_invalid")
    assert [e["attempt"] for e in invalid] == [1, 2]
    assert "not valid JSON" in invalid[0]["error"]
    assert "does not fit the schema" in invalid[1]["error"]
    feedback = [e["feedback"] for e in events(run, "retry_scheduled")]
    assert len(feedback) == 2
    for invalid_event, text in zip(invalid, feedback, strict=True):
        assert f"## Failure Reasonings\n- {invalid_event['error']}\n" in text
    assert f"## Output\n{invalid[0]['output']}\n" in feedback[0]  # the raw text that failed
    # No votes were spent on the invalid attempts: one vote, on attempt 3.
    assert len(simulator.calls(scope, "vote")) == 1
    assert [e["attempt"] for e in events(run, "vote")] == [3]
    assert [c["attempt"] for c in simulator.calls(scope, "task")] == [1, 2, 3]


def test_invalid_output_with_no_retries_left_fails_with_the_validation_error(
    client, simulator, scope
):
    config = SingleShotValidationConfig(issues=["is polite"], max_retries=0)
    run = submit(client, scope, config, outputs=["!schema"])

    with pytest.raises(TaskFailedError) as failed:
        run.result(timeout=20)
    assert len(failed.value.reasons) == 1
    assert "does not fit the schema" in failed.value.reasons[0]
    assert simulator.calls(scope, "vote") == []


# -- transient lane: Celery retries the same job; nothing reaches the prompt ------------------


@pytest.mark.parametrize("fault", ["429", "500", "timeout"])
def test_transient_task_error_is_retried_and_never_shown_to_the_model(
    client, simulator, scope, fault
):
    config = SingleShotValidationConfig(issues=["is polite"])
    run = submit(client, scope, config, outputs=[APPLES], task_faults=[fault, fault])

    assert run.result(timeout=30) == Purchase(**APPLES)
    calls = simulator.calls(scope, "task")
    assert len(calls) == 3
    assert [c["fault"] for c in calls] == [fault, fault, None]
    assert [c["attempt"] for c in calls] == [1, 1, 1]  # no feedback in any prompt
    assert run.state().attempt == 1
    assert events(run, "retry_scheduled") == [] and events(run, "output_invalid") == []
    assert [e["attempt"] for e in events(run, "attempt_started")] == [1]


def test_mixed_transient_errors_on_task_and_votes_still_succeed(client, simulator, scope):
    config = ThresholdVotingValidationConfig(issues=["is polite"], count=3)
    run = submit(
        client,
        scope,
        config,
        outputs=[APPLES],
        task_faults=["429", "500", "timeout"],
        vote_faults=["500", "429"],
        votes={"*": True},
    )

    assert run.result(timeout=30) == Purchase(**APPLES)
    assert len(simulator.calls(scope, "task")) == 4  # three faults, then the answer
    assert run.state().attempt == 1
    assert all(e["is_valid"] is True for e in events(run, "vote"))
    assert events(run, "retry_scheduled") == []


def test_transient_errors_past_the_retry_limit_fail_the_run(client, simulator, scope):
    # The worker retries a transient error QUORUM_LLM_MAX_RETRIES = 3 times.
    config = SingleShotValidationConfig(issues=["is polite"])
    run = submit(client, scope, config, outputs=[APPLES], task_faults=["500"] * 4)

    with pytest.raises(TaskFailedError) as failed:
        run.result(timeout=30)
    assert failed.value.status is TaskStatus.FAILED
    assert "HTTP 500" in failed.value.reasons[0]
    assert len(simulator.calls(scope, "task")) == 4
    assert events(run, "retry_scheduled") == []


def test_more_transient_errors_than_celerys_default_cap_are_still_retried(dedicated_stack, scope):
    # Celery caps a job's retries at 3 unless the job says otherwise; Quorum's limit rules.
    dedicated_stack.worker(QUORUM_LLM_MAX_RETRIES="6")
    config = SingleShotValidationConfig(issues=["is polite"])
    client = dedicated_stack.client()
    run = submit(client, scope, config, outputs=[APPLES], task_faults=["500"] * 5)

    assert run.result(timeout=60) == Purchase(**APPLES)
    calls = dedicated_stack.simulator.calls(scope, "task")
    assert [c["fault"] for c in calls] == ["500"] * 5 + [None]


# -- permanent lane: the run fails at once with a clear error ---------------------------------


@pytest.mark.parametrize(("fault", "status"), [("401", 401), ("400", 400)])
def test_permanent_task_error_fails_the_run_at_once(client, simulator, scope, fault, status):
    config = SingleShotValidationConfig(issues=["is polite"], max_retries=3)
    run = submit(client, scope, config, outputs=[APPLES], task_faults=[fault])

    with pytest.raises(TaskFailedError) as failed:
        run.result(timeout=20)
    assert failed.value.status is TaskStatus.FAILED
    assert f"HTTP {status}" in str(failed.value)
    assert any(f"HTTP {status}" in reason for reason in failed.value.reasons)
    assert run.status() is TaskStatus.FAILED
    assert len(simulator.calls(scope, "task")) == 1
    assert simulator.calls(scope, "vote") == []
    assert events(run, "retry_scheduled") == []


def test_permanent_vote_error_fails_the_run(client, simulator, scope):
    config = SingleShotValidationConfig(issues=["is polite"])
    run = submit(client, scope, config, outputs=[APPLES], vote_faults=["401"])

    with pytest.raises(TaskFailedError) as failed:
        run.result(timeout=20)
    assert "HTTP 401" in str(failed.value)
    assert len(simulator.calls(scope, "vote")) == 1
    assert len(simulator.calls(scope, "task")) == 1


def test_unreachable_validator_gives_error_votes_and_a_clear_threshold_failure(
    client, simulator, scope
):
    config = ThresholdVotingValidationConfig(issues=["is polite"], count=1)
    run = submit(client, scope, config, outputs=[APPLES], votes={"*": "error"})

    with pytest.raises(TaskFailedError) as failed:
        run.result(timeout=30)
    assert failed.value.reasons == ["is polite: validator unavailable"]
    assert len(simulator.calls(scope, "vote")) == 4  # the first call and 3 transient retries
    [error_vote] = events(run, "vote")
    assert error_vote["is_valid"] is None
