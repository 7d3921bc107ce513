"""Redis (append-only) restarted in the middle of the runs: workers and producers reconnect
by themselves; no run is lost or stuck."""

from __future__ import annotations

import threading
import time

import pytest

from tests.faults.harness import Fleet, evaluate, submit_mix, wait_terminal

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


def test_redis_restart_loses_no_run(soak, record):
    runs_n = 210 if soak else 56
    restarts = 3 if soak else 1
    fleet = Fleet("--latency", "uniform:0.05:0.4", "--seed", "17")
    try:
        started = time.monotonic()
        pace = 0.1
        span = runs_n * pace

        def restart() -> None:
            for _ in range(restarts):
                time.sleep(span / (restarts + 1))
                fleet.restart_redis(down_s=1.0)

        thread = threading.Thread(target=restart, daemon=True)
        thread.start()
        runs = submit_mix(fleet, runs_n, "restart", pace_s=pace)
        thread.join()
        wait_terminal(fleet, runs, timeout_s=120)
        figures = evaluate(
            fleet,
            "Redis restart (AOF)",
            runs,
            started=started,
            faults=f"{restarts} restart(s), 1 s down each",
        )
        record.append(figures)
        figures.assert_clean()
    finally:
        fleet.stop()
