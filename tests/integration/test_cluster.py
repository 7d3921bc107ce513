"""The store on a Redis Cluster: the integration suite's core cases once more (submit, the
voting modes, retries, results, live events, workflows) with `QUORUM_REDIS_URL` naming a
3-master cluster, the broker on RabbitMQ and Celery's chord results in the session's plain
Redis; and every key of a run, and of a workflow, on one slot.

The cluster and RabbitMQ come from `tests.integration.cluster`: without them these tests skip,
saying why; under `CI=true` they fail.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from redis.cluster import RedisCluster

from quorum import AsyncTaskClient, TaskClient, Workflow
from quorum.producer.stack import ManagedProcess, celery_command, start_worker
from quorum.shared.keys import Keys
from quorum.shared.models import TaskStatus
from quorum.shared.settings import Settings
from tests.integration.cluster import amqp_queues, redis_cluster
from tests.integration.conftest import worker_env
from tests.integration.helpers import APPLES, PEARS, TEMPLATE, Purchase, Simulator, directive
from tests.integration.services import ROOT, poll, start_api
from tests.integration.test_lifecycle import (  # noqa: F401  # collected again, on a cluster
    test_cancel_during_the_task_call_ends_the_run_and_starts_no_llm_call,
    test_json_schema_response_model_returns_a_dict_and_get_finds_the_run,
    test_same_idempotency_key_gives_one_run_executed_once,
)
from tests.integration.test_live_events import (  # noqa: F401
    test_a_workflows_events_stream_as_they_happen_until_it_finishes,
    test_events_arrive_in_order_as_they_happen_and_the_stream_closes,
)
from tests.integration.test_retries import (  # noqa: F401
    test_failed_attempt_is_retried_with_its_output_and_every_failing_reasoning,
    test_invalid_output_is_a_failed_attempt_without_votes,
    test_mixed_transient_errors_on_task_and_votes_still_succeed,
)
from tests.integration.test_voting_modes import (  # noqa: F401
    test_k_ahead_draws_a_round_of_k_minus_margin_votes,
    test_single_shot_passes_with_one_vote_per_issue,
    test_threshold_spends_at_most_count_votes_per_issue,
)
from tests.integration.test_workflows import (  # noqa: F401
    test_diamond_joins_both_upstream_values,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    """A 3-master Redis Cluster of this module's own."""
    yield from redis_cluster(masters=3)


@pytest.fixture(scope="module")
def cluster_env(cluster_url: str, redis_url: str) -> Iterator[dict[str, str]]:
    """The settings of this module's processes: the cluster store, RabbitMQ queues of the
    session's own, the chords' results in the session's plain Redis."""
    for broker in amqp_queues():
        yield {
            "QUORUM_REDIS_URL": cluster_url,
            "QUORUM_RESULT_BACKEND_URL": redis_url,
            **broker,
        }


@pytest.fixture(scope="module")
def worker(simulator: Simulator, cluster_env: dict[str, str]) -> Iterator[ManagedProcess]:
    """A worker started with the documented command on the cluster store, with defined
    tasks to publish."""
    imports = {"QUORUM_IMPORTS": "tests.integration.defined_tasks", "PYTHONPATH": str(ROOT)}
    env = worker_env(cluster_env["QUORUM_REDIS_URL"], simulator, **cluster_env, **imports)
    process = start_worker(env, name="cluster-worker")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(cluster_env: dict[str, str], worker: ManagedProcess) -> Iterator[TaskClient]:
    """A producer client on the cluster store that sends to RabbitMQ."""
    fields = {k.removeprefix("QUORUM_").lower(): v for k, v in cluster_env.items()}
    task_client = TaskClient(settings=Settings(**fields))
    try:
        yield task_client
    finally:
        task_client.close()


@pytest.fixture(scope="module")
def api(cluster_env: dict[str, str], worker: ManagedProcess) -> Iterator[str]:
    """The HTTP API on the cluster store (its live events: `shared.live` on a cluster)."""
    url, process = start_api({**cluster_env, "QUORUM_SSE_HEARTBEAT_S": "0.3"})
    try:
        yield url
    finally:
        process.stop()


def _keys_and_slots(client: TaskClient, tag: str) -> dict[str, int]:
    """Every key of the store that carries `{tag}`, on any node, with the slot the cluster
    gives it (CLUSTER KEYSLOT)."""
    db = client.store.redis
    assert isinstance(db, RedisCluster)
    found = sorted(db.scan_iter(match=f"*{{{tag}}}*", count=1000))
    return {key: int(db.cluster_keyslot(key)) for key in found}


def test_the_store_speaks_to_the_cluster(client: TaskClient) -> None:
    assert isinstance(client.store.redis, RedisCluster)
    nodes = client.store.redis.get_primaries()
    assert len(nodes) == 3


