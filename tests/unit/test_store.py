"""The Redis store against fakeredis: atomic creates, compare-and-set, write-once records."""

from __future__ import annotations

import json
import threading
import time

import fakeredis
import pytest
from redis import BlockingConnectionPool
from redis import exceptions as redis_errors

from quorum.shared.connection import connect
from quorum.shared.errors import RunNotFoundError, RunUnreadableError, StoreError
from quorum.shared.events import IssueDecided
from quorum.shared.keys import Keys
from quorum.shared.models import RunSpec, TaskStatus, ThresholdVotingValidationConfig, Usage, Vote
from quorum.shared.prompts import FailedAttempt
from quorum.shared.rounds import RecordedVote
from quorum.shared.scripts import LIVE_MARGIN_S, lua
from quorum.shared.state import SHARED_SPEC_CHARS
from quorum.shared.store import RunStore
from quorum.shared.voting import VALIDATOR_UNAVAILABLE, early_rule
from tests.unit.events import event

SPEC = RunSpec(
    template="Extract: {{ message }}",
    kwargs={"message": "5 apples"},
    response_schema={"type": "object"},
    config=ThresholdVotingValidationConfig(issues=["the quantity matches"]),
    model="m",
    validator_model="v",
)
KEYS = Keys("quorum")


@pytest.fixture
def redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def store(redis: fakeredis.FakeRedis) -> RunStore:
    return RunStore(redis, keys=KEYS, ttl_s=100)


def types(store: RunStore, run_id: str) -> list[str]:
    return [e["type"] for e in store.events(run_id)]


LIVE_TTL_S = 100 + 3600 + LIVE_MARGIN_S
"""The TTL of a live run's keys: the result TTL past its deadline (the default, an hour)."""


def assert_every_key_has_a_ttl(redis: fakeredis.FakeRedis, most: int = LIVE_TTL_S) -> None:
    keys = redis.keys("*")
    assert keys
    for key in keys:
        assert 0 < redis.ttl(key) <= most, key


