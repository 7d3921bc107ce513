"""Finding workflows: every workflow by creation time, read newest first in pages, and the
statuses of a workflow's node runs (what the dashboard reads of workflows).

`Keys.workflow_index` holds every workflow id scored by its creation time, written at submit
beside the workflow (`WorkflowStore.create`), trimmed of members older than the TTL there,
and its TTL renewed. Like the runs' listing indexes it spans workflows, so it carries no hash
tag and no atomic step touches it with a workflow's keys. A page walks it newest first and
reads each candidate's hash in one pipelined round trip per chunk; a member whose workflow
has expired leaves the index when a page meets it. A page holds at most `limit` workflows
and stops after examining `scan_limit` candidates; its cursor (the creation time and id of
the last candidate examined) continues from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import BaseModel

from quorum.shared.listing import newest_first
from quorum.shared.models import Usage
from quorum.shared.scripts import RedisScripts, mapped
from quorum.shared.state import USAGE_FIELDS, usage_of
from quorum.shared.wfstore import WorkflowStatus

__all__ = ["WorkflowListing", "WorkflowPage", "WorkflowSummary"]

_FIELDS = ("name", "status", "created_at", "finished_at", "nodes", "left", "error", *USAGE_FIELDS)


class WorkflowSummary(BaseModel):
    """One workflow in a listing: who it is, how it stands, what it has cost so far."""

    id: str
    name: str
    status: WorkflowStatus
    nodes: int
    left: int
    error: str = ""
    created_at: float
    finished_at: float | None = None
    usage: Usage

    @property
    def ended_nodes(self) -> int:
        """Nodes that have ended (run to their end, or skipped)."""
        return max(self.nodes - self.left, 0)


@dataclass(frozen=True)
class WorkflowPage:
    """A page of workflows, newest first; `next_cursor` continues it (None: no more)."""

    workflows: list[WorkflowSummary] = field(default_factory=list)
    next_cursor: str | None = None


def _summary(workflow_id: str, raw: dict[str, Any]) -> WorkflowSummary:
    left = int(raw["left"] or 0)
    return WorkflowSummary(
        id=workflow_id,
        name=raw["name"] or "",
        status=WorkflowStatus(raw["status"]),
        nodes=int(raw["nodes"] or left),  # a workflow written before the count was kept
        left=left,
        error=raw["error"] or "",
        created_at=float(raw["created_at"] or 0),
        finished_at=float(raw["finished_at"]) if raw["finished_at"] else None,
        usage=usage_of(raw),
    )


class WorkflowListing(RedisScripts):
    """Reads the workflow index and the hashes it names (no writes but dropping members
    whose workflow has expired)."""

    @mapped
    def page(
        self,
        *,
        status: WorkflowStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
        scan_limit: int = 1000,
    ) -> WorkflowPage:
        """Up to `limit` workflows (in `status`, if given), newest first, after `cursor`."""

        def check(batch: list[tuple[str, float]]) -> list[WorkflowSummary | None]:
            return [
                s if s is not None and (status is None or s.status == status) else None
                for s in self._read(batch)
            ]

        found, following = newest_first(
            self.redis,
            self.keys.workflow_index(),
            low="-inf",
            cursor=cursor,
            limit=limit,
            scan_limit=scan_limit,
            check=check,
        )
        return WorkflowPage(found, following)

    def _read(self, batch: list[tuple[str, float]]) -> list[WorkflowSummary | None]:
        """Each candidate's summary; None (and out of the index) where it has expired."""
        with self.redis.pipeline(transaction=False) as pipe:
            for workflow_id, _ in batch:
                pipe.hmget(self.keys.workflow(workflow_id), _FIELDS)
            replies = cast(list[list[str | None]], pipe.execute())
        out: list[WorkflowSummary | None] = []
        for (workflow_id, _), values in zip(batch, replies, strict=True):
            raw = dict(zip(_FIELDS, values, strict=True))
            out.append(None if raw["status"] is None else _summary(workflow_id, raw))
        gone = [workflow_id for (workflow_id, _), s in zip(batch, out, strict=True) if s is None]
        if gone:
            self.redis.zrem(self.keys.workflow_index(), *gone)
        return out

    @mapped
    def statuses(self, run_ids: Sequence[str]) -> dict[str, str | None]:
        """Each run's status (None: no such run), in one round trip: a graph's node runs."""
        with self.redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hget(self.keys.run(run_id), "status")
            replies = cast(list[str | None], pipe.execute())
        return dict(zip(run_ids, replies, strict=True))
