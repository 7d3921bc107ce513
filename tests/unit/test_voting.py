"""Voting rules (docs/architecture.md §3): one worked example per table row, early decisions,
error votes."""

from __future__ import annotations

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorum.shared.models import (
    KAheadVotingValidationConfig,
    SingleShotValidationConfig,
    ThresholdVotingValidationConfig,
    ValidationConfig,
)
from quorum.shared.scripts import lua
from quorum.shared.voting import (
    EARLY_DECISIONS,
    NO_CONSENSUS,
    VALIDATOR_UNAVAILABLE,
    Decision,
    Outcome,
    Tally,
    decide_after_round,
    decide_early,
    early_rule,
    first_round_size,
    next_round_size,
    theoretical_accuracy,
)

ISSUES = ["the quantity is right"]
PASSED = Decision(Outcome.PASSED)
FAILED = Decision(Outcome.FAILED)


def single() -> SingleShotValidationConfig:
    return SingleShotValidationConfig(issues=ISSUES)


def threshold(count: int = 3, k: int = 1) -> ThresholdVotingValidationConfig:
    return ThresholdVotingValidationConfig(issues=ISSUES, count=count, required_ahead=k)


def k_ahead(
    count: int = 5, k: int = 3, max_votes: int | None = None
) -> KAheadVotingValidationConfig:
    return KAheadVotingValidationConfig(
        issues=ISSUES, count=count, required_ahead=k, max_votes=max_votes
    )


def tally(passing: int = 0, failing: int = 0, errors: int = 0) -> Tally:
    return Tally(passing=passing, failing=failing, errors=errors)


# -- the table, row by row ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict", "expected"), [(True, PASSED), (False, FAILED)], ids=["pass", "fail"]
)
def test_single_shot_one_vote_decides(verdict: bool, expected: Decision) -> None:
    config = single()
    assert first_round_size(config) == 1
    assert decide_after_round(config, Tally.of([verdict])) == expected
    assert next_round_size(config, Tally.of([verdict])) == 0


@pytest.mark.parametrize(
    ("config", "votes", "expected"),
    [
        (threshold(3, 1), tally(2, 1), PASSED),
        (threshold(3, 1), tally(1, 2), FAILED),
        (threshold(3, 1), tally(3, 0), PASSED),
        (threshold(3, 3), tally(3, 0), PASSED),
        (threshold(3, 3), tally(2, 1), FAILED),
        (threshold(5, 3), tally(4, 1), PASSED),
        (threshold(5, 3), tally(3, 2), FAILED),
    ],
    ids=["2-1 k1", "1-2 k1", "3-0 k1", "3-0 k3 all", "2-1 k3 not all", "4-1 k3", "3-2 k3"],
)
def test_threshold_one_round_pass_iff_margin_reaches_k(
    config: ThresholdVotingValidationConfig, votes: Tally, expected: Decision
) -> None:
    assert first_round_size(config) == config.count
    assert decide_after_round(config, votes) == expected
    assert next_round_size(config, votes) == 0


@pytest.mark.parametrize(
    ("votes", "expected"),
    [(tally(5, 0), PASSED), (tally(4, 1), PASSED), (tally(0, 5), FAILED), (tally(1, 4), FAILED)],
    ids=["5-0", "4-1 margin 3", "0-5", "1-4 margin -3"],
)
def test_k_ahead_decides_once_a_side_leads_by_k(votes: Tally, expected: Decision) -> None:
    config = k_ahead(5, 3)
    assert first_round_size(config) == 5
    assert decide_after_round(config, votes) == expected


@pytest.mark.parametrize(
    ("votes", "next_size"),
    [(tally(3, 2), 2), (tally(2, 3), 2), (tally(4, 3), 2), (tally(4, 4, 1), 3)],
    ids=["3-2", "2-3", "4-3", "4-4 with an error"],
)
def test_k_ahead_undecided_draws_the_fewest_votes_that_could_decide(
    votes: Tally, next_size: int
) -> None:
    config = k_ahead(5, 3)
    assert decide_after_round(config, votes) is None
    assert next_round_size(config, votes) == next_size


def test_k_ahead_cap_reached_undecided_fails_with_no_consensus() -> None:
    config = k_ahead(5, 3, max_votes=7)
    decision = decide_after_round(config, tally(4, 3))
    assert decision == Decision(Outcome.FAILED, NO_CONSENSUS)
    assert not decision.passed


def test_k_ahead_first_round_opens_with_the_fewest_votes_that_could_decide() -> None:
    config = KAheadVotingValidationConfig(issues=["x"], count=5, required_ahead=3, first_round=3)
    assert first_round_size(config) == 3
    assert decide_after_round(config, tally(3, 0)) == PASSED
    assert decide_after_round(config, tally(2, 1)) is None
    assert next_round_size(config, tally(2, 1)) == 2


