"""Flower, a real process on the session's broker: it finds a run's jobs by run id through its
HTTP API, behind basic auth, and keeps them across a restart (persistent state)."""

from __future__ import annotations

import pytest

from quorum.producer import TaskClient
from quorum.shared.models import ThresholdVotingValidationConfig
from tests.integration.helpers import APPLES, Purchase, directive
from tests.integration.services import flower_tasks, http, poll, start_flower

pytestmark = pytest.mark.integration

AUTH = "admin:flower-test-pass"


def test_flower_finds_a_runs_jobs_by_run_id_and_keeps_them_across_a_restart(
    redis_url, client: TaskClient, scope, tmp_path
):
    env = {"QUORUM_REDIS_URL": redis_url}
    url, flower = start_flower(env, db=tmp_path / "flower.db", basic_auth=AUTH)
    try:
        assert http("GET", f"{url}/api/tasks").status == 401  # basic auth guards the API
        assert http("GET", f"{url}/healthcheck").text == "OK"  # ... but not this
        run = client.submit(
            template="Extract the purchase from: I want 5 apples {{ sim }}",
            response_model=Purchase,
            kwargs={"sim": directive(scope, outputs=[APPLES], votes={"*": True})},
            config=ThresholdVotingValidationConfig(issues=["names a product"], count=3),
        )
        assert run.result(timeout=30) == Purchase(**APPLES)

        def all_jobs_succeeded() -> list[dict] | None:
            jobs = flower_tasks(url, run.id, basic=AUTH)
            names = sorted(job["name"] for job in jobs)
            done = all(job["state"] == "SUCCESS" for job in jobs)
            expected = ["quorum.task_node", *["quorum.vote"] * 3]  # a round is no chord
            return jobs if done and names == expected else None

        jobs = poll(all_jobs_succeeded, timeout_s=20, what=f"Flower to list run {run.id}'s jobs")
    finally:
        flower.stop()

    votes = [job for job in jobs if job["name"] == "quorum.vote"]
    assert all(f"'run_id': '{run.id}'" in job["kwargs"] for job in jobs)
    assert sorted(job["kwargs"].count("'issue': 0") for job in votes) == [1, 1, 1]
    assert {job["worker"] for job in jobs} == {f"celery@{jobs[0]['worker'].split('@')[1]}"}

    url, flower = start_flower(env, db=tmp_path / "flower.db", basic_auth=AUTH)
    try:
        names = sorted(job["name"] for job in flower_tasks(url, run.id, basic=AUTH))
        assert names == ["quorum.task_node", *["quorum.vote"] * 3]
    finally:
        flower.stop()
