"""Fixtures of the integration tests: a real redis-server, the LLM simulator over HTTP, and
worker processes started with the documented command `celery -A quorum.worker.app worker`.

One Redis, one simulator, one default worker and one client serve the whole session. Tests
that need other worker settings start their own worker on their own Redis (`dedicated_stack`).
Each test scripts the simulator with a `<<sim:{...}>>` directive whose `id` is unique to it,
so that the simulator's call counters and call log can be read per test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from quorum.producer import TaskClient
from quorum.producer.stack import ManagedProcess, start_redis, start_simulator, start_worker
from tests.integration.helpers import FAST_WORKER_ENV, Simulator


def redis_server() -> Iterator[str]:
    """Start a private redis-server; yield its URL; stop it afterwards."""
    url, server = start_redis()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The session's redis-server (the broker and the store)."""
    yield from redis_server()


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    """The LLM simulator: 50 ms per call; a `timeout` fault hangs 5 s; `Retry-After: 0.1`."""
    base_url, process = start_simulator(
        "--latency", "0.05", "--hang-s", "5", "--retry-after", "0.1", "--seed", "7"
    )
    try:
        yield Simulator(base_url)
    finally:
        process.stop()


def worker_env(redis_url: str, simulator: Simulator, **extra: str) -> dict[str, str]:
    """The environment of a worker on `redis_url` that calls the simulator."""
    return {
        "QUORUM_REDIS_URL": redis_url,
        "OPENAI_BASE_URL": simulator.base_url,
        "OPENAI_API_KEY": "sim",
        **FAST_WORKER_ENV,
        **extra,
    }


@pytest.fixture(scope="session")
def worker(redis_url: str, simulator: Simulator) -> Iterator[ManagedProcess]:
    """The session's default worker, started with the documented command and no flags."""
    process = start_worker(worker_env(redis_url, simulator), name="worker")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def client(redis_url: str, worker: ManagedProcess) -> Iterator[TaskClient]:
    """A producer client on the session's Redis, with the default worker running."""
    task_client = TaskClient(redis_url=redis_url)
    try:
        yield task_client
    finally:
        task_client.close()


@pytest.fixture
def scope(request: pytest.FixtureRequest) -> str:
    """A simulator directive id unique to this test."""
    return f"{request.node.name}-{uuid.uuid4().hex[:8]}"


class DedicatedStack:
    """A private Redis with workers of its own settings, sharing the session's simulator."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.redis_url, self._server = start_redis()
        self.workers: list[ManagedProcess] = []
        self.clients: list[TaskClient] = []

    @property
    def redis(self) -> redis.Redis:
        """A plain client of this stack's Redis."""
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def worker(self, *args: str, name: str = "worker", **env: str) -> ManagedProcess:
        """Start a worker with the documented command on this stack's Redis."""
        process = start_worker(worker_env(self.redis_url, self.simulator, **env), *args, name=name)
        self.workers.append(process)
        return process

    def client(self) -> TaskClient:
        """A producer client on this stack's Redis."""
        task_client = TaskClient(redis_url=self.redis_url)
        self.clients.append(task_client)
        return task_client

    def stop(self) -> None:
        """Stop every worker, close every client, stop Redis."""
        for process in self.workers:
            process.stop()
        for task_client in self.clients:
            task_client.close()
        self._server.stop()


@pytest.fixture
def dedicated_stack(simulator: Simulator) -> Iterator[DedicatedStack]:
    """A private Redis for workers started with settings of the test's own."""
    stack = DedicatedStack(simulator)
    try:
        yield stack
    finally:
        stack.stop()
