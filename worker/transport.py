"""The worker's Redis transport: its message loop takes waiting jobs in batches (the jobs a
thread publishes inside `shared.broker.HeldBack`, a voting round's jobs, go out together).

`celery -A quorum.worker.app worker` uses it for a Redis broker (`worker.app`); producers send
through the plain `shared.broker.RedisTransport`. It overrides kombu's private methods
`_put` and `_brpop_read` (the version range is pinned in pyproject.toml, and
`tests/unit/test_library_guards.py` fails when they change).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cached_property
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from quorum.shared.broker import RedisChannel
from quorum.shared.scripts import lua

__all__ = ["INTAKE_TRANSPORT", "IntakeRedisTransport"]

log = logging.getLogger(__name__)


class _QoS(kombu_redis.QoS):
    """kombu's unacked index, which `_Channel._brpop_read` may have written already."""

    taken = False
    """True while the intake delivers messages that `lua/take.lua` recorded as unacked."""

    def append(self, message: Any, delivery_tag: str) -> None:
        """Note a delivered message as unacked, in Redis unless the intake did already."""
        if self.taken:
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)


class _Channel(RedisChannel):
    """Quorum's Redis channel (`RedisChannel`), which takes jobs in and sends a round's jobs
    in batches."""

    QoS = _QoS
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "intake_batch")  # type: ignore[assignment]
    intake_batch = 1
    """Most messages one wake-up of the message loop takes from a queue (transport option)."""

    def _brpop_read(self, **options: Any) -> bool:
        """Deliver the message BRPOP brought, as kombu's own does, then up to
        `intake_batch - 1` more waiting in its queue (at most half of them), taken in one more
        round trip (`lua/take.lua`).

        kombu's own reads one message per BRPOP, and records it as unacked in another round
        trip: two round trips per job in the message loop's one thread, which must win the
        GIL back from hundreds of job threads after each. That paced how fast a worker took
        in a burst of jobs.
        """
        try:
            reply = self._on_poll_connection(
                lambda: self.client.parse_response(self.client.connection, "BRPOP", **options)
            )
            if not reply:
                raise Empty()
            queue = bytes_to_str(reply[0]).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            self.connection._deliver(loads(bytes_to_str(reply[1])), queue)
            taken = self._take(reply[0])
            self.qos.taken = True
            try:
                for message in taken:
                    self.connection._deliver(message, queue)
            finally:
                self.qos.taken = False
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu's own
            self._flush_brpop_reauth()

    def _on_poll_connection(self, call: Callable[[], Any]) -> Any:
        """`call`, on the BRPOP connection: dropped on a connection error, as kombu does (the
        next poll reconnects)."""
        try:
            return call()
        except self.connection_errors:
            self.client.connection.disconnect()
            raise

    def _take(self, key: bytes) -> list[dict[str, Any]]:
        """More messages from the queue at `key`, within the prefetch limit, recorded as
        unacked (none with a global key prefix, which kombu adds to the keys itself)."""
        room = self.qos.can_consume_max_estimate()
        count = self.intake_batch - 1 if room is None else min(room, self.intake_batch - 1)
        if count <= 0 or self.global_keyprefix:
            return []
        keys = [key, self.unacked_key, self.unacked_index_key]
        taken, dropped = self._on_poll_connection(
            lambda: self._take_script(keys, [count, time.time()], client=self.client)
        )
        for item in dropped:
            log.warning("dropped a message that is not kombu's from %r: %.200r", key, item)
        return [loads(bytes_to_str(item)) for item in taken]

    @cached_property
    def _take_script(self) -> Any:
        return self.client.register_script(lua("take"))


class IntakeRedisTransport(kombu_redis.Transport):
    """The worker's Redis transport (see `_Channel`)."""

    Channel = _Channel


INTAKE_TRANSPORT = f"{__name__}:{IntakeRedisTransport.__qualname__}"
"""The transport's path, as Celery's `broker_transport` setting takes it."""
