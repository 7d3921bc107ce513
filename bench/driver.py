"""One workload in its own process, so that its CPU and memory are measured apart:
`python -m quorum.bench.driver '<spec JSON>'`.

The spec names the engine (`quorum`: Quorum's producer client, which sends the runs to the
workers; `reference`: py-ai-toolkit's in-process `run_task`; `celery`: Celery alone, from
`quorum.bench.floor`), how many runs, whether they go one at a time (`sequential`) or all at once
(`burst`), or all at once before any worker runs (`queued`, Quorum only: the driver prints
`QUEUED` once it has submitted them all, and the runner then starts the worker), and the
validation config. The driver prints `BEGIN` when the measured part starts, `DONE <n>` as its
runs finish (`quorum.bench.progress`), and `RESULT <JSON>` when it ends: per-run latencies and
outcomes, wall time, this process's CPU seconds and peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from quorum.bench.progress import Ticker
from quorum.bench.workloads import PURCHASE_SCHEMA, TEMPLATE, message

__all__ = ["Outcome", "main", "run_workload"]

Outcome = tuple[float, bool, bool]
"""A run's latency (s), whether its output was validated, whether validation passed."""

RunOne = Callable[[int], Awaitable[tuple[bool, bool]]]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _timed(run_one: RunOne, index: int, ticker: Ticker) -> Outcome:
    started = time.perf_counter()
    validated, passed = await run_one(index)
    latency = time.perf_counter() - started
    ticker.tick()
    return latency, validated, passed


async def run_workload(spec: dict[str, Any], run_one: RunOne) -> dict[str, Any]:
    """Warm up, then run the measured runs one at a time or all at once, telling the runs
    finished as they finish (`DONE <n>`, `quorum.bench.progress`)."""
    for index in range(spec.get("warmup", 0)):
        await run_one(-1 - index)
    print("BEGIN", flush=True)
    cpu, started = _cpu_s(), time.perf_counter()
    runs, ticker = range(spec["runs"]), Ticker(spec["runs"])
    if spec["shape"] == "sequential":
        outcomes = [await _timed(run_one, i, ticker) for i in runs]
    else:
        outcomes = list(await asyncio.gather(*(_timed(run_one, i, ticker) for i in runs)))
    wall, cpu = time.perf_counter() - started, _cpu_s() - cpu
    return {
        "latencies": [o[0] for o in outcomes],
        "validated": [o[1] for o in outcomes],
        "passed": [o[2] for o in outcomes],
        "wall_s": wall,
        "cpu_s": cpu,
        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


async def quorum(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs through Quorum's asyncio producer client (`AsyncTaskClient`)."""
    from quorum.producer import AsyncTaskClient
    from quorum.shared.errors import RunTimeoutError, StoreError, TaskFailedError

    client = AsyncTaskClient(redis_url=spec["redis_url"])
    unsent = spec["runs"] if spec["shape"] == "queued" else None

    async def run_one(index: int) -> tuple[bool, bool]:
        nonlocal unsent
        run = await client.submit(
            template=TEMPLATE,
            response_model=PURCHASE_SCHEMA,
            kwargs={"message": message(spec["tag"], index)},
            config=spec["config"],
        )
        if unsent is not None and index >= 0:
            unsent -= 1
            if not unsent:
                print("QUEUED", flush=True)
        deadline = time.monotonic() + spec["timeout_s"]
        while True:  # a wait cut short by a Redis read timeout is resumed, not lost
            try:
                await run.result(max(deadline - time.monotonic(), 0.001))
            except TaskFailedError as exc:
                return "validation failed" in str(exc), False
            except RunTimeoutError:
                return False, False
            except StoreError:
                if time.monotonic() < deadline:
                    continue
                return False, False
            return True, True

    try:
        return await run_workload(spec, run_one)
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    """Run the workload the spec describes and print its result."""
    spec = json.loads((argv or sys.argv[1:])[0])
    if spec["engine"] == "quorum":
        result = asyncio.run(quorum(spec))
    elif spec["engine"] == "celery":
        from quorum.bench.floor import floor

        result = asyncio.run(floor(spec))
    else:
        from quorum.bench.reference import reference

        result = asyncio.run(reference(spec))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
