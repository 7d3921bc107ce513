"""Workers SIGKILLed at random moments (in task calls, votes, tallies) and replaced."""

from __future__ import annotations

import threading
import time

import pytest

from tests.faults.harness import Fleet, evaluate, killer, submit_mix, wait_terminal

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


def test_worker_deaths_lose_nothing_and_count_no_vote_twice(soak, record):
    runs_n = 210 if soak else 56
    fleet = Fleet("--latency", "uniform:0.05:0.4", "--seed", "11", workers=2)
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
            "worker SIGKILL + replace",
            runs,
            started=started,
            faults=f"{len(kills)} worker kills",
        )
        record.append(figures)
        figures.assert_clean()
    finally:
        fleet.stop()
