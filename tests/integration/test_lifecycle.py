"""A run's life from the producer's side: cancel, idempotency, JSON Schema results, get,
asyncio, and a worker lost in the middle of an LLM call."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from quorum import AsyncTaskClient
from quorum.shared.errors import RunNotFoundError, TaskFailedError
from quorum.shared.models import (
    SingleShotValidationConfig,
    TaskStatus,
    ThresholdVotingValidationConfig,
)
from tests.integration.helpers import APPLES, TEMPLATE, Purchase, directive, events, wait_until

pytestmark = pytest.mark.integration

PURCHASE_SCHEMA = {
    "title": "Purchase",
    "type": "object",
    "properties": {"product": {"type": "string"}, "quantity": {"type": "integer"}},
    "required": ["product", "quantity"],
    "additionalProperties": False,
}


def in_flight(simulator, scope, kind):
    return [c for c in simulator.calls(scope, kind) if c["status"] is None]


def test_cancel_during_the_task_call_ends_the_run_and_starts_no_llm_call(client, simulator, scope):
    config = ThresholdVotingValidationConfig(issues=["is polite", "names a product"], count=3)
    run = client.submit(
        template=TEMPLATE,
        response_model=Purchase,
        kwargs={"sim": directive(scope, outputs=[APPLES], latency=1.5, votes={"*": True})},
        config=config,
    )
    wait_until(lambda: in_flight(simulator, scope, "task"), timeout_s=10, what="the task call")

    assert run.cancel() is True
    assert run.status() is TaskStatus.CANCELLED
    with pytest.raises(TaskFailedError) as failed:
        run.result(timeout=5)
    assert failed.value.status is TaskStatus.CANCELLED

    # Let the task call finish and the worker see the cancel: no vote call ever starts.
    wait_until(
        lambda: not in_flight(simulator, scope, "task"), timeout_s=10, what="the task call to end"
    )
    time.sleep(0.5)
    assert len(simulator.calls(scope, "task")) == 1
    assert simulator.calls(scope, "vote") == []
    assert run.status() is TaskStatus.CANCELLED
    types = [e["type"] for e in events(run)]
    assert "cancelled" in types and "output" not in types and "vote" not in types
    assert run.cancel() is False  # already ended


def test_run_cancelled_before_a_worker_takes_it_makes_no_llm_call(dedicated_stack, scope):
    client = dedicated_stack.client()
    run = client.submit(
        template=TEMPLATE,
        response_model=Purchase,
        kwargs={"sim": directive(scope, outputs=[APPLES])},
        config=SingleShotValidationConfig(issues=["is polite"]),
    )
    assert run.status() is TaskStatus.PENDING  # no worker yet
    assert run.cancel() is True

    dedicated_stack.worker()
    db = dedicated_stack.redis
    wait_until(lambda: db.llen("quorum.tasks") == 0, timeout_s=10, what="the job to be taken")
    time.sleep(0.5)
    assert dedicated_stack.simulator.calls(scope) == []
    assert run.status() is TaskStatus.CANCELLED
    assert [e["type"] for e in events(run)] == ["submitted", "cancelled"]
    db.close()


def test_same_idempotency_key_gives_one_run_executed_once(client, simulator, scope):
    request = {
        "template": TEMPLATE,
        "response_model": Purchase,
        "kwargs": {"sim": directive(scope, outputs=[APPLES], votes={"*": True})},
        "config": SingleShotValidationConfig(issues=["is polite"]),
        "idempotency_key": f"order-{scope}",
    }
    first = client.submit(**request)
    second = client.submit(**request)

    assert second.id == first.id
    assert first.result(timeout=20) == Purchase(**APPLES)
    third = client.submit(**request)  # also after the run has ended
    assert third.id == first.id
    assert third.result(timeout=5) == Purchase(**APPLES)
    time.sleep(0.3)
    assert len(simulator.calls(scope, "task")) == 1
    assert len(events(first, "submitted")) == 1
    assert len(events(first, "attempt_started")) == 1


def test_json_schema_response_model_returns_a_dict_and_get_finds_the_run(client, simulator, scope):
    run = client.submit(
        template=TEMPLATE,
        response_model=PURCHASE_SCHEMA,
        kwargs={"sim": directive(scope, outputs=[APPLES], votes={"*": True})},
        config=SingleShotValidationConfig(issues=["is polite"]),
    )
    assert run.result(timeout=20) == APPLES

    again = client.get(run.id)
    assert again.id == run.id
    assert again.status() is TaskStatus.SUCCESSFUL
    assert again.result(timeout=5) == APPLES
    assert client.get(run.id, response_model=Purchase).result(timeout=5) == Purchase(**APPLES)
    assert again.provenance() == run.provenance()
    with pytest.raises(RunNotFoundError):
        client.get("no-such-run")


def test_async_client_returns_the_model_instance(client, simulator, scope):
    async def main():
        async with AsyncTaskClient(settings=client.settings) as aclient:
            run = await aclient.submit(
                template=TEMPLATE,
                response_model=Purchase,
                kwargs={"sim": directive(scope, outputs=[APPLES], votes={"*": True})},
                config=ThresholdVotingValidationConfig(issues=["is polite"]),
            )
            return await run.result(timeout=20)

    result = asyncio.run(main())
    assert isinstance(result, Purchase)
    assert result == Purchase(**APPLES)


def test_async_client_raises_task_failed_error(client, simulator, scope):
    async def main():
        async with AsyncTaskClient(settings=client.settings) as aclient:
            run = await aclient.submit(
                template=TEMPLATE,
                response_model=Purchase,
                kwargs={"sim": directive(scope, outputs=[APPLES], votes={"*": False})},
                config=SingleShotValidationConfig(issues=["is polite"], max_retries=0),
            )
            return await run.result(timeout=20)

    with pytest.raises(TaskFailedError) as failed:
        asyncio.run(main())
    assert failed.value.last_output == APPLES


def test_every_waiter_on_a_run_wakes_once_it_ends(client, simulator, scope):
    """Two asyncio waits and two blocking ones on one run: its end wakes them all, at once
    (a wait the end did not wake would only notice at the status check after a 5 s block)."""
    run = client.submit(
        template=TEMPLATE,
        response_model=Purchase,
        kwargs={"sim": directive(scope, outputs=[APPLES], latency=0.5, votes={"*": True})},
        config=SingleShotValidationConfig(issues=["is polite"]),
    )

    async def main():
        async with AsyncTaskClient(settings=client.settings) as aclient:
            arun = await aclient.get(run.id, response_model=Purchase)
            assert not (await arun.status()).terminal
            waits = [arun.result(timeout=30) for _ in range(2)]
            waits += [asyncio.to_thread(run.result, 30) for _ in range(2)]
            return await asyncio.gather(*waits)

    began = time.monotonic()
    assert asyncio.run(main()) == [Purchase(**APPLES)] * 4
    assert time.monotonic() - began < 4
    assert run.result(timeout=0) == Purchase(**APPLES)  # and a wait after the end returns


def test_async_wait_outlasts_a_quiet_stretch_of_the_event_stream(dedicated_stack, scope):
    """No event for over 5 s (one slow LLM call) must not break the asyncio wait."""
    dedicated_stack.worker(QUORUM_LLM_TIMEOUT_S="10")
    client = dedicated_stack.client()

    async def main():
        async with AsyncTaskClient(settings=client.settings) as aclient:
            run = await aclient.submit(
                template=TEMPLATE,
                response_model=Purchase,
                kwargs={"sim": directive(scope, outputs=[APPLES], latency=5.5, votes={"*": True})},
                config=SingleShotValidationConfig(issues=["is polite"]),
            )
            return await run.result(timeout=30)

    assert asyncio.run(main()) == Purchase(**APPLES)


def test_worker_killed_mid_call_is_replaced_and_no_vote_counts_twice(dedicated_stack, scope):
    settings = {
        "QUORUM_VISIBILITY_TIMEOUT_S": "3",
        "QUORUM_UNACKED_RESTORE_INTERVAL_S": "1",
        "QUORUM_LLM_TIMEOUT_S": "10",  # above the 3 s calls of this run
    }
    first = dedicated_stack.worker(name="doomed-worker", **settings)
    client = dedicated_stack.client()
    simulator = dedicated_stack.simulator
    run = client.submit(
        template=TEMPLATE,
        response_model=Purchase,
        kwargs={"sim": directive(scope, outputs=[APPLES], latency=3, votes={"*": True})},
        config=ThresholdVotingValidationConfig(issues=["is polite", "names a product"], count=3),
    )
    wait_until(lambda: in_flight(simulator, scope, "task"), timeout_s=15, what="the task call")
    time.sleep(0.5)
    first.kill()
    assert run.status() is TaskStatus.RUNNING

    dedicated_stack.worker(name="replacement-worker", **settings)
    assert run.result(timeout=60) == Purchase(**APPLES)
    assert run.status() is TaskStatus.SUCCESSFUL
    slots = Counter((e["attempt"], e["issue"], e["index"]) for e in events(run, "vote"))
    assert slots, "no vote was counted"
    assert max(slots.values()) == 1, f"a vote counted twice: {slots}"
    assert len(simulator.calls(scope, "task")) >= 2  # the lost call was made again
    assert len(events(run, "succeeded")) == 1
    print(
        f"task calls {len(simulator.calls(scope, 'task'))}, "
        f"vote calls {len(simulator.calls(scope, 'vote'))}, votes counted {len(slots)}, "
        f"events {Counter(e['type'] for e in events(run))}"
    )