def test_k_ahead_default_cap_is_four_times_count() -> None:
    config = k_ahead(5, 3)
    assert config.max_votes == 20
    assert decide_after_round(config, tally(10, 9)) is None
    assert decide_after_round(config, tally(10, 10)) == Decision(Outcome.FAILED, NO_CONSENSUS)


# -- early decisions ----------------------------------------------------------------------


def test_threshold_pass_is_certain_after_two_of_three() -> None:
    assert decide_early(threshold(3, 1), tally(2, 0), planned=3) == PASSED


def test_threshold_fail_is_certain_after_two_failing_of_three() -> None:
    assert decide_early(threshold(3, 1), tally(0, 2), planned=3) == FAILED


@pytest.mark.parametrize("votes", [tally(1, 0), tally(0, 1), tally(1, 1)], ids=str)
def test_threshold_open_while_the_votes_left_can_cross_k(votes: Tally) -> None:
    assert decide_early(threshold(3, 1), votes, planned=3) is None


def test_threshold_k3_fails_at_the_first_failing_vote() -> None:
    assert decide_early(threshold(3, 3), tally(0, 1), planned=3) == FAILED
    assert decide_early(threshold(3, 3), tally(2, 0), planned=3) is None


@pytest.mark.parametrize(
    ("votes", "expected"),
    [(tally(3, 0), PASSED), (tally(0, 3), FAILED), (tally(2, 0), None), (tally(3, 1), None)],
    ids=["3-0", "0-3", "2-0", "3-1"],
)
def test_k_ahead_decides_mid_round_when_margin_reaches_k(
    votes: Tally, expected: Decision | None
) -> None:
    assert decide_early(k_ahead(5, 3), votes, planned=5) == expected


# -- error votes --------------------------------------------------------------------------


def test_tally_counts_none_as_an_error_vote() -> None:
    counted = Tally.of([True, None, False, True, None])
    assert counted == tally(2, 1, 2)
    assert counted.margin == 1
    assert counted.total == 5


@pytest.mark.parametrize(
    ("config", "votes"),
    [
        (threshold(3, 1), tally(0, 0, 3)),
        (threshold(3, 1), tally(1, 1, 1)),
        (threshold(3, 3), tally(2, 0, 1)),
    ],
    ids=["all errors", "1-1-e k1", "2-0-e k3"],
)
def test_threshold_undecided_by_errors_fails_as_validator_unavailable(
    config: ThresholdVotingValidationConfig, votes: Tally
) -> None:
    assert decide_after_round(config, votes) == Decision(Outcome.FAILED, VALIDATOR_UNAVAILABLE)


def test_threshold_failed_by_votes_despite_an_error_is_a_plain_failure() -> None:
    assert decide_after_round(threshold(3, 1), tally(0, 2, 1)) == FAILED


def test_threshold_passed_despite_an_error() -> None:
    assert decide_after_round(threshold(3, 1), tally(2, 0, 1)) == PASSED


def test_k_ahead_error_votes_count_towards_the_cap_and_draw_another_round() -> None:
    config = k_ahead(5, 3)
    votes = tally(2, 1, 2)
    assert decide_after_round(config, votes) is None
    assert next_round_size(config, votes) == 2
    capped = k_ahead(5, 3, max_votes=5)
    assert decide_after_round(capped, votes) == Decision(Outcome.FAILED, NO_CONSENSUS)
    assert next_round_size(capped, votes) == 0


# -- round sizes and accuracy -------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_votes", "votes", "expected"),
    [(20, tally(3, 2), 2), (6, tally(3, 2), 1), (5, tally(3, 2), 0), (7, tally(0, 0, 5), 2)],
    ids=["room", "one left", "cap reached", "errors use the cap"],
)
def test_next_round_size_respects_the_cap(max_votes: int, votes: Tally, expected: int) -> None:
    assert next_round_size(k_ahead(5, 3, max_votes=max_votes), votes) == expected


@pytest.mark.parametrize(
    ("p", "k", "expected"),
    [(0.5, 3, 0.5), (0.0, 3, 0.0), (1.0, 3, 1.0), (0.8, 1, 0.8), (0.8, 2, 16 / 17)],
)
def test_theoretical_accuracy(p: float, k: int, expected: float) -> None:
    assert theoretical_accuracy(p, k) == pytest.approx(expected)


def test_theoretical_accuracy_grows_with_k() -> None:
    values = [theoretical_accuracy(0.7, k) for k in range(1, 8)]
    assert values == sorted(values)
    assert values[-1] > 0.99


