"""The store's part that keeps webhook deliveries (the protocol: `shared.webhooks`).

A run's delivery state is its hash's `webhook` field: `pending` (set by `lua/transition.lua`
in the step that ends a run with a `callback` field), then `delivered` or `failed`. The
schedule `Keys.webhooks` says when the sweep should next send `quorum.webhook` for each
pending one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, cast

from quorum.shared.scripts import RedisScripts, mapped

__all__ = ["DeliveryStore"]

log = logging.getLogger(__name__)


class DeliveryStore(RedisScripts):
    """Schedules and settles webhook deliveries."""

    on_webhook: Callable[[str], None] | None = None
    """Sends `quorum.webhook` for a run (set by whoever can send jobs: a worker, a client);
    None: the sweep sends it."""

    webhook_lease_s: float = 20.0
    """How long after a run's end the sweep waits before it sends the delivery again."""

    def _webhook_recorded(self, pipe: Any, run_id: str) -> None:
        """Schedule the delivery of a run that has just ended with one, through `pipe`."""
        pipe.zadd(self.keys.webhooks(), {run_id: time.time() + self.webhook_lease_s})
        pipe.expire(self.keys.webhooks(), self.ttl_s)

    def send_webhook(self, run_id: str) -> None:
        """Send the delivery job now, if this process can; the sweep sends it otherwise."""
        if self.on_webhook is None:
            return
        try:
            self.on_webhook(run_id)
        except Exception as exc:  # the schedule holds it: the sweep sends it later
            log.warning("run %s: webhook job not sent (the sweep will): %s", run_id, exc)

    @mapped
    def pending_webhook(self, run_id: str) -> tuple[str, float] | None:
        """The callback URL and end time of the run's pending delivery, if it has one."""
        state, url, ended = self.redis.hmget(
            self.keys.run(run_id), ["webhook", "callback", "updated_at"]
        )
        if state != "pending" or not url:
            return None
        return str(url), float(ended or 0)

    @mapped
    def schedule_webhook(self, run_id: str, at: float) -> None:
        """Have the sweep send the run's delivery again at `at` (epoch seconds) unless it is
        settled before."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.webhooks(), {run_id: at})
            pipe.expire(self.keys.webhooks(), self.ttl_s)
            pipe.execute()

    @mapped
    def unschedule_webhook(self, run_id: str) -> None:
        """Drop the run from the schedule (nothing pending)."""
        self.redis.zrem(self.keys.webhooks(), run_id)

    @mapped
    def settle_webhook(self, run_id: str, outcome: str) -> None:
        """Record the delivery's outcome (`delivered` or `failed`) and unschedule it."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.run(run_id), "webhook", outcome)
            pipe.expire(self.keys.run(run_id), self.ttl_s)
            pipe.zrem(self.keys.webhooks(), run_id)
            pipe.execute()

    @mapped
    def due_webhooks(self, now: float, *, limit: int = 500) -> list[str]:
        """Runs whose delivery should be sent again by now, the longest due first."""
        return cast(
            list[str], self.redis.zrangebyscore(self.keys.webhooks(), "-inf", now, 0, limit)
        )

    @mapped
    def recover_webhook(self, run_id: str) -> bool:
        """Schedule an ended run's pending delivery if the step after its end did not (its
        process died in between); True if it did."""
        if self.pending_webhook(run_id) is None:
            return False
        added = self.redis.zadd(self.keys.webhooks(), {run_id: time.time()}, nx=True)
        self.redis.expire(self.keys.webhooks(), self.ttl_s)
        return bool(added)
