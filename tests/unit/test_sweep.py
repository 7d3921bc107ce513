"""The sweep: runs past their deadline end FAILED (`timeout`); stalled runs get their current
step sent again; one worker of many sweeps per interval."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest

from quorum.shared import flow, sweep
from quorum.shared.keys import Keys
from quorum.shared.models import SingleShotValidationConfig, TaskStatus
from quorum.shared.store import RunStore
from tests.unit.test_flow import GOOD, RUN, FakeLLM, Recorder, sent, submit

CONFIG = SingleShotValidationConfig(issues=["is polite"], max_retries=1)


@pytest.fixture
def store() -> RunStore:
    return RunStore(fakeredis.FakeRedis(decode_responses=True), keys=Keys("quorum"), ttl_s=100)


@pytest.fixture
def ctx(store: RunStore) -> flow.Context:
    return flow.Context(store=store, llm=FakeLLM(), enqueue=Recorder(), worker="sweeper")


def test_a_run_past_its_deadline_fails_with_code_timeout(store, ctx) -> None:
    submit(store, CONFIG)
    assert sweep.sweep(ctx, now=time.time(), stall_after_s=60).timed_out == 0
    swept = sweep.sweep(ctx, now=time.time() + 3601, stall_after_s=10**6)
    state = store.load(RUN)
    assert (swept.timed_out, state.status, state.code) == (1, TaskStatus.FAILED, "timeout")
    assert state.error.startswith("timeout: the run did not finish within its deadline")
    assert store.past_deadline(time.time() + 10**6) == []  # unindexed once it ended


def test_a_finished_run_leaves_the_indices(store, ctx) -> None:
    submit(store, CONFIG)
    store.cancel(RUN)
    assert store.past_deadline(time.time() + 10**6) == []
    assert store.stalled(time.time() + 10**6) == []


@pytest.mark.parametrize(
    ("prepare", "expected"),
    [
        ("pending", ("task_node", RUN, 1)),
        ("running", ("task_node", RUN, 1)),
        ("validating", ("task_node", RUN, 1)),
        ("invalid", ("route", RUN, 1)),
        ("retrying", ("route", RUN, 1)),
    ],
)
def test_a_stalled_run_gets_its_current_step_again(store, ctx, prepare, expected) -> None:
    submit(store, CONFIG)
    llm: FakeLLM = ctx.llm  # type: ignore[assignment]
    if prepare == "running":
        store.transition(RUN, TaskStatus.RUNNING, attempt=0, fields={"attempt": 1})
    elif prepare in ("validating", "invalid", "retrying"):
        llm.outputs.append(json.dumps(GOOD) if prepare != "invalid" else "not json")
        flow.task_node(ctx, RUN, 1)
        if prepare == "retrying":
            store.transition(RUN, TaskStatus.RETRYING, attempt=1)
    sent(ctx).clear()
    later = time.time() + 120
    assert sweep.sweep(ctx, now=later, stall_after_s=60).resumed == 1
    assert sent(ctx) == [expected]
    # progress was marked: the next sweep leaves it alone until it stalls again
    assert sweep.sweep(ctx, now=later + 1, stall_after_s=60).resumed == 0


def test_a_run_making_progress_is_not_resumed(store, ctx) -> None:
    submit(store, CONFIG)
    store.transition(RUN, TaskStatus.RUNNING, attempt=0, fields={"attempt": 1})
    assert sweep.sweep(ctx, now=time.time() + 30, stall_after_s=60).resumed == 0


def test_one_worker_of_many_sweeps_per_interval(store, ctx) -> None:
    first = sweep.Sweeper(lambda: ctx, interval_s=5, stall_after_s=60)
    second = sweep.Sweeper(lambda: ctx, interval_s=5, stall_after_s=60)
    assert first.once() is not None
    assert second.once() is None
    assert first.once() is None  # the claim holds for the interval, whoever asks


def test_the_sweep_sends_again_a_delivery_whose_lease_ran_out(store, ctx) -> None:
    from tests.unit.test_webhooks import spec as hooked

    sent_hooks: list[str] = []
    store.on_webhook = sent_hooks.append
    store.create("w1", hooked())
    assert store.transition("w1", TaskStatus.FAILED)
    assert sent_hooks == ["w1"]  # sent once as the run ended
    assert sweep.sweep(ctx, now=time.time(), stall_after_s=10**6).webhooks == 0  # leased
    later = time.time() + store.webhook_lease_s + 1
    assert sweep.sweep(ctx, now=later, stall_after_s=10**6).webhooks == 1
    assert sent_hooks == ["w1", "w1"]
    assert store.due_webhooks(later) == []  # leased again until the job settles it


def test_the_sweep_schedules_a_delivery_its_end_left_unscheduled(store, ctx) -> None:
    from tests.unit.test_webhooks import spec as hooked

    sent_hooks: list[str] = []
    store.on_webhook = sent_hooks.append
    store.create("w1", hooked())
    store.redis.hset(store.keys.run("w1"), mapping={"status": "FAILED", "webhook": "pending"})
    assert store.due_webhooks(time.time() + 10**6) == []  # as if its process died right after
    swept = sweep.sweep(ctx, now=time.time() + 10**6, stall_after_s=10)  # meets it, ended
    assert swept.webhooks == 1 and sent_hooks == ["w1"]
    assert store.pending_webhook("w1") is not None
