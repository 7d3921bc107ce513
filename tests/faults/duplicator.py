"""Simulated redelivery: every job message published in this process is published a second
time, unchanged (same id, same body, same headers), after a random delay of up to 1.5 s.

Workers load it with Celery's own `--include tests.faults.duplicator`; the test process
imports it and calls `publish_to(broker_url)` so that submitted jobs are doubled too.
"""

from __future__ import annotations

import os
import random
import threading
from typing import Any

import kombu
from celery.signals import before_task_publish

_lock = threading.Lock()
_state: dict[str, Any] = {"url": os.environ.get("QUORUM_REDIS_URL"), "conn": None, "sent": 0}
_rng = random.Random(3)
# A duplicate whose broker is gone (its test over) is dropped after these tries rather than
# retried for ever: a publish that never returns would keep the process from exiting.
_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.2}


def publish_to(url: str) -> None:
    """Double the messages this process publishes, on the broker at `url` ('' stops it)."""
    with _lock:
        _state["url"] = url
        if _state["conn"] is not None:  # a connection to the last test's broker
            _state["conn"].release()
            _state["conn"] = None


def duplicates_sent() -> int:
    """How many duplicates this process has published."""
    return int(_state["sent"])


def _publish(
    body: Any, exchange: str, routing_key: str, headers: dict[str, Any], properties: dict[str, Any]
) -> None:
    with _lock:
        if not _state["url"]:  # the test that sent it has ended
            return
        if _state["conn"] is None:
            _state["conn"] = kombu.Connection(_state["url"])
        producer = _state["conn"].Producer(serializer="json")
        props = {
            k: v
            for k, v in properties.items()
            if k in ("correlation_id", "reply_to", "priority", "delivery_mode")
        }
        producer.publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            headers=headers,
            retry=True,
            retry_policy=_RETRY_POLICY,
            **props,
        )
        _state["sent"] += 1


@before_task_publish.connect
def _twice(
    sender: str | None = None,
    body: Any = None,
    exchange: str = "",
    routing_key: str = "",
    headers: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    if not _state["url"] or not (sender or "").startswith("quorum."):
        return
    args = (body, exchange or routing_key, routing_key, dict(headers or {}), dict(properties or {}))
    timer = threading.Timer(_rng.uniform(0, 1.5), _publish, args=args)
    timer.daemon = True  # a duplicate still waiting when the tests end must not hold them up
    timer.start()
