"""Workers SIGKILLed at random moments (in task calls, votes, tallies) and replaced: with the
default store and broker (one Redis), and with the store on a Redis Cluster and the broker on
RabbitMQ."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.faults.harness import Fleet, evaluate, killer, submit_mix, wait_terminal
from tests.integration.cluster import amqp_queues, redis_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


def test_worker_deaths_lose_nothing_and_count_no_vote_twice(soak, record):
    fleet = Fleet("--latency", "uniform:0.05:0.4", "--seed", "11", workers=2)
    _kill_workers_while_runs_fly(fleet, soak, record, "worker SIGKILL + replace")


@pytest.fixture
def cluster_store() -> Iterator[str]:
    """A 3-master Redis Cluster of this case's own."""
    yield from redis_cluster(masters=3)


@pytest.fixture
def amqp_env() -> Iterator[dict[str, str]]:
    """RabbitMQ queues of this case's own: Celery's broker cannot use a cluster."""
    yield from amqp_queues()


def test_worker_deaths_on_a_cluster_store_lose_nothing(soak, record, cluster_store, amqp_env):
    fleet = Fleet(
        "--latency", "uniform:0.05:0.4", "--seed", "13", store_url=cluster_store, **amqp_env
    )
    _kill_workers_while_runs_fly(
        fleet, soak, record, "worker SIGKILL + replace, Redis Cluster store, RabbitMQ broker"
    )


def _kill_workers_while_runs_fly(fleet: Fleet, soak: bool, record: list, case: str) -> None:
    """SIGKILL a random worker every second or so (and replace it) while a mix of runs is
    in flight; every run must end right, nothing lost, stuck or counted twice."""
    runs_n = 210 if soak else 56
    try:
        started = time.monotonic()
        stop, kills = threading.Event(), []
        thread = killer(fleet, stop, every_s=(0.6, 1.6), seed=5, kills=kills)
        try:
            runs = submit_mix(fleet, runs_n, "deaths", pace_s=0.1 if soak else 0.15)
            wait_terminal(fleet, runs, timeout_s=20)  # keep killing while runs are in flight
        finally:
            stop.set()
            thread.join()
        wait_terminal(fleet, runs, timeout_s=90)
        figures = evaluate(
            fleet,
            case,
            runs,
            started=started,
            faults=f"{len(kills)} worker kills",
        )
        record.append(figures)
        figures.assert_clean()
    finally:
        fleet.stop()
