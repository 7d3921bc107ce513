"""Every job delivered twice (simulated redelivery) changes nothing."""

from __future__ import annotations

import time

import pytest

from tests.faults import duplicator
from tests.faults.harness import Fleet, evaluate, submit_mix, wait_terminal

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


def test_every_job_delivered_twice_changes_nothing(soak, record):
    runs_n = 210 if soak else 42
    fleet = Fleet(
        "--latency",
        "uniform:0.02:0.2",
        "--seed",
        "13",
        worker_args=("-I", "tests.faults.duplicator"),
        QUORUM_STALL_AFTER_S="30",
    )
    duplicator.publish_to(fleet.redis_url)
    try:
        started = time.monotonic()
        runs = submit_mix(fleet, runs_n, "dup", pace_s=0.05)
        wait_terminal(fleet, runs, timeout_s=120)
        time.sleep(2)  # let the last duplicates arrive: they must change nothing either
        received, repeats = fleet.deliveries()
        figures = evaluate(
            fleet,
            "every job delivered twice",
            runs,
            started=started,
            faults=f"{repeats} of {received} deliveries were repeats",
        )
        record.append(figures)
        figures.assert_clean()
        assert repeats >= received // 3  # the duplicates did arrive
    finally:
        duplicator.publish_to("")
        fleet.stop()
