"""Many runs at once on one worker started with the default command: throughput, and no
Redis pub/sub subscriptions left behind by the worker that launches chords (celery#4824)."""

from __future__ import annotations

import re
import time

import pytest
import redis

from quorum.shared.models import (
    SingleShotValidationConfig,
    TaskStatus,
    ThresholdVotingValidationConfig,
)
from tests.integration.helpers import APPLES, Purchase, directive

pytestmark = pytest.mark.integration

TEMPLATE = "Extract the purchase from: I want {{ n }} apples {{ sim }}"


def submit_many(client, n, scope, config, **script):
    sim = directive(scope, outputs=[APPLES], votes={"*": True}, **script)
    return [
        client.submit(
            template=TEMPLATE, response_model=Purchase, kwargs={"n": i, "sim": sim}, config=config
        )
        for i in range(n)
    ]


def wait_all(runs, timeout_s):
    deadline = time.monotonic() + timeout_s
    for run in runs:
        assert run.result(timeout=max(deadline - time.monotonic(), 0.1)) == Purchase(**APPLES)


def test_200_runs_at_once_finish_in_seconds_on_one_worker(dedicated_stack, scope):
    # The default settings: the session worker's short LLM timeout (for fault tests) would let a
    # loaded machine turn slow answers into timeouts and retried calls.
    dedicated_stack.worker(QUORUM_LLM_TIMEOUT_S="60", QUORUM_LLM_MAX_RETRIES="6")
    client, simulator = dedicated_stack.client(), dedicated_stack.simulator
    config = SingleShotValidationConfig(issues=["names a product"])
    started = time.perf_counter()
    runs = submit_many(client, 200, scope, config, latency=0.5)
    submitted = time.perf_counter() - started
    wait_all(runs, timeout_s=60)
    elapsed = time.perf_counter() - started

    calls = simulator.calls(scope)
    print(
        f"\n200 runs (SingleShot, 1 issue, 0.5 s per LLM call): submitted in {submitted:.2f} s, "
        f"all done in {elapsed:.2f} s (ideal ~1 s); simulator max in flight "
        f"{simulator.stats()['max_in_flight']}"
    )
    assert all(run.status() is TaskStatus.SUCCESSFUL for run in runs)
    assert len(calls) == 400  # one task call and one vote per run
    assert elapsed < 15


def subscriptions(db: redis.Redis) -> dict[str, int]:
    """Every pub/sub subscription the server holds, three ways."""
    clients = db.client_list()
    return {
        "numpat": db.pubsub_numpat(),
        "channels": len(db.pubsub_channels("*")),
        "client_sub": sum(int(c.get("sub", 0)) for c in clients),
        "client_psub": sum(int(c.get("psub", 0)) for c in clients),
        "clients": len(clients),
    }


def test_chord_launching_worker_does_not_leak_pubsub_subscriptions(dedicated_stack, scope):
    dedicated_stack.worker()
    client = dedicated_stack.client()
    db = dedicated_stack.redis
    config = ThresholdVotingValidationConfig(issues=["names a product"], count=3)

    wait_all(submit_many(client, 20, scope, config, latency=0), timeout_s=60)
    time.sleep(1)
    after_20 = subscriptions(db)
    started = time.perf_counter()
    wait_all(submit_many(client, 480, scope, config, latency=0), timeout_s=120)
    elapsed = time.perf_counter() - started
    time.sleep(1)
    after_500 = subscriptions(db)

    task_meta = [c for c in db.pubsub_channels("*") if re.search("celery-task-meta", c)]
    print(
        f"\npub/sub after 20 runs: {after_20}\npub/sub after 500 runs: {after_500} "
        f"(480 runs in {elapsed:.2f} s); celery-task-meta channels: {len(task_meta)}"
    )
    for name in ("numpat", "channels", "client_sub", "client_psub"):
        assert after_500[name] <= after_20[name], f"{name} grew: {after_20} → {after_500}"
    db.close()


def test_more_threads_than_redis_connections_wait_instead_of_calling_again(dedicated_stack, scope):
    # 40 threads share 2 Redis connections: a command waits for a free one. A pool that fails
    # instead (redis-py's default beyond 100) turns the failed write after a task call into a
    # retried job and a second, paid LLM call.
    dedicated_stack.worker(QUORUM_WORKER_CONCURRENCY="40", QUORUM_REDIS_MAX_CONNECTIONS="2")
    client, simulator = dedicated_stack.client(), dedicated_stack.simulator
    config = SingleShotValidationConfig(issues=["names a product"])
    wait_all(submit_many(client, 40, scope, config, latency=0.2), timeout_s=60)
    assert len(simulator.calls(scope)) == 80  # one task call and one vote per run