def test_every_key_of_a_run_lives_on_one_slot(client: TaskClient, scope: str) -> None:
    sim = directive(scope, outputs=[PEARS, APPLES], votes={"*": {"pass_if": {"product": "apples"}}})
    config = {"mode": "threshold", "issues": ["names a product", "gives a quantity"], "count": 3}
    run = client.submit(
        template=TEMPLATE,
        response_model=Purchase,
        kwargs={"sim": sim},
        config={**config, "max_retries": 1},
    )
    assert run.result(timeout=60) == Purchase(**APPLES)
    slots = _keys_and_slots(client, run.id)
    keys = Keys(client.settings.namespace)
    expected = {keys.run(run.id), keys.events(run.id), keys.done(run.id)}
    expected |= {keys.rounds(run.id, a) for a in (1, 2)}
    assert expected <= set(slots), f"keys of the run not found: {expected - set(slots)}"
    assert len(set(slots.values())) == 1, slots
    poll(  # the listing's index of ended runs is written by the step after the run's end
        lambda: run.id in {r.id for r in client.list(status=TaskStatus.SUCCESSFUL, limit=500)},
        timeout_s=10,
        what="the run in the listing of successful runs (an index on a slot of its own)",
    )


def test_every_key_of_a_workflow_lives_on_one_slot(client: TaskClient, scope: str) -> None:
    text = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    config = {"mode": "single_shot", "issues": ["is text"]}
    wf = Workflow("slots")
    words = {"type": "object", "properties": {"words": {"type": "array"}}, "required": ["words"]}
    split = wf.task(
        "split",
        template="Split {{ sim }}",
        response_model=words,
        config=config,
        kwargs={"sim": directive(f"{scope}-s", outputs=[{"words": ["a", "b"]}], votes={"*": True})},
    )
    each = wf.map(
        "each",
        over=split["words"],
        item="word",
        template="Say {{ word }} {{ sim }}",
        response_model=text,
        config=config,
        kwargs={"sim": directive(f"{scope}-e", outputs=[{"text": "x"}], votes={"*": True})},
    )
    wf.task(
        "join",
        template="Join {{ said }} {{ sim }}",
        response_model=text,
        config=config,
        kwargs={
            "said": each,
            "sim": directive(f"{scope}-j", outputs=[{"text": "y"}], votes={"*": True}),
        },
    )
    handle = client.submit_workflow(wf)
    outputs = handle.result(timeout=90)
    assert outputs["join"] == {"text": "y"}
    slots = _keys_and_slots(client, handle.id)
    keys = Keys(client.settings.namespace)
    node_runs = [run_id for view in handle.nodes().values() for run_id in view.run_ids]
    assert len(node_runs) == 4
    expected = {keys.workflow(handle.id), keys.wf_nodes(handle.id), keys.wf_events(handle.id)}
    expected |= {keys.wf_done(handle.id), keys.wf_inputs(handle.id)}
    expected |= {keys.run(run_id) for run_id in node_runs}
    expected |= {keys.events(run_id) for run_id in node_runs}
    assert expected <= set(slots), f"keys of the workflow not found: {expected - set(slots)}"
    assert len(set(slots.values())) == 1, slots


def test_a_defined_task_is_published_to_the_cluster_and_runs_by_name(
    client: TaskClient, scope: str
) -> None:
    poll(lambda: "it_python_check" in client.tasks(), timeout_s=15, what="the definitions")
    sim = directive(scope, outputs=[{"product": "APPLES", "quantity": 3}], votes={"*": True})
    run = client.submit(task="it_python_check", kwargs={"message": "3 apples", "sim": sim})
    result = run.result(timeout=60)
    # A model where this process imported the definition (another module's tests may have),
    # else its JSON.
    as_json = result.model_dump() if isinstance(result, BaseModel) else result
    assert as_json == {"product": "apples", "quantity": 3}


def test_the_async_client_waits_for_many_runs_on_the_cluster(
    client: TaskClient, scope: str
) -> None:
    async def main() -> list[Any]:
        async with AsyncTaskClient(settings=client.settings) as aclient:
            runs = [
                await aclient.submit(
                    template=TEMPLATE,
                    response_model=Purchase,
                    kwargs={"sim": directive(f"{scope}-{i}", outputs=[APPLES], votes={"*": True})},
                    config={"mode": "single_shot", "issues": ["names a product"]},
                )
                for i in range(5)
            ]
            return list(await asyncio.gather(*(run.result(timeout=60) for run in runs)))

    assert asyncio.run(main()) == [Purchase(**APPLES)] * 5


def test_a_worker_on_a_cluster_store_without_a_broker_stops_at_once_saying_what_to_set() -> None:
    env = {**os.environ, "QUORUM_REDIS_URL": "redis+cluster://127.0.0.1:7000"}
    env.pop("QUORUM_BROKER_URL", None)
    done = subprocess.run(
        [*celery_command(), "--loglevel", "INFO"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "set QUORUM_BROKER_URL to RabbitMQ (amqp://...)" in done.stdout + done.stderr
