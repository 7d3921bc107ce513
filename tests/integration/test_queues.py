"""Queues and scaling: worker processes on the same queues share one run's votes, and a
deployment can split task-node and vote work between workers, routed by settings."""

from __future__ import annotations

import pytest

from quorum.producer.stack import start_simulator
from quorum.shared.models import ThresholdVotingValidationConfig
from tests.integration.helpers import APPLES, TEMPLATE, Purchase, Simulator, directive, events

pytestmark = pytest.mark.integration


def test_two_workers_on_the_same_queues_share_one_runs_votes(dedicated_stack, scope):
    for name in ("one", "two"):
        dedicated_stack.worker("-n", f"{name}@%h", name=name, QUORUM_WORKER_CONCURRENCY="2")
    run = dedicated_stack.client().submit(
        template=TEMPLATE,
        response_model=Purchase,
        kwargs={"sim": directive(scope, outputs=[APPLES], votes={"*": True}, latency=0.3)},
        config=ThresholdVotingValidationConfig(issues=["names a product"], count=9),
    )
    assert run.result(timeout=30) == Purchase(**APPLES)

    voters = {event["worker"].split("@")[0] for event in events(run, "vote")}
    assert voters == {"one", "two"}
    assert len(events(run, "vote")) >= 5  # the issue is decided after 5 of 9; the rest skip
    assert len(events(run, "vote")) + len(events(run, "vote_skipped")) == 9


def test_vote_only_workers_take_every_vote_on_a_queue_named_in_settings(dedicated_stack, scope):
    cheap_url, cheap = start_simulator("--latency", "0.05")
    try:
        routing = {"QUORUM_VOTE_QUEUE": "validators.cheap"}
        dedicated_stack.worker(
            "-Q", "quorum.tasks,quorum.control", "-n", "tasks@%h", name="tasks", **routing
        )
        dedicated_stack.worker(
            "-Q", "validators.cheap", "-n", "votes@%h", name="votes", OPENAI_BASE_URL=cheap_url
        )
        run = dedicated_stack.client().submit(
            template=TEMPLATE,
            response_model=Purchase,
            kwargs={"sim": directive(scope, outputs=[APPLES], votes={"*": True})},
            config=ThresholdVotingValidationConfig(issues=["names a product", "a count"], count=3),
        )
        assert run.result(timeout=30) == Purchase(**APPLES)
        cheap_calls = Simulator(cheap_url).calls(scope)
    finally:
        cheap.stop()

    assert {e["worker"].split("@")[0] for e in events(run, "output")} == {"tasks"}
    assert {e["worker"].split("@")[0] for e in events(run, "vote")} == {"votes"}
    # The job that finished the round's last vote tallied the round.
    assert {e["worker"].split("@")[0] for e in events(run, "succeeded")} == {"votes"}
    assert [call["kind"] for call in cheap_calls] == ["vote"] * 6  # the votes' own LLM server
    assert [call["kind"] for call in dedicated_stack.simulator.calls(scope)] == ["task"]
