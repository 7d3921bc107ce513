"""Waiting on a run (the store's part): for its end, on its done list, or for its events as
they arrive, on its events stream; blocking reads of at most 5 s each, in a loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

from quorum.shared.connection import CLIENT_OPTIONS, REDIS_ERRORS, asyncio_client
from quorum.shared.errors import RunNotFoundError, StoreError
from quorum.shared.events import TERMINAL_EVENTS, Event, OtherEvent, parse_event
from quorum.shared.models import TaskStatus
from quorum.shared.scripts import RedisScripts, mapped
from quorum.shared.state import RunState, read_state

__all__ = ["WaitStore"]


def _blocks(timeout_s: float | None) -> Iterator[int]:
    """Successive blocking-read times (ms) until `timeout_s` runs out; endless without one."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        yield 5000 if left is None else max(1, min(int(left * 1000), 5000))


def _ended(status: Any) -> bool:
    """Whether a run with this status field (a str, or None) has nothing more to wait for
    (or is gone)."""
    return status is None or TaskStatus(status).terminal


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of a one-stream XREAD reply."""
    return [entry for _, entries in reply or [] for entry in entries]


class WaitStore(RedisScripts):
    """The store's part that waits on runs (`RunStore` sets `url` and `tls`)."""

    url: str | None
    tls: dict[str, Any] | None

    @mapped
    def watch(self, run_id: str, *, timeout_s: float | None) -> Iterator[Event | OtherEvent]:
        """Yield the run's events as they arrive, from the first, until a terminal one.

        Blocks on the event stream (XREAD BLOCK); stops silently when `timeout_s` runs out.
        """
        key, last_id = self.keys.events(run_id), "0-0"
        for block_ms in _blocks(timeout_s):
            for entry_id, fields in _entries(self.redis.xread({key: last_id}, block=block_ms)):
                last_id = entry_id
                event = parse_event(fields["event"])
                yield event
                if event.type in TERMINAL_EVENTS:
                    return

    @mapped
    def wait(self, run_id: str, *, timeout_s: float | None) -> RunState:
        """The run once it is terminal, or as it is when `timeout_s` runs out.

        Blocks on the run's done list, which its final transition pushes to: one wake-up
        however many events the run appends. BLMOVE puts the entry back where it took it
        from, so every waiter on the run wakes. The run is read in the same round trip, once
        the block ends (5 s at most), which also ends the wait for a run that has no done list.
        """
        done, run = self.keys.done(run_id), self.keys.run(run_id)
        raw: dict[str, str] | None = None
        for block_ms in _blocks(timeout_s):
            seconds: Any = block_ms / 1000  # fractional: redis-py's hint says int
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.blmove(done, done, seconds, "RIGHT", "LEFT")
                pipe.hgetall(run)
                moved, raw = pipe.execute()
            if moved or _ended(raw.get("status")):
                break
        if raw is None:  # no time to block: the run as it is
            raw = cast(dict[str, str], self.redis.hgetall(run))
        if not raw:
            raise RunNotFoundError(f"no run {run_id!r} (unknown id, or expired)")
        return read_state(run_id, raw)

    @property
    def asyncio_options(self) -> dict[str, Any]:
        """The options of an asyncio client on this store's Redis (`url`): the same as its
        own connections'."""
        return {**CLIENT_OPTIONS, **(self.tls or {})}

    async def wait_async(self, run_id: str, *, timeout_s: float | None) -> RunState:
        """`wait` for asyncio code, on a connection of its own."""
        if self.url is None:
            raise StoreError("this store has no URL to open an asyncio connection with")
        done, run = self.keys.done(run_id), self.keys.run(run_id)
        try:
            async with asyncio_client(self.url, options=self.asyncio_options) as client:
                for block_ms in _blocks(timeout_s):
                    seconds: Any = block_ms / 1000  # fractional: redis-py's hint says int
                    if await client.blmove(done, done, seconds, "RIGHT", "LEFT"):
                        break
                    if _ended(await client.hget(run, "status")):
                        break
                raw = cast(dict[str, str], await client.hgetall(run))
        except REDIS_ERRORS as exc:
            raise StoreError(f"Redis store error: {type(exc).__name__}: {exc}") from exc
        if not raw:
            raise RunNotFoundError(f"no run {run_id!r} (unknown id, or expired)")
        return read_state(run_id, raw)
