"""Connections to Redis: the one client the store (and the broker's channels) use, which
reconnects by itself, and a quick probe that says at once when Redis does not answer.

The store may be one Redis (`redis://`, `rediss://`) or a Redis Cluster
(`redis+cluster://host:port[,host:port...]`, `rediss+cluster://` with TLS): then its clients
are redis-py's cluster clients, which send each command to the node that serves its key's
slot. Every multi-key step of a run or a workflow names keys of one slot (`shared.keys`), so
it works the same on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
from redis import DriverInfo
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from quorum.shared.errors import StoreError
from quorum.shared.settings import is_cluster_url

__all__ = [
    "CLIENT_OPTIONS",
    "DRIVER_INFO",
    "REDIS_ERRORS",
    "Client",
    "asyncio_client",
    "cluster_nodes",
    "connect",
    "connect_asyncio",
    "probe",
]

Client = redis.Redis | RedisCluster
"""A client of the store: one Redis, or a Redis Cluster."""

REDIS_ERRORS = (redis.RedisError, RedisClusterException)
"""What a store's client raises when Redis fails: redis-py's errors, and its cluster client's
own (no node reachable, a slot no node serves), which are not `RedisError`s."""

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


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The nodes a `redis+cluster://` URL names, and its client options (user, password,
    TLS); `ValueError` for a URL that is not one, or names a database other than 0."""
    parts = urlsplit(url)
    if not is_cluster_url(url):
        raise ValueError("a Redis Cluster URL starts with redis+cluster:// or rediss+cluster://")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = []
    for address in hosts.split(","):
        host, _, port = address.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a Redis Cluster URL lists host:port pairs, not {address!r}")
        nodes.append((host.strip("[]"), int(port)))
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has one database, 0: drop the path from the URL")
    user, colon, password = userinfo.partition(":")
    options: dict[str, Any] = {}
    if user:
        options["username"] = unquote(user)
    if colon:
        options["password"] = unquote(password)
    if parts.scheme.startswith("rediss"):
        options["ssl"] = True
    return nodes, options


def connect(url: str, *, tls: dict[str, Any] | None = None, max_connections: int) -> Client:
    """A Redis client that reconnects by itself through restarts and blips.

    `tls` holds the `ssl_*` options of a `rediss://` URL (`Settings.redis_tls`). Past
    `max_connections` (per cluster node) a command waits for a free connection: redis-py's
    default pool (100 connections) fails instead, which a worker with hundreds of threads
    hits under load.
    """
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8)
    if is_cluster_url(url):
        nodes, options = cluster_nodes(url)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            connection_pool_class=redis.BlockingConnectionPool,
            max_connections=max_connections,
            timeout=CLIENT_OPTIONS["socket_timeout"],
            retry=retry,
            **CLIENT_OPTIONS,
            **options,
            **(tls or {}),
        )
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=CLIENT_OPTIONS["socket_timeout"],
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        **CLIENT_OPTIONS,
        **(tls or {}),
    )
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


def connect_asyncio(url: str, *, options: dict[str, Any], max_connections: int) -> Any:
    """An asyncio client of the store for the running event loop: on one Redis, a pool that
    waits for a free connection past `max_connections`; on a cluster, redis-py's asyncio
    cluster client (`max_connections` per node)."""
    if is_cluster_url(url):
        nodes, credentials = cluster_nodes(url)
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in nodes],
            max_connections=max_connections,
            **options,
            **credentials,
        )
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=None, **options
    )
    return redis.asyncio.Redis(connection_pool=pool)


_LOOP_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]] = (
    weakref.WeakKeyDictionary()
)


@contextlib.asynccontextmanager
async def asyncio_client(url: str, *, options: dict[str, Any]) -> AsyncIterator[Any]:
    """An asyncio client for one blocking wait: on one Redis, a connection of its own, closed
    after; on a cluster, the one cluster client of the running loop for `url` (made on first
    use: finding the cluster's nodes and commands costs ~10 ms of CPU), whose nodes lend each
    wait a connection."""
    if not is_cluster_url(url):
        async with redis.asyncio.Redis.from_url(url, **options) as client:
            yield client
        return
    clients = _LOOP_CLIENTS.setdefault(asyncio.get_running_loop(), {})
    if url not in clients:
        clients[url] = connect_asyncio(url, options=options, max_connections=10_000)
    yield clients[url]


def probe(url: str, *, tls: dict[str, Any] | None = None, timeout_s: float) -> None:
    """Ping Redis once, without retrying: `StoreError` within about `timeout_s` seconds when it
    does not answer (the command line says so at once, where `connect`'s client would retry
    for ~10 s)."""
    quick: dict[str, Any] = {
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s,
        "retry": Retry(ExponentialBackoff(), retries=0),
        **(tls or {}),
    }
    try:
        if is_cluster_url(url):
            nodes, options = cluster_nodes(url)
            client: Client = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                **quick,
                **options,
            )
        else:
            client = redis.Redis.from_url(url, **quick)
    except (*REDIS_ERRORS, ValueError) as exc:
        raise StoreError(f"Redis does not answer (QUORUM_REDIS_URL): {exc}") from exc
    try:
        client.ping()
    except REDIS_ERRORS as exc:
        raise StoreError(f"Redis does not answer (QUORUM_REDIS_URL): {exc}") from exc
    finally:
        client.close()
