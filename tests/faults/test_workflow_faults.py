"""Workflows (five nodes each, one a map) under worker SIGKILLs, a Redis restart, and every
job delivered twice: every workflow ends right, no node run is created twice, no task model
is called more than once per attempt beyond the calls in flight at a kill."""

from __future__ import annotations

import threading
import time

import pytest

from tests.faults import duplicator
from tests.faults.harness import Fleet, killer
from tests.faults.workflows import evaluate, submit, wait_ended

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


def test_workflows_survive_worker_kills_and_a_redis_restart(soak, record):
    count = 100 if soak else 12
    fleet = Fleet("--latency", "uniform:0.05:0.3", "--seed", "23", workers=2)
    try:
        started = time.monotonic()
        stop, kills = threading.Event(), []
        thread = killer(fleet, stop, every_s=(1.0, 2.5), seed=9, kills=kills)
        restart = threading.Timer(3.0, fleet.restart_redis)
        restart.start()
        try:
            sent = submit(fleet, count, "wfkill", pace_s=0.3)
            wait_ended(fleet, sent, timeout_s=20)
        finally:
            stop.set()
            thread.join()
            restart.join()
        wait_ended(fleet, sent, timeout_s=120)
        figures, extra = evaluate(
            fleet,
            "workflows: worker SIGKILL + Redis restart",
            sent,
            started=started,
            faults=f"{len(kills)} worker kills, 1 Redis restart",
        )
        figures.faults += (
            f"; {sum(extra)} task call(s) beyond one per attempt, in {len(extra)} run(s)"
        )
        record.append(figures)
        figures.assert_clean()
        # A kill (or the restart) costs a run at most its one call in flight.
        assert max(extra, default=0) <= len(kills) + 1
    finally:
        fleet.stop()


def test_workflows_with_every_job_delivered_twice(soak, record):
    count = 100 if soak else 12
    fleet = Fleet(
        "--latency",
        "uniform:0.02:0.2",
        "--seed",
        "29",
        worker_args=("-I", "tests.faults.duplicator"),
        QUORUM_STALL_AFTER_S="30",
    )
    duplicator.publish_to(fleet.redis_url)
    try:
        started = time.monotonic()
        sent = submit(fleet, count, "wfdup", pace_s=0.1)
        wait_ended(fleet, sent, timeout_s=120)
        time.sleep(2)  # the last duplicates arrive: they must change nothing either
        received, repeats = fleet.deliveries()
        figures, extra = evaluate(
            fleet,
            "workflows: every job delivered twice",
            sent,
            started=started,
            faults=f"{repeats} of {received} deliveries were repeats",
        )
        figures.faults += (
            f"; {sum(extra)} task call(s) beyond one per attempt, in {len(extra)} run(s)"
        )
        record.append(figures)
        figures.assert_clean()
        assert extra == []  # a duplicate task job finds its attempt's call lease held
        assert repeats >= received // 3
    finally:
        duplicator.publish_to("")
        fleet.stop()
