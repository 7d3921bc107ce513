"""A run's steps (docs/architecture.md §2) with a fakeredis store, a scripted LLM and a
recording enqueuer."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest

from quorum.shared import ballot, flow, retry
from quorum.shared.errors import CallHeldError, StoreError, TransientLLMError
from quorum.shared.keys import Keys
from quorum.shared.llm import Completion
from quorum.shared.models import (
    KAheadVotingValidationConfig,
    RunSpec,
    SingleShotValidationConfig,
    TaskStatus,
    ThresholdVotingValidationConfig,
    Usage,
)
from quorum.shared.prompts import VOTE_SCHEMA
from quorum.shared.store import RunStore
from tests.unit.events import event

RUN = "r1"
SCHEMA = {
    "type": "object",
    "properties": {"product": {"type": "string"}, "quantity": {"type": "integer"}},
    "required": ["product", "quantity"],
}
GOOD = {"product": "apple", "quantity": 5}
ISSUES = ["the quantity matches the message", "the product is a fruit"]


def verdict(is_valid: bool, reasoning: str = "") -> str:
    return json.dumps({"is_valid": is_valid, "reasoning": reasoning or f"judged {is_valid}"})


@dataclass
class FakeLLM:
    """Answers task calls and validator calls from two scripts, and records every call."""

    outputs: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def complete_json(
        self, *, model: str, messages: list[dict[str, str]], schema: dict[str, Any], name: str
    ) -> Completion:
        self.calls.append({"model": model, "messages": messages, "name": name})
        script = self.verdicts if name == "quorum_vote" else self.outputs
        usage = Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15)
        return Completion(content=script.pop(0), usage=usage, latency_s=0.01)

    def prompts(self, name: str) -> list[str]:
        return [c["messages"][-1]["content"] for c in self.calls if c["name"] == name]


@dataclass
class Recorder:
    """The enqueuer: remembers every job that would have been sent."""

    sent: list[tuple[Any, ...]] = field(default_factory=list)
    prepared: list[tuple[Any, ...]] = field(default_factory=list)

    def task_node(self, run_id: str, attempt: int) -> None:
        self.sent.append(("task_node", run_id, attempt))

    def voting_round(
        self, run_id: str, attempt: int, round_: int, plan: dict[int, list[int]]
    ) -> None:
        self.sent.append(("voting_round", run_id, attempt, round_, plan))

    def prepare_round(
        self, run_id: str, attempt: int, round_: int, plan: dict[int, list[int]]
    ) -> Callable[[], None]:
        self.prepared.append((run_id, attempt, round_, plan))
        return lambda: self.voting_round(run_id, attempt, round_, plan)

    def route(self, run_id: str, attempt: int) -> None:
        self.sent.append(("route", run_id, attempt))


@pytest.fixture
def store() -> RunStore:
    return RunStore(fakeredis.FakeRedis(decode_responses=True), keys=Keys("quorum"), ttl_s=100)


def context(store: RunStore, llm: FakeLLM) -> flow.Context:
    return flow.Context(store=store, llm=llm, enqueue=Recorder(), worker="w1")


def submit(store: RunStore, config: Any) -> None:
    spec = RunSpec(
        template="Extract the purchase from: {{ message }}",
        kwargs={"message": "I want 5 apples"},
        response_schema=SCHEMA,
        config=config,
        model="task-model",
        validator_model="judge-model",
        response_name="Purchase",
    )
    store.create(RUN, spec)


def recorder(ctx: flow.Context) -> Recorder:
    assert isinstance(ctx.enqueue, Recorder)
    return ctx.enqueue


def sent(ctx: flow.Context) -> list[tuple[Any, ...]]:
    return recorder(ctx).sent


def types(store: RunStore) -> list[str]:
    return [e["type"] for e in store.events(RUN)]


def validating(store: RunStore, config: Any, llm: FakeLLM) -> flow.Context:
    """A run whose attempt 1 produced a valid output and awaits its votes."""
    submit(store, config)
    llm.outputs.append(json.dumps(GOOD))
    ctx = context(store, llm)
    assert flow.task_node(ctx, RUN, 1) == "validating"
    sent(ctx).clear()
    return ctx


def cast(ctx: flow.Context, llm: FakeLLM, issue: int, *verdicts: bool, start: int = 0) -> None:
    """Cast the given votes on `issue`, vote indices from `start`."""
    for index, is_valid in enumerate(verdicts, start):
        llm.verdicts.append(verdict(is_valid, f"vote {index} on issue {issue}: {is_valid}"))
        ballot.vote(ctx, RUN, 1, issue, index)


# -- task_node ----------------------------------------------------------------------------


def test_task_node_valid_output_plans_one_round_of_count_votes_per_issue(
    store: RunStore,
) -> None:
    llm = FakeLLM(outputs=[json.dumps(GOOD)])
    submit(store, ThresholdVotingValidationConfig(issues=ISSUES, count=3))
    ctx = context(store, llm)
    assert flow.task_node(ctx, RUN, 1) == "validating"
    state = store.load(RUN)
    assert (state.status, state.attempt, state.outputs) == (TaskStatus.VALIDATING, 1, {1: GOOD})
    assert sent(ctx) == [("voting_round", RUN, 1, 1, {0: [0, 1, 2], 1: [0, 1, 2]})]
    assert types(store) == ["submitted", "attempt_started", "output"]
    assert llm.calls[0]["model"] == "task-model"
    assert llm.prompts("Purchase") == ["Extract the purchase from: I want 5 apples"]
    assert state.usage.total_tokens == 15


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("I think 5 apples", "output is not valid JSON"),
        ('{"product": "apple"}', "'quantity' is a required property"),
        ('{"product": "apple", "quantity": "five"}', "at quantity: 'five' is not of type"),
    ],
    ids=["not json", "missing field", "wrong type"],
)
def test_task_node_invalid_output_is_a_failed_attempt(
    store: RunStore, content: str, error: str
) -> None:
    submit(store, ThresholdVotingValidationConfig(issues=ISSUES))
    ctx = context(store, FakeLLM(outputs=[content]))
    assert flow.task_node(ctx, RUN, 1) == "invalid"
    state = store.load(RUN)
    assert state.status is TaskStatus.RUNNING
    [reason] = state.failures[1].reasonings
    assert error in reason
    assert sent(ctx) == [("route", RUN, 1)]  # the first round, built, is never sent
    assert recorder(ctx).prepared == [(RUN, 1, 1, {0: [0, 1, 2], 1: [0, 1, 2]})]
    assert store.events(RUN)[-1]["type"] == "output_invalid"
    assert error in store.events(RUN)[-1]["error"]


def test_task_node_builds_the_first_round_during_its_call_and_sends_it_once_voting(
    store: RunStore,
) -> None:
    llm = FakeLLM(outputs=[json.dumps(GOOD)])
    submit(store, SingleShotValidationConfig(issues=ISSUES[:1]))
    ctx = context(store, llm)
    seen: list[Any] = []

    def prepare_round(*args: Any) -> Callable[[], None]:
        seen.append(("built", len(llm.calls)))
        send = Recorder.prepare_round(recorder(ctx), *args)

        def sent_when() -> None:
            rounds = store.redis.hgetall(store.keys.rounds(RUN, 1))
            seen.append(("sent", store.load(RUN).status, rounds.get("0:0")))
            send()

        return sent_when

    recorder(ctx).prepare_round = prepare_round  # type: ignore[method-assign]
    assert flow.task_node(ctx, RUN, 1) == "validating"
    assert seen == [("built", 0), ("sent", TaskStatus.VALIDATING, "1")]
    assert sent(ctx) == [("voting_round", RUN, 1, 1, {0: [0]})]


def test_task_node_skips_a_terminal_run_or_a_stale_attempt(store: RunStore) -> None:
    submit(store, ThresholdVotingValidationConfig(issues=ISSUES))
    llm = FakeLLM()
    ctx = context(store, llm)
    assert flow.task_node(ctx, RUN, 2) == "skipped"
    store.cancel(RUN)
    assert flow.task_node(ctx, RUN, 1) == "skipped"
    assert (llm.calls, sent(ctx)) == ([], [])


def test_task_node_redelivered_while_validating_relaunches_the_round(store: RunStore) -> None:
    llm = FakeLLM()
    ctx = validating(store, SingleShotValidationConfig(issues=ISSUES[:1]), llm)
    assert flow.task_node(ctx, RUN, 1) == "skipped"
    assert len(llm.calls) == 1
    assert sent(ctx) == [("voting_round", RUN, 1, 1, {0: [0]})]


# -- vote ---------------------------------------------------------------------------------


def test_vote_asks_the_validator_with_one_issue_and_no_feedback(store: RunStore) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES), llm)
    llm.verdicts.append(verdict(True, "5 matches"))
    result = ballot.vote(ctx, RUN, 1, 1, 0)
    assert result == {"issue": 1, "index": 0, "is_valid": True, "reasoning": "5 matches"}
    call = llm.calls[-1]
    assert call["model"] == "judge-model"
    [prompt] = llm.prompts("quorum_vote")
    assert "Extract the purchase from: I want 5 apples" in prompt
    assert json.dumps(GOOD) in prompt
    assert ISSUES[1] in prompt and ISSUES[0] not in prompt
    assert "Previous Evaluations" not in prompt
    assert types(store)[-1] == "vote"


def test_a_runs_votes_render_its_task_prompt_once_per_process(
    store: RunStore, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES), llm)
    renders: list[str] = []

    def render(template: str, kwargs: dict[str, Any], limits: Any) -> str:
        renders.append(template)
        return f"rendered {len(renders)}"

    monkeypatch.setattr(ballot, "render_task_prompt", render)
    ballot._rendered.cache_clear()  # other tests' runs have the same spec
    request.addfinalizer(ballot._rendered.cache_clear)  # nor keep this test's fake render
    llm.verdicts += [verdict(True, "ok")] * 3
    for issue, index in [(0, 0), (1, 0), (0, 1)]:
        ballot.vote(ctx, RUN, 1, issue, index)
    assert len(renders) == 1
    assert all("rendered 1" in prompt for prompt in llm.prompts("quorum_vote"))


def test_vote_skips_without_calling_the_llm_when_the_run_is_terminal(store: RunStore) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES), llm)
    store.cancel(RUN)
    assert ballot.vote(ctx, RUN, 1, 0, 0) == {"issue": 0, "index": 0, "skipped": "run cancelled"}
    assert len(llm.calls) == 1
    assert store.events(RUN)[-1]["type"] == "vote_skipped"


def test_vote_skips_a_stale_attempt(store: RunStore) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES), llm)
    assert ballot.vote(ctx, RUN, 2, 0, 0)["skipped"] == "attempt stale"
    assert len(llm.calls) == 1


def test_vote_skips_an_issue_already_decided(store: RunStore) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES), llm)
    store.decide(RUN, 1, 0, event("issue_decided", 1, "", issue=0, outcome="passed", reason=""))
    assert ballot.vote(ctx, RUN, 1, 0, 2)["skipped"] == "issue decided"
    assert len(llm.calls) == 1


def test_early_decision_skips_the_votes_left(store: RunStore) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES, count=3), llm)
    cast(ctx, llm, 0, True, True)
    assert store.decisions(RUN, 1)[0]["outcome"] == "passed"
    assert ballot.vote(ctx, RUN, 1, 0, 2)["skipped"] == "issue decided"
    assert len(llm.prompts("quorum_vote")) == 2


def test_a_redelivered_vote_returns_the_stored_vote_without_calling_the_llm(
    store: RunStore,
) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES), llm)
    llm.verdicts.append(verdict(False, "no"))
    first = ballot.vote(ctx, RUN, 1, 0, 0)
    assert ballot.vote(ctx, RUN, 1, 0, 0) == first
    assert len(llm.prompts("quorum_vote")) == 1
    assert types(store).count("vote") == 1


def test_a_malformed_verdict_is_transient(store: RunStore) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES), llm)
    llm.verdicts.append('{"is_valid": "maybe"}')
    with pytest.raises(TransientLLMError, match="validator answered badly"):
        ballot.vote(ctx, RUN, 1, 0, 0)
    assert store.votes(RUN, 1) == []


def test_vote_error_counts_for_neither_side(store: RunStore) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES[:1], count=3), llm)
    for index in range(3):
        result = ballot.vote_error(ctx, RUN, 1, 0, index, "timeout")
        assert result["is_valid"] is None
    decided = store.decisions(RUN, 1)[0]
    assert (decided["outcome"], decided["reason"]) == ("failed", "validator unavailable")
    assert sent(ctx) == [("route", RUN, 1)]  # the round's last vote tallied it
    assert store.load(RUN).failures[1].reasonings == [f"{ISSUES[0]}: validator unavailable"]


def test_votes_mark_progress_only_once_their_runs_last_change_of_status_is_old(
    store: RunStore,
) -> None:
    llm = FakeLLM()
    ctx = dataclasses.replace(
        validating(store, ThresholdVotingValidationConfig(issues=ISSUES, count=3), llm),
        progress_after_s=60,
    )
    progress = store.keys.progress()
    store.redis.zadd(progress, {RUN: 1.0})  # as if marked long ago
    cast(ctx, llm, 0, True)
    assert store.redis.zscore(progress, RUN) == 1.0  # VALIDATING is fresh: no mark
    store.redis.hset(store.keys.run(RUN), "updated_at", 1.0)  # ... and now it is old
    cast(ctx, llm, 0, True, start=1)
    assert store.redis.zscore(progress, RUN) > 1.0


def test_the_rounds_last_vote_tallies_it_and_a_tally_job_finds_it_done(
    store: RunStore,
) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES, count=3), llm)
    cast(ctx, llm, 0, True, True, True)
    cast(ctx, llm, 1, True, True)
    assert store.status(RUN) is TaskStatus.VALIDATING  # vote (1, 2) is still out
    assert ballot.vote(ctx, RUN, 1, 1, 2)["skipped"] == "issue decided"
    assert store.status(RUN) is TaskStatus.SUCCESSFUL
    assert ballot.tally(ctx, RUN, 1, 1) == "skipped"
    assert types(store)[-3:] == ["vote_skipped", "validation_passed", "succeeded"]
    assert types(store).count("succeeded") == 1


def test_the_last_vote_tallies_from_what_storing_it_read_and_decides_its_own_issue(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES, count=3), llm)
    cast(ctx, llm, 0, True, True)
    assert ballot.vote(ctx, RUN, 1, 0, 2)["skipped"] == "issue decided"
    cast(ctx, llm, 1, True, False)
    monkeypatch.setattr(store, "round_context", lambda *a: pytest.fail("read the round again"))
    cast(ctx, llm, 1, False, start=2)
    assert sent(ctx) == [("route", RUN, 1)]  # issue 1 failed
    assert store.load(RUN).failures[1].reasonings[-1].endswith("vote 2 on issue 1: False")
    decided = [e for e in store.events(RUN) if e["type"] == "issue_decided"]
    assert [(e["issue"], e["outcome"]) for e in decided] == [(0, "passed"), (1, "failed")]
    assert decided[1]["worker"] == "w1" and (decided[1]["passing"], decided[1]["failing"]) == (1, 2)


def test_a_redelivered_last_vote_tallies_its_round_again(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = FakeLLM()
    ctx = validating(store, SingleShotValidationConfig(issues=ISSUES), llm)
    cast(ctx, llm, 0, True)
    llm.verdicts.append(verdict(True))
    write = store.transition
    monkeypatch.setattr(store, "transition", lambda *a, **k: (_ for _ in ()).throw(StoreError("x")))
    with pytest.raises(StoreError):  # the job is retried
        ballot.vote(ctx, RUN, 1, 1, 0)
    monkeypatch.setattr(store, "transition", write)
    assert ballot.tally(ctx, RUN, 1, 1) == "skipped"  # a tally job leaves it to the vote
    assert store.status(RUN) is TaskStatus.VALIDATING
    assert ballot.vote(ctx, RUN, 1, 1, 0) == {
        "issue": 1,
        "index": 0,
        "is_valid": True,
        "reasoning": "judged True",
    }
    assert store.status(RUN) is TaskStatus.SUCCESSFUL
    assert ballot.vote(ctx, RUN, 1, 0, 0)["is_valid"] is True  # another vote's redelivery
    assert types(store).count("succeeded") == 1
    assert len(llm.prompts("quorum_vote")) == 2


# -- tally --------------------------------------------------------------------------------


def test_tally_all_passed_succeeds_with_the_output(store: RunStore) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES, count=3), llm)
    cast(ctx, llm, 0, True, False, True)
    cast(ctx, llm, 1, True, True)
    ballot.vote(ctx, RUN, 1, 1, 2)  # skipped: its issue is decided; the round's last vote
    state = store.load(RUN)
    assert (state.status, state.result) == (TaskStatus.SUCCESSFUL, GOOD)
    assert types(store)[-2:] == ["validation_passed", "succeeded"]
    assert sent(ctx) == []


def test_tally_failure_routes_with_every_failing_reasoning(store: RunStore) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES, count=3), llm)
    cast(ctx, llm, 0, False, True, False)
    cast(ctx, llm, 1, False, False)
    ballot.vote(ctx, RUN, 1, 1, 2)
    assert sent(ctx) == [("route", RUN, 1)]
    failure = store.load(RUN).failures[1]
    assert failure.output == GOOD
    assert failure.reasonings == [
        f"{ISSUES[0]}: vote 0 on issue 0: False",
        f"{ISSUES[0]}: vote 2 on issue 0: False",
        f"{ISSUES[1]}: vote 0 on issue 1: False",
        f"{ISSUES[1]}: vote 1 on issue 1: False",
    ]
    last = store.events(RUN)[-1]
    assert (last["type"], last["failed_issues"]) == ("validation_failed", [0, 1])


def test_tally_lists_only_the_failed_issues(store: RunStore) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES, count=3), llm)
    cast(ctx, llm, 0, True, True)
    cast(ctx, llm, 1, True, False, False)
    ballot.vote(ctx, RUN, 1, 0, 2)
    assert sent(ctx) == [("route", RUN, 1)]
    assert all(r.startswith(ISSUES[1]) for r in store.load(RUN).failures[1].reasonings)


def test_tally_k_ahead_draws_the_next_round_with_the_next_indices(store: RunStore) -> None:
    llm = FakeLLM()
    config = KAheadVotingValidationConfig(issues=ISSUES[:1], count=5, required_ahead=3)
    ctx = validating(store, config, llm)
    cast(ctx, llm, 0, False, False, True, True, True)
    assert sent(ctx) == [("voting_round", RUN, 1, 2, {0: [5, 6]})]
    cast(ctx, llm, 0, True, True, start=5)
    assert store.status(RUN) is TaskStatus.SUCCESSFUL
    assert (ballot.tally(ctx, RUN, 1, 1), ballot.tally(ctx, RUN, 1, 2)) == ("skipped", "skipped")


def test_a_round_tallied_again_sends_the_next_round_as_it_was_planned(store: RunStore) -> None:
    # Its jobs lost (a worker killed), round 2 is sent again by the round-1 tally that runs
    # again: the votes planned, not new ones numbered after them (which left the run stuck).
    llm = FakeLLM()
    config = KAheadVotingValidationConfig(issues=ISSUES[:1], count=5, required_ahead=3)
    ctx = validating(store, config, llm)
    cast(ctx, llm, 0, False, False, True, True, True)
    assert sent(ctx) == [("voting_round", RUN, 1, 2, {0: [5, 6]})]
    sent(ctx).clear()
    ballot.vote(ctx, RUN, 1, 0, 4)  # round 1's last vote, run again
    assert sent(ctx) == [("voting_round", RUN, 1, 2, {0: [5, 6]})]
    cast(ctx, llm, 0, True, True, start=5)
    assert store.status(RUN) is TaskStatus.SUCCESSFUL


def test_k_ahead_first_round_plans_that_many_votes_then_the_fewest_that_could_decide(
    store: RunStore,
) -> None:
    llm = FakeLLM(outputs=[json.dumps(GOOD)])
    config = KAheadVotingValidationConfig(
        issues=ISSUES[:1], count=5, required_ahead=3, first_round=3
    )
    submit(store, config)
    ctx = context(store, llm)
    assert flow.task_node(ctx, RUN, 1) == "validating"
    assert sent(ctx) == [("voting_round", RUN, 1, 1, {0: [0, 1, 2]})]
    sent(ctx).clear()
    cast(ctx, llm, 0, True, False, True)
    assert sent(ctx) == [("voting_round", RUN, 1, 2, {0: [3, 4]})]


def test_tally_numbers_the_next_round_after_every_vote_planned(store: RunStore) -> None:
    llm = FakeLLM()
    config = KAheadVotingValidationConfig(issues=ISSUES[:1], count=3, required_ahead=2)
    ctx = validating(store, config, llm)
    cast(ctx, llm, 0, True, False)
    assert store.finish_vote(RUN, 1, 0, 2, None) == 1  # finished with nothing stored
    assert ballot.tally(ctx, RUN, 1, 1, claimant="0:2") == "next round"
    assert sent(ctx) == [("voting_round", RUN, 1, 2, {0: [3, 4]})]


def test_tally_k_ahead_cap_reached_fails_with_no_consensus(store: RunStore) -> None:
    llm = FakeLLM()
    config = KAheadVotingValidationConfig(issues=ISSUES[:1], count=1, required_ahead=2, max_votes=2)
    ctx = validating(store, config, llm)
    cast(ctx, llm, 0, True)
    assert sent(ctx) == [("voting_round", RUN, 1, 2, {0: [1]})]
    cast(ctx, llm, 0, False, start=1)
    assert sent(ctx)[-1] == ("route", RUN, 1)
    assert store.load(RUN).failures[1].reasonings == [
        f"{ISSUES[0]}: vote 1 on issue 0: False",
        f"{ISSUES[0]}: no consensus",
    ]


def test_tally_skips_a_stale_attempt(store: RunStore) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES), llm)
    assert ballot.tally(ctx, RUN, 2, 1) == "skipped"
    assert store.status(RUN) is TaskStatus.VALIDATING


# -- route and retries --------------------------------------------------------------------


def failed_attempt(ctx: flow.Context, llm: FakeLLM, attempt: int, output: str) -> None:
    """Attempt `attempt` produced `output`, which fails its single-shot vote."""
    llm.outputs.append(output)
    flow.task_node(ctx, RUN, attempt)
    if store_status(ctx) is TaskStatus.VALIDATING:
        llm.verdicts.append(verdict(False, f"attempt {attempt} is wrong"))
        ballot.vote(ctx, RUN, attempt, 0, 0)  # the round's last vote: it tallies the round
        assert ctx.store.load(RUN).failures.get(attempt) is not None


def store_status(ctx: flow.Context) -> TaskStatus:
    return ctx.store.status(RUN)


def test_route_retries_with_feedback_then_fails_when_retries_run_out(store: RunStore) -> None:
    submit(store, SingleShotValidationConfig(issues=ISSUES[:1], max_retries=1))
    llm = FakeLLM()
    ctx = context(store, llm)
    failed_attempt(ctx, llm, 1, json.dumps({"product": "pear", "quantity": 5}))
    assert flow.route(ctx, RUN, 1) == "retrying"
    assert store.status(RUN) is TaskStatus.RETRYING
    assert sent(ctx)[-1] == ("task_node", RUN, 2)
    scheduled = store.events(RUN)[-1]
    assert scheduled["type"] == "retry_scheduled"
    assert "# Previous Evaluations" in scheduled["feedback"]

    failed_attempt(ctx, llm, 2, "not json")
    retry_prompt = llm.prompts("Purchase")[1]
    assert retry_prompt.startswith("Extract the purchase from: I want 5 apples\n\n")
    assert '{"product": "pear", "quantity": 5}' in retry_prompt
    assert f"- {ISSUES[0]}: attempt 1 is wrong" in retry_prompt
    assert "Previous Evaluations" not in llm.prompts("quorum_vote")[0]

    assert flow.route(ctx, RUN, 2) == "failed"
    state = store.load(RUN)
    assert state.status is TaskStatus.FAILED
    assert state.error == "validation failed after 2 attempt(s)"
    assert state.reasons[0] == f"{ISSUES[0]}: attempt 1 is wrong"
    assert state.reasons[1].startswith("output is not valid JSON")
    assert state.last_output == "not json"
    assert len(llm.prompts("Purchase")) == 2


def test_the_validator_of_a_retry_sees_the_new_output_and_no_feedback(store: RunStore) -> None:
    submit(store, SingleShotValidationConfig(issues=ISSUES[:1], max_retries=1))
    llm = FakeLLM()
    ctx = context(store, llm)
    failed_attempt(ctx, llm, 1, json.dumps({"product": "pear", "quantity": 5}))
    flow.route(ctx, RUN, 1)
    llm.outputs.append(json.dumps(GOOD))
    assert flow.task_node(ctx, RUN, 2) == "validating"
    assert "# Previous Evaluations" in llm.prompts("Purchase")[1]
    llm.verdicts.append(verdict(True))
    ballot.vote(ctx, RUN, 2, 0, 0)
    prompt = llm.prompts("quorum_vote")[1]
    assert prompt.startswith("# Task\nExtract the purchase from: I want 5 apples\n\n# Output\n")
    assert json.dumps(GOOD) in prompt and "pear" not in prompt
    assert "Previous Evaluations" not in prompt and "attempt 1 is wrong" not in prompt
    assert store.load(RUN).result == GOOD


def test_max_retries_zero_never_passes_a_failed_validation(store: RunStore) -> None:
    submit(store, ThresholdVotingValidationConfig(issues=ISSUES[:1], count=1, max_retries=0))
    llm = FakeLLM()
    ctx = context(store, llm)
    failed_attempt(ctx, llm, 1, json.dumps(GOOD))
    assert flow.route(ctx, RUN, 1) == "failed"
    assert store.status(RUN) is TaskStatus.FAILED
    assert ("task_node", RUN, 2) not in sent(ctx)
    assert types(store)[-1] == "failed"


def test_route_is_idempotent(store: RunStore) -> None:
    submit(store, SingleShotValidationConfig(issues=ISSUES[:1], max_retries=2))
    llm = FakeLLM()
    ctx = context(store, llm)
    failed_attempt(ctx, llm, 1, "nope")
    assert flow.route(ctx, RUN, 1) == "retrying"
    assert flow.route(ctx, RUN, 1) == "retrying"
    assert types(store).count("retry_scheduled") == 1
    assert flow.route(ctx, RUN, 0) == "skipped"


def test_a_run_cancelled_during_a_retry_stays_cancelled(store: RunStore) -> None:
    submit(store, SingleShotValidationConfig(issues=ISSUES[:1], max_retries=2))
    llm = FakeLLM()
    ctx = context(store, llm)
    failed_attempt(ctx, llm, 1, "nope")
    store.cancel(RUN)
    assert flow.route(ctx, RUN, 1) == "skipped"
    assert flow.task_node(ctx, RUN, 2) == "skipped"
    assert store.status(RUN) is TaskStatus.CANCELLED


def test_fail_run_once(store: RunStore) -> None:
    submit(store, SingleShotValidationConfig(issues=ISSUES[:1]))
    ctx = context(store, FakeLLM())
    assert flow.fail_run(ctx, RUN, "bad template", ["x"])
    assert not flow.fail_run(ctx, RUN, "again", ["y"])
    state = store.load(RUN)
    assert (state.status, state.error, state.reasons) == (TaskStatus.FAILED, "bad template", ["x"])


# -- pure helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "output", "error"),
    [
        ('{"product": "apple", "quantity": 5}', GOOD, None),
        ("5 apples", "5 apples", "output is not valid JSON"),
        ('{"product": "apple"}', {"product": "apple"}, "at (root): 'quantity' is a required"),
        ('{"product": 1, "quantity": 5}', {"product": 1, "quantity": 5}, "at product"),
    ],
)
def test_parse_output(content: str, output: Any, error: str | None) -> None:
    parsed, problem = flow.parse_output(content, SCHEMA)
    assert parsed == output
    if error is None:
        assert problem is None
    else:
        assert problem is not None and error in problem


@pytest.mark.parametrize(
    ("content", "max_bytes"),
    [
        ('{"is_valid": true, "reasoning": "fine"}', None),
        ('{"is_valid": false, "reasoning": "no \\u00e9t\\u00e9"}', None),
        ('{"reasoning": "fine", "is_valid": true}', None),
        ('{"is_valid": true, "reasoning": "fine"}', 10),  # over the size limit
        ('{"is_valid": 1, "reasoning": "fine"}', None),
        ('{"is_valid": true}', None),
        ('{"is_valid": true, "reasoning": "fine", "extra": 1}', None),
        ('{"is_valid": true, "reasoning": ["fine"]}', None),
        ('{"is_valid": true, "reasoning": "\\ud800"}', None),  # a lone surrogate
        ('{"is_valid": null, "reasoning": "fine"}', None),
        ('[true, "fine"]', None),
        ("yes", None),
        ("[" * 5000, None),
    ],
)
def test_a_vote_is_parsed_as_parse_output_would(content: str, max_bytes: int | None) -> None:
    """`parse_vote`'s shortcut for a well-formed answer agrees with `parse_output`."""
    expected = flow.parse_output(content, VOTE_SCHEMA, max_bytes=max_bytes)
    assert ballot.parse_vote(content, max_bytes=max_bytes) == expected


