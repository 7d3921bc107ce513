"""Celery configuration shared by the worker and the producer: JSON only, routes, queues,
TLS, and a Redis transport that survives a Redis restart and makes one Redis client per
connection pool. The worker's transport, which takes jobs in and sends a voting round's jobs
in batches, builds on it (`quorum.worker.transport`)."""

from __future__ import annotations

import threading
from typing import Any

import redis
from kombu import Exchange, Queue
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

from quorum.shared.connection import CLIENT_OPTIONS, DRIVER_INFO
from quorum.shared.errors import StoreError
from quorum.shared.settings import Settings

__all__ = [
    "JOB_NAMES",
    "Held",
    "HeldBack",
    "RedisChannel",
    "RedisTransport",
    "celery_config",
    "holds_back",
]

JOB_NAMES = (
    "quorum.task_node",
    "quorum.vote",
    "quorum.tally",
    "quorum.route",
    "quorum.submit",
    "quorum.start",
    "quorum.webhook",
    "quorum.advance",
)


def holds_back(broker_url: str) -> bool:
    """Whether the broker at `broker_url` goes through our Redis transport, whose publishes
    `HeldBack` can keep back (any other broker sends them at once)."""
    return broker_url.startswith(("redis://", "rediss://"))


_held = threading.local()

Held = tuple["RedisChannel", str, dict[str, Any]]
"""A held message: its channel, its queue's key, and kombu's message."""


class HeldBack:
    """The jobs this thread publishes to a Redis broker inside `with HeldBack() as held:`,
    kept back until `held.send()` sends them all in one round trip (one LPUSH per queue),
    instead of one LPUSH each as they are published.

    A voting round then costs one round trip, and its votes reach the queue at once,
    where a worker's message loop takes them in together (`_Channel._brpop_read`). And it can
    be built before the run may vote (while the task model is still answering), to be sent
    once it may. Inside another such block, the outer one holds them. Jobs never sent are
    never seen by anyone.
    """

    def __init__(self) -> None:
        self._messages: list[Held] = []

    def __enter__(self) -> HeldBack:
        if getattr(_held, "messages", None) is None:
            _held.messages = self._messages
        return self

    def __exit__(self, *_: object) -> None:
        if _held.messages is self._messages:
            _held.messages = None

    def send(self) -> None:
        """LPUSH the held jobs; `StoreError` if Redis fails (the job is retried)."""
        by_channel: dict[RedisChannel, list[tuple[str, str]]] = {}
        for channel, key, message in self._messages:
            by_channel.setdefault(channel, []).append((key, dumps(message)))
        for channel, messages in by_channel.items():
            channel.push(messages)

    @staticmethod
    def last() -> Held | None:
        """The last message held in this thread (by the outermost block), if any."""
        held = getattr(_held, "messages", None)
        return held[-1] if held else None

    @staticmethod
    def hold(message: Held) -> None:
        """Hold one more message, as if published (inside a block)."""
        _held.messages.append(message)


class RedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, which survives a Redis restart and makes its Redis client once
    per connection pool."""

    def _connparams(self, asynchronous: bool = False) -> Any:
        """Connection parameters, with the store's `DRIVER_INFO`; a broker connection error
        once the channel is closed.

        When Redis goes away, Celery closes the channel and its connection, and a job that
        finishes afterwards acks through it (and closing restores unacked messages through
        it): kombu then fails with an AttributeError, which Celery treats as unrecoverable,
        so the worker exits. As a connection error it is what it is: the worker logs it and
        reconnects, and the message, still in Redis's unacked index, comes back after the
        visibility timeout (every Quorum job is idempotent).
        """
        transport = self.connection
        if transport is None or transport.client is None:
            raise redis.ConnectionError("this broker channel is closed (connection lost)")
        return {**super()._connparams(asynchronous=asynchronous), "driver_info": DRIVER_INFO}

    def _get_pool(self, asynchronous: bool = False) -> Any:
        """The pool of the channel's publishes and acks: one that waits for a free connection
        past `max_connections`, as the store's does (`connection.connect`).

        kombu's own pool fails instead ("Too many connections"), which a worker whose threads
        outnumber its connections hits in a burst; and the recovery that follows closes the
        pool, connections in use by other threads included: their commands then failed
        half-sent (a job that had sent its voting round's jobs failed the run, or left it
        waiting for a job whose send never finished). The message loop's own pool
        (`asynchronous`, one BRPOP connection) stays kombu's."""
        if asynchronous:
            return super()._get_pool(asynchronous=True)
        params = self._connparams()
        self.keyprefix_fanout = self.keyprefix_fanout.format(db=params["db"])
        return redis.BlockingConnectionPool(timeout=CLIENT_OPTIONS["socket_timeout"], **params)

    def _create_client(self, asynchronous: bool = False) -> Any:
        """One Redis client per connection pool, not a new one per command.

        kombu builds a `redis.Redis` for every publish, acknowledgement and unacked-index
        update, and redis-py's constructor (its table of response callbacks) costs more than
        the command (docs/benchmarks.md, History). A client
        takes a connection from the pool per command and is safe to share between threads;
        a new pool (after a reconnection) gets a new client.
        """
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        cached = self.__dict__.get("_quorum_client")
        if cached is None or cached[0] is not pool:
            cached = (pool, super()._create_client())
            self.__dict__["_quorum_client"] = cached
        return cached[1]

    def push(self, messages: list[tuple[str, str]]) -> None:
        """LPUSH `(key, message)` pairs, one LPUSH per key with its messages in order (and
        MULTI/EXEC around them when they go to several keys), in one round trip
        (`HeldBack.send`)."""
        by_key: dict[str, list[str]] = {}
        for key, message in messages:
            by_key.setdefault(key, []).append(message)
        try:
            with self.conn_or_acquire() as client, client.pipeline(len(by_key) > 1) as pipe:
                for key, values in by_key.items():
                    pipe.lpush(key, *values)
                pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"the broker is unavailable: {exc}") from exc

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """LPUSH the message now, or when the `HeldBack` block holding it is sent."""
        held = getattr(_held, "messages", None)
        if held is None or "_publish_batch" in kwargs or queue in (self._expires or {}):
            super()._put(queue, message, **kwargs)
            return
        priority = self._get_message_priority(message, reverse=False)
        held.append((self, self._q_for_pri(queue, priority), message))


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, with `RedisChannel`."""

    Channel = RedisChannel


_TRANSPORT = f"{__name__}:{RedisTransport.__qualname__}"


def celery_config(settings: Settings, *, transport: str = _TRANSPORT) -> dict[str, Any]:
    """Celery settings for a Quorum worker or producer (docs/architecture.md says why each);
    `transport`: the kombu transport for a Redis broker (the worker's takes jobs in in
    batches, `quorum.worker.transport`)."""
    routes: dict[str, dict[str, Any]] = {
        "quorum.task_node": {"queue": settings.task_queue},
        "quorum.vote": {"queue": settings.vote_queue},
        "quorum.tally": {"queue": settings.control_queue},
        "quorum.route": {"queue": settings.control_queue},
        "quorum.submit": {"queue": settings.control_queue},
        "quorum.start": {"queue": settings.control_queue},
        "quorum.webhook": {"queue": settings.control_queue},
        "quorum.advance": {"queue": settings.control_queue},
    }
    if settings.broker.startswith(("amqp://", "amqps://", "pyamqp://")):
        # RabbitMQ redelivers a lost worker's unacknowledged jobs when its connection closes;
        # publisher confirms make a send return only once the broker holds the message.
        options: dict[str, Any] = {"confirm_publish": True}
    else:
        options = {
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": settings.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
            "intake_batch": settings.worker_intake_batch,
            # Each kombu channel keeps a Redis connection pool of 10 by default, and a worker's
            # threads share a channel's: past 10 at once its sends and acks fail ("Too many
            # connections"), and kombu's recovery then closes the channel's pool under the
            # threads still using it. As many as the store's, so that it never runs out.
            "max_connections": settings.redis_max_connections,
        }
    broker_tls = settings.tls_for(settings.broker) if holds_back(settings.broker) else None
    if holds_back(settings.broker):
        # No declaration before each publish: on Redis a job goes to its queue's list
        # whatever is declared (Celery sends to the anonymous exchange), and kombu's check
        # of its cache of declarations, a copy of the queue each time, was half the CPU of
        # sending a voting round (docs/benchmarks.md, History). RabbitMQ drops a message for
        # a queue not declared: there each publish declares it, as Celery does by default.
        routes = {name: {**route, "declare": []} for name, route in routes.items()}
    return {
        "broker_url": settings.broker,
        "broker_transport": transport if holds_back(settings.broker) else None,
        "broker_use_ssl": broker_tls,
        "redis_backend_use_ssl": settings.tls_for(settings.result_backend),
        # Only the raw door's answers (quorum.submit's run id) are results: a plain Redis,
        # the store's unless the store is a cluster (`Settings.result_backend`).
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Keep trying to publish through a broker restart (Celery's default gives up in 0.6 s).
        "task_publish_retry_policy": {
            "max_retries": 30,
            "interval_start": 0.1,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "worker_pool": settings.worker_pool,
        "worker_concurrency": settings.worker_concurrency,
        "broker_transport_options": options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_pool_limit": 50,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Cold shutdown (SIGQUIT, or SIGTERM with REMAP_SIGTERM=SIGQUIT as in the container)
        # first lets running jobs finish for the length of one LLM call, then re-queues the rest.
        "worker_soft_shutdown_timeout": settings.llm_timeout_s + 5,
        "result_expires": 3600,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "redis_socket_keepalive": True,
        "redis_max_connections": settings.redis_max_connections,
        "redis_retry_on_timeout": True,
        "worker_send_task_events": True,
        "task_send_sent_event": settings.task_sent_events,
        "task_queues": [Queue(name, Exchange(name), routing_key=name) for name in settings.queues],
        "task_default_queue": settings.task_queue,
        "task_routes": routes,
        "worker_redirect_stdouts_level": "INFO",
    }
