"""The Redis side of workflows: a workflow's hash, its nodes' scheduling state, its events,
and the scripts that start, settle and finish nodes atomically.

Every key of a workflow carries its id as the hash tag, and so do its node runs' keys (run
ids `<workflow>.<node>.<item>`, `Keys`), so that the step that ends a node run also counts
down the node's dependents in the same script (`lua/transition.lua`, `lua/wf_lib.lua`).
The nodes hash holds, per node number `n`: `n:name`, `n:state` (`WAITING`, `STARTED`, then
the node's final status or `SKIPPED`), `n:pending` (upstream nodes not ended), `n:bad`
(upstream nodes ended other than SUCCESSFUL), `n:deps` (dependents' numbers), `n:map`,
`n:items` (runs in all), `n:started`, `n:ended`, `n:failed` and `n:error`.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast

from quorum.shared.deliveries import workflow_delivery
from quorum.shared.errors import RunNotFoundError
from quorum.shared.graph import Graph, WorkflowDoc
from quorum.shared.models import RunSpec, Usage
from quorum.shared.scripts import RedisScripts, mapped
from quorum.shared.state import USAGE_FIELDS, usage_of
from quorum.shared.store import RunStore
from quorum.shared.wfevents import (
    NodeReady,
    OtherWorkflowEvent,
    WorkflowEvent,
    parse_workflow_event,
)

__all__ = ["NodeState", "WorkflowState", "WorkflowStatus", "WorkflowStore", "node_run_id"]


class WorkflowStatus(enum.StrEnum):
    """Where a workflow stands; all but RUNNING are final."""

    RUNNING = "RUNNING"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


RUNNING, WAITING, STARTED = WorkflowStatus.RUNNING.value, "WAITING", "STARTED"


def node_run_id(workflow_id: str, node: int, item: int) -> str:
    """The deterministic id of a node's run: creating it twice finds the first."""
    return f"{workflow_id}.{node}.{item}"


@dataclass
class NodeState:
    """One node's scheduling counters, as read from the nodes hash."""

    index: int
    name: str
    state: str
    pending: int = 0
    bad: int = 0
    is_map: bool = False
    items: int = 0
    started: int = 0
    ended: int = 0
    failed: int = 0
    error: str = ""


@dataclass
class WorkflowState:
    """A workflow as read from its hash and nodes hash."""

    workflow_id: str
    doc: WorkflowDoc
    status: str
    created_at: float
    deadline: float
    left: int
    error: str = ""
    finished_at: float | None = None
    usage: Usage = field(default_factory=Usage)
    nodes: list[NodeState] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)

    def node(self, name: str) -> NodeState:
        """The node of that name."""
        return next(n for n in self.nodes if n.name == name)


@lru_cache(maxsize=256)
def _doc(text: str) -> WorkflowDoc:
    return WorkflowDoc.model_validate_json(text)


def _nodes(raw: dict[str, str], count: int) -> list[NodeState]:
    def num(n: int, name: str) -> int:
        return int(raw.get(f"{n}:{name}") or 0)

    return [
        NodeState(
            index=n,
            name=raw.get(f"{n}:name", ""),
            state=raw.get(f"{n}:state", WAITING),
            pending=num(n, "pending"),
            bad=num(n, "bad"),
            is_map=raw.get(f"{n}:map") == "1",
            items=num(n, "items"),
            started=num(n, "started"),
            ended=num(n, "ended"),
            failed=num(n, "failed"),
            error=raw.get(f"{n}:error", ""),
        )
        for n in range(count)
    ]


