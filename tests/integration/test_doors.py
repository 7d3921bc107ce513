"""Listing and batch submits over HTTP (`quorum api`), the client and the CLI, against the
session's Redis, worker and simulator."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from quorum.producer import TaskClient
from quorum.producer.stack import ManagedProcess, celery_command
from tests.integration.helpers import APPLES, Purchase, directive
from tests.integration.services import http, start_api

pytestmark = pytest.mark.integration

TEMPLATE = "Extract the purchase from: {{ message }} {{ sim }}"
SCHEMA = Purchase.model_json_schema()


@pytest.fixture(scope="module")
def api(redis_url: str, worker: ManagedProcess) -> Iterator[str]:
    """The API's base URL (no token: the auth tests are in test_api)."""
    url, process = start_api({"QUORUM_REDIS_URL": redis_url, "QUORUM_MAX_BATCH": "50"})
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
