"""The run's steps under faults and limits: an early tally waits for its round, a
redelivered task node after an invalid output calls no model, budgets stop a run keeping its
last output, and outputs over the size limit are invalid attempts."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest

from quorum.shared import ballot, flow
from quorum.shared.budget import estimate
from quorum.shared.errors import RoundIncompleteError
from quorum.shared.keys import Keys
from quorum.shared.llm import Completion
from quorum.shared.models import (
    RunSpec,
    SingleShotValidationConfig,
    TaskStatus,
    ThresholdVotingValidationConfig,
    Usage,
)
from quorum.shared.prompts import render_task_prompt, validator_messages
from quorum.shared.settings import Price
from quorum.shared.store import RunStore
from tests.unit.test_flow import (
    GOOD,
    ISSUES,
    RUN,
    SCHEMA,
    FakeLLM,
    Recorder,
    cast,
    context,
    sent,
    submit,
    types,
    validating,
    verdict,
)


@pytest.fixture
def store() -> RunStore:
    return RunStore(fakeredis.FakeRedis(decode_responses=True), keys=Keys("quorum"), ttl_s=100)


def test_a_tally_before_its_rounds_last_vote_waits(store: RunStore) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES, count=3), llm)
    cast(ctx, llm, 0, True, False)  # vote (0, 2) still running, another counted twice
    cast(ctx, llm, 1, True, True)
    ballot.vote(ctx, RUN, 1, 1, 2)
    with pytest.raises(RoundIncompleteError, match="round 1 still waits for votes"):
        ballot.tally(ctx, RUN, 1, 1)
    assert store.load(RUN).status is TaskStatus.VALIDATING
    cast(ctx, llm, 0, True, start=2)
    assert store.load(RUN).status is TaskStatus.SUCCESSFUL


def test_votes_skipped_once_their_issues_are_decided_still_finish_the_round(
    store: RunStore,
) -> None:
    llm = FakeLLM()
    ctx = validating(store, ThresholdVotingValidationConfig(issues=ISSUES, count=3), llm)
    cast(ctx, llm, 0, True, True)  # issue 0 decided: vote (0, 2) is skipped
    cast(ctx, llm, 1, True, True)
    assert ballot.vote(ctx, RUN, 1, 0, 2)["skipped"] == "issue decided"
    assert store.load(RUN).status is TaskStatus.VALIDATING
    assert ballot.vote(ctx, RUN, 1, 1, 2)["skipped"] == "issue decided"
    assert store.load(RUN).status is TaskStatus.SUCCESSFUL


def test_a_redelivered_task_node_after_an_invalid_output_routes_without_a_call(
    store: RunStore,
) -> None:
    llm = FakeLLM(outputs=["not json"])
    submit(store, SingleShotValidationConfig(issues=ISSUES[:1]))
    ctx = context(store, llm)
    assert flow.task_node(ctx, RUN, 1) == "invalid"
    sent(ctx).clear()
    assert flow.task_node(ctx, RUN, 1) == "skipped"  # redelivered: would call the model again
    assert len(llm.calls) == 1
    assert sent(ctx) == [("route", RUN, 1)]


def test_an_output_over_the_size_limit_is_an_invalid_attempt(store: RunStore) -> None:
    big = json.dumps({"product": "a" * 500, "quantity": 1})
    submit(store, SingleShotValidationConfig(issues=ISSUES[:1]))
    ctx = flow.Context(
        store=store, llm=FakeLLM(outputs=[big]), enqueue=Recorder(), max_output_bytes=100
    )
    assert flow.task_node(ctx, RUN, 1) == "invalid"
    [failure] = store.load(RUN).failures.values()
    assert failure.reasonings == [f"output is {len(big)} bytes, over the limit of 100"]
    assert sent(ctx) == [("route", RUN, 1)]


class BigLLM(FakeLLM):
    """Bills 80 tokens a call (60 prompt, 20 completion)."""

    def complete_json(self, **kw: Any) -> Completion:
        reply = super().complete_json(**kw)
        usage = Usage(prompt_tokens=60, completion_tokens=20, total_tokens=80)
        return Completion(content=reply.content, usage=usage, latency_s=reply.latency_s)


def budgeted(store: RunStore, llm: FakeLLM, **limits: float) -> flow.Context:
    spec = RunSpec(
        template="Extract the purchase from: {{ message }}",
        kwargs={"message": "I want 5 apples"},
        response_schema=SCHEMA,
        config=ThresholdVotingValidationConfig(issues=ISSUES, count=3, max_retries=2),
        model="task-model",
        validator_model="judge-model",
        **limits,
    )
    store.create(RUN, spec)
    prices = {"task-model": Price(prompt=1000, completion=1000)}
    return flow.Context(store=store, llm=llm, enqueue=Recorder(), prices=prices)


def test_a_call_that_would_go_over_the_budget_is_not_made(store: RunStore) -> None:
    llm = BigLLM(outputs=[json.dumps(GOOD)])
    ctx = budgeted(store, llm, max_tokens=5)
    assert flow.task_node(ctx, RUN, 1) == "failed"
    state = store.load(RUN)
    assert (state.status, state.code, llm.calls) == (TaskStatus.FAILED, "budget_exceeded", [])
    assert state.error.startswith("budget exceeded: would reach")


def test_going_over_the_budget_stops_the_run_keeping_its_last_output(store: RunStore) -> None:
    llm = BigLLM(outputs=[json.dumps(GOOD)])
    ctx = budgeted(store, llm, max_tokens=70)  # the prompt is ~30 tokens; the call bills 80
    assert flow.task_node(ctx, RUN, 1) == "skipped"  # output kept, no voting round
    state = store.load(RUN)
    assert (state.status, state.code, state.last_output) == (
        TaskStatus.FAILED,
        "budget_exceeded",
        GOOD,
    )
    assert state.error == "budget exceeded: spent 80 tokens, over max_tokens 70"
    assert state.usage.total_tokens == 80
    assert state.usage.cost_usd == pytest.approx(80 * 1000 / 1e6)
    assert sent(ctx) == []
    assert types(store)[-1] == "failed"


def test_votes_count_against_the_budget_and_stop_the_run(store: RunStore) -> None:
    llm = BigLLM(outputs=[json.dumps(GOOD)])
    prompt = render_task_prompt("Extract the purchase from: {{ message }}", {"message": "x"})
    vote_estimate = estimate(validator_messages(prompt, GOOD, ISSUES[0]), None).total_tokens
    limit = 240 + vote_estimate - 1  # room for the task call and two votes, not a third
    ctx = budgeted(store, llm, max_tokens=limit)
    assert flow.task_node(ctx, RUN, 1) == "validating"
    llm.verdicts += [verdict(True)] * 3
    ballot.vote(ctx, RUN, 1, 0, 0)
    ballot.vote(ctx, RUN, 1, 1, 0)
    stopped = ballot.vote(ctx, RUN, 1, 1, 1)
    state = store.load(RUN)
    assert (state.status, state.code) == (TaskStatus.FAILED, "budget_exceeded")
    assert stopped["skipped"] == "budget exceeded"
    assert len(llm.calls) == 3
    assert state.usage.total_tokens == 240
    vote_events = [e for e in store.events(RUN) if e["type"] == "vote"]
    assert [e.usage.total_tokens for e in vote_events] == [80, 80]
