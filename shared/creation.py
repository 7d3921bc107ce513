"""Writing new runs: each one's hash and `submitted` event, its idempotency key, and its
place in the indexes (listing, deadlines, progress). On one Redis, one run or a thousand cost
the same round trips; on a cluster, each run's hash and event take a MULTI/EXEC of their own
(a transaction stays on one slot)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from redis.commands.core import Script

from quorum.shared.connection import REDIS_ERRORS
from quorum.shared.events import Submitted
from quorum.shared.listing import RunIndex
from quorum.shared.models import RunSpec, TaskStatus
from quorum.shared.scripts import RedisScripts, mapped

__all__ = ["CreationStore"]

_CLAIM_S = 60
"""Seconds an idempotency key is held for a run still being written."""


class CreationStore(RedisScripts):
    """The store's part that writes new runs (`RunStore` sets `index`, `run_timeout_s` and
    `_release_claim`)."""

    index: RunIndex
    run_timeout_s: float
    _release_claim: Script

    @mapped
    def create(self, run_id: str, spec: RunSpec, *, idempotency_key: str | None = None) -> str:
        """Write a new PENDING run and its `submitted` event; return the run id to use.

        With an idempotency key already used, nothing is written and the first run's id is
        returned instead. The key is claimed for `_CLAIM_S` seconds only until the run is
        written, and released (if still ours) when writing fails: a failed submit never
        holds a key for the result TTL.
        """
        return self.create_many([(run_id, spec, idempotency_key)])[0]

    @mapped
    def create_many(self, runs: Sequence[tuple[str, RunSpec, str | None]]) -> list[str]:
        """`create` for many runs (id, spec, idempotency key), in three round trips whatever
        their number (one more to claim idempotency keys): write the runs (one MULTI/EXEC; on
        a cluster, one per slot), then index them. Returns the run id to use for each, in
        order; a run whose key was used before is not written. If writing fails, what was
        written is removed."""
        payloads = [spec.model_dump_json() for _, spec, _ in runs]  # fails before a write
        claimed = self._claim(runs)
        now = time.time()
        fresh = [
            (run_id, spec, payload, key, now + i * 1e-6)  # distinct creation times
            for i, ((run_id, spec, key), payload, existing) in enumerate(
                zip(runs, payloads, claimed, strict=True)
            )
            if existing is None
        ]
        try:
            self._write_new(fresh, now)
        except BaseException:
            self._undo_create(fresh)
            raise
        return [existing or run_id for (run_id, _, _), existing in zip(runs, claimed, strict=True)]

    def _claim(self, runs: Sequence[tuple[str, RunSpec, str | None]]) -> list[str | None]:
        """Claim each idempotency key for its run for `_CLAIM_S` seconds (SET NX); for each
        run, the id of the run its key was first used for if that is another, else None."""
        if not any(key for _, _, key in runs):
            return [None] * len(runs)
        with self.redis.pipeline(transaction=False) as pipe:
            for run_id, _, key in runs:
                if key is not None:
                    pipe.set(self.keys.idempotency(key), run_id, nx=True, ex=_CLAIM_S)
                    pipe.get(self.keys.idempotency(key))
            replies = iter(pipe.execute())
        out: list[str | None] = []
        for run_id, _, key in runs:
            if key is None:
                out.append(None)
                continue
            _, holder = next(replies), next(replies)
            out.append(None if holder in (None, run_id) else str(holder))
        return out

    def _write_new(
        self, fresh: list[tuple[str, RunSpec, str, str | None, float]], now: float
    ) -> None:
        """New PENDING runs (id, spec, spec JSON, idempotency key, creation time): their
        hashes and `submitted` events in one MULTI/EXEC (on a cluster, one per slot), then
        their indexes; a run's claim then lasts as long as the run."""
        for group in self.by_slot(fresh, lambda run: self.keys.run(run[0])):
            self._write_runs(group)
        with self.redis.pipeline(transaction=False) as pipe:  # each index has its own slot
            scores: dict[str, dict[str, float]] = {
                self.keys.deadlines(): {},
                self.keys.progress(): {},
            }
            for run_id, spec, _, key, created in fresh:
                for index in self.index.keys_of(spec):
                    scores.setdefault(index, {})[run_id] = created
                deadline = created + (spec.timeout_s or self.run_timeout_s)
                scores[self.keys.deadlines()][run_id] = deadline
                scores[self.keys.progress()][run_id] = now
                if key is not None:  # the run is written: the claim lasts as long as it does
                    pipe.expire(self.keys.idempotency(key), self.ttl_s)
            for index, members in scores.items():
                if members:
                    pipe.zadd(index, members)
                    pipe.expire(index, self.ttl_s)
            pipe.execute()

    def _write_runs(self, fresh: list[tuple[str, RunSpec, str, str | None, float]]) -> None:
        """The hashes and `submitted` events of new runs, in one MULTI/EXEC."""
        with self.redis.pipeline(transaction=True) as pipe:
            for run_id, spec, payload, _, created in fresh:
                mode = spec.config.mode if spec.config else "none"
                submitted = Submitted(
                    model=spec.model, mode=mode, task=spec.task, task_hash=spec.task_hash
                )
                run_key, events_key = self.keys.run(run_id), self.keys.events(run_id)
                pipe.hset(
                    run_key,
                    mapping={
                        "spec": payload,
                        "status": TaskStatus.PENDING.value,
                        "attempt": 0,
                        "created_at": created,
                        "updated_at": created,
                        **({"callback": spec.callback_url} if spec.callback_url else {}),
                    },
                )
                pipe.xadd(events_key, {"event": submitted.model_dump_json()})
                ttl = self.live_ttl_s(spec.timeout_s or self.run_timeout_s)
                pipe.expire(run_key, ttl)
                pipe.expire(events_key, ttl)
            pipe.execute()

    def _undo_create(self, fresh: list[tuple[str, RunSpec, str, str | None, float]]) -> None:
        """Best effort after a failed `create_many`: drop what was written, release the
        claims."""
        try:
            for run_id, _, _, key, _ in fresh:
                self.redis.delete(self.keys.run(run_id), self.keys.events(run_id))
                self.redis.zrem(self.keys.runs(), run_id)
                if key is not None:
                    self._script(self._release_claim, [self.keys.idempotency(key)], [run_id])
        except REDIS_ERRORS:
            pass  # the claims expire in _CLAIM_S seconds by themselves
