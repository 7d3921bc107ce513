"""Listing and batch submits over HTTP (`quorum api`), the client and the CLI, against the
session's Redis, worker and simulator."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from quorum import AsyncTaskClient, TaskStatus
from quorum.producer import TaskClient
from quorum.producer.stack import ManagedProcess, celery_command, start_redis
from tests.integration.helpers import APPLES, Purchase, directive
from tests.integration.services import http, start_api

pytestmark = pytest.mark.integration

TEMPLATE = "Extract the purchase from: {{ message }} {{ sim }}"
SCHEMA = Purchase.model_json_schema()


@pytest.fixture(scope="module")
def api(redis_url: str, worker: ManagedProcess) -> Iterator[str]:
    """The API's base URL (no token: the auth tests are in test_api)."""
    url, process = start_api({"QUORUM_REDIS_URL": redis_url, "QUORUM_MAX_BATCH": "20"})
    try:
        yield url
    finally:
        process.stop()


def spec(scope: str, *, passes: bool = True, **extra: object) -> dict[str, object]:
    sim = directive(scope, outputs=[APPLES], votes={"*": passes})
    return {
        "template": TEMPLATE,
        "kwargs": {"message": "I want 5 apples", "sim": sim},
        "response_schema": SCHEMA,
        "config": {
            "mode": "threshold",
            "issues": ["names a product"],
            "count": 1,
            "max_retries": 0,
        },
        **extra,
    }


def written(client: TaskClient) -> set[str]:
    """The store's run keys and the queues' lengths: what a refused request must not touch
    (other keys come and go with the session's other runs)."""
    runs = set(client.store.redis.scan_iter(match="quorum:run:*", count=1000))
    return runs | {f"runs={client.store.redis.zcard('quorum:runs')}"}


def wait_all(api: str, ids: list[str]) -> list[str]:
    return [http("GET", f"{api}/v1/runs/{i}/result?timeout=30").json()["status"] for i in ids]


