"""The Redis store: the one source of truth for a run's status and provenance.

Every status change is a compare-and-set in a Lua script that also appends the run's
provenance events, so that a duplicated or late job can never move a run backwards. Every key
gets the run's TTL on every write. Redis errors leave this module as `StoreError`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

import redis
import redis.asyncio
from redis import DriverInfo
from redis.backoff import ExponentialBackoff
from redis.commands.core import Script
from redis.retry import Retry

from quorum.shared.errors import RunNotFoundError, StoreError
from quorum.shared.keys import Keys
from quorum.shared.models import RunSpec, TaskStatus, Usage, Vote, sources_of
from quorum.shared.prompts import FailedAttempt
from quorum.shared.settings import Settings
from quorum.shared.state import USAGE_FIELDS, RunState, event, usage_counters, usage_of

__all__ = ["DRIVER_INFO", "RecordedVote", "RoundContext", "RunStore", "connect", "vote_slot"]

P = ParamSpec("P")
R = TypeVar("R")

_TERMINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled"})
# KEYS: run, events, and for a terminal status the done list. ARGV: allowed statuses (comma
# list), expected attempt ('' = any), new status, ttl, number of events n, the n events
# (JSON), then field/value pairs to set.
_TRANSITION = """
local cur = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if not cur[1] then return {0, '', ''} end
local allowed = false
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == cur[1] then allowed = true end
end
if not allowed or (ARGV[2] ~= '' and ARGV[2] ~= cur[2]) then return {0, cur[1], cur[2]} end
local n = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'status', ARGV[3], unpack(ARGV, 6 + n))
for i = 6, 5 + n do redis.call('XADD', KEYS[2], '*', 'event', ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if KEYS[3] then
  redis.call('RPUSH', KEYS[3], ARGV[3])
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
return {1, ARGV[3], cur[2]}
"""

_RECORD = """
local function record(hash, events, run, field, value, ttl, event)
  if redis.call('HSETNX', hash, field, value) == 0 then return 0 end
  redis.call('XADD', events, '*', 'event', event)
  for _, key in ipairs({hash, events, run}) do redis.call('EXPIRE', key, ttl) end
  return 1
end
"""
"""Lua: write `field` into `hash` once; only the first write appends its event."""

# KEYS: hash, events, run. ARGV: field, value, ttl, event JSON.
_RECORD_ONCE = _RECORD + "return record(KEYS[1], KEYS[2], KEYS[3], unpack(ARGV, 1, 4))"

# Lua: finish a planned vote in the attempt's rounds hash (its fields: `Keys.rounds`). A vote
# finishes once however often its job runs; the one that finishes a round's last vote claims
# its tally, and gets the round back on every later finish.
_FINISH = """
local function finish(rounds, slot, ttl)
  local r = tonumber(redis.call('HGET', rounds, slot))
  if not r then return 0 end
  if r > 0 then
    redis.call('HSET', rounds, slot, -r)
    redis.call('EXPIRE', rounds, ttl)
    if redis.call('HINCRBY', rounds, 'out/' .. r, -1) > 0 then return 0 end
    redis.call('HSETNX', rounds, 'tally/' .. r, slot)
  end
  r = math.abs(r)
  if redis.call('HGET', rounds, 'tally/' .. r) == slot then return r end
  return 0
end
"""

# KEYS: rounds. ARGV: round, ttl, then the round's slots. Plans each slot once.
_PLAN = """
for i = 3, #ARGV do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[1]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'out/' .. ARGV[1], 1)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
"""

# KEYS: votes, events, run, rounds, decisions. ARGV: slot, vote JSON, ttl, event JSON, issue,
# then usage field/amount pairs. Stores the vote once, bills its call every time, and finishes
# it. Returns whether it was new, whether its issue is decided, the round it is to tally (0:
# none) and, for that tally, the run, decisions and rounds hashes.
_RECORD_VOTE = (
    _RECORD
    + _FINISH
    + """
local new = record(KEYS[1], KEYS[2], KEYS[3], unpack(ARGV, 1, 4))
for i = 6, #ARGV, 2 do redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1]) end
local decided = redis.call('HEXISTS', KEYS[5], ARGV[5])
local r = finish(KEYS[4], ARGV[1], ARGV[3])
if r == 0 then return {new, decided, r} end
local hashes = {}
for i, key in ipairs({KEYS[3], KEYS[5], KEYS[4]}) do hashes[i] = redis.call('HGETALL', key) end
return {new, decided, r, unpack(hashes)}
"""
)

# KEYS: events, rounds. ARGV: slot, ttl, event JSON (none: '').
_FINISH_VOTE = (
    _FINISH
    + """
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[1], '*', 'event', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return finish(KEYS[2], ARGV[1], ARGV[2])
"""
)

# KEYS: rounds. ARGV: round, who asks, ttl. Returns who tallies the round ('' while votes
# of it are still out); the first to ask once none is out gets it.
_CLAIM_TALLY = """
if tonumber(redis.call('HGET', KEYS[1], 'out/' .. ARGV[1]) or '0') > 0 then return '' end
redis.call('HSETNX', KEYS[1], 'tally/' .. ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('HGET', KEYS[1], 'tally/' .. ARGV[1])
"""

DRIVER_INFO = DriverInfo()
"""What each of our connections tells Redis about its client (CLIENT SETINFO), made once.
Without it redis-py makes one per connection and looks its own version up in the installed
packages' metadata each time (a walk of sys.path): 14% of the CPU of a producer that waited
for 700 runs at once, each wait on a new connection."""

_CLIENT_OPTIONS: dict[str, Any] = {
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
        timeout=_CLIENT_OPTIONS["socket_timeout"],
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        **_CLIENT_OPTIONS,
        **(tls or {}),
    )
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


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


def _votes(raw: dict[str, str]) -> list[Vote]:
    return [Vote.model_validate_json(value) for value in raw.values()]


def _decisions(raw: dict[str, str]) -> dict[int, dict[str, Any]]:
    return {int(issue): json.loads(event) for issue, event in raw.items()}


def vote_slot(issue: int, index: int) -> str:
    """The field of a vote in an attempt's votes and rounds hashes: `{issue}:{index}`."""
    return f"{issue}:{index}"


def _slot(name: str) -> tuple[int, int]:
    issue, index = name.split(":")
    return int(issue), int(index)


@dataclass(frozen=True)
class RoundContext:
    """What a tally works with, read in one round trip (`RunStore.round_context`)."""

    state: RunState | None
    """The run; None if it is gone."""
    votes: list[Vote]
    """The attempt's stored votes."""
    decided: dict[int, dict[str, Any]]
    """The attempt's decided issues, with their `issue_decided` events."""
    planned: list[tuple[int, int]]
    """Every `(issue, index)` planned in the attempt's rounds so far."""
    tallier: str | None
    """Who tallies the round; None while votes of it are still out."""


def _round_context(
    run_id: str,
    raw: dict[str, str],
    votes: list[Vote],
    decisions: dict[str, str],
    rounds: dict[str, str],
    tallier: str | None,
) -> RoundContext:
    """A `RoundContext` from the run, decisions and rounds hashes as Redis returns them."""
    return RoundContext(
        state=RunState.parse(run_id, raw) if raw else None,
        votes=votes,
        decided=_decisions(decisions),
        planned=[_slot(name) for name in rounds if "/" not in name],  # not out/, tally/
        tallier=tallier,
    )


@dataclass(frozen=True)
class RecordedVote:
    """What storing a vote tells its job (`RunStore.record_vote`)."""

    votes: list[Vote] | None
    """The attempt's votes, this one included, if it was new (else None)."""
    decided: bool
    """Whether the vote's issue was decided already."""
    last_of: int
    """The round this vote is to tally (0: none)."""
    tally: RoundContext | None
    """What that tally works with, claimed for this vote's slot."""


def _mapped(method: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except redis.RedisError as exc:
            raise StoreError(f"Redis store error: {type(exc).__name__}: {exc}") from exc

    return wrapper


class RunStore:
    """Reads and writes runs; the only code that talks to Redis about them."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: Keys,
        ttl_s: int,
        url: str | None = None,
        run_timeout_s: float = 3600.0,
        tls: dict[str, Any] | None = None,
    ) -> None:
        self.redis = client
        self.url = url
        self.tls = tls
        self.keys = keys
        self.ttl_s = ttl_s
        self.run_timeout_s = run_timeout_s
        self._transition = client.register_script(_TRANSITION)
        self._record_once = client.register_script(_RECORD_ONCE)
        self._plan = client.register_script(_PLAN)
        self._record_vote = client.register_script(_RECORD_VOTE)
        self._finish_vote = client.register_script(_FINISH_VOTE)
        self._claim_tally = client.register_script(_CLAIM_TALLY)

    @classmethod
    def from_settings(cls, settings: Settings) -> RunStore:
        """A store on the configured Redis and namespace."""
        return cls(
            connect(
                settings.redis_url,
                tls=settings.redis_tls,
                max_connections=settings.redis_max_connections,
            ),
            keys=Keys(settings.namespace),
            ttl_s=settings.result_ttl_s,
            url=settings.redis_url,
            run_timeout_s=settings.run_timeout_s,
            tls=settings.redis_tls,
        )

    # -- producer side -------------------------------------------------------------------

    @_mapped
    def create(self, run_id: str, spec: RunSpec, *, idempotency_key: str | None = None) -> str:
        """Write a new PENDING run and its `submitted` event; return the run id to use.

        With an idempotency key already used, nothing is written and the first run's id is
        returned instead.
        """
        if idempotency_key is not None:
            claimed = self.redis.set(
                self.keys.idempotency(idempotency_key), run_id, nx=True, ex=self.ttl_s
            )
            if not claimed:
                existing = self.redis.get(self.keys.idempotency(idempotency_key))
                if existing is not None:
                    return str(existing)
        now = time.time()
        submitted = event("submitted", 0, "", model=spec.model, mode=spec.config.mode)
        run_key, events_key = self.keys.run(run_id), self.keys.events(run_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                run_key,
                mapping={
                    "spec": spec.model_dump_json(),
                    "status": TaskStatus.PENDING.value,
                    "attempt": 0,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            pipe.xadd(events_key, {"event": json.dumps(submitted)})
            pipe.expire(run_key, self.ttl_s)
            pipe.expire(events_key, self.ttl_s)
            pipe.execute()
        deadline = now + (spec.timeout_s or self.run_timeout_s)
        indices = {
            self.keys.runs(): now,
            self.keys.deadlines(): deadline,
            self.keys.progress(): now,
        }
        with self.redis.pipeline(transaction=False) as pipe:  # each index has its own slot
            for key, score in indices.items():
                pipe.zadd(key, {run_id: score})
                pipe.expire(key, self.ttl_s)
            pipe.execute()
        return run_id

    @_mapped
    def discard(self, run_id: str, *, idempotency_key: str | None = None) -> None:
        """Remove a run that could not be enqueued, so that nothing half-made is left."""
        keys = [self.keys.run(run_id), self.keys.events(run_id)]
        if idempotency_key is not None:
            keys.append(self.keys.idempotency(idempotency_key))
        self.redis.delete(*keys)
        self.redis.zrem(self.keys.runs(), run_id)
        self.unindex(run_id)

    @_mapped
    def load(self, run_id: str) -> RunState:
        """The run as it is now; `RunNotFoundError` if it does not exist."""
        raw = cast(dict[str, str], self.redis.hgetall(self.keys.run(run_id)))
        if not raw:
            raise RunNotFoundError(f"no run {run_id!r} (unknown id, or expired)")
        return RunState.parse(run_id, raw)

    @_mapped
    def status(self, run_id: str) -> TaskStatus:
        """The run's current status."""
        status = cast(str | None, self.redis.hget(self.keys.run(run_id), "status"))
        if status is None:
            raise RunNotFoundError(f"no run {run_id!r} (unknown id, or expired)")
        return TaskStatus(status)

    @_mapped
    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's provenance, oldest first."""
        entries = cast(list[Any], self.redis.xrange(self.keys.events(run_id)))
        return [json.loads(fields["event"]) for _, fields in entries]

    @_mapped
    def recent(self, *, since: float, limit: int) -> list[str]:
        """Ids of the runs created at or after `since` (epoch seconds), newest first, at most
        `limit` of them (read-only; the metrics collector lists runs with it)."""
        ids = self.redis.zrevrangebyscore(self.keys.runs(), "+inf", since, start=0, num=limit)
        return cast(list[str], ids)

    @_mapped
    def watch(self, run_id: str, *, timeout_s: float | None) -> Iterator[dict[str, Any]]:
        """Yield the run's events as they arrive, from the first, until a terminal one.

        Blocks on the event stream (XREAD BLOCK); stops silently when `timeout_s` runs out.
        """
        key, last_id = self.keys.events(run_id), "0-0"
        for block_ms in _blocks(timeout_s):
            for entry_id, fields in _entries(self.redis.xread({key: last_id}, block=block_ms)):
                last_id = entry_id
                event = json.loads(fields["event"])
                yield event
                if event["type"] in _TERMINAL_EVENTS:
                    return

    @_mapped
    def wait(self, run_id: str, *, timeout_s: float | None) -> RunState:
        """The run once it is terminal, or as it is when `timeout_s` runs out.

        Blocks on the run's done list, which its final transition pushes to: one wake-up
        however many events the run appends. BLMOVE puts the entry back where it took it
        from, so every waiter on the run wakes. Between blocks (5 s at most) the status is
        read as well, which also ends the wait for a run that has no done list.
        """
        done, run = self.keys.done(run_id), self.keys.run(run_id)
        for block_ms in _blocks(timeout_s):
            seconds: Any = block_ms / 1000  # fractional: redis-py's hint says int
            if self.redis.blmove(done, done, seconds, "RIGHT", "LEFT"):
                break
            if _ended(self.redis.hget(run, "status")):
                break
        return self.load(run_id)

    async def wait_async(self, run_id: str, *, timeout_s: float | None) -> RunState:
        """`wait` for asyncio code, on a connection of its own."""
        if self.url is None:
            raise StoreError("this store has no URL to open an asyncio connection with")
        done, run = self.keys.done(run_id), self.keys.run(run_id)
        try:
            options = {**_CLIENT_OPTIONS, **(self.tls or {})}
            async with redis.asyncio.Redis.from_url(self.url, **options) as client:
                for block_ms in _blocks(timeout_s):
                    seconds: Any = block_ms / 1000  # fractional: redis-py's hint says int
                    if await client.blmove(done, done, seconds, "RIGHT", "LEFT"):
                        break
                    if _ended(await client.hget(run, "status")):
                        break
                raw = cast(dict[str, str], await client.hgetall(run))
        except redis.RedisError as exc:
            raise StoreError(f"Redis store error: {type(exc).__name__}: {exc}") from exc
        if not raw:
            raise RunNotFoundError(f"no run {run_id!r} (unknown id, or expired)")
        return RunState.parse(run_id, raw)

    def cancel(self, run_id: str, *, worker: str = "") -> bool:
        """End the run as CANCELLED unless it is already terminal; True if it was cancelled."""
        return self.transition(run_id, TaskStatus.CANCELLED, events=[event("cancelled", 0, worker)])

    # -- worker side ---------------------------------------------------------------------

    @_mapped
    def transition(
        self,
        run_id: str,
        new: TaskStatus,
        *,
        attempt: int | None = None,
        events: Sequence[dict[str, Any]] = (),
        fields: dict[str, Any] | None = None,
        usage: Usage | None = None,
    ) -> bool:
        """Compare-and-set the status to `new` from any status allowed to reach it.

        With `attempt`, the run's current attempt must equal it. The events are appended and
        the fields set only when the change happens. Returns whether it happened. In the same
        round trip, whether it happened or not, `usage` (a call's tokens) is billed and a
        move to a live status marks progress (a job was at work on the run); an ended run
        leaves the sweep's indices.
        """
        keys, args = self._transition_call(run_id, new, attempt, events, fields)

        def then(pipe: Any) -> None:
            self._bill(pipe, run_id, usage)
            if not new.terminal:
                self._touch(pipe, run_id)

        (done, *_), *_ = self._script_then(self._transition, keys, args, then)
        if done and new.terminal:
            self.unindex(run_id)
        return bool(done)

    @_mapped
    def begin_attempt(
        self, run_id: str, attempt: int, started: dict[str, Any]
    ) -> tuple[bool, RunState | None]:
        """Move the run from attempt `attempt − 1` into `attempt` (RUNNING) by compare-and-set
        with the event `started`, read it back, and mark progress: one round trip.

        Returns whether it moved, and the run as it is now (None if it is gone).
        """
        keys, args = self._transition_call(
            run_id, TaskStatus.RUNNING, attempt - 1, [started], {"attempt": attempt}
        )

        def then(pipe: Any) -> None:
            pipe.hgetall(self.keys.run(run_id))
            self._touch(pipe, run_id)

        (done, *_), raw, _ = self._script_then(self._transition, keys, args, then)
        return bool(done), RunState.parse(run_id, raw) if raw else None

    def _transition_call(
        self,
        run_id: str,
        new: TaskStatus,
        attempt: int | None,
        events: Sequence[dict[str, Any]],
        fields: dict[str, Any] | None,
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of `_TRANSITION` for a move to `new`."""
        pairs: list[Any] = ["updated_at", time.time()]
        for name, value in (fields or {}).items():
            pairs += [name, value if isinstance(value, str | int | float) else json.dumps(value)]
        keys = [self.keys.run(run_id), self.keys.events(run_id)]
        args = [
            ",".join(s.value for s in sources_of(new)),
            "" if attempt is None else str(attempt),
            new.value,
            self.ttl_s,
            len(events),
            *map(json.dumps, events),
            *pairs,
        ]
        return [*keys, self.keys.done(run_id)] if new.terminal else keys, args

    def _touch(self, client: Any, run_id: str, at: float | None = None) -> None:
        """`touch` through `client`: the store's client, or a pipeline."""
        client.zadd(self.keys.progress(), {run_id: at or time.time()}, xx=True)

    def _script_then(
        self, script: Script, keys: list[str], args: list[Any], then: Callable[[Any], Any]
    ) -> list[Any]:
        """Run `script`, then the commands `then` adds to the pipeline, in one round trip.

        The script goes by EVALSHA straight into the pipeline: a `Script` object in a pipeline
        would cost a SCRIPT EXISTS round trip per call. Redis answers NOSCRIPT only after a
        restart or SCRIPT FLUSH; then the script is loaded and the pipeline sent again (what
        `then` adds must be idempotent). The pipeline is no transaction: its commands may
        touch keys of other hash slots (the sweep's indices).
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

    @_mapped
    def vote_context(
        self, run_id: str, attempt: int, issue: int, index: int
    ) -> tuple[RunState | None, bool, Vote | None]:
        """In one round trip: the run (None if gone), whether `issue` is decided in this
        attempt, and the vote already stored in this slot (a redelivered vote job)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.run(run_id))
            pipe.hexists(self.keys.decisions(run_id, attempt), str(issue))
            pipe.hget(self.keys.votes(run_id, attempt), vote_slot(issue, index))
            raw, decided, stored = pipe.execute()
        return (
            RunState.parse(run_id, raw) if raw else None,
            bool(decided),
            Vote.model_validate_json(stored) if stored else None,
        )

    def _once(
        self,
        key: str,
        run_id: str,
        name: str,
        value: str,
        event: dict[str, Any],
    ) -> bool:
        """Write `name` into the hash at `key` once, with its event, in one round trip; mark
        progress. Returns whether it was written (False: `name` was already there)."""
        keys = [key, self.keys.events(run_id), self.keys.run(run_id)]
        args = [name, value, self.ttl_s, json.dumps(event)]
        new, _ = self._script_then(
            self._record_once, keys, args, lambda pipe: self._touch(pipe, run_id)
        )
        return bool(new)

    @_mapped
    def bill(self, run_id: str, usage: Usage) -> None:
        """Add a call's tokens to the run's totals."""
        with self.redis.pipeline(transaction=True) as pipe:
            self._bill(pipe, run_id, usage)
            pipe.execute()

    def _bill(self, pipe: Any, run_id: str, usage: Usage | None) -> None:
        for name, amount in usage_counters(usage):
            pipe.hincrby(self.keys.run(run_id), name, amount)

    @_mapped
    def usage(self, run_id: str) -> Usage:
        """The tokens and cost the run has spent so far, counted atomically in Redis."""
        values = cast(list[Any], self.redis.hmget(self.keys.run(run_id), USAGE_FIELDS))
        return usage_of(dict(zip(USAGE_FIELDS, values, strict=True)))

    @_mapped
    def record_vote(
        self, run_id: str, attempt: int, vote: Vote, event: dict[str, Any], usage: Usage
    ) -> RecordedVote:
        """Store a vote, bill its call and finish it (`finish_vote`), in one round trip; a
        redelivered vote is billed but counted once. When this vote is to tally its round,
        what the tally works with comes back in the same round trip."""
        slot = vote_slot(vote.issue, vote.index)
        billed = [x for pair in usage_counters(usage) for x in pair]
        keys = [
            self.keys.votes(run_id, attempt),
            self.keys.events(run_id),
            self.keys.run(run_id),
            self.keys.rounds(run_id, attempt),
            self.keys.decisions(run_id, attempt),
        ]
        args = [slot, vote.model_dump_json(), self.ttl_s, json.dumps(event), vote.issue, *billed]

        def then(pipe: Any) -> None:
            self._touch(pipe, run_id)
            pipe.hvals(keys[0])

        recorded, _, stored = self._script_then(self._record_vote, keys, args, then)
        new, decided, last_of, *hashes = recorded
        if not (new or last_of):  # a redelivered vote, not the round's last: nothing to read
            return RecordedVote(None, bool(decided), 0, None)
        votes = [Vote.model_validate_json(value) for value in stored]
        tally = None
        if last_of:
            raw, decisions, rounds = (dict(zip(h[::2], h[1::2], strict=True)) for h in hashes)
            tally = _round_context(run_id, raw, votes, decisions, rounds, slot)
        return RecordedVote(votes if new else None, bool(decided), int(last_of), tally)

    @_mapped
    def plan_round(
        self, run_id: str, attempt: int, round_: int, plan: dict[int, list[int]]
    ) -> None:
        """Note the votes a round draws (`plan`: issue → vote indices), before it is sent;
        a vote planned already keeps its round."""
        slots = [vote_slot(issue, index) for issue, indices in plan.items() for index in indices]
        self._script(self._plan, [self.keys.rounds(run_id, attempt)], [round_, self.ttl_s, *slots])

    @_mapped
    def finish_vote(
        self, run_id: str, attempt: int, issue: int, index: int, event: dict[str, Any] | None
    ) -> int:
        """Mark a planned vote finished, once, appending `event` (a skipped vote's); returns
        the round this vote is to tally: the one whose last vote it finished (also when its
        job runs again), else 0."""
        keys = [self.keys.events(run_id), self.keys.rounds(run_id, attempt)]
        args = [vote_slot(issue, index), self.ttl_s, json.dumps(event) if event else ""]
        return int(self._script(self._finish_vote, keys, args))

    @_mapped
    def votes(self, run_id: str, attempt: int) -> list[Vote]:
        """Every vote stored for the attempt."""
        raw = self.redis.hgetall(self.keys.votes(run_id, attempt))
        return _votes(cast(dict[str, str], raw))

    @_mapped
    def decide(self, run_id: str, attempt: int, issue: int, event: dict[str, Any]) -> bool:
        """Record an issue's decision once (the flag that makes pending votes skip)."""
        key = self.keys.decisions(run_id, attempt)
        return self._once(key, run_id, str(issue), json.dumps(event), event)

    @_mapped
    def decisions(self, run_id: str, attempt: int) -> dict[int, dict[str, Any]]:
        """The issues decided in the attempt, with their `issue_decided` events."""
        raw = self.redis.hgetall(self.keys.decisions(run_id, attempt))
        return _decisions(cast(dict[str, str], raw))

    @_mapped
    def round_context(self, run_id: str, attempt: int, round_: int, claimant: str) -> RoundContext:
        """In one round trip: claim round `round_`'s tally for `claimant` unless someone
        holds it, and read the run, the attempt's votes, its decided issues and its rounds."""
        rounds = self.keys.rounds(run_id, attempt)

        def then(pipe: Any) -> None:
            pipe.hgetall(self.keys.run(run_id))
            pipe.hgetall(self.keys.votes(run_id, attempt))
            pipe.hgetall(self.keys.decisions(run_id, attempt))
            pipe.hgetall(rounds)

        args = [round_, claimant, self.ttl_s]
        owner, raw, votes, decisions, rounds = self._script_then(
            self._claim_tally, [rounds], args, then
        )
        return _round_context(run_id, raw, _votes(votes), decisions, rounds, owner or None)

    @_mapped
    def record_failure(
        self, run_id: str, attempt: int, failure: FailedAttempt, event: dict[str, Any]
    ) -> bool:
        """Keep why an attempt failed, for the next attempt's feedback; once per attempt."""
        payload = json.dumps({"output": failure.output, "reasonings": list(failure.reasonings)})
        key, name = self.keys.run(run_id), f"failure:{attempt}"
        return self._once(key, run_id, name, payload, event)

    # -- the sweep ------------------------------------------------------------------------

    @_mapped
    def touch(self, run_id: str, at: float | None = None) -> None:
        """Mark progress on a live run (only one still indexed: a finished run stays out)."""
        self._touch(self.redis, run_id, at)

    @_mapped
    def unindex(self, run_id: str) -> None:
        """Drop a run from the sweep's indices (it ended, or it is gone)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.deadlines(), run_id)
            pipe.zrem(self.keys.progress(), run_id)
            pipe.execute()

    @_mapped
    def past_deadline(self, now: float, *, limit: int = 500) -> list[str]:
        """Live runs whose deadline has passed, the most overdue first."""
        return cast(
            list[str], self.redis.zrangebyscore(self.keys.deadlines(), "-inf", now, 0, limit)
        )

    @_mapped
    def stalled(self, before: float, *, limit: int = 500) -> list[str]:
        """Live runs with no progress since `before`, the longest stalled first."""
        return cast(
            list[str], self.redis.zrangebyscore(self.keys.progress(), "-inf", before, 0, limit)
        )

    @_mapped
    def claim_sweep(self, owner: str, *, hold_s: float) -> bool:
        """Claim the next sweep for `owner`: one worker of many sweeps each interval."""
        ms = max(int(hold_s * 1000), 1)
        return bool(self.redis.set(self.keys.sweep_lock(), owner, nx=True, px=ms))
