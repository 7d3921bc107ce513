"""The store's part that keeps webhook deliveries (the protocol: `shared.webhooks`), of runs
and of workflows alike.

A delivery is named by its target: a run's id, or `wf:<id>` for a workflow's
(`workflow_delivery`). Its state is a field of the target's own hash (the run's, or the
workflow's, so on the target's hash-tag slot): `callback` holds the URL, and `webhook` is set
`pending` by the script that ends the target (`lua/transition.lua`, `lua/wf_finish.lua`),
then moves by compare-and-set to `delivered` or `failed` (`lua/settle_webhook.lua`). The
schedule `Keys.webhooks` says when the sweep should next send `quorum.webhook` for each
pending one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any, cast

from redis.commands.core import Script

from quorum.shared.scripts import RedisScripts, mapped
from quorum.shared.settings import Settings

__all__ = ["DeliveryStore", "delivered_workflow", "lease_s", "workflow_delivery"]

log = logging.getLogger(__name__)

_WORKFLOW = "wf:"
_LEASE_MARGIN_S = 10.0


def workflow_delivery(workflow_id: str) -> str:
    """The delivery target of a workflow's webhook (`wf:<id>`; a run's is its id)."""
    return f"{_WORKFLOW}{workflow_id}"


def delivered_workflow(target: str) -> str | None:
    """The workflow a delivery target names, or None for a run's."""
    return target.removeprefix(_WORKFLOW) if target.startswith(_WORKFLOW) else None


def lease_s(settings: Settings) -> float:
    """How long a delivery is left to the job that holds it before the sweep sends it again."""
    return settings.webhook_timeout_s + _LEASE_MARGIN_S


class DeliveryStore(RedisScripts):
    """Schedules and settles webhook deliveries."""

    on_webhook: Callable[[str], None] | None = None
    """Sends `quorum.webhook` for a delivery target (set by whoever can send jobs: a worker, a
    client); None: the sweep sends it."""

    webhook_lease_s: float = 20.0
    """How long after a target's end the sweep waits before it sends the delivery again."""

    @cached_property
    def _settle_webhook(self) -> Script:
        return self.script("settle_webhook")

    def _hooked(self, target: str) -> tuple[str, str]:
        """The hash that holds the target's delivery, and its field of the end time."""
        workflow_id = delivered_workflow(target)
        if workflow_id is None:
            return self.keys.run(target), "updated_at"
        return self.keys.workflow(workflow_id), "finished_at"

    def _webhook_recorded(self, pipe: Any, target: str) -> None:
        """Schedule the delivery of a target that has just ended with one, through `pipe`."""
        pipe.zadd(self.keys.webhooks(), {target: time.time() + self.webhook_lease_s})
        pipe.expire(self.keys.webhooks(), self.ttl_s)

    @mapped
    def webhook_recorded(self, target: str) -> None:
        """Schedule and send the delivery of a target whose end has just recorded one."""
        with self.redis.pipeline(transaction=False) as pipe:
            self._webhook_recorded(pipe, target)
            pipe.execute()
        self.send_webhook(target)

    def send_webhook(self, target: str) -> None:
        """Send the delivery job now, if this process can; the sweep sends it otherwise."""
        if self.on_webhook is None:
            return
        try:
            self.on_webhook(target)
        except Exception as exc:  # the schedule holds it: the sweep sends it later
            log.warning("%s: webhook job not sent (the sweep will): %s", target, exc)

    @mapped
    def pending_webhook(self, target: str) -> tuple[str, float] | None:
        """The callback URL and end time of the target's pending delivery, if it has one."""
        key, ended_field = self._hooked(target)
        state, url, ended = self.redis.hmget(key, ["webhook", "callback", ended_field])
        if state != "pending" or not url:
            return None
        return str(url), float(ended or 0)

    @mapped
    def schedule_webhook(self, target: str, at: float) -> None:
        """Have the sweep send the target's delivery again at `at` (epoch seconds) unless it
        is settled before."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.webhooks(), {target: at})
            pipe.expire(self.keys.webhooks(), self.ttl_s)
            pipe.execute()

    @mapped
    def unschedule_webhook(self, target: str) -> None:
        """Drop the target from the schedule (nothing pending)."""
        self.redis.zrem(self.keys.webhooks(), target)

    @mapped
    def settle_webhook(self, target: str, outcome: str) -> bool:
        """Move the delivery from `pending` to `outcome` (`delivered` or `failed`) by
        compare-and-set, and unschedule it; False if it was not pending (settled already)."""
        key, _ = self._hooked(target)
        moved = self._script(self._settle_webhook, [key], [outcome, self.ttl_s])
        self.redis.zrem(self.keys.webhooks(), target)
        return bool(moved)

    @mapped
    def due_webhooks(self, now: float, *, limit: int = 500) -> list[str]:
        """Targets whose delivery should be sent again by now, the longest due first."""
        return cast(
            list[str], self.redis.zrangebyscore(self.keys.webhooks(), "-inf", now, 0, limit)
        )

    @mapped
    def recover_webhook(self, target: str) -> bool:
        """Schedule an ended target's pending delivery if the step after its end did not (its
        process died in between); True if it did."""
        if self.pending_webhook(target) is None:
            return False
        added = self.redis.zadd(self.keys.webhooks(), {target: time.time()}, nx=True)
        self.redis.expire(self.keys.webhooks(), self.ttl_s)
        return bool(added)
