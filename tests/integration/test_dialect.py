"""The structured-output dialect over real HTTP: a worker with default settings meets a server
that refuses `json_schema` like llama-cpp-python's (the simulator's `--dialect json_object`),
switches to `json_object` on the first refusal, and the run succeeds unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from quorum.producer import TaskClient
from quorum.producer.stack import start_redis, start_simulator, start_worker
from quorum.shared.models import ThresholdVotingValidationConfig
from tests.integration.helpers import APPLES, FAST_WORKER_ENV, Purchase, Simulator, directive

pytestmark = pytest.mark.integration

CONFIG = ThresholdVotingValidationConfig(issues=["a", "b"], count=3)


@pytest.fixture(scope="module")
def llama_cpp_like() -> Iterator[tuple[str, Simulator]]:
    """A private Redis and a simulator that speaks only the `json_object` dialect."""
    redis_url, server = start_redis()
    base_url, sim = start_simulator("--dialect", "json_object", "--latency", "0.02")
    try:
        yield redis_url, Simulator(base_url)
    finally:
        sim.stop()
        server.stop()


def run_once(redis_url: str, sim: Simulator, scope: str, **env: str) -> dict[str, int]:
    """Run one validated extraction on a fresh worker; return the simulator's faults by kind."""
    worker = start_worker(
        {
            "QUORUM_REDIS_URL": redis_url,
            "OPENAI_BASE_URL": sim.base_url,
            "OPENAI_API_KEY": "sim",
            **FAST_WORKER_ENV,
            **env,
        }
    )
    client = TaskClient(redis_url=redis_url)
    try:
        run = client.submit(
            template=directive(scope, outputs=[APPLES], votes={"*": True}) + " {{ m }}",
            response_model=Purchase,
            kwargs={"m": "I want 5 apples"},
            config=CONFIG,
        )
        assert run.result(timeout=30) == Purchase(**APPLES)
    finally:
        client.close()
        worker.stop()
    calls = sim.calls(scope)
    assert len([c for c in calls if c["status"] == 200]) == 1 + 2 * 3
    faults: dict[str, int] = {}
    for call in calls:
        if call["fault"]:
            faults[call["fault"]] = faults.get(call["fault"], 0) + 1
    return faults


def test_default_settings_switch_to_json_object_after_one_refusal(llama_cpp_like, scope):
    redis_url, sim = llama_cpp_like
    assert run_once(redis_url, sim, scope) == {"dialect": 1}


def test_setting_json_object_sends_no_json_schema_request(llama_cpp_like, scope):
    redis_url, sim = llama_cpp_like
    assert run_once(redis_url, sim, scope, QUORUM_STRUCTURED_OUTPUT="json_object") == {}
