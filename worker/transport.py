"""The worker's Redis transport: its message loop takes waiting jobs in batches (the jobs a
thread publishes inside `shared.broker.HeldBack`, a voting round's jobs, go out together), and
its acks leave Redis in batches.

`celery -A quorum.worker.app worker` uses it for a Redis broker (`worker.app`); producers send
through the plain `shared.broker.RedisTransport`. It overrides kombu's private methods
`_put`, `_brpop_read` and `QoS.ack` (the version range is pinned in pyproject.toml, and
`tests/unit/test_library_guards.py` fails when they change).
"""

from __future__ import annotations

import logging
import threading
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
    """kombu's unacked index, which `lua/take.lua` writes for the messages the intake takes,
    and whose acks are removed from it in batches.

    kombu removes each ack in its own MULTI/ZREM/HDEL/EXEC, four commands in the job's thread.
    Here an ack is noted, and a thread of the channel's removes the acks of the last
    `ACK_DELAY_S` from Redis in one ZREM and one HDEL (and the channel, when it closes, those
    left). An ack that a dead worker never removed leaves its job in the unacked index: it comes
    back after the visibility timeout, as a job whose worker died before acking does, and every
    Quorum job is idempotent.
    """

    ACK_DELAY_S = 0.02
    """How long an ack waits for others to be removed with it."""

    taken = False
    """True while the intake delivers messages that `lua/take.lua` recorded as unacked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acked: list[str] = []
        self._acks_due = threading.Condition()
        self._acker: threading.Thread | None = None

    def append(self, message: Any, delivery_tag: str) -> None:
        """Note a delivered message as unacked, in Redis unless the intake did already."""
        if self.taken:
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        """Acknowledge a message now; its unacked entries go with the next batch."""
        with self._acks_due:
            self._acked.append(delivery_tag)
            if self._acker is None:
                self._acker = threading.Thread(
                    target=self._remove_acked, name="quorum-acks", daemon=True
                )
                self._acker.start()
            self._acks_due.notify()
        virtual.QoS.ack(self, delivery_tag)

    def _remove_acked(self) -> None:
        while True:
            with self._acks_due:
                self._acks_due.wait_for(lambda: bool(self._acked))
            time.sleep(self.ACK_DELAY_S)
            self.flush_acks()

    def flush_acks(self) -> None:
        """Remove the acknowledged messages from the unacked hash and index: two commands in
        one round trip. On a Redis error they stay there (and come back after the visibility
        timeout, to be skipped as done)."""
        with self._acks_due:
            tags, self._acked = self._acked, []
        if not tags:
            return
        try:
            with self.channel.conn_or_acquire() as client, client.pipeline(False) as pipe:
                pipe.zrem(self.unacked_index_key, *tags)
                pipe.hdel(self.unacked_key, *tags)
                pipe.execute()
        except (*self.channel.connection_errors, AttributeError) as exc:
            log.warning("%d acks not removed from the unacked index: %s", len(tags), exc)


class _Channel(RedisChannel):
    """Quorum's Redis channel (`RedisChannel`), which takes jobs in and sends a round's jobs
    in batches."""

    QoS = _QoS
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "intake_batch")  # type: ignore[assignment]
    intake_batch = 1
    """Most messages one wake-up of the message loop takes from a queue (transport option)."""

    def _brpop_read(self, **options: Any) -> bool:
        """Deliver the message BRPOP brought, as kombu's own does, then up to
        `intake_batch - 1` more waiting in its queue (at most half of them): one more round
        trip takes them and records them all as unacked, the first one included
        (`lua/take.lua`, one ZADD and one HSET for all).

        kombu's own reads one message per BRPOP, and records it as unacked in another round
        trip (MULTI, ZADD, HSET, EXEC): two round trips per job in the message loop's one
        thread, which must win the GIL back from hundreds of job threads after each. That
        paced how fast a worker took in a burst of jobs.
        """
        try:
            reply = self._on_poll_connection(
                lambda: self.client.parse_response(self.client.connection, "BRPOP", **options)
            )
            if not reply:
                raise Empty()
            queue = bytes_to_str(reply[0]).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            first = loads(bytes_to_str(reply[1]))
            taken = self._take(reply[0], reply[1])
            if taken is None:  # with a global key prefix: kombu's own way, one at a time
                self.connection._deliver(first, queue)
                return True
            self.qos.taken = True
            try:
                for message in (first, *taken):
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

    def _take(self, key: bytes, first: bytes) -> list[dict[str, Any]] | None:
        """Record `first`, the message BRPOP took off the queue at `key`, as unacked, and take
        more from that queue within the prefetch limit, recorded as well: one round trip.
        None with a global key prefix, which kombu adds to the keys itself."""
        if self.global_keyprefix:
            return None
        room = self.qos.can_consume_max_estimate()
        count = self.intake_batch - 1 if room is None else min(room - 1, self.intake_batch - 1)
        keys = [key, self.unacked_key, self.unacked_index_key]
        taken, dropped = self._on_poll_connection(
            lambda: self._take_script(keys, [max(count, 0), time.time(), first], client=self.client)
        )
        for item in dropped:
            log.warning("dropped a message that is not kombu's from %r: %.200r", key, item)
        return [loads(bytes_to_str(item)) for item in taken]

    @cached_property
    def _take_script(self) -> Any:
        return self.client.register_script(lua("take"))

    def close(self) -> None:
        """Remove the acks not yet removed, then close as kombu does (which puts back the
        messages delivered and never acknowledged)."""
        if self._qos is not None:
            self._qos.flush_acks()
        super().close()


class IntakeRedisTransport(kombu_redis.Transport):
    """The worker's Redis transport (see `_Channel`)."""

    Channel = _Channel


INTAKE_TRANSPORT = f"{__name__}:{IntakeRedisTransport.__qualname__}"
"""The transport's path, as Celery's `broker_transport` setting takes it."""
