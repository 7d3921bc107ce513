"""The Celery app. `celery -A quorum.worker.app worker` starts a worker that is ready as it is:
threads pool with concurrency in the hundreds, every Quorum queue, JSON only, late acks."""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery
from celery.backends.redis import RedisBackend

from quorum.shared.broker import celery_config
from quorum.shared.settings import Settings, get_settings
from quorum.worker.consumer import batch_events
from quorum.worker.transport import INTAKE_TRANSPORT

__all__ = ["ChordResultBackend", "app", "chord_backend", "create_app"]


class ChordResultBackend(RedisBackend):
    """Celery's Redis result backend, minus its pub/sub subscriptions to task results.

    Quorum's own jobs store no result and its voting rounds are no chords: the backend only
    keeps what a Celery client of the raw door waits for (`quorum.submit`'s run id), and any
    chord a user's own code builds; no worker ever waits on a Celery result (the store is the
    source of truth). Yet the stock backend subscribes to the result channel of every job a
    worker launches and, with no one waiting, never unsubscribes (celery#4824): one channel
    per job, forever, and the result objects with them.

    With nothing subscribed, the backend is only a redis-py client, which threads can share:
    `chord_backend` makes it one per process, and past `QUORUM_REDIS_MAX_CONNECTIONS` a
    thread waits for a free connection instead of failing.
    """

    @property
    def ConnectionPool(self) -> type[redis.ConnectionPool]:
        """Wait for a free connection past the limit, as the store's pool does."""
        return redis.BlockingConnectionPool

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        """Track nothing: no one in a worker waits for a result."""
        return result

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Subscribe to nothing when a job is sent."""


def chord_backend(redis_url: str) -> dict[str, Any]:
    """Celery's result backend settings for one `ChordResultBackend` per process on that Redis.

    Celery makes a backend per thread unless told it is thread-safe, and a Redis backend
    costs a connection pool and redis-py's look-up of its own version (importlib.metadata,
    which walks sys.path): a thread pool's first chords spent much of a worker's GIL on them,
    just as the worker took in a burst of runs (docs/benchmarks.md, History).
    """
    url = f"{ChordResultBackend.__module__}:{ChordResultBackend.__qualname__}+{redis_url}"
    return {"result_backend": url, "result_backend_thread_safe": True}


def create_app(settings: Settings) -> Celery:
    """A Celery app configured for Quorum's jobs."""
    jobs = ["quorum.worker.jobs", "quorum.worker.definitions", "quorum.worker.submit"]
    celery = Celery("quorum", include=jobs)
    celery.conf.imports = settings.import_modules  # where the worker's defined tasks live
    celery.conf.update(celery_config(settings, transport=INTAKE_TRANSPORT))
    batch_events(celery)
    if settings.result_backend.startswith(("redis://", "rediss://")):
        celery.conf.update(chord_backend(settings.result_backend))
    return celery


app = create_app(get_settings())