def test_a_live_run_keeps_the_ttl_it_was_made_with_and_gets_the_result_ttl_at_its_end(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    started(store)
    assert LIVE_TTL_S - 5 < redis.ttl("quorum:run:{r1}") <= LIVE_TTL_S
    assert store.transition("r1", TaskStatus.VALIDATING, attempt=1)
    assert LIVE_TTL_S - 5 < redis.ttl("quorum:run:{r1}:events") <= LIVE_TTL_S
    assert store.transition("r1", TaskStatus.SUCCESSFUL, attempt=1, fields={"result": "1"})
    assert_every_key_has_a_ttl(redis, most=100)


def started(store: RunStore, run_id: str = "r1") -> str:
    """A run created and moved to RUNNING, attempt 1."""
    store.create(run_id, SPEC)
    assert store.transition(run_id, TaskStatus.RUNNING, attempt=0, fields={"attempt": 1})
    return run_id


# -- create -------------------------------------------------------------------------------


def test_create_writes_a_pending_run_and_its_submitted_event(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    assert store.create("r1", SPEC) == "r1"
    state = store.load("r1")
    assert state.status is TaskStatus.PENDING
    assert state.attempt == 0
    assert state.spec == SPEC
    assert state.created_at > 0
    assert store.status("r1") is TaskStatus.PENDING
    [submitted] = store.events("r1")
    assert submitted["type"] == "submitted"
    assert submitted["model"] == "m"
    assert submitted["mode"] == "threshold"
    assert redis.zscore("quorum:runs", "r1") is not None
    assert_every_key_has_a_ttl(redis)


def test_create_uses_the_documented_keys(store: RunStore, redis: fakeredis.FakeRedis) -> None:
    store.create("abc", SPEC, idempotency_key="k")
    assert set(redis.keys("*")) == {
        "quorum:run:{abc}",
        "quorum:run:{abc}:events",
        "quorum:idem:k",
        "quorum:runs",
        "quorum:deadlines",
        "quorum:progress",
    }
    assert_every_key_has_a_ttl(redis)


def test_idempotency_key_returns_the_first_run_and_writes_nothing(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    assert store.create("first", SPEC, idempotency_key="order-7") == "first"
    before = sorted(redis.keys("*"))
    assert store.create("second", SPEC, idempotency_key="order-7") == "first"
    assert sorted(redis.keys("*")) == before
    assert redis.zrange("quorum:runs", 0, -1) == ["first"]
    assert len(store.events("first")) == 1
    with pytest.raises(RunNotFoundError):
        store.load("second")


def test_different_idempotency_keys_make_different_runs(store: RunStore) -> None:
    assert store.create("a", SPEC, idempotency_key="1") == "a"
    assert store.create("b", SPEC, idempotency_key="2") == "b"


def test_discard_removes_everything(store: RunStore, redis: fakeredis.FakeRedis) -> None:
    store.create("r1", SPEC, idempotency_key="k")
    store.discard("r1", idempotency_key="k")
    assert redis.zcard("quorum:runs") == 0
    assert redis.exists("quorum:run:{r1}", "quorum:run:{r1}:events", "quorum:idem:k") == 0


def test_a_create_that_fails_before_writing_leaves_the_key_free(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    # A spec that cannot be serialized (a lone surrogate) fails before the key is claimed.
    broken = SPEC.model_copy(update={"kwargs": {"message": "\ud800"}})
    with pytest.raises(ValueError):
        store.create("bad", broken, idempotency_key="order-42")
    assert redis.keys("*") == []
    assert store.create("good", SPEC, idempotency_key="order-42") == "good"


def test_a_create_that_fails_while_writing_releases_its_claim(
    store: RunStore, redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object) -> None:
        raise redis_errors.ConnectionError("lost")

    monkeypatch.setattr(store, "_write_new", fail)
    with pytest.raises(StoreError):
        store.create("bad", SPEC, idempotency_key="order-43")
    assert redis.get(KEYS.idempotency("order-43")) is None
    monkeypatch.undo()
    assert store.create("good", SPEC, idempotency_key="order-43") == "good"
    assert 100 - 2 <= redis.ttl(KEYS.idempotency("order-43")) <= 100  # the run's TTL now


def test_discard_releases_only_its_own_claim(store: RunStore, redis: fakeredis.FakeRedis) -> None:
    store.create("r1", SPEC, idempotency_key="k")
    redis.set(KEYS.idempotency("k"), "someone-else")
    store.discard("r1", idempotency_key="k")
    assert redis.get(KEYS.idempotency("k")) == "someone-else"


def test_a_run_that_does_not_parse_is_unreadable_not_a_crash(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    redis.hset(KEYS.run("r1"), mapping={"spec": "[" * 300, "status": "PENDING"})
    with pytest.raises(RunUnreadableError, match="cannot be read back"):
        store.load("r1")


@pytest.mark.parametrize("read", ["load", "status"])
def test_unknown_run_is_not_found(store: RunStore, read: str) -> None:
    with pytest.raises(RunNotFoundError, match="nope"):
        getattr(store, read)("nope")


# -- transitions --------------------------------------------------------------------------


def test_allowed_transition_sets_fields_and_appends_events(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    store.create("r1", SPEC)
    moved = store.transition(
        "r1",
        TaskStatus.RUNNING,
        attempt=0,
        fields={"attempt": 1, "output:1": {"product": "apple"}},
        events=[event("attempt_started", 1, "w1")],
    )
    assert moved
    state = store.load("r1")
    assert (state.status, state.attempt) == (TaskStatus.RUNNING, 1)
    assert state.outputs == {1: {"product": "apple"}}
    assert types(store, "r1") == ["submitted", "attempt_started"]
    assert store.events("r1")[-1]["worker"] == "w1"
    assert_every_key_has_a_ttl(redis)


def test_transition_not_allowed_by_the_machine_is_refused(store: RunStore) -> None:
    store.create("r1", SPEC)
    assert not store.transition("r1", TaskStatus.VALIDATING, events=[event("output", 1, "")])
    assert store.status("r1") is TaskStatus.PENDING
    assert types(store, "r1") == ["submitted"]


@pytest.mark.parametrize("terminal", [TaskStatus.SUCCESSFUL, TaskStatus.FAILED])
@pytest.mark.parametrize("new", list(TaskStatus))
def test_no_transition_out_of_a_terminal_state(
    store: RunStore, terminal: TaskStatus, new: TaskStatus
) -> None:
    started(store)
    assert store.transition("r1", TaskStatus.VALIDATING, attempt=1)
    assert store.transition("r1", terminal, attempt=1)
    count = len(store.events("r1"))
    assert not store.transition("r1", new, events=[event("late", 1, "")], fields={"error": "x"})
    assert store.status("r1") is terminal
    assert len(store.events("r1")) == count
    assert store.load("r1").error == ""


def test_transition_on_a_wrong_attempt_is_refused(store: RunStore) -> None:
    started(store)
    assert not store.transition(
        "r1", TaskStatus.VALIDATING, attempt=2, events=[event("output", 2, "")]
    )
    assert store.status("r1") is TaskStatus.RUNNING
    assert types(store, "r1") == ["submitted"]
    assert store.transition("r1", TaskStatus.VALIDATING, attempt=1)


def test_transition_of_an_unknown_run_creates_nothing(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    assert not store.transition("ghost", TaskStatus.CANCELLED, events=[event("cancelled", 0, "")])
    assert redis.keys("*") == []


# -- votes, decisions, failures -----------------------------------------------------------


def test_start_voting_moves_the_run_bills_its_call_and_plans_the_first_round(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    started(store)
    used = Usage(prompt_tokens=5, completion_tokens=2)
    output = event("output", 1, "w", output={"x": 1})
    assert store.start_voting("r1", 1, {"x": 1}, output, used, {0: [0, 1], 1: [0]})
    state = store.load("r1")
    assert (state.status, state.outputs, state.usage.total_tokens) == (
        TaskStatus.VALIDATING,
        {1: {"x": 1}},
        7,
    )
    rounds = redis.hgetall("quorum:run:{r1}:rounds:1")
    assert rounds == {"out/1": "3", "0:0": "1", "0:1": "1", "1:0": "1"}
    assert not store.start_voting("r1", 1, {"x": 2}, output, used, {0: [5]})  # moved already
    assert redis.hgetall("quorum:run:{r1}:rounds:1") == rounds  # nor planned again
    assert types(store, "r1").count("output") == 1
    assert_every_key_has_a_ttl(redis)


def test_start_voting_plans_nothing_for_a_run_that_did_not_move(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    started(store)
    assert store.cancel("r1")
    output = event("output", 1, "w", output={"x": 1})
    assert not store.start_voting("r1", 1, {"x": 1}, output, Usage(), {0: [0]})
    assert not redis.exists("quorum:run:{r1}:rounds:1")
    assert store.load("r1").status is TaskStatus.CANCELLED


@pytest.mark.parametrize("kept", [[], ["transition"]], ids=["none", "transition only"])
def test_start_voting_after_redis_lost_its_scripts_moves_once_and_bills_once(
    store: RunStore, redis: fakeredis.FakeRedis, kept: list[str]
) -> None:
    """A restarted Redis has no scripts: the first try fails, wholly or after the move."""
    started(store)
    redis.script_flush()
    for name in kept:
        redis.script_load(lua(name))
    used = Usage(prompt_tokens=5, completion_tokens=2)
    output = event("output", 1, "w", output={"x": 1})
    assert store.start_voting("r1", 1, {"x": 1}, output, used, {0: [0]})
    state = store.load("r1")
    assert (state.status, state.usage.total_tokens) == (TaskStatus.VALIDATING, 7)
    assert redis.hget("quorum:run:{r1}:rounds:1", "out/1") == "1"
    assert types(store, "r1").count("output") == 1


def test_a_runs_votes_share_one_parsed_spec_unless_it_is_large(store: RunStore) -> None:
    started(store)
    first, *_ = store.vote_context("r1", 1, 0, 0)
    again, *_ = store.vote_context("r1", 1, 0, 1)
    assert first is not None and again is not None
    assert first.spec is again.spec and first.spec == SPEC
    assert store.load("r1").spec is not first.spec  # a step that may change it gets its own
    large = SPEC.model_copy(update={"kwargs": {"message": "x" * SHARED_SPEC_CHARS}})
    store.create("r2", large)
    one, *_ = store.vote_context("r2", 1, 0, 0)
    two, *_ = store.vote_context("r2", 1, 0, 1)
    assert one is not None and two is not None
    assert one.spec is not two.spec and one.spec == two.spec == large


def test_record_vote_is_idempotent_but_bills_every_call(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    started(store)
    store.plan_round("r1", 1, 1, {0: [1, 2]})
    vote = Vote(issue=0, index=1, is_valid=True, reasoning="fine")
    usage = Usage(prompt_tokens=10, completion_tokens=2, total_tokens=12)
    recorded = event("vote", 1, "w", issue=0, index=1)
    assert store.record_vote("r1", 1, vote, recorded, usage) == RecordedVote([vote], False, 0, None)
    assert store.load("r1").usage == Usage()  # billed with its round
    again = Vote(issue=0, index=1, is_valid=False, reasoning="changed my mind")
    assert store.record_vote("r1", 1, again, recorded, usage).votes is None
    assert store.load("r1").usage == Usage(prompt_tokens=10, completion_tokens=2, total_tokens=12)
    assert store.finish_vote("r1", 1, 0, 2, None) == 1  # closes the round, bills the first
    assert store.votes("r1", 1) == [vote]
    assert types(store, "r1").count("vote") == 1
    assert store.load("r1").usage == Usage(prompt_tokens=20, completion_tokens=4, total_tokens=24)
    stored = json.loads(redis.hget("quorum:run:{r1}:rounds:1", "vote/0:1"))
    assert stored == {
        **vote.model_dump(),
        "usage": {"usage:prompt_tokens": 10, "usage:completion_tokens": 2},
    }
    assert_every_key_has_a_ttl(redis)


def test_a_vote_reads_back_its_issues_votes_and_decision_only(store: RunStore) -> None:
    started(store)
    store.plan_round("r1", 1, 1, {0: [0, 1, 2], 1: [0, 1, 2]})
    first = Vote(issue=0, index=0, is_valid=True, reasoning="")
    store.record_vote("r1", 1, first, event("vote", 1, ""), Usage(), max_votes=3)
    decided = event("issue_decided", 1, "w", issue=1, outcome="passed", reason="")
    assert store.decide("r1", 1, 1, decided)
    other = Vote(issue=1, index=2, is_valid=False, reasoning="")
    recorded = store.record_vote("r1", 1, other, event("vote", 1, ""), Usage(), max_votes=3)
    assert (recorded.votes, recorded.decided) == ([other], True)
    second = Vote(issue=0, index=1, is_valid=True, reasoning="")
    recorded = store.record_vote("r1", 1, second, event("vote", 1, ""), Usage(), max_votes=3)
    assert (recorded.votes, recorded.decided) == ([first, second], False)


@pytest.mark.parametrize(
    ("k", "verdicts", "outcome", "reason"),
    [
        (1, [True, True], "passed", ""),
        (1, [False, False], "failed", ""),
        (2, [None, None], "failed", VALIDATOR_UNAVAILABLE),
    ],
    ids=["passed", "failed", "unavailable"],
)
def test_a_vote_that_settles_its_issue_decides_it_in_the_same_step(
    store: RunStore,
    redis: fakeredis.FakeRedis,
    k: int,
    verdicts: list[bool | None],
    outcome: str,
    reason: str,
) -> None:
    """Threshold 3: two votes alike (or, with k = 2, two error votes) settle the issue, and
    the second one's record writes the decision with the event the Python rule would have."""
    config = ThresholdVotingValidationConfig(issues=["a", "b"], count=3, required_ahead=k)
    started(store)
    store.plan_round("r1", 1, 1, {0: [0, 1, 2], 1: [0, 1, 2]})
    first, second = (
        Vote(issue=0, index=i, is_valid=v, reasoning="") for i, v in enumerate(verdicts)
    )
    rule = early_rule(config)
    cast = event("vote", 1, "w7", issue=0, index=0)
    assert not store.record_vote("r1", 1, first, cast, Usage(), max_votes=3, early=rule).decided
    assert store.decisions("r1", 1) == {}
    recorded = store.record_vote("r1", 1, second, cast, Usage(), max_votes=3, early=rule)
    assert (recorded.votes, recorded.decided) == ([first, second], True)
    decided = store.decisions("r1", 1)[0]
    expected = IssueDecided(
        ts=decided.ts,
        attempt=1,
        worker="w7",
        issue=0,
        outcome=outcome,
        reason=reason,
        passing=verdicts.count(True),
        failing=verdicts.count(False),
        errors=verdicts.count(None),
    )
    assert redis.hget("quorum:run:{r1}:rounds:1", "decided/0") == expected.model_dump_json()
    assert store.events("r1")[-1] == expected
    assert types(store, "r1").count("issue_decided") == 1
    third = Vote(issue=0, index=2, is_valid=True, reasoning="")
    assert store.record_vote("r1", 1, third, cast, Usage(), max_votes=3, early=rule).decided
    assert types(store, "r1").count("issue_decided") == 1  # decided once


def test_a_run_with_a_budget_bills_each_vote_at_once(store: RunStore) -> None:
    started(store)
    store.plan_round("r1", 1, 1, {0: [0, 1]})
    vote = Vote(issue=0, index=0, is_valid=True, reasoning="")
    used = Usage(prompt_tokens=3, completion_tokens=1)
    store.record_vote("r1", 1, vote, event("vote", 1, ""), used, bill_now=True)
    assert store.load("r1").usage == Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4)
    assert store.finish_vote("r1", 1, 0, 1, None) == 1  # closing the round bills nothing twice
    assert store.load("r1").usage == Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4)


def test_a_node_runs_votes_are_billed_to_its_workflow_too(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    started(store, "w1.check.0")
    redis.hset(KEYS.workflow("w1"), "status", "RUNNING")
    store.plan_round("w1.check.0", 1, 1, {0: [0, 1]})
    vote = Vote(issue=0, index=0, is_valid=True, reasoning="")
    used = Usage(prompt_tokens=3, completion_tokens=1)
    store.record_vote("w1.check.0", 1, vote, event("vote", 1, ""), used)
    store.record_vote("w1.check.0", 1, vote, event("vote", 1, ""), used)  # a second call
    assert store.finish_vote("w1.check.0", 1, 0, 1, None) == 1
    expected = Usage(prompt_tokens=6, completion_tokens=2, total_tokens=8)
    assert store.usage("w1.check.0") == expected
    assert store.workflow_usage("w1") == expected


def test_the_vote_that_closes_a_round_bills_its_calls_once(store: RunStore) -> None:
    started(store)
    store.plan_round("r1", 1, 1, {0: [0, 1], 1: [0]})
    store.plan_round("r1", 1, 2, {0: [2]})
    cast = [Vote(issue=i, index=n, is_valid=True, reasoning="") for i, n in [(0, 0), (1, 0)]]
    for vote, tokens in zip(cast, (3, 4), strict=True):
        used = Usage(prompt_tokens=tokens, completion_tokens=1, cost_usd=0.5)
        assert store.record_vote("r1", 1, vote, event("vote", 1, ""), used).last_of == 0
    assert store.load("r1").usage == Usage()
    last = Vote(issue=0, index=1, is_valid=False, reasoning="")
    used = Usage(prompt_tokens=5, completion_tokens=1)
    recorded = store.record_vote("r1", 1, last, event("vote", 1, ""), used)
    expected = Usage(prompt_tokens=12, completion_tokens=3, total_tokens=15, cost_usd=1.0)
    assert recorded.tally is not None and recorded.tally.state is not None
    assert recorded.tally.state.usage == expected  # the tally reads the round billed
    assert store.record_vote("r1", 1, last, event("vote", 1, ""), Usage()).last_of == 1
    round2 = Vote(issue=0, index=2, is_valid=True, reasoning="")
    store.record_vote("r1", 1, round2, event("vote", 1, ""), Usage(prompt_tokens=7))
    assert store.load("r1").usage == expected.model_copy(
        update={"prompt_tokens": 19, "total_tokens": 22}
    )


def test_a_vote_never_planned_is_billed_but_not_stored(store: RunStore) -> None:
    started(store)
    vote = Vote(issue=0, index=0, is_valid=True, reasoning="")
    recorded = store.record_vote("r1", 1, vote, event("vote", 1, ""), Usage(prompt_tokens=4))
    assert recorded == RecordedVote(None, False, 0, None)
    assert store.votes("r1", 1) == []
    assert store.load("r1").usage == Usage(prompt_tokens=4, total_tokens=4)


def test_votes_are_kept_per_attempt(store: RunStore) -> None:
    started(store)
    store.plan_round("r1", 1, 1, {0: [0]})
    store.record_vote(
        "r1", 1, Vote(issue=0, index=0, is_valid=True, reasoning=""), event("vote", 1, ""), Usage()
    )
    assert store.votes("r1", 2) == []


def test_vote_context_reads_run_decision_and_stored_vote(store: RunStore) -> None:
    started(store)
    store.plan_round("r1", 1, 1, {0: [0, 1, 2]})
    vote = Vote(issue=0, index=0, is_valid=None, reasoning="validator error")
    store.record_vote("r1", 1, vote, event("vote", 1, ""), Usage())
    store.finish_vote("r1", 1, 0, 2, None)
    state, decided, stored, finished = store.vote_context("r1", 1, 0, 0)
    assert state is not None and state.status is TaskStatus.RUNNING
    assert (decided, stored, finished) == (False, vote, True)
    assert store.vote_context("r1", 1, 0, 1)[2:] == (None, False)
    assert store.vote_context("r1", 1, 0, 2)[2:] == (None, True)  # finished, none cast
    assert store.vote_context("ghost", 1, 0, 0) == (None, False, None, False)


def test_round_context_reads_run_votes_decisions_and_rounds_at_once(store: RunStore) -> None:
    started(store)
    store.plan_round("r1", 1, 1, {1: [0]})
    vote = Vote(issue=1, index=0, is_valid=False, reasoning="no")
    store.record_vote("r1", 1, vote, event("vote", 1, ""), Usage())
    decided = event("issue_decided", 1, "w", issue=1, outcome="failed", reason="")
    store.decide("r1", 1, 1, decided)
    store.plan_round("r1", 1, 2, {0: [3, 4]})
    context = store.round_context("r1", 1, 1, "tally")
    assert context.state is not None and context.state.status is TaskStatus.RUNNING
    assert (context.votes, context.decided) == ([vote], {1: decided})
    assert (list(context.planned), context.tallier) == ([(1, 0), (0, 3), (0, 4)], "1:0")
    empty = store.round_context("r1", 2, 1, "tally")
    assert (empty.votes, empty.decided, list(empty.planned)) == ([], {}, [])
    assert store.round_context("ghost", 1, 1, "tally").state is None


def test_a_round_expires_with_its_run_and_nothing_remakes_the_keys_of_a_run_gone(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    started(store)
    redis.expire("quorum:run:{r1}", 40)
    store.plan_round("r1", 1, 1, {0: [0, 1]})
    assert 0 < redis.ttl("quorum:run:{r1}:rounds:1") <= 40  # never outlives the run
    vote = Vote(issue=0, index=0, is_valid=True, reasoning="")
    store.record_vote("r1", 1, vote, event("vote", 1, ""), Usage(prompt_tokens=3))
    assert_every_key_has_a_ttl(redis)
    redis.delete(*redis.keys("*"))  # the run expired while its last jobs were out
    usage = Usage(prompt_tokens=3)
    assert store.record_vote("r1", 1, vote, event("vote", 1, ""), usage).last_of == 0
    skipped = event("vote_skipped", 1, "", issue=0, index=1)
    assert store.finish_vote("r1", 1, 0, 1, skipped) == 0
    decided = event("issue_decided", 1, "w", issue=0, outcome="passed", reason="")
    assert not store.decide("r1", 1, 0, decided)
    store.plan_round("r1", 1, 2, {0: [2]})
    assert redis.keys("*") == []


def finished(store: RunStore, issue: int, index: int) -> int:
    """Record a passing vote in that slot; the round it is to tally."""
    vote = Vote(issue=issue, index=index, is_valid=True, reasoning="")
    return store.record_vote("r1", 1, vote, event("vote", 1, ""), Usage()).last_of


def test_the_job_that_finishes_a_rounds_last_vote_is_to_tally_it(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    started(store)
    store.plan_round("r1", 1, 1, {0: [0, 1], 1: [0]})
    assert store.round_context("r1", 1, 1, "tally").tallier is None  # votes still out
    assert finished(store, 0, 0) == 0
    skipped = event("vote_skipped", 1, "", issue=1, index=0)
    assert store.finish_vote("r1", 1, 1, 0, skipped) == 0
    assert finished(store, 0, 1) == 1  # the last of round 1
    assert store.round_context("r1", 1, 1, "tally").tallier == "0:1"
    assert store.finish_vote("r1", 1, 0, 1, None) == 1  # its job again: still its to tally
    assert store.finish_vote("r1", 1, 0, 0, None) == 0
    assert types(store, "r1").count("vote_skipped") == 1
    assert_every_key_has_a_ttl(redis)


def test_a_round_planned_again_counts_each_vote_once(store: RunStore) -> None:
    started(store)
    store.plan_round("r1", 1, 1, {0: [0, 1]})
    assert finished(store, 0, 0) == 0
    store.plan_round("r1", 1, 1, {0: [0, 1]})  # a redelivered task node sends it again
    assert finished(store, 0, 1) == 1
    store.plan_round("r1", 1, 2, {0: [2]})
    assert store.round_context("r1", 1, 2, "tally").tallier is None
    assert finished(store, 0, 2) == 2


def test_the_last_vote_gets_its_issues_decision_and_its_tallys_context_in_one_step(
    store: RunStore,
) -> None:
    started(store)
    store.plan_round("r1", 1, 1, {0: [0, 1], 1: [0]})
    first = Vote(issue=0, index=0, is_valid=True, reasoning="")
    assert store.record_vote("r1", 1, first, event("vote", 1, ""), Usage()).tally is None
    decided = event("issue_decided", 1, "w", issue=0, outcome="passed", reason="")
    store.decide("r1", 1, 0, decided)
    second = Vote(issue=0, index=1, is_valid=True, reasoning="")
    assert store.record_vote("r1", 1, second, event("vote", 1, ""), Usage()).decided
    last = Vote(issue=1, index=0, is_valid=False, reasoning="no")
    recorded = store.record_vote("r1", 1, last, event("vote", 1, ""), Usage())
    assert (recorded.decided, recorded.last_of) == (False, 1)
    assert recorded.tally == store.round_context("r1", 1, 1, "1:0")
    assert recorded.tally is not None and recorded.tally.tallier == "1:0"
    assert recorded.tally.decided == {0: decided}
    assert sorted(recorded.tally.planned) == [(0, 0), (0, 1), (1, 0)]
    assert recorded.tally.state is not None and recorded.tally.state.run_id == "r1"


def test_a_round_with_no_votes_out_goes_to_the_first_that_claims_it(store: RunStore) -> None:
    started(store)
    assert store.round_context("r1", 1, 1, "tally").tallier == "tally"
    assert store.round_context("r1", 1, 1, "0:0").tallier == "tally"
    assert store.finish_vote("r1", 1, 0, 0, None) == 0  # never planned


def test_decide_once(store: RunStore, redis: fakeredis.FakeRedis) -> None:
    started(store)
    first = event("issue_decided", 1, "w", issue=0, outcome="passed", reason="")
    second = event("issue_decided", 1, "w", issue=0, outcome="failed", reason="")
    assert store.decide("r1", 1, 0, first) is False  # no round planned: nothing to decide
    store.plan_round("r1", 1, 1, {0: [0, 1, 2], 1: [0]})
    assert store.decide("r1", 1, 0, first) is True
    assert store.decide("r1", 1, 0, second) is False
    assert store.decisions("r1", 1) == {0: first}
    assert types(store, "r1").count("issue_decided") == 1
    assert store.vote_context("r1", 1, 0, 2)[1] is True
    assert store.vote_context("r1", 1, 1, 2)[1] is False
    assert_every_key_has_a_ttl(redis)


def test_record_failure_once(store: RunStore) -> None:
    started(store)
    failure = FailedAttempt({"quantity": 4}, ["quantity matches: it is 5"])
    assert store.record_failure("r1", 1, failure, event("validation_failed", 1, ""))
    other = FailedAttempt({"quantity": 3}, ["other"])
    assert not store.record_failure("r1", 1, other, event("validation_failed", 1, ""))
    state = store.load("r1")
    assert state.failures == {1: FailedAttempt({"quantity": 4}, ["quantity matches: it is 5"])}
    assert state.last_output == {"quantity": 4}
    assert types(store, "r1").count("validation_failed") == 1


def test_bill_adds_up(store: RunStore) -> None:
    started(store)
    store.bill("r1", Usage(prompt_tokens=3, cached_tokens=1))
    store.bill("r1", Usage(prompt_tokens=4, reasoning_tokens=2))
    expected = Usage(prompt_tokens=7, total_tokens=7, cached_tokens=1, reasoning_tokens=2)
    assert store.load("r1").usage == expected


def test_a_transition_bills_its_call_whether_it_moves_the_run_or_not(store: RunStore) -> None:
    started(store)
    used = Usage(prompt_tokens=3, completion_tokens=2)
    assert store.transition("r1", TaskStatus.VALIDATING, attempt=1, usage=used)
    assert not store.transition("r1", TaskStatus.VALIDATING, attempt=2, usage=used)
    assert store.load("r1").usage == Usage(prompt_tokens=6, completion_tokens=4, total_tokens=10)


# -- watch and cancel ---------------------------------------------------------------------


def test_watch_yields_events_up_to_the_terminal_one(store: RunStore) -> None:
    started(store)
    store.transition("r1", TaskStatus.FAILED, events=[event("failed", 1, "")])
    store.finish_vote("r1", 1, 0, 0, event("after_the_end", 1, ""))
    seen = [e["type"] for e in store.watch("r1", timeout_s=5)]
    assert seen == ["submitted", "failed"]


def test_watch_stops_when_the_timeout_runs_out(store: RunStore) -> None:
    started(store)
    began = time.monotonic()
    seen = [e["type"] for e in store.watch("r1", timeout_s=0.3)]
    assert seen == ["submitted"]
    assert time.monotonic() - began < 5


def test_only_the_final_transition_pushes_the_done_list(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    started(store)
    assert redis.lrange(KEYS.done("r1"), 0, -1) == []
    store.transition("r1", TaskStatus.SUCCESSFUL, fields={"result": {"x": 1}})
    assert store.transition("r1", TaskStatus.FAILED) is False  # terminal already: no second push
    assert redis.lrange(KEYS.done("r1"), 0, -1) == ["SUCCESSFUL"]
    assert_every_key_has_a_ttl(redis)


def test_wait_wakes_when_the_run_ends(store: RunStore) -> None:
    started(store)
    ender = threading.Timer(0.2, lambda: store.cancel("r1"))
    ender.start()
    began = time.monotonic()
    state = store.wait("r1", timeout_s=5)
    assert state.status is TaskStatus.CANCELLED
    assert 0.15 < time.monotonic() - began < 3
    assert store.wait("r1", timeout_s=5).status is TaskStatus.CANCELLED  # the entry stays


def test_wait_returns_the_live_run_when_the_timeout_runs_out(store: RunStore) -> None:
    started(store)
    assert store.wait("r1", timeout_s=0.2).status is TaskStatus.RUNNING
    assert store.wait("r1", timeout_s=0).status is TaskStatus.RUNNING  # no time to block


def test_wait_ends_for_a_run_that_ended_without_a_done_list(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    """A run ended by an earlier version: the status read between blocks ends the wait."""
    started(store)
    store.transition("r1", TaskStatus.FAILED)
    redis.delete(KEYS.done("r1"))
    began = time.monotonic()
    assert store.wait("r1", timeout_s=None).status is TaskStatus.FAILED
    assert time.monotonic() - began < 6


def test_wait_for_an_unknown_run_raises(store: RunStore) -> None:
    with pytest.raises(RunNotFoundError):
        store.wait("nope", timeout_s=0.1)


def test_cancel(store: RunStore) -> None:
    store.create("r1", SPEC)
    assert store.cancel("r1", worker="cli") is True
    assert store.status("r1") is TaskStatus.CANCELLED
    assert types(store, "r1") == ["submitted", "cancelled"]
    assert store.cancel("r1") is False
    assert types(store, "r1") == ["submitted", "cancelled"]


def test_cancel_after_success_changes_nothing(store: RunStore) -> None:
    started(store)
    store.transition("r1", TaskStatus.VALIDATING, attempt=1)
    store.transition("r1", TaskStatus.SUCCESSFUL, attempt=1, fields={"result": {"ok": True}})
    assert store.cancel("r1") is False
    state = store.load("r1")
    assert (state.status, state.result) == (TaskStatus.SUCCESSFUL, {"ok": True})


def test_connect_waits_for_a_free_connection_past_its_limit() -> None:
    client = connect("redis://127.0.0.1:1/0", max_connections=3)
    pool = client.connection_pool
    assert isinstance(pool, BlockingConnectionPool)
    assert pool.max_connections == 3
    client.close()


def test_connections_parse_and_pack_in_c() -> None:
    """hiredis, a declared dependency, takes a third of a Redis round trip's client CPU off
    every connection: the store's, the broker's and the chords'."""
    connection = connect(
        "redis://127.0.0.1:1/0", max_connections=1
    ).connection_pool.make_connection()
    assert type(connection._parser).__name__ == "_HiredisParser"
    assert type(connection._command_packer).__name__ == "HiredisRespSerializer"


def test_record_vote_loads_its_script_again_after_a_script_flush(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    store.create("r1", SPEC)
    store.plan_round("r1", 1, 1, {0: [0, 1, 2]})
    first = Vote(issue=0, index=0, is_valid=True, reasoning="ok")
    second = Vote(issue=0, index=1, is_valid=False, reasoning="no")
    assert store.record_vote("r1", 1, first, event("vote", 1, ""), Usage()).votes == [first]
    redis.script_flush()  # what a Redis restart does
    stored = store.record_vote("r1", 1, second, event("vote", 1, ""), Usage()).votes
    assert stored is not None and sorted(v.index for v in stored) == [0, 1]


def test_begin_attempt_moves_the_run_and_reads_it_back_in_one_round_trip(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    store.create("r1", SPEC)
    redis.zadd(KEYS.progress(), {"r1": 1.0})
    redis.script_load(store._transition.script)  # as after the first use
    sent: list[int] = []
    execute = redis.pipeline().__class__.execute

    def counted(pipe: object, *args: object, **kwargs: object) -> object:
        sent.append(1)
        return execute(pipe, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redis.pipeline().__class__, "execute", counted)
        moved, state = store.begin_attempt("r1", 1, event("attempt_started", 1, "w"))
    assert sent == [1]
    assert moved and state is not None
    assert (state.status, state.attempt, state.spec) == (TaskStatus.RUNNING, 1, SPEC)
    assert types(store, "r1") == ["submitted", "attempt_started"]
    assert redis.zscore(KEYS.progress(), "r1") > 1.0


def test_begin_attempt_twice_moves_once_and_tells_the_run_as_it_is(store: RunStore) -> None:
    store.create("r1", SPEC)
    assert store.begin_attempt("r1", 1, event("attempt_started", 1, ""))[0]
    again, state = store.begin_attempt("r1", 1, event("attempt_started", 1, ""))
    assert not again
    assert state is not None and (state.status, state.attempt) == (TaskStatus.RUNNING, 1)
    assert types(store, "r1") == ["submitted", "attempt_started"]
    assert store.begin_attempt("gone", 1, event("attempt_started", 1, "")) == (False, None)


def test_begin_attempt_and_transitions_load_their_script_again_after_a_script_flush(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    store.create("r1", SPEC)
    redis.script_flush()
    assert store.begin_attempt("r1", 1, event("attempt_started", 1, ""))[0]
    redis.script_flush()
    assert store.transition("r1", TaskStatus.VALIDATING, attempt=1)
    assert store.status("r1") is TaskStatus.VALIDATING
