"""The integration tests of the voting modes, retries and lifecycle once more, with RabbitMQ as
the broker (`QUORUM_BROKER_URL=amqp://…`) and the Redis store unchanged.

RabbitMQ is expected at `QUORUM_TEST_AMQP_URL` (default amqp://guest:guest@127.0.0.1:5672//).
Without one these tests skip, saying why; under `CI=true` a missing RabbitMQ fails them. Queue
names carry a per-session suffix, so that sessions sharing a RabbitMQ never take each other's
jobs; the queues are deleted afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from quorum.producer import TaskClient
from quorum.producer.stack import ManagedProcess, start_worker
from quorum.shared.settings import Settings
from tests.integration.cluster import amqp_queues
from tests.integration.conftest import worker_env
from tests.integration.helpers import Simulator
from tests.integration.test_lifecycle import (  # noqa: F401  # collected again, on RabbitMQ
    test_async_client_raises_task_failed_error,
    test_async_client_returns_the_model_instance,
    test_cancel_during_the_task_call_ends_the_run_and_starts_no_llm_call,
    test_json_schema_response_model_returns_a_dict_and_get_finds_the_run,
    test_same_idempotency_key_gives_one_run_executed_once,
)
from tests.integration.test_retries import (  # noqa: F401
    test_exhausted_retries_fail_with_every_reason_and_the_last_output,
    test_failed_attempt_is_retried_with_its_output_and_every_failing_reasoning,
    test_invalid_output_is_a_failed_attempt_without_votes,
    test_mixed_transient_errors_on_task_and_votes_still_succeed,
    test_permanent_task_error_fails_the_run_at_once,
    test_transient_errors_past_the_retry_limit_fail_the_run,
)
from tests.integration.test_voting_modes import (  # noqa: F401
    test_k_ahead_draws_a_round_of_k_minus_margin_votes,
    test_k_ahead_without_consensus_at_max_votes_fails,
    test_single_shot_passes_with_one_vote_per_issue,
    test_threshold_fails_an_issue_short_of_the_required_margin,
    test_threshold_spends_at_most_count_votes_per_issue,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def amqp_env() -> Iterator[dict[str, str]]:
    """The broker settings of this module: RabbitMQ, queues of this session's own."""
    yield from amqp_queues()


@pytest.fixture(scope="module")
def worker(
    redis_url: str, simulator: Simulator, amqp_env: dict[str, str]
) -> Iterator[ManagedProcess]:
    """A worker started with the documented command, its broker RabbitMQ."""
    # Its own node name: a worker elsewhere on this broker holds `celery@<host>.celery.pidbox`.
    node = f"amqp-{amqp_env['QUORUM_TASK_QUEUE'].rsplit('.', 1)[-1]}@%h"
    env = worker_env(redis_url, simulator, **amqp_env)
    process = start_worker(env, "-n", node, name="amqp-worker")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(
    redis_url: str, amqp_env: dict[str, str], worker: ManagedProcess
) -> Iterator[TaskClient]:
    """A producer client that sends to RabbitMQ and reads the session's Redis store."""
    fields = {k.removeprefix("QUORUM_").lower(): v for k, v in amqp_env.items()}
    task_client = TaskClient(settings=Settings(redis_url=redis_url, **fields))
    try:
        yield task_client
    finally:
        task_client.close()


def test_the_worker_consumes_from_rabbitmq(worker: ManagedProcess, amqp_env: dict[str, str]):
    banner = "\n".join(worker.lines)
    assert "amqp://guest:**@127.0.0.1:5672//" in banner
    assert amqp_env["QUORUM_VOTE_QUEUE"] in banner
