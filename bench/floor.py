"""Celery alone: the shapes of Quorum's jobs with a sleep where the LLM call would be, on a
worker started like Quorum's (`celery -A quorum.bench.floor worker`: the same Celery config,
consumer, pool and result backend), so the report can show how much of Quorum's overhead is
Celery's own floor.

A run is a job that sleeps L, then sends a chord of `votes` jobs that each sleep L, joined by a
callback: Quorum's task → vote round → tally. Runs go one at a time (`sequential`) for the
latency floor, or all at once (`burst`) for the in-flight floor: there the most sleeps at the
same time are the most LLM calls such runs could keep in flight if each cost only its jobs.
"""

from __future__ import annotations

import asyncio
import time
from functools import lru_cache
from typing import Any

import redis.asyncio
from celery import Celery, chord
from kombu import Queue

from quorum.bench.driver import run_workload
from quorum.shared.broker import celery_config
from quorum.shared.connection import Client, connect
from quorum.shared.settings import get_settings
from quorum.worker.app import chord_backend
from quorum.worker.consumer import batch_events
from quorum.worker.transport import INTAKE_TRANSPORT

__all__ = ["app", "floor", "peak_overlap"]

QUEUE = "bench.floor"


def _app() -> Celery:
    settings = get_settings()
    celery = Celery("bench-floor")
    celery.conf.update(celery_config(settings, transport=INTAKE_TRANSPORT))
    batch_events(celery)
    celery.conf.update(
        chord_backend(settings.result_backend),
        task_queues=[Queue(QUEUE)],
        task_default_queue=QUEUE,
        task_routes={},
    )
    return celery


app = _app()


@lru_cache(maxsize=1)
def _redis() -> Client:
    settings = get_settings()
    return connect(settings.redis_url, max_connections=settings.redis_max_connections)


def _sleep(seconds: float, spans: str | None) -> None:
    """Sleep like an LLM call; record when in the list `spans`, if given."""
    started = time.time()
    time.sleep(seconds)
    if spans is not None:
        _redis().rpush(spans, f"{started} {time.time()}")


@app.task(name="floor.node", ignore_result=True)
def node(seconds: float, votes: int, key: str, spans: str | None = None) -> None:
    """The task call, then its vote round."""
    _sleep(seconds, spans)
    chord([vote.si(seconds, spans) for _ in range(votes)])(done.s(key=key))


@app.task(name="floor.vote")
def vote(seconds: float, spans: str | None = None) -> bool:
    """One vote."""
    _sleep(seconds, spans)
    return True


@app.task(name="floor.done", ignore_result=True)
def done(votes: list[bool], key: str) -> None:
    """The tally: tell the waiting driver."""
    _redis().rpush(key, len(votes))


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at the same instant (an end at the instant of a start comes first)."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def _span(text: bytes | str) -> tuple[float, float]:
    start, end = text.split()
    return float(start), float(end)


async def floor(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the spec's shape, one run at a time (`sequential`) or all at once (`burst`); a run
    ends when the driver's Redis list for it gets its answer, read on a connection of its
    own, as Quorum's producer waits for a run. A burst also counts its sleeps in flight."""
    seconds, tag, votes = spec["latency"], spec["tag"], spec["config"]["votes"]
    spans = f"bench:floor:{tag}:spans" if spec["shape"] == "burst" else None
    app.conf.broker_url = spec["redis_url"]

    async def run_one(index: int) -> tuple[bool, bool]:
        key = f"bench:floor:{tag}:{index}"
        await asyncio.to_thread(node.delay, seconds, votes, key, spans)
        # The wait is longer than redis-py's default read timeout (5 s) once a burst queues.
        waiting = redis.asyncio.Redis.from_url(spec["redis_url"], socket_timeout=None)
        async with waiting as client:
            answer = await client.blpop([key], timeout=spec["timeout_s"])
        return answer is not None, answer is not None

    result = await run_workload(spec, run_one)
    if spans is None:
        return result
    async with redis.asyncio.Redis.from_url(spec["redis_url"]) as client:
        recorded = await client.lrange(spans, 0, -1)
        await client.delete(spans)
    return result | {"max_in_flight": peak_overlap([_span(text) for text in recorded])}