@pytest.mark.parametrize("retries", range(10))
def test_backoff_grows_within_bounds(retries: int) -> None:
    ceiling = min(30.0, 0.5 * 2**retries)
    for _ in range(50):
        assert ceiling / 2 <= retry.backoff_s(retries) <= ceiling


def test_backoff_honours_a_longer_retry_after() -> None:
    assert retry.backoff_s(0, retry_after=12.0) == 12.0
    assert retry.backoff_s(0, retry_after=10_000) == 300.0
    assert retry.backoff_s(6, retry_after=0.1) >= 15.0


def test_backoff_cap() -> None:
    assert retry.backoff_s(20, cap=4.0) <= 4.0


def test_a_duplicate_task_job_finds_the_call_lease_held_and_makes_no_call(store: RunStore) -> None:
    submit(store, SingleShotValidationConfig(issues=ISSUES))
    llm = FakeLLM(outputs=[json.dumps(GOOD)])
    ctx = dataclasses.replace(context(store, llm), call_lease_s=30.0)
    store.claim_call(RUN, 1, hold_s=30.0)  # the first delivery, still calling
    store.transition(RUN, TaskStatus.RUNNING, fields={"attempt": 1})
    with pytest.raises(CallHeldError) as held:
        flow.task_node(ctx, RUN, 1)
    assert 29 < held.value.retry_after <= 30.1 and llm.calls == []
    store.release_call(RUN, 1)  # the lease runs out (or its holder's call failed)
    assert flow.task_node(ctx, RUN, 1) == "validating" and len(llm.calls) == 1


def test_a_failed_call_gives_the_lease_back_for_the_jobs_retry(store: RunStore) -> None:
    submit(store, SingleShotValidationConfig(issues=ISSUES))

    class Flaky(FakeLLM):
        def complete_json(self, **kw: Any) -> Completion:
            raise TransientLLMError("503")

    ctx = dataclasses.replace(context(store, Flaky()), call_lease_s=30.0)
    with pytest.raises(TransientLLMError):
        flow.task_node(ctx, RUN, 1)
    assert store.claim_call(RUN, 1, hold_s=1.0)  # free again