class WorkflowStore(RedisScripts):
    """Reads and writes workflows; shares the run store's client, keys and TTL."""

    def __init__(self, store: RunStore) -> None:
        super().__init__(store.redis, keys=store.keys, ttl_s=store.ttl_s)
        self.runs = store
        self._start = self.script("wf_start")
        self._settle = self.script("wf_settle")
        self._finish = self.script("wf_finish")

    @staticmethod
    @lru_cache(maxsize=8)
    def of(store: RunStore) -> WorkflowStore:
        """The workflow store beside a run store (made once per run store)."""
        return WorkflowStore(store)

    # -- producer side -------------------------------------------------------------------

    @mapped
    def create(
        self, workflow_id: str, graph: Graph, *, timeout_s: float, idempotency_key: str | None
    ) -> str:
        """Write a new RUNNING workflow with its nodes WAITING and its roots ready; return
        the workflow id to use (the first one's, for an idempotency key already used)."""
        if idempotency_key is not None:
            key = self.keys.wf_idempotency(idempotency_key)
            if not self.redis.set(key, workflow_id, nx=True, ex=self.ttl_s):
                existing = self.redis.get(key)
                if existing is not None:
                    return str(existing)
        now = time.time()
        nodes: dict[str, str | int] = {}
        roots = []
        for n, name in enumerate(graph.names):
            deps = ",".join(str(graph.index(d)) for d in graph.dependents[name])
            ups = len(graph.upstream[name])
            nodes |= {
                f"{n}:name": name,
                f"{n}:state": WAITING,
                f"{n}:pending": ups,
                f"{n}:bad": 0,
                f"{n}:deps": deps,
                f"{n}:map": int(graph.node(name).map is not None),
            }
            if ups == 0:
                roots.append(n)
        wf, keys = self.keys.workflow(workflow_id), self._keys(workflow_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                wf,
                mapping={
                    "doc": graph.doc.model_dump_json(),
                    "name": graph.doc.name,
                    "status": RUNNING,
                    "created_at": now,
                    "updated_at": now,
                    "deadline": now + timeout_s,
                    "left": len(graph.names),
                    "nodes": len(graph.names),
                    **({"callback": graph.doc.callback_url} if graph.doc.callback_url else {}),
                },
            )
            pipe.hset(keys[0], mapping=cast(Any, nodes))
            pipe.sadd(keys[1], *roots)
            for n in roots:
                ready = NodeReady(node=graph.names[n])
                pipe.xadd(keys[3], {"event": ready.model_dump_json()})
            for key in (wf, *keys):
                pipe.expire(key, self.ttl_s)
            pipe.execute()
        with self.redis.pipeline(transaction=False) as pipe:  # each index has its own slot
            for index in (self.keys.workflows(), self.keys.workflow_index()):
                pipe.zadd(index, {workflow_id: now})
                pipe.expire(index, self.ttl_s)
            pipe.zremrangebyscore(self.keys.workflow_index(), "-inf", now - self.ttl_s)
            pipe.execute()
        return workflow_id

    @mapped
    def discard(self, workflow_id: str, *, idempotency_key: str | None = None) -> None:
        """Remove a workflow whose first job could not be sent."""
        keys = [self.keys.workflow(workflow_id), *self._keys(workflow_id)]
        if idempotency_key is not None:
            keys.append(self.keys.wf_idempotency(idempotency_key))
        self.redis.delete(*keys)
        self.redis.zrem(self.keys.workflows(), workflow_id)
        self.redis.zrem(self.keys.workflow_index(), workflow_id)

    def _keys(self, workflow_id: str) -> list[str]:
        """The nodes hash, ready set, inputs hash and events stream."""
        k = self.keys
        return [
            k.wf_nodes(workflow_id),
            k.wf_ready(workflow_id),
            k.wf_inputs(workflow_id),
            k.wf_events(workflow_id),
        ]

    # -- reading -------------------------------------------------------------------------

    @mapped
    def load(self, workflow_id: str, *, step: bool = False) -> WorkflowState:
        """The workflow as it is now; `RunNotFoundError` if there is none. For a scheduling
        `step`, in the same round trip: the ready set's members (`WorkflowState.ready`), and
        the workflow marked active for the sweep."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.workflow(workflow_id))
            pipe.hgetall(self.keys.wf_nodes(workflow_id))
            if step:
                pipe.smembers(self.keys.wf_ready(workflow_id))
                pipe.zadd(self.keys.workflows(), {workflow_id: time.time()}, xx=True)
            raw, nodes, *rest = cast(list[Any], pipe.execute())
        if not raw:
            raise RunNotFoundError(f"no workflow {workflow_id!r} (unknown id, or expired)")
        doc = _doc(raw["doc"])
        return WorkflowState(
            workflow_id=workflow_id,
            doc=doc,
            status=raw["status"],
            created_at=float(raw["created_at"]),
            deadline=float(raw["deadline"]),
            left=int(raw.get("left") or 0),
            error=raw.get("error", ""),
            finished_at=float(raw["finished_at"]) if raw.get("finished_at") else None,
            usage=usage_of({k: raw.get(k) for k in USAGE_FIELDS}),
            nodes=_nodes(nodes, len(doc.nodes)),
            ready=set(rest[0]) if rest else set(),
        )

    @mapped
    def inputs(self, workflow_id: str, node: int) -> dict[str, Any] | None:
        """What a started node's runs were made from (its resolved kwargs, map items)."""
        raw = self.redis.hget(self.keys.wf_inputs(workflow_id), str(node))
        return None if raw is None else cast(dict[str, Any], json.loads(cast(str, raw)))

    @mapped
    def results(self, run_ids: Sequence[str]) -> list[tuple[str | None, Any]]:
        """Each run's status and result (None where it has none), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hmget(self.keys.run(run_id), ["status", "result"])
            replies = cast(list[list[str | None]], pipe.execute())
        return [(s, None if r is None else json.loads(r)) for s, r in replies]

    @mapped
    def clear_ready(self, workflow_id: str, members: set[str]) -> None:
        """Remove what a scheduling step has seen from the ready set."""
        if members:
            self.redis.srem(self.keys.wf_ready(workflow_id), *members)

    @mapped
    def events(self, workflow_id: str) -> list[WorkflowEvent | OtherWorkflowEvent]:
        """The workflow's events, oldest first."""
        return [event for _, event in self.event_entries(workflow_id)]

    @mapped
    def event_entries(
        self, workflow_id: str
    ) -> list[tuple[str, WorkflowEvent | OtherWorkflowEvent]]:
        """The workflow's events, oldest first, each with its stream id (what a live stream
        resumes after)."""
        entries = cast(list[Any], self.redis.xrange(self.keys.wf_events(workflow_id)))
        return [(entry_id, parse_workflow_event(fields["event"])) for entry_id, fields in entries]

    def watch(
        self, workflow_id: str, *, timeout_s: float | None
    ) -> Iterator[WorkflowEvent | OtherWorkflowEvent]:
        """Yield the workflow's events as they arrive, from the first, until it ends (or
        `timeout_s` runs out); blocks on the stream (XREAD BLOCK)."""
        key, last_id = self.keys.wf_events(workflow_id), "0-0"
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            left = 5.0 if deadline is None else min(deadline - time.monotonic(), 5.0)
            reply = self.redis.xread({key: last_id}, block=max(int(left * 1000), 1))
            for _, entries in cast(list[Any], reply or []):
                for entry_id, fields in entries:
                    last_id = entry_id
                    event = parse_workflow_event(fields["event"])
                    yield event
                    if event.type == "workflow_finished":
                        return

    @mapped
    def wait(self, workflow_id: str, *, timeout_s: float | None) -> WorkflowState:
        """The workflow once it has ended, or as it is when `timeout_s` runs out."""
        done = self.keys.wf_done(workflow_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            block: Any = 5.0 if left is None else max(min(left, 5.0), 0.001)
            if self.redis.blmove(done, done, block, "RIGHT", "LEFT"):
                break
            if self.redis.hget(self.keys.workflow(workflow_id), "status") != RUNNING:
                break
        return self.load(workflow_id)

    @mapped
    def live(self, before: float, *, limit: int = 200) -> list[str]:
        """Live workflows with no activity since `before` (epoch seconds)."""
        ids = self.redis.zrangebyscore(self.keys.workflows(), "-inf", before, 0, limit)
        return cast(list[str], ids)

    @mapped
    def touch(self, workflow_id: str) -> None:
        """Mark activity on a live workflow (only one still indexed)."""
        self.redis.zadd(self.keys.workflows(), {workflow_id: time.time()}, xx=True)

    # -- scheduling steps ----------------------------------------------------------------

    @mapped
    def start(
        self,
        workflow_id: str,
        node: int,
        *,
        started: int | None,
        items: int,
        inputs: dict[str, Any] | None,
        runs: Sequence[tuple[str, RunSpec, str]],
        deadline: float,
    ) -> int:
        """Create a node's next runs `(run id, spec, submitted event JSON)` unless a step
        beside this one did first (`started`: the node's runs started as read; None: its first
        start). Returns how many, -1 (lost the race) or -2 (the workflow has ended). The new
        runs join the sweep's indices in the same round trip."""
        now = time.time()
        keys = [
            self.keys.wf_nodes(workflow_id),
            self.keys.wf_ready(workflow_id),
            self.keys.workflow(workflow_id),
            self.keys.wf_events(workflow_id),
            self.keys.wf_inputs(workflow_id),
        ]
        args: list[Any] = [
            node,
            "" if started is None else started,
            items,
            self.live_ttl_s(deadline - now),  # the node's runs' TTL, and its workflow's keys'
            now,
            "" if inputs is None else json.dumps(inputs),
            len(runs),
        ]
        for run_id, spec, submitted in runs:
            keys += [self.keys.run(run_id), self.keys.events(run_id)]
            args += [spec.model_dump_json(), submitted]

        def then(pipe: Any) -> None:
            for run_id, _, _ in runs:
                pipe.zadd(self.keys.runs(), {run_id: now})
                pipe.zadd(self.keys.deadlines(), {run_id: deadline})
                pipe.zadd(self.keys.progress(), {run_id: now})

        made, *_ = self._script_then(self._start, keys, args, then)
        if made < 0:  # nothing was made here: the indices keep no id without a run
            for run_id, _, _ in runs:
                if not self.redis.exists(self.keys.run(run_id)):
                    self.redis.zrem(self.keys.runs(), run_id)
                    self.runs.unindex(run_id)
        return int(made)

    @mapped
    def settle(self, workflow_id: str, node: int, status: str, *, error: str = "") -> bool:
        """End a WAITING node without a run (`SKIPPED`, or `FAILED` with `error`)."""
        nodes, ready, _, events = self._keys(workflow_id)
        keys = [nodes, ready, self.keys.workflow(workflow_id), events]
        return bool(self._script(self._settle, keys, [node, status, self.ttl_s, error]))

    @mapped
    def finish(self, workflow_id: str, status: str, *, error: str = "") -> bool:
        """End the workflow with `status` unless it has ended; True if it ended now. Its end
        records its webhook, if it has one, in the same script; the delivery is scheduled and
        sent before the workflow leaves the sweep's index (`ended`)."""
        k = self.keys
        keys = [k.workflow(workflow_id), k.wf_events(workflow_id), k.wf_done(workflow_id)]
        ended, hook = self._script(self._finish, keys, [status, self.ttl_s, error])
        if hook:
            self.runs.webhook_recorded(workflow_delivery(workflow_id))
        self.redis.zrem(self.keys.workflows(), workflow_id)
        return bool(ended)

    @mapped
    def ended(self, workflow_id: str) -> None:
        """What follows the end of a workflow that a step met still indexed (the process
        that ended it died first): its pending delivery scheduled, then out of the index."""
        self.runs.recover_webhook(workflow_delivery(workflow_id))
        self.redis.zrem(self.keys.workflows(), workflow_id)

    def node_runs(self, workflow_id: str, node: NodeState) -> Iterator[str]:
        """The ids of the node's runs started so far."""
        return (node_run_id(workflow_id, node.index, i) for i in range(node.started))
