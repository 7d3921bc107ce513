"""Connections to Redis: the one client the store (and the broker's channels) use, which
reconnects by itself, and a quick probe that says at once when Redis does not answer."""

from __future__ import annotations

from typing import Any

import redis
from redis import DriverInfo
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from quorum.shared.errors import StoreError

__all__ = ["CLIENT_OPTIONS", "DRIVER_INFO", "connect", "probe"]


DRIVER_INFO = DriverInfo()
"""What each of our connections tells Redis about its client (CLIENT SETINFO), made once.
Without it redis-py makes one per connection and looks its own version up in the installed
packages' metadata each time (a walk of sys.path), which showed in the CPU of a producer
waiting for many runs at once, each wait on a new connection (docs/benchmarks.md, History)."""

CLIENT_OPTIONS: dict[str, Any] = {  # every connection of ours, sync or asyncio
    "driver_info": DRIVER_INFO,
    "decode_responses": True,
    "socket_connect_timeout": 5,
    # Above the longest blocking read (5 s): redis-py's own default would cut those short.
    "socket_timeout": 10,
    "socket_keepalive": True,
    "health_check_interval": 15,
}


def connect(url: str, *, tls: dict[str, Any] | None = None, max_connections: int) -> redis.Redis:
    """A Redis client that reconnects by itself through restarts and blips.

    `tls` holds the `ssl_*` options of a `rediss://` URL (`Settings.redis_tls`). Past
    `max_connections` a command waits for a free connection: redis-py's default pool (100
    connections) fails instead, which a worker with hundreds of threads hits under load.
    """
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=CLIENT_OPTIONS["socket_timeout"],
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        **CLIENT_OPTIONS,
        **(tls or {}),
    )
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


def probe(url: str, *, tls: dict[str, Any] | None = None, timeout_s: float) -> None:
    """Ping Redis once, without retrying: `StoreError` within about `timeout_s` seconds when it
    does not answer (the command line says so at once, where `connect`'s client would retry
    for ~10 s)."""
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(ExponentialBackoff(), retries=0),
        **(tls or {}),
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        raise StoreError(f"Redis does not answer (QUORUM_REDIS_URL): {exc}") from exc
    finally:
        client.close()
