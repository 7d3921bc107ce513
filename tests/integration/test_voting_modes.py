"""Each validation mode passes and fails as docs/architecture.md §3 says, with the LLM calls it
implies."""

from __future__ import annotations

import pytest

from quorum.shared.errors import TaskFailedError
from quorum.shared.models import (
    KAheadVotingValidationConfig,
    SingleShotValidationConfig,
    TaskStatus,
    ThresholdVotingValidationConfig,
)
from tests.integration.helpers import APPLES, Purchase, events, submit_scripted

pytestmark = pytest.mark.integration


def submit(client, scope, config, **script):
    return submit_scripted(client, scope, config, outputs=[APPLES], **script)


def votes_by_issue(run):
    """(issue, index) of every counted vote, per attempt."""
    return sorted((e["attempt"], e["issue"], e["index"]) for e in events(run, "vote"))


def test_single_shot_passes_with_one_vote_per_issue(client, simulator, scope):
    config = SingleShotValidationConfig(issues=["names a product", "has a quantity"])
    run = submit(client, scope, config, votes={"*": True})

    assert run.result(timeout=20) == Purchase(**APPLES)
    assert run.status() is TaskStatus.SUCCESSFUL
    assert len(simulator.calls(scope, "task")) == 1
    assert len(simulator.calls(scope, "vote")) == 2
    assert votes_by_issue(run) == [(1, 0, 0), (1, 1, 0)]
    types = [e["type"] for e in events(run)]
    assert types[0] == "submitted" and types[-2:] == ["validation_passed", "succeeded"]


def test_single_shot_fails_when_its_one_vote_fails(client, simulator, scope):
    config = SingleShotValidationConfig(issues=["names a product"], max_retries=0)
    run = submit(client, scope, config, votes={"names a product": False})

    with pytest.raises(TaskFailedError) as failed:
        run.result(timeout=20)
    assert failed.value.status is TaskStatus.FAILED
    assert failed.value.reasons == [
        "names a product: The output does not meet the criterion: names a product"
    ]
    assert failed.value.last_output == APPLES
    assert len(simulator.calls(scope, "task")) == 1
    assert len(simulator.calls(scope, "vote")) == 1


def test_threshold_spends_at_most_count_votes_per_issue(client, simulator, scope):
    issues = ["names a product", "has a quantity", "is polite"]
    config = ThresholdVotingValidationConfig(issues=issues, count=3)
    run = submit(client, scope, config, votes={"*": True})

    assert run.result(timeout=20) == Purchase(**APPLES)
    vote_calls = simulator.calls(scope, "vote")
    cast, skipped = events(run, "vote"), events(run, "vote_skipped")
    assert len(vote_calls) == len(cast) <= 9
    assert len(cast) + len(skipped) == 9  # every planned vote was either cast or skipped
    assert {(e["issue"], e["index"]) for e in cast + skipped} == {
        (issue, index) for issue in range(3) for index in range(3)
    }
    decided = events(run, "issue_decided")
    assert sorted(e["issue"] for e in decided) == [0, 1, 2]
    assert all(e["outcome"] == "passed" for e in decided)


def test_threshold_fails_an_issue_short_of_the_required_margin(client, simulator, scope):
    # 2 passing, 1 failing: margin 1, short of required_ahead 3.
    config = ThresholdVotingValidationConfig(issues=["is polite"], count=3, required_ahead=3)
    run = submit(client, scope, config, votes={"is polite": [True, False, True]})

    with pytest.raises(TaskFailedError) as failed:
        run.result(timeout=20)
    assert failed.value.status is TaskStatus.FAILED
    assert any("does not meet the criterion: is polite" in r for r in failed.value.reasons)
    assert len(simulator.calls(scope, "task")) == 1  # max_retries defaults to 0
    assert len(simulator.calls(scope, "vote")) <= 3
    [decided] = events(run, "issue_decided")
    assert decided["outcome"] == "failed"