# -- properties ---------------------------------------------------------------------------

counts = st.sampled_from([1, 3, 5, 7, 9])


@st.composite
def threshold_configs(draw: st.DrawFn) -> ThresholdVotingValidationConfig:
    count = draw(counts)
    return threshold(count, draw(st.integers(1, count)))


@st.composite
def k_ahead_configs(draw: st.DrawFn) -> KAheadVotingValidationConfig:
    count = draw(counts)
    k = draw(st.integers(1, 6))
    cap = draw(st.integers(max(count, k), 30))
    return k_ahead(count, k, max_votes=cap)


@st.composite
def tallies(draw: st.DrawFn, most: int) -> Tally:
    total = draw(st.integers(0, most))
    passing = draw(st.integers(0, total))
    failing = draw(st.integers(0, total - passing))
    return tally(passing, failing, total - passing - failing)


@given(data=st.data())
def test_threshold_decision_never_contradicts_its_rule(data: st.DataObject) -> None:
    config = data.draw(threshold_configs())
    votes = data.draw(tallies(config.count))
    decision = decide_after_round(config, votes)
    assert decision is not None, "a complete threshold round always decides"
    if decision.passed:
        assert votes.margin >= config.required_ahead
    else:
        assert votes.margin < config.required_ahead


@given(data=st.data())
def test_k_ahead_decision_never_contradicts_its_rule(data: st.DataObject) -> None:
    config = data.draw(k_ahead_configs())
    votes = data.draw(tallies(config.max_votes))
    decision = decide_after_round(config, votes)
    k = config.required_ahead
    if decision is None:
        assert abs(votes.margin) < k and votes.total < config.max_votes
        assert 1 <= next_round_size(config, votes) <= k - abs(votes.margin)
    elif decision.passed:
        assert votes.margin >= k
    elif decision.reason == NO_CONSENSUS:
        assert abs(votes.margin) < k and votes.total >= config.max_votes
    else:
        assert votes.margin <= -k


@given(data=st.data())
def test_next_round_never_exceeds_the_votes_left(data: st.DataObject) -> None:
    config = data.draw(k_ahead_configs())
    votes = data.draw(tallies(config.max_votes))
    assert 0 <= next_round_size(config, votes) <= config.max_votes - votes.total


@given(data=st.data())
def test_threshold_early_decision_holds_whatever_the_votes_left(data: st.DataObject) -> None:
    config = data.draw(threshold_configs())
    votes = data.draw(tallies(config.count))
    early = decide_early(config, votes, planned=config.count)
    if early is None:
        return
    left = config.count - votes.total
    for passing in range(left + 1):
        for failing in range(left - passing + 1):
            errors = left - passing - failing
            final = tally(votes.passing + passing, votes.failing + failing, votes.errors + errors)
            assert decide_after_round(config, final).outcome == early.outcome


@given(data=st.data())
def test_k_ahead_rounds_never_exceed_max_votes_and_always_end(data: st.DataObject) -> None:
    """Play an issue round by round with arbitrary verdicts (error votes included)."""
    config = data.draw(k_ahead_configs())
    votes: list[bool | None] = []
    size = config.count
    while True:
        votes += data.draw(
            st.lists(st.sampled_from([True, False, None]), min_size=size, max_size=size)
        )
        assert len(votes) <= config.max_votes
        counted = Tally.of(votes)
        decision = decide_after_round(config, counted)
        if decision is not None:
            break
        size = next_round_size(config, counted)
        assert size >= 1


# -- the early rule in Lua (`record_vote.lua` decides with it) ----------------------------

_LUA_EARLY = (
    lua("decide_early")
    + """
return decide_early(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
                    tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]))
"""
)


@pytest.mark.parametrize(
    "config",
    [single(), threshold(3, 1), threshold(5, 3), threshold(3, 3), k_ahead(5, 3), k_ahead(1, 2)],
    ids=["single", "threshold-3-1", "threshold-5-3", "threshold-3-3", "k-ahead-5-3", "k-ahead-1-2"],
)
def test_the_lua_early_rule_decides_as_decide_early_on_every_tally(
    config: ValidationConfig,
) -> None:
    """Every tally up to the config's most votes: the Lua mirror and the Python rule agree."""
    run = fakeredis.FakeRedis().register_script(_LUA_EARLY)
    most = config.max_votes
    for total in range(most + 1):
        for passing in range(total + 1):
            for failing in range(total - passing + 1):
                votes = tally(passing, failing, total - passing - failing)
                expected = decide_early(config, votes, planned=config.count)
                number = run(args=[*early_rule(config), passing, failing, votes.errors])
                got = EARLY_DECISIONS[number - 1] if number else None
                assert got == expected, (votes, got, expected)
