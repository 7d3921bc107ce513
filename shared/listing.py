"""Listing runs: indexes written at submit and at the end of a run, read newest first.

Every run is in `Keys.runs` (all runs by creation time). At submit it also goes into one
index per filterable attribute: its defined task (`Keys.runs_by_task`) and each scalar
metadata value (`Keys.runs_by_metadata`); when it ends, into its final status's index
(`Keys.runs_by_status`). All are sorted sets scored by the run's creation time.

A listing walks ONE index (the final status's when asked for one, else a metadata value's,
else the task's, else all runs), newest first, and checks the other filters for each
candidate: membership of the other indexes by ZSCORE and the run's own status, in one
pipelined round trip per chunk. It is never a scan of all runs unless no filter narrows it.
A page holds at most `limit` runs and stops after examining `scan_limit` candidates; its
cursor (the creation time and id of the last candidate examined) continues from there, so
a page may be short while more runs match: follow `next_cursor` until it is None.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast, overload

from pydantic import BaseModel, Field

from quorum.shared.connection import Client
from quorum.shared.errors import InvalidRequestError
from quorum.shared.keys import Keys
from quorum.shared.models import RunSpec, TaskStatus

__all__ = [
    "RunFilter",
    "RunIndex",
    "RunPage",
    "RunSummary",
    "metadata_text",
    "newest_first",
    "parse_cursor",
]

_FIELDS = ("status", "attempt", "created_at", "updated_at", "error", "code", "spec")
_MAX_INDEXED_VALUE = 256
"""Longest metadata value (as text) that gets an index; longer ones are kept, not indexed."""


def metadata_text(value: Any) -> str | None:
    """A metadata value as its index and the listing filter write it (a string itself,
    a number or boolean as JSON), or None if it is not indexed (nested, null or too long)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        return None
    return text if len(text) <= _MAX_INDEXED_VALUE else None


