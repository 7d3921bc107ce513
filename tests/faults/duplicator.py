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


def publish_to(url: str) -> None:
    """Double the messages this process publishes, on the broker at `url`."""
    _state["url"] = url


def duplicates_sent() -> int:
    """How many duplicates this process has published."""
    return int(_state["sent"])


def _publish(
    body: Any, exchange: str, routing_key: str, headers: dict[str, Any], properties: dict[str, Any]
) -> None:
    with _lock:
        if _state["conn"] is None:
            _state["conn"] = kombu.Connection(_state["url"])
        producer = _state["conn"].Producer(serializer="json")
        props = {
            k: v
            for k, v in properties.items()
            if k in ("correlation_id", "reply_to", "priority", "delivery_mode")
        }
        producer.publish(
            body, exchange=exchange, routing_key=routing_key, headers=headers, retry=True, **props
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
    threading.Timer(_rng.uniform(0, 1.5), _publish, args=args).start()
