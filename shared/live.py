"""Following event streams live in asyncio code: one reader for a whole process.

`EventHub.follow(run_id, after=...)` yields a run's events (with their stream ids) as they
are appended, until its terminal event; `follow_stream(hub.workflow_stream(id))` a workflow's,
until `workflow_finished`. However many runs a process follows, one asyncio task
reads them all with ONE `XREAD BLOCK` over ONE Redis connection (every followed stream in one
command) and hands each entry to the followers of its stream through asyncio queues: no
thread and no Redis connection per follower. A new follower wakes the blocked read at once
(`CLIENT UNBLOCK`) so that it is read from the next call; a read never blocks longer than
`block_ms` in any case.

Each stream is read from the oldest position any of its followers still needs; a follower
skips the entries it has already seen, so one that joins late (or resumes from an earlier
id) gets its backlog without the others seeing anything twice.

On a Redis Cluster, XREAD takes keys of one slot only, and every run has a slot of its own:
there the reader reads each followed slot's streams without blocking, all in one pipeline (one
round trip per node), and waits `poll_ms` between reads that find nothing (a new follower
still wakes it at once). An event then reaches its followers within `poll_ms`, for one
command per followed run per read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
from redis.crc import key_slot

from quorum.shared.connection import REDIS_ERRORS, connect_asyncio
from quorum.shared.errors import InvalidRequestError
from quorum.shared.events import TERMINAL_EVENTS, parse_event
from quorum.shared.keys import Keys
from quorum.shared.models import TaskStatus
from quorum.shared.settings import is_cluster_url
from quorum.shared.wfevents import parse_workflow_event
from quorum.shared.wfstore import WorkflowStatus

__all__ = ["EventHub", "Heartbeat", "Stream", "stream_id"]

log = logging.getLogger(__name__)

_STREAM_ID = re.compile(r"\A\d{1,20}-\d{1,20}\Z")

Entry = tuple[str, Any]
"""A stream id and the event stored under it (a run's `Event`, or a workflow's)."""


class Heartbeat:
    """What `EventHub.follow` yields when its run has been quiet for `heartbeat_s`."""


HEARTBEAT = Heartbeat()


def stream_id(text: str | None) -> str:
    """A Redis stream id (`<ms>-<seq>`) given by a client, checked; `0-0` for none."""
    if text is None or text == "":
        return "0-0"
    if not _STREAM_ID.match(text):
        raise InvalidRequestError(f"{text!r} is not an event id (Last-Event-ID: <ms>-<seq>)")
    return text


def _ended(status: str | None) -> bool:
    """Whether a run with this status field is over (or gone)."""
    return status is None or TaskStatus(status).terminal


def _workflow_ended(status: str | None) -> bool:
    """Whether a workflow with this status field is over (or gone)."""
    return status is None or WorkflowStatus(status) is not WorkflowStatus.RUNNING


@dataclass(frozen=True)
class Stream:
    """An event stream to follow: its key, the hash whose `status` says its owner is over,
    how its entries parse, and the event types that end it."""

    key: str
    owner: str
    parse: Callable[[str], Any]
    terminal: frozenset[str]
    ended: Callable[[str | None], bool]


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


@dataclass(eq=False)
class _Follower:
    seen: tuple[int, int]
    queue: asyncio.Queue[Entry] = field(default_factory=asyncio.Queue)


class EventHub:
    """Reads every followed run's event stream for one process (see the module's docstring).

    Made anywhere; its asyncio parts are made on first use, in the running loop.
    """

    def __init__(
        self,
        url: str,
        *,
        keys: Keys,
        options: dict[str, Any] | None = None,
        block_ms: int = 1000,
        count: int = 100,
        max_connections: int = 32,
        poll_ms: int = 100,
    ) -> None:
        self.url = url
        self.keys = keys
        self.options = options or {}
        self.block_ms = block_ms
        self.count = count
        self.cluster = is_cluster_url(url)
        self.poll_ms = poll_ms
        """On a cluster: the wait between two reads that found nothing."""
        self.max_connections = max_connections
        """Connections for the followers' own short reads (status, backlog of a finished
        run, unblocking the reader); past it they wait for one."""
        self._followers: dict[str, set[_Follower]] = {}
        self._parsers: dict[str, Callable[[str], Any]] = {}
        self._from: dict[str, str] = {}
        self._reader: Any = None
        self._control: Any = None
        self._reader_id: int | None = None
        self._blocked = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def following(self) -> int:
        """How many followers are attached now."""
        return sum(len(f) for f in self._followers.values())

    def run_stream(self, run_id: str) -> Stream:
        """A run's event stream."""
        return Stream(
            self.keys.events(run_id), self.keys.run(run_id), parse_event, TERMINAL_EVENTS, _ended
        )

    def workflow_stream(self, workflow_id: str) -> Stream:
        """A workflow's event stream (`node_ready`, …, `workflow_finished`)."""
        return Stream(
            self.keys.wf_events(workflow_id),
            self.keys.workflow(workflow_id),
            parse_workflow_event,
            frozenset({"workflow_finished"}),
            _workflow_ended,
        )

    def follow(
        self, run_id: str, *, after: str = "0-0", heartbeat_s: float = 15.0
    ) -> AsyncIterator[Entry | Heartbeat]:
        """`follow_stream` of the run's events."""
        return self.follow_stream(self.run_stream(run_id), after=after, heartbeat_s=heartbeat_s)

    async def follow_stream(
        self, stream: Stream, *, after: str = "0-0", heartbeat_s: float = 15.0
    ) -> AsyncIterator[Entry | Heartbeat]:
        """The stream's events after the stream id `after`, as `(id, event)` pairs, until a
        terminal event; `HEARTBEAT` whenever `heartbeat_s` pass without one. Ends as well when
        the owner is gone (expired), or is over with nothing left after `after`."""
        control = await self._start()
        key = stream.key
        if stream.ended(await control.hget(stream.owner, "status")):
            for entry_id, fields in await control.xrange(key, min=f"({after}"):
                event = stream.parse(fields["event"])
                yield entry_id, event
                if event.type in stream.terminal:
                    return
            return
        follower = _Follower(_order(after))
        self._parsers[key] = stream.parse
        self._followers.setdefault(key, set()).add(follower)
        known = self._from.get(key)
        if known is None or _order(after) < _order(known):
            self._from[key] = after
            await self._interrupt(control)
        try:
            while True:
                try:
                    entry_id, event = await asyncio.wait_for(follower.queue.get(), heartbeat_s)
                except TimeoutError:
                    status = await control.hget(stream.owner, "status")
                    if stream.ended(status) and follower.queue.empty():
                        if await self._caught_up(control, key, follower):
                            return
                        continue
                    yield HEARTBEAT
                    continue
                yield entry_id, event
                if event.type in stream.terminal:
                    return
        finally:
            self._leave(key, follower)

    async def _caught_up(self, control: Any, key: str, follower: _Follower) -> bool:
        """Whether nothing is left in the stream after what `follower` has seen."""
        last = await control.xrevrange(key, count=1)
        return not last or _order(last[0][0]) <= follower.seen

    def _leave(self, key: str, follower: _Follower) -> None:
        followers = self._followers.get(key)
        if followers is None:
            return
        followers.discard(follower)
        if not followers:
            del self._followers[key]
            self._from.pop(key, None)
            self._parsers.pop(key, None)

    async def close(self) -> None:
        """Stop the reader and close its connections."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for client in (self._reader, self._control):
            if client is not None:
                await client.aclose()

    async def _start(self) -> Any:
        """The control connection; the reader task running."""
        if self._control is None:
            self._control = connect_asyncio(
                self.url, options=self.options, max_connections=self.max_connections
            )
            self._wake = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._read_forever(), name="quorum-event-hub")
        return self._control

    async def _interrupt(self, control: Any) -> None:
        """Make the reader read again now, with the streams followed now."""
        assert self._wake is not None
        self._wake.set()
        if self._blocked and not self.cluster and self._reader_id is not None:
            with contextlib.suppress(*REDIS_ERRORS):  # else it ends within block_ms
                await control.client_unblock(self._reader_id)

    async def _read_forever(self) -> None:
        while True:
            try:
                await self._read_once()
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                log.warning("event hub: Redis error, reading again in 0.5 s: %s", exc)
                self._reader_id = None
                if self._reader is not None:
                    await self._reader.aclose()
                    self._reader = None
                await asyncio.sleep(0.5)

    async def _read_once(self) -> None:
        assert self._wake is not None
        if not self._from:
            self._wake.clear()
            await self._wake.wait()
            return
        if self.cluster:
            await self._poll()
            return
        if self._reader is None:
            self._reader = redis.asyncio.Redis.from_url(
                self.url, single_connection_client=True, **self.options
            )
            self._reader_id = int(await self._reader.client_id())
        streams = dict(self._from)
        self._wake.clear()
        self._blocked = True
        try:
            reply = await self._reader.xread(streams, count=self.count, block=self.block_ms)
        finally:
            self._blocked = False
        for key, entries in reply or []:
            self._deliver(key, entries)

    async def _poll(self) -> None:
        """Read every followed stream once, one XREAD per slot, in one pipeline (a cluster's
        reads); wait `poll_ms` (or a new follower) when nothing came."""
        assert self._wake is not None
        by_slot: dict[int, dict[str, str]] = {}
        for key, after in self._from.items():
            by_slot.setdefault(key_slot(key.encode()), {})[key] = after
        self._wake.clear()
        pipe = self._control.pipeline(transaction=False)
        for streams in by_slot.values():
            pipe.xread(streams, count=self.count)
        got = False
        for reply in await pipe.execute():
            for key, entries in reply or []:
                got = got or bool(entries)
                self._deliver(key, entries)
        if not got:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_ms / 1000)

    def _deliver(self, key: str, entries: list[tuple[str, dict[str, str]]]) -> None:
        followers = self._followers.get(key)
        if not followers:
            return
        parse = self._parsers.get(key, parse_event)
        for entry_id, fields in entries:
            order = _order(entry_id)
            event = parse(fields["event"])
            for follower in followers:
                if order > follower.seen:
                    follower.seen = order
                    follower.queue.put_nowait((entry_id, event))
        if entries and key in self._from:
            self._from[key] = entries[-1][0]
