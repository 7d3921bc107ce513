"""The Redis store: the one source of truth for a run's status and provenance.

Every status change is a compare-and-set in a Lua script (`lua/transition.lua`) that also
appends the run's provenance events, so that a duplicated or late job can never move a run
backwards. Every key gets its TTL when it is made, not on every write: a run's hash and
events at submit and at each change of status, an attempt's keys when a write adds to them or
a round is planned (`shared.rounds`), and no script writes a run's keys once it is gone, so
none is remade without a TTL. Redis errors leave this module as
`StoreError`. An attempt's votes, decisions and rounds are kept by the half of the store in
`shared.rounds`, which states the voting-round protocol.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, cast

import redis

from quorum.shared.connection import (
    Client,
    connect,
)
from quorum.shared.creation import CreationStore
from quorum.shared.deliveries import DeliveryStore, lease_s
from quorum.shared.errors import RunNotFoundError
from quorum.shared.events import (
    AttemptStarted,
    Cancelled,
    Event,
    OtherEvent,
    parse_event,
)
from quorum.shared.keys import Keys, workflow_of
from quorum.shared.listing import RunFilter, RunIndex, RunPage
from quorum.shared.models import TaskStatus, Usage, sources_of
from quorum.shared.prompts import FailedAttempt
from quorum.shared.rounds import RoundStore
from quorum.shared.scripts import mapped
from quorum.shared.settings import Settings
from quorum.shared.state import USAGE_FIELDS, RunState, read_state, usage_of
from quorum.shared.waiting import WaitStore

__all__ = ["RunStore"]


class RunStore(RoundStore, CreationStore, DeliveryStore, WaitStore):
    """Reads and writes runs; the only code that talks to Redis about them."""

    def __init__(
        self,
        client: Client,
        *,
        keys: Keys,
        ttl_s: int,
        url: str | None = None,
        run_timeout_s: float = 3600.0,
        tls: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(client, keys=keys, ttl_s=ttl_s)
        self.url = url
        self.tls = tls
        self.run_timeout_s = run_timeout_s
        self._transition = self.script("transition")
        self._release_claim = self.script("release_claim")
        self.index = RunIndex(client, keys=keys, ttl_s=ttl_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> RunStore:
        """A store on the configured Redis and namespace."""
        store = cls(
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
        store.webhook_lease_s = lease_s(settings)
        return store

    # -- producer side (creating runs: `shared.creation`) ---------------------------------

    @mapped
    def discard(self, run_id: str, *, idempotency_key: str | None = None) -> None:
        """Remove a run that could not be enqueued, so that nothing half-made is left (its
        idempotency key released, if it still names this run)."""
        self.redis.delete(self.keys.run(run_id), self.keys.events(run_id))
        self.redis.zrem(self.keys.runs(), run_id)
        self.unindex(run_id)
        if idempotency_key is not None:
            self._script(self._release_claim, [self.keys.idempotency(idempotency_key)], [run_id])

    @mapped
    def load(self, run_id: str) -> RunState:
        """The run as it is now; `RunNotFoundError` if it does not exist."""
        raw = cast(dict[str, str], self.redis.hgetall(self.keys.run(run_id)))
        if not raw:
            raise RunNotFoundError(f"no run {run_id!r} (unknown id, or expired)")
        return read_state(run_id, raw)

    @mapped
    def status(self, run_id: str) -> TaskStatus:
        """The run's current status."""
        status = cast(str | None, self.redis.hget(self.keys.run(run_id), "status"))
        if status is None:
            raise RunNotFoundError(f"no run {run_id!r} (unknown id, or expired)")
        return TaskStatus(status)

    @mapped
    def events(self, run_id: str) -> list[Event | OtherEvent]:
        """The run's provenance, oldest first."""
        return [event for _, event in self.event_entries(run_id)]

    @mapped
    def event_entries(self, run_id: str) -> list[tuple[str, Event | OtherEvent]]:
        """The run's provenance, oldest first, each event with its stream id (what a live
        stream's `Last-Event-ID` resumes after)."""
        entries = cast(list[Any], self.redis.xrange(self.keys.events(run_id)))
        return [(entry_id, parse_event(fields["event"])) for entry_id, fields in entries]

    @mapped
    def recent(self, *, since: float, limit: int) -> list[str]:
        """Ids of the runs created at or after `since` (epoch seconds), newest first, at most
        `limit` of them (read-only; the metrics collector lists runs with it)."""
        ids = self.redis.zrevrangebyscore(self.keys.runs(), "+inf", since, start=0, num=limit)
        return cast(list[str], ids)

    @mapped
    def list_runs(self, where: RunFilter, *, limit: int = 50, cursor: str | None = None) -> RunPage:
        """A page of the runs that match `where`, newest first (`shared.listing`)."""
        return self.index.page(where, limit=limit, cursor=cursor)

    def cancel(self, run_id: str, *, worker: str = "") -> bool:
        """End the run as CANCELLED unless it is already terminal; True if it was cancelled."""
        return self.transition(run_id, TaskStatus.CANCELLED, events=[Cancelled(worker=worker)])

    # -- worker side ---------------------------------------------------------------------

    @mapped
    def transition(
        self,
        run_id: str,
        new: TaskStatus,
        *,
        attempt: int | None = None,
        events: Sequence[Event] = (),
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

        (done, *reply), *_ = self._script_then(self._transition, keys, args, then)
        if done and new.terminal:
            self._ended(run_id, new, float(reply[2] or time.time()), webhook=reply[3] == 1)
        return bool(done)

    def _ended(self, run_id: str, status: TaskStatus, created: float, *, webhook: bool) -> None:
        """Move a run that just ended from the sweep's indices to its final status's, and
        schedule and send its webhook if its end recorded one (`shared.webhooks`)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.deadlines(), run_id)
            pipe.zrem(self.keys.progress(), run_id)
            self.index.ended(pipe, run_id, status, created)
            if webhook:
                self._webhook_recorded(pipe, run_id)
            pipe.execute()
        if webhook:
            self.send_webhook(run_id)

    @mapped
    def start_voting(
        self,
        run_id: str,
        attempt: int,
        output: Any,
        event: Event,
        usage: Usage,
        plan: dict[int, list[int]],
    ) -> bool:
        """Move the run from RUNNING to VALIDATING in `attempt` by compare-and-set, storing
        the attempt's output with `event`; bill the call, mark progress, and plan the first
        voting round (`plan_round`) if the run moved: one round trip. Returns whether it moved.

        After Redis lost its scripts (a restart), the pipeline goes again with them loaded and
        without its bill: a move made by the first try is then found made, in this attempt.
        """
        status = TaskStatus.VALIDATING
        fields = {f"output:{attempt}": output}
        keys, args = self._transition_call(run_id, status, attempt, [event], fields)
        plan_keys, plan_args = self._plan_call(run_id, attempt, 1, plan, status.value)

        def send(first: bool) -> list[Any]:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(self._transition.sha, len(keys), *keys, *args)
                if first:
                    self._bill(pipe, run_id, usage)
                    self._touch(pipe, run_id)
                pipe.evalsha(self._plan.sha, len(plan_keys), *plan_keys, *plan_args)
                return cast(list[Any], pipe.execute())

        try:
            (moved, *_), *_ = send(True)
            return bool(moved)
        except redis.exceptions.NoScriptError:
            for script in (self._transition, self._plan):
                self.redis.script_load(script.script)
        (moved, now, at), *_ = send(False)
        return bool(moved) or (now, at) == (status.value, str(attempt))

    @mapped
    def begin_attempt(
        self, run_id: str, attempt: int, started: AttemptStarted
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
        return bool(done), read_state(run_id, raw) if raw else None

    def _transition_call(
        self,
        run_id: str,
        new: TaskStatus,
        attempt: int | None,
        events: Sequence[Event],
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
            *(e.model_dump_json() for e in events),
            *pairs,
        ]
        if not new.terminal:
            return keys, args
        keys.append(self.keys.done(run_id))
        workflow = workflow_of(run_id)
        if workflow is not None:  # a node run: its end counts down the workflow's graph
            keys += [
                self.keys.wf_nodes(workflow),
                self.keys.wf_ready(workflow),
                self.keys.workflow(workflow),
                self.keys.wf_events(workflow),
            ]
        return keys, args

    @mapped
    def bill(self, run_id: str, usage: Usage) -> None:
        """Add a call's tokens to the run's totals."""
        with self.redis.pipeline(transaction=True) as pipe:
            self._bill(pipe, run_id, usage)
            pipe.execute()

    @mapped
    def usage(self, run_id: str) -> Usage:
        """The tokens and cost the run has spent so far, counted atomically in Redis."""
        values = cast(list[Any], self.redis.hmget(self.keys.run(run_id), USAGE_FIELDS))
        return usage_of(dict(zip(USAGE_FIELDS, values, strict=True)))

    @mapped
    def claim_call(self, run_id: str, attempt: int, *, hold_s: float) -> bool:
        """Take the lease of the attempt's task call for `hold_s` seconds; False when a job
        beside this one holds it (a duplicate delivery of the same job)."""
        ms = max(int(hold_s * 1000), 1)
        return bool(self.redis.set(self.keys.call(run_id, attempt), 1, nx=True, px=ms))

    @mapped
    def call_held_s(self, run_id: str, attempt: int) -> float:
        """Seconds left on the lease of the attempt's call (0 if none)."""
        return max(int(cast(int, self.redis.pttl(self.keys.call(run_id, attempt)))), 0) / 1000

    @mapped
    def release_call(self, run_id: str, attempt: int) -> None:
        """Give the lease back (the call failed; the job's retry takes it again)."""
        self.redis.delete(self.keys.call(run_id, attempt))

    @mapped
    def workflow_usage(self, workflow_id: str) -> Usage:
        """What every run of a workflow has spent together (billed to its hash as well)."""
        values = cast(list[Any], self.redis.hmget(self.keys.workflow(workflow_id), USAGE_FIELDS))
        return usage_of(dict(zip(USAGE_FIELDS, values, strict=True)))

    @mapped
    def record_failure(
        self, run_id: str, attempt: int, failure: FailedAttempt, event: Event
    ) -> bool:
        """Keep why an attempt failed, for the next attempt's feedback; once per attempt."""
        payload = json.dumps({"output": failure.output, "reasonings": list(failure.reasonings)})
        key, name = self.keys.run(run_id), f"failure:{attempt}"
        return self._once(key, run_id, name, payload, event)

    # -- the sweep ------------------------------------------------------------------------

    @mapped
    def touch(self, run_id: str, at: float | None = None) -> None:
        """Mark progress on a live run (only one still indexed: a finished run stays out)."""
        self._touch(self.redis, run_id, at)

    @mapped
    def unindex(self, run_id: str) -> None:
        """Drop a run from the sweep's indices (it ended, or it is gone)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.deadlines(), run_id)
            pipe.zrem(self.keys.progress(), run_id)
            pipe.execute()

    @mapped
    def past_deadline(self, now: float, *, limit: int = 500) -> list[str]:
        """Live runs whose deadline has passed, the most overdue first."""
        return cast(
            list[str], self.redis.zrangebyscore(self.keys.deadlines(), "-inf", now, 0, limit)
        )

    @mapped
    def stalled(self, before: float, *, limit: int = 500) -> list[str]:
        """Live runs with no progress since `before`, the longest stalled first."""
        return cast(
            list[str], self.redis.zrangebyscore(self.keys.progress(), "-inf", before, 0, limit)
        )

    @mapped
    def claim_sweep(self, owner: str, *, hold_s: float) -> bool:
        """Claim the next sweep for `owner`: one worker of many sweeps each interval."""
        ms = max(int(hold_s * 1000), 1)
        return bool(self.redis.set(self.keys.sweep_lock(), owner, nx=True, px=ms))
