"""Redis access shared by the store's parts: the Lua scripts (read once from the package's
`lua/` folder), sending a script and more commands in one round trip, and the mapping of
Redis errors to `StoreError`.

A script file may pull in a library file with a line `--! include NAME` (`lua/NAME.lua`),
so that the functions several scripts share are written once.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, ParamSpec, TypeVar, cast

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.crc import key_slot

from quorum.shared.connection import REDIS_ERRORS, Client
from quorum.shared.errors import StoreError
from quorum.shared.keys import Keys, workflow_of
from quorum.shared.models import Usage
from quorum.shared.state import usage_counters

__all__ = ["RedisScripts", "lua", "mapped"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_INCLUDE = "--! include "

LIVE_MARGIN_S = 300
"""Seconds a live run's keys outlive its deadline by (`RedisScripts.live_ttl_s`): the sweep
that ends a run past its deadline runs every few seconds."""


@functools.cache
def lua(name: str) -> str:
    """The source of the script `lua/<name>.lua`, its includes resolved."""
    text = resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()
    return "\n".join(
        lua(line.removeprefix(_INCLUDE).strip()) if line.startswith(_INCLUDE) else line
        for line in text.splitlines()
    )


def mapped(method: Callable[P, R]) -> Callable[P, R]:
    """`method`, with any Redis error raised as a `StoreError`."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except REDIS_ERRORS as exc:
            raise StoreError(f"Redis store error: {type(exc).__name__}: {exc}") from exc

    return wrapper


class RedisScripts:
    """A Redis client with Quorum's keys and TTL, and the means to send its scripts."""

    def __init__(self, client: Client, *, keys: Keys, ttl_s: int) -> None:
        self.redis = client
        self.keys = keys
        self.ttl_s = ttl_s

    def by_slot(self, items: Sequence[T], key: Callable[[T], str]) -> list[list[T]]:
        """`items` in groups whose `key` share a Redis Cluster slot, for one MULTI/EXEC
        each; on one Redis, all of them in one group (any transaction may span keys)."""
        if not isinstance(self.redis, RedisCluster):
            return [list(items)] if items else []
        groups: dict[int, list[T]] = {}
        for item in items:
            groups.setdefault(key_slot(key(item).encode()), []).append(item)
        return list(groups.values())

    def script(self, name: str) -> Script:
        """The script `lua/<name>.lua`, registered on this client."""
        return self.redis.register_script(lua(name))

    def _script_then(
        self, script: Script, keys: list[str], args: list[Any], then: Callable[[Any], Any]
    ) -> list[Any]:
        """Run `script`, then the commands `then` adds to the pipeline, in one round trip.

        The script goes by EVALSHA straight into the pipeline: a `Script` object in a pipeline
        would cost a SCRIPT EXISTS round trip per call. Redis answers NOSCRIPT only after a
        restart or SCRIPT FLUSH; then the script is loaded and the pipeline sent again (what
        `then` adds must be idempotent). The pipeline is no transaction: its commands may
        touch keys of other hash slots (the sweep's indices); on a cluster, each node gets
        its share of the commands.
        """

        def send() -> list[Any]:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
                then(pipe)
                return cast(list[Any], pipe.execute())

        try:
            return send()
        except redis.exceptions.NoScriptError:
            self.redis.script_load(script.script)
            return send()

    def _script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run `script` alone (`_script_then` with nothing after it); its reply."""
        reply, *_ = self._script_then(script, keys, args, lambda pipe: None)
        return reply

    def live_ttl_s(self, live_s: float) -> int:
        """The TTL a run gets when it is made: the result TTL past the end of the `live_s`
        seconds it may live (its deadline), and a margin for the sweep that ends it then. A
        live run's moves set no TTL (one `EXPIRE` fewer per key and move); its end sets the
        result TTL (`transition.lua`)."""
        return self.ttl_s + math.ceil(max(live_s, 0.0)) + LIVE_MARGIN_S

    def _touch(self, client: Any, run_id: str, at: float | None = None) -> None:
        """Mark progress on a live run through `client`: the store's client, or a pipeline."""
        client.zadd(self.keys.progress(), {run_id: at or time.time()}, xx=True)

    def _bill(self, pipe: Any, run_id: str, usage: Usage | None) -> None:
        """Add a call's tokens to the run's totals, through `pipe`, and to its workflow's
        (a node run's workflow hash is on the run's slot)."""
        workflow = workflow_of(run_id)
        for name, amount in usage_counters(usage):
            pipe.hincrby(self.keys.run(run_id), name, amount)
            if workflow is not None:
                pipe.hincrby(self.keys.workflow(workflow), name, amount)
