"""The raw Celery door: `quorum.submit(spec)` on the control queue, for producers in any
language with any Celery client. `spec` is the JSON body of `POST /v1/runs` (an ad-hoc task,
or `{"task": name, "kwargs": {...}}`); the job returns the run id. A refused spec fails the
job with a `ValueError` naming the problem, and nothing is written. See
docs/defined-tasks.md for a producer that does not import Quorum."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Task

from quorum.producer.client import TaskClient
from quorum.producer.submission import submit_request
from quorum.shared.errors import InvalidRequestError
from quorum.shared.settings import get_settings
from quorum.worker.app import app

__all__ = ["submit"]


@lru_cache(maxsize=1)
def _client() -> TaskClient:
    """One client per worker process, made on first use."""
    return TaskClient(settings=get_settings())


@app.task(name="quorum.submit", bind=True, max_retries=0, throws=(ValueError,))
def submit(self: Task, spec: Any) -> str:
    """Submit a run from its JSON request; return its id."""
    try:
        return submit_request(_client(), spec).id
    except InvalidRequestError as exc:
        # A plain ValueError: a client without Quorum's code rebuilds it as what it is.
        raise ValueError(str(exc)) from None
