"""Celery alone: the shapes of Quorum's jobs with a sleep where the LLM call would be, on a
worker started like Quorum's (`celery -A bench.floor worker`: the same Celery config, pool and
result backend), so the report can show how much of Quorum's overhead is Celery's own floor.

- `pipeline`: a job sleeps L, then sends a chord of `votes` jobs that each sleep L, joined by
  a callback: Quorum's task → vote round → tally, one run at a time.
- `hold`: jobs that each sleep L, all sent at once; the most that slept at the same time is
  the most LLM calls a worker could keep in flight if each cost nothing but its job.
"""

from __future__ import annotations

import asyncio
import time
from functools import lru_cache
from typing import Any

import redis.asyncio
from celery import Celery, chord
from kombu import Queue

from bench.driver import run_workload
from shared.broker import celery_config
from shared.settings import get_settings
from shared.store import connect
from worker.app import ChordResultBackend

__all__ = ["app", "floor", "peak_overlap"]

QUEUE = "bench.floor"


def _app() -> Celery:
    settings = get_settings()
    celery = Celery("bench-floor")
    celery.conf.update(celery_config(settings))
    backend = f"{ChordResultBackend.__module__}:{ChordResultBackend.__qualname__}"
    celery.conf.update(
        result_backend=f"{backend}+{settings.redis_url}",
        task_queues=[Queue(QUEUE)],
        task_default_queue=QUEUE,
        task_routes={},
    )
    return celery


app = _app()


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    settings = get_settings()
    return connect(settings.redis_url, max_connections=settings.redis_max_connections)


@app.task(name="floor.node", ignore_result=True)
def node(seconds: float, votes: int, key: str) -> None:
    """The task call, then its vote round."""
    time.sleep(seconds)
    chord([vote.si(seconds) for _ in range(votes)])(done.s(key=key))


@app.task(name="floor.vote")
def vote(seconds: float) -> bool:
    """One vote."""
    time.sleep(seconds)
    return True


@app.task(name="floor.done", ignore_result=True)
def done(votes: list[bool], key: str) -> None:
    """The tally: tell the waiting driver."""
    _redis().rpush(key, len(votes))


@app.task(name="floor.hold", ignore_result=True)
def hold(seconds: float, key: str) -> None:
    """Sleep like an LLM call; record when."""
    started = time.time()
    time.sleep(seconds)
    _redis().rpush(key, f"{started} {time.time()}")


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at the same instant (an end at the instant of a start comes first)."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


async def floor(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the spec's shape: `pipeline` runs one at a time (`sequential`), or `hold` jobs
    all at once (`burst`); a run ends when the driver's Redis list for it gets its answer,
    read on a connection of its own, as Quorum's producer waits for a run."""
    seconds, tag = spec["latency"], spec["tag"]
    spans: list[tuple[float, float]] = []
    app.conf.broker_url = spec["redis_url"]

    pipeline = spec["shape"] == "sequential"

    async def run_one(index: int) -> tuple[bool, bool]:
        key = f"bench:floor:{tag}:{index}"
        if pipeline:
            await asyncio.to_thread(node.delay, seconds, spec["config"]["votes"], key)
        else:
            await asyncio.to_thread(hold.delay, seconds, key)
        async with redis.asyncio.Redis.from_url(spec["redis_url"]) as client:
            answer = await client.blpop([key], timeout=spec["timeout_s"])
        if answer is not None and not pipeline:
            start, end = answer[1].split()
            spans.append((float(start), float(end)))
        return answer is not None, answer is not None

    result = await run_workload(spec, run_one)
    return result | {"max_in_flight": peak_overlap(spans)} if spans else result