class RunSummary(BaseModel):
    """One run in a listing: who it is and how it stands, without its outputs."""

    id: str
    status: TaskStatus
    attempt: int = 0
    task: str | None = Field(None, description="The defined task's name, if submitted by name.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    error: str = ""
    code: str = ""
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class RunPage(Sequence[RunSummary]):
    """A page of a listing, newest first; `next_cursor` continues it (None: no more)."""

    runs: list[RunSummary] = field(default_factory=list)
    next_cursor: str | None = None

    @overload
    def __getitem__(self, index: int) -> RunSummary: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[RunSummary]: ...
    def __getitem__(self, index: int | slice) -> RunSummary | Sequence[RunSummary]:
        return self.runs[index]

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[RunSummary]:
        return iter(self.runs)


@dataclass(frozen=True)
class RunFilter:
    """What a listing asks for; every given filter must hold."""

    status: TaskStatus | None = None
    task: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    created_after: float | None = None

    @classmethod
    def checked(
        cls,
        *,
        status: Any = None,
        task: str | None = None,
        metadata: dict[str, Any] | None = None,
        created_after: float | None = None,
    ) -> RunFilter:
        """A filter from a producer's arguments; `InvalidRequestError` naming a bad one."""
        try:
            wanted = None if status is None else TaskStatus(status)
        except ValueError as exc:
            raise InvalidRequestError(f"unknown status {status!r}") from exc
        if created_after is not None and not math.isfinite(created_after):
            raise InvalidRequestError(f"created_after must be a finite number, got {created_after}")
        texts = {name: metadata_text(value) for name, value in (metadata or {}).items()}
        if None in texts.values():
            raise InvalidRequestError("metadata filters take strings, numbers or booleans")
        indexed = {name: text for name, text in texts.items() if text is not None}
        return cls(status=wanted, task=task, metadata=indexed, created_after=created_after)

    def sources(self, keys: Keys) -> list[str]:
        """The indexes the filter reads, the one to walk first."""
        found = [keys.runs_by_status(self.status.value)] if self.status in _ENDED else []
        found += [keys.runs_by_metadata(k, v) for k, v in sorted(self.metadata.items())]
        found += [keys.runs_by_task(self.task)] if self.task is not None else []
        return found or [keys.runs()]


_ENDED = frozenset(s for s in TaskStatus if s.terminal)


def parse_cursor(text: str | None) -> tuple[float, str] | None:
    """A listing's cursor (`<score>:<id>`, as a page gave it) as its score and member; None
    for none. Anything else is refused."""
    if text is None or text == "":
        return None
    score, sep, run_id = text.partition(":")
    try:
        value = float(score)
    except ValueError:
        value = float("nan")
    if not sep or not run_id or value != value:
        raise InvalidRequestError(f"cursor {text!r} is not one a listing gave")
    return value, run_id


T = TypeVar("T")


def newest_first(
    redis: Client,
    key: str,
    *,
    low: Any,
    cursor: str | None,
    limit: int,
    scan_limit: int,
    check: Callable[[list[tuple[str, float]]], list[T | None]],
) -> tuple[list[T], str | None]:
    """A page of the members of the sorted set at `key`, newest (highest score) first, after
    `cursor` and above `low`: up to `limit` of those that `check` turns into an item (None:
    left out), examining `scan_limit` members at most. Returns the items and the cursor of
    the next page (None: none left). Members are read in chunks; ties with the cursor's score
    are told apart by member, so that a page boundary inside a tie loses nothing."""
    after = parse_cursor(cursor)
    high: Any = "+inf" if after is None else after[0]
    found: list[T] = []
    examined, skip, last = 0, 0, after
    chunk = max(min(limit * 2, 500), 20)
    while examined < scan_limit:
        batch = cast(
            list[tuple[str, float]],
            redis.zrevrangebyscore(key, high, low, start=skip, num=chunk, withscores=True),
        )
        fresh = [(m, s) for m, s in batch if after is None or (s, m) < after]
        if not fresh and len(batch) == chunk:  # all ties with the cursor: look further
            skip += chunk
            continue
        for (member, score), item in zip(fresh, check(fresh), strict=True):
            examined += 1
            last = (score, member)
            if item is not None:
                found.append(item)
                if len(found) == limit:
                    return found, f"{score!r}:{member}"
        if len(batch) < chunk:
            return found, None
        high, after, skip = last[0] if last else high, last, 0
    return found, f"{last[0]!r}:{last[1]}" if last else None


class RunIndex:
    """The listing indexes of one store: written at submit and at a run's end, read by
    `page`."""

    def __init__(self, client: Client, *, keys: Keys, ttl_s: int) -> None:
        self.redis = client
        self.keys = keys
        self.ttl_s = ttl_s

    def keys_of(self, spec: RunSpec) -> list[str]:
        """The indexes a new run goes into at submit: all runs, its task's, and one per
        scalar metadata value."""
        keys = [self.keys.runs()]
        if spec.task:
            keys.append(self.keys.runs_by_task(spec.task))
        for name, value in spec.metadata.items():
            text = metadata_text(value)
            if text is not None:
                keys.append(self.keys.runs_by_metadata(name, text))
        return keys

    def ended(self, pipe: Any, run_id: str, status: TaskStatus, created: float) -> None:
        """Put a run that ended with `status` into that status's index, through `pipe`."""
        key = self.keys.runs_by_status(status.value)
        pipe.zadd(key, {run_id: created})
        pipe.expire(key, self.ttl_s)

    def page(
        self,
        where: RunFilter,
        *,
        limit: int = 50,
        cursor: str | None = None,
        scan_limit: int = 2000,
    ) -> RunPage:
        """Up to `limit` runs that match `where`, newest first, after `cursor`."""
        source, *others = where.sources(self.keys)
        low: Any = "-inf" if where.created_after is None else f"({where.created_after!r}"
        found, following = newest_first(
            self.redis,
            source,
            low=low,
            cursor=cursor,
            limit=limit,
            scan_limit=scan_limit,
            check=lambda batch: self._check(batch, where, source, others),
        )
        return RunPage(found, following)

    def _check(
        self, batch: list[tuple[str, float]], where: RunFilter, source: str, others: list[str]
    ) -> list[RunSummary | None]:
        """Each candidate's summary if it matches every filter, else None; expired runs
        leave the indexes."""
        with self.redis.pipeline(transaction=False) as pipe:
            for run_id, _ in batch:
                for key in others:
                    pipe.zscore(key, run_id)
                pipe.hmget(self.keys.run(run_id), _FIELDS)
            replies = pipe.execute()
        width = len(others) + 1
        out: list[RunSummary | None] = []
        gone: list[str] = []
        for i, (run_id, _) in enumerate(batch):
            *scores, values = replies[i * width : (i + 1) * width]
            raw = dict(zip(_FIELDS, values, strict=True))
            if raw["status"] is None:
                gone.append(run_id)
                out.append(None)
            elif any(s is None for s in scores) or (
                where.status is not None and raw["status"] != where.status.value
            ):
                out.append(None)
            else:
                out.append(_summary(run_id, raw))
        if gone:
            with self.redis.pipeline(transaction=False) as pipe:
                for key in {source, self.keys.runs()}:
                    pipe.zrem(key, *gone)
                pipe.execute()
        return out


def _summary(run_id: str, raw: dict[str, Any]) -> RunSummary:
    try:
        spec = json.loads(raw["spec"] or "{}")
    except ValueError:  # an unreadable run is still listed, without its metadata
        spec = {}
    return RunSummary(
        id=run_id,
        status=TaskStatus(raw["status"]),
        attempt=int(raw["attempt"] or 0),
        task=spec.get("task"),
        metadata=spec.get("metadata") or {},
        error=raw["error"] or "",
        code=raw["code"] or "",
        created_at=float(raw["created_at"] or 0),
        updated_at=float(raw["updated_at"] or 0),
    )