def test_threshold_fails_a_clear_majority_against(client, simulator, scope):
    config = ThresholdVotingValidationConfig(issues=["names a product", "is polite"], count=3)
    run = submit(client, scope, config, votes={"names a product": True, "is polite": False})

    with pytest.raises(TaskFailedError):
        run.result(timeout=20)
    outcomes = {e["issue"]: e["outcome"] for e in events(run, "issue_decided")}
    assert outcomes == {0: "passed", 1: "failed"}  # the other issue still finishes
    assert len(simulator.calls(scope, "vote")) <= 6


# The simulator hands out a vote list in the order the calls arrive, but votes are counted in
# the order they come back; with k = 4 no subset of a 3-2 first round is decided early, so the
# rounds below do not depend on that order.


def test_k_ahead_draws_a_round_of_k_minus_margin_votes(client, simulator, scope):
    # First round of 5 ends 3-2: margin 1, so a second round of k − 1 = 3 votes, which decides.
    config = KAheadVotingValidationConfig(issues=["is polite"], count=5, required_ahead=4)
    first_round, second_round = [True, False, True, False, True], [True, True, True]
    pattern = [*first_round, *second_round]
    run = submit(client, scope, config, votes={"is polite": pattern})

    assert run.result(timeout=20) == Purchase(**APPLES)
    assert len(simulator.calls(scope, "vote")) == 8
    assert votes_by_issue(run) == [(1, 0, index) for index in range(8)]
    [decided] = events(run, "issue_decided")
    assert (decided["outcome"], decided["passing"], decided["failing"]) == ("passed", 6, 2)


def test_k_ahead_without_consensus_at_max_votes_fails(client, simulator, scope):
    # Rounds of 5 (3-2), 3 (1-2, margin 0) and, capped by max_votes = 9, 1 more: no side leads
    # by 4 after 9 votes.
    config = KAheadVotingValidationConfig(
        issues=["is polite"], count=5, required_ahead=4, max_votes=9
    )
    pattern = [*[True, False, True, False, True], *[False, True, False], True]
    run = submit(client, scope, config, votes={"is polite": pattern})

    with pytest.raises(TaskFailedError) as failed:
        run.result(timeout=20)
    assert failed.value.status is TaskStatus.FAILED
    assert any("no consensus" in reason for reason in failed.value.reasons)
    assert len(simulator.calls(scope, "vote")) == 9
    assert votes_by_issue(run) == [(1, 0, index) for index in range(9)]
    [decided] = events(run, "issue_decided")
    assert (decided["outcome"], decided["reason"]) == ("failed", "no consensus")


def test_k_ahead_fails_when_validators_lead_against(client, simulator, scope):
    config = KAheadVotingValidationConfig(issues=["is polite"], count=5, required_ahead=3)
    run = submit(client, scope, config, votes={"is polite": False})

    with pytest.raises(TaskFailedError) as failed:
        run.result(timeout=20)
    assert "no consensus" not in " ".join(failed.value.reasons)
    assert 3 <= len(simulator.calls(scope, "vote")) <= 5


def test_k_ahead_first_round_of_k_votes_decides_with_k_when_they_agree(client, simulator, scope):
    # first_round = k: the 3 votes of the first round agree and decide; none of count's 5 are
    # drawn. A split first round (2-1) draws k − 1 = 2 more.
    config = KAheadVotingValidationConfig(
        issues=["is polite", "names a product"], count=5, required_ahead=3, first_round=3
    )
    votes = {"is polite": True, "names a product": [True, False, True, True, True]}
    run = submit(client, scope, config, votes=votes)

    assert run.result(timeout=20) == Purchase(**APPLES)
    assert votes_by_issue(run) == [
        *[(1, 0, index) for index in range(3)],
        *[(1, 1, index) for index in range(5)],
    ]
    assert len(simulator.calls(scope, "vote")) == 8
