"""The HTTP API fuzzed from its own OpenAPI document (schemathesis), bounded in examples and
time, against a real API process, worker and simulator (architecture.md §10).

Two passes: every operation with generated requests, then stateful scenarios that follow the
document's links from a created run to GET, /result, /events and cancel. Every answer must
be no 5xx and fit the document (status, content type, body schema); a refused submit must
write nothing (no run in the runs index, no idempotency key). The figures of the run are
printed (`-s`): requests tried, runs created, links covered.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis.checks import not_a_server_error
from schemathesis.generation.stateful.state_machine import StepOutput
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from quorum.producer.stack import start_redis, start_worker
from quorum.shared.keys import Keys
from tests.integration.conftest import worker_env
from tests.integration.helpers import Simulator
from tests.integration.services import start_api

pytestmark = pytest.mark.integration

TOKEN = "fuzz-token-77c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEYS = Keys("quorum")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 25
SCENARIOS = 25
LINKS = {"GetRun", "GetResult", "GetEvents", "Cancel"}


@dataclass
class Tally:
    """What the fuzz did."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    runs: set[str] = field(default_factory=set)
    links: Counter[str] = field(default_factory=Counter)
    """Link name → steps that followed it to a real run (not a 404)."""


@dataclass
class Target:
    api: str
    db: redis.Redis
    schema: Any
    tally: Tally

    def writes(self) -> tuple[int, int]:
        """Runs in the runs index and idempotency keys: what a submit writes."""
        return self.db.zcard(KEYS.runs()), len(self.db.keys(KEYS.idempotency("*")))

    def send(self, case: Any) -> Any:
        """Call `case`, check the answer, and that a refused submit wrote nothing."""
        submit = case.operation.method.upper() == "POST" and case.path == "/v1/runs"
        before = self.writes() if submit else None
        case.headers = {**(case.headers or {}), **AUTH}  # generated headers would replace it
        response = case.call(timeout=30)
        case.validate_response(response, checks=CHECKS, headers=AUTH)
        self.tally.requests += 1
        self.tally.statuses[response.status_code] += 1
        if submit and response.status_code == 201:
            self.tally.runs.add(response.json()["id"])
        elif submit:
            assert self.writes() == before, (response.status_code, response.text[:300])
        return response


@pytest.fixture(scope="module")
def target(simulator: Simulator) -> Iterator[Target]:
    url, server = start_redis()
    worker = start_worker(worker_env(url, simulator), name="fuzz worker")
    api, process = start_api({"QUORUM_REDIS_URL": url, "QUORUM_API_TOKEN": TOKEN})
    db = redis.Redis.from_url(url, decode_responses=True)
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json", headers=AUTH)
    schema.config.update(base_url=api)
    tally = Tally()
    try:
        yield Target(api, db, schema, tally)
    finally:
        print(
            f"\nfuzz: {tally.requests} requests, statuses {dict(sorted(tally.statuses.items()))}, "
            f"{len(tally.runs)} runs created, links covered {dict(tally.links)}"
        )
        db.close()
        process.stop()
        worker.stop()
        server.stop()


_SETTINGS = hypothesis.settings(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)


def test_every_operation_answers_without_a_5xx(target):
    started = time.monotonic()
    operations = [result.ok() for result in target.schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/runs", "GET /v1/runs/{run_id}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis.settings(_SETTINGS, max_examples=EXAMPLES_PER_OPERATION)
        def fuzz(case: Any) -> None:
            target.send(case)

        fuzz()
    assert target.tally.statuses[201] > 0, target.tally.statuses  # generated bodies get in
    assert not any(status >= 500 for status in target.tally.statuses)
    assert time.monotonic() - started < 60


def test_stateful_scenarios_follow_the_links_from_a_created_run(target):
    started = time.monotonic()
    base = target.schema.as_state_machine()

    class Scenarios(base):  # type: ignore[misc,valid-type]
        def step(self, input: Any) -> Any:
            response = target.send(input.case)
            if input.transition is not None and input.is_applied and response.status_code != 404:
                # "POST /v1/runs -> [201] GetRun -> GET /v1/runs/{run_id}": a real run reached
                target.tally.links[input.transition.id.split(" -> ")[1].split()[-1]] += 1
            return StepOutput(response, input.case)

    Scenarios.run(
        settings=hypothesis.settings(_SETTINGS, max_examples=SCENARIOS, stateful_step_count=6)
    )
    assert set(target.tally.links) == LINKS, target.tally.links
    assert not any(status >= 500 for status in target.tally.statuses)
    assert time.monotonic() - started < 60