def test_listing_filters_by_status_and_metadata_newest_first_and_pages(api, scope):
    tag = uuid.uuid4().hex
    ids = []
    for n in range(5):
        body = spec(scope, passes=n != 2, metadata={"batch": tag, "n": n})
        created = http("POST", f"{api}/v1/runs", body)
        assert created.status == 201, created
        ids.append(created.json()["id"])
    assert wait_all(api, ids) == ["SUCCESSFUL"] * 2 + ["FAILED"] + ["SUCCESSFUL"] * 2

    listed = http("GET", f"{api}/v1/runs?metadata.batch={tag}")
    assert listed.status == 200, listed
    assert [r["id"] for r in listed.json()["runs"]] == ids[::-1]
    assert listed.json()["next_cursor"] is None
    assert listed.json()["runs"][0]["metadata"] == {"batch": tag, "n": 4}

    failed = http("GET", f"{api}/v1/runs?status=FAILED&metadata.batch={tag}").json()
    assert [r["id"] for r in failed["runs"]] == [ids[2]]
    assert failed["runs"][0]["code"] == "validation_failed"
    one = http("GET", f"{api}/v1/runs?metadata.batch={tag}&metadata.n=3").json()
    assert [r["id"] for r in one["runs"]] == [ids[3]]

    seen, cursor = [], ""
    while True:
        page = http("GET", f"{api}/v1/runs?metadata.batch={tag}&limit=2&cursor={cursor}").json()
        seen += [r["id"] for r in page["runs"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert seen == ids[::-1]

    created_at = listed.json()["runs"][2]["created_at"]  # ids[2]
    newer = http("GET", f"{api}/v1/runs?metadata.batch={tag}&created_after={created_at!r}")
    assert [r["id"] for r in newer.json()["runs"]] == [ids[4], ids[3]]

    assert http("GET", f"{api}/v1/runs?status=NOPE").status == 422
    assert http("GET", f"{api}/v1/runs?cursor=bad").status == 422
    assert http("GET", f"{api}/v1/runs?limit=0").status == 422


def test_client_and_cli_list_the_same(api, redis_url, client: TaskClient, scope):
    tag = uuid.uuid4().hex
    body = spec(scope, metadata={"batch": tag})
    run_id = http("POST", f"{api}/v1/runs", body).json()["id"]
    assert wait_all(api, [run_id]) == ["SUCCESSFUL"]
    page = client.list(status="SUCCESSFUL", metadata={"batch": tag}, limit=10)
    assert [r.id for r in page] == [run_id] and page.next_cursor is None
    quorum = str(Path(celery_command()[0]).with_name("quorum"))
    out = subprocess.run(
        [quorum, "runs", "--metadata", f"batch={tag}", "--status", "SUCCESSFUL", "--json"],
        env={"QUORUM_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listed = json.loads(out.stdout)
    assert [r["id"] for r in listed["runs"]] == [run_id]
    assert listed["next_cursor"] is None


def test_a_batch_is_submitted_whole_and_runs(api, client: TaskClient, scope):
    tag = uuid.uuid4().hex
    body = {"runs": [spec(scope, metadata={"batch": tag, "n": n}) for n in range(3)]}
    created = http("POST", f"{api}/v1/batches", body)
    assert created.status == 201, created
    ids = created.json()["ids"]
    assert len(set(ids)) == 3
    assert wait_all(api, ids) == ["SUCCESSFUL"] * 3
    listed = http("GET", f"{api}/v1/runs?metadata.batch={tag}").json()["runs"]
    assert sorted(r["id"] for r in listed) == sorted(ids)

    runs = client.submit_many(
        [
            {
                "template": TEMPLATE,
                "response_model": Purchase,
                "kwargs": {"message": "5 apples", "sim": directive(scope, outputs=[APPLES])},
                "config": {"mode": "single_shot", "issues": ["names a product"]},
            }
        ]
        * 2
    )
    assert [run.result(timeout=30) for run in runs] == [Purchase(**APPLES)] * 2


@pytest.mark.parametrize(
    ("bad", "status", "message"),
    [
        ({"template": "Hello {{ missing }}"}, 422, "runs[1]: "),
        ({"config": {"mode": "threshold", "issues": ["x"], "count": 2}}, 422, "body.runs.1.config"),
        ({"template": None}, 422, "runs[1]: give a defined task's name"),
        ({"kwargs": ["not", "a", "dict"]}, 422, "body.runs.1.kwargs"),
    ],
)
def test_one_bad_spec_refuses_the_batch_naming_its_index(
    api, client: TaskClient, scope, bad, status, message
):
    before = written(client)
    body = {"runs": [spec(scope), {**spec(scope), **bad}, spec(scope)]}
    refused = http("POST", f"{api}/v1/batches", body)
    assert refused.status == status, refused
    assert message in refused.json()["detail"]
    assert written(client) <= before


def test_a_batch_over_the_limit_or_empty_is_refused(api, client: TaskClient, scope):
    before = written(client)
    for count in (21, 0):
        refused = http("POST", f"{api}/v1/batches", {"runs": [spec(scope)] * count})
        assert refused.status == 422, refused
        assert "a batch holds 1 to 20 runs" in refused.json()["detail"]
    assert written(client) <= before


def test_one_batch_of_1000_costs_the_producer_under_a_fifth_of_1000_submits(scope):
    """Against an API of its own and no worker (the runs only queue): wall time seen by the
    producer, and the API process's CPU time."""
    url, server = start_redis()
    base, process = start_api({"QUORUM_REDIS_URL": url})
    try:
        bodies = [spec(scope, metadata={"n": n}) for n in range(1000)]
        cpu = psutil.Process(process.pid)
        http("POST", f"{base}/v1/runs", bodies[0])  # warm up
        t0, c0 = time.perf_counter(), sum(cpu.cpu_times()[:2])
        for body in bodies:
            assert http("POST", f"{base}/v1/runs", body).status == 201
        t1, c1 = time.perf_counter(), sum(cpu.cpu_times()[:2])
        created = http("POST", f"{base}/v1/batches", {"runs": bodies})
        t2, c2 = time.perf_counter(), sum(cpu.cpu_times()[:2])
        assert created.status == 201 and len(created.json()["ids"]) == 1000
        print(
            f"1000 single submits: {t1 - t0:.2f} s, API CPU {c1 - c0:.2f} s; one batch of 1000: "
            f"{t2 - t1:.2f} s, API CPU {c2 - c1:.2f} s; ratio {(t2 - t1) / (t1 - t0):.3f}"
        )
        assert (t2 - t1) < (t1 - t0) / 5
    finally:
        process.stop()
        server.stop()


def test_the_async_client_submits_a_batch_and_lists_it(redis_url, worker, scope):
    tag = uuid.uuid4().hex
    one = {
        "template": TEMPLATE,
        "response_model": Purchase,
        "kwargs": {"message": "5 apples", "sim": directive(scope, outputs=[APPLES])},
        "config": {"mode": "single_shot", "issues": ["names a product"]},
        "metadata": {"batch": tag},
    }

    async def go() -> tuple[list[str], list[str], list[Purchase]]:
        async with AsyncTaskClient(redis_url=redis_url) as aclient:
            runs = await aclient.submit_many([one, one])
            results = [await run.result(timeout=30) for run in runs]
            page = await aclient.list(metadata={"batch": tag}, status=TaskStatus.SUCCESSFUL)
            return [run.id for run in runs], [r.id for r in page], results

    ids, listed, results = asyncio.run(go())
    assert results == [Purchase(**APPLES)] * 2
    assert listed == ids[::-1]
