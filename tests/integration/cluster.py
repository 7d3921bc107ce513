"""Services of the cluster tests: a 3-master Redis Cluster of plain `redis-server` processes
on free loopback ports, and RabbitMQ queues of the session's own (Celery's broker cannot use a
cluster).

Without cluster support in `redis-server`/`redis-cli`, or without RabbitMQ, the tests that
need them skip, saying why; under `CI=true` they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection

from quorum.producer.stack import start_redis_cluster

AMQP_URL = os.environ.get("QUORUM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _unavailable(message: str) -> None:
    """Skip the test, or fail it under CI, where every service must be there."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs this for the cluster and broker tests: {message}")
    pytest.skip(message)


def _why_no_cluster() -> str | None:
    """None if this machine's redis-server and redis-cli can build a cluster, else why not."""
    cli = shutil.which("redis-cli")
    if shutil.which("redis-server") is None or cli is None:
        return "no redis-server and redis-cli on the PATH"
    help_text = subprocess.run([cli, "--cluster", "help"], capture_output=True, text=True)
    if "create" not in help_text.stdout + help_text.stderr:
        return "this redis-cli has no `--cluster create` (Redis 5 or newer has)"
    return None


def redis_cluster(masters: int = 3) -> Iterator[str]:
    """A Redis Cluster of `masters` masters and no replicas (`start_redis_cluster`: plain
    `redis-server --cluster-enabled yes` processes and `redis-cli --cluster create`); its
    `redis+cluster://` URL once every node says `cluster_state:ok`; stopped afterwards."""
    problem = _why_no_cluster()
    if problem is not None:
        _unavailable(problem)
    url, cluster = start_redis_cluster(masters=masters)
    try:
        yield url
    finally:
        cluster.stop()


def _amqp_problem(url: str) -> str | None:
    """None if a RabbitMQ answers at `url`, else why not."""
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def amqp_queues() -> Iterator[dict[str, str]]:
    """The broker settings of a RabbitMQ at `QUORUM_TEST_AMQP_URL` with queues of this
    session's own (sessions sharing a RabbitMQ never take each other's jobs); the queues
    are deleted afterwards."""
    problem = _amqp_problem(AMQP_URL)
    if problem is not None:
        _unavailable(f"no RabbitMQ at {AMQP_URL} ({problem}); set QUORUM_TEST_AMQP_URL")
    suffix = uuid.uuid4().hex[:8]
    env = {
        "QUORUM_BROKER_URL": AMQP_URL,
        "QUORUM_TASK_QUEUE": f"quorum.tasks.{suffix}",
        "QUORUM_VOTE_QUEUE": f"quorum.votes.{suffix}",
        "QUORUM_CONTROL_QUEUE": f"quorum.control.{suffix}",
    }
    try:
        yield env
    finally:
        with Connection(AMQP_URL) as conn:
            channel = conn.channel()
            for name in (env[key] for key in env if key.endswith("_QUEUE")):
                channel.queue_delete(name)
                channel.exchange_delete(name)
