"""What the dashboard shows of a workflow: its graph laid out in layers, each node with its
status and runs, its progress and cost, and its events (pure functions).

The graph is drawn left to right: a node's layer is the longest path to it from a root (a
node without upstream), so every edge points right. Within a layer, nodes are ordered by the
mean row of their upstream nodes (one barycentre pass, then the document's order), which
keeps most edges short and few crossing. A node's status is its scheduling state while it
waits or once it has ended (`WAITING`, `SUCCESSFUL`, `FAILED`, `CANCELLED`, `SKIPPED`), and
while it runs its run's own status (a map node: `RUNNING`, with its items ended and failed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from quorum.shared.graph import NodeDoc, Ref, refs_in
from quorum.shared.wfevents import OtherWorkflowEvent, WorkflowEvent
from quorum.shared.wfstore import RUNNING, STARTED, WorkflowState, node_run_id

__all__ = [
    "Edge",
    "NodeBox",
    "RunLink",
    "WorkflowPage",
    "WorkflowTimelineRow",
    "layers",
    "shown_runs",
    "upstream_of",
    "workflow_page",
]

RUNS_SHOWN = 50
"""Item runs of a map node the page links to (and reads the status of); the rest are
counted."""
BOX_RUNS = 8
"""Item runs linked from a map node's box in the graph; the table below lists the others."""
NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 210, 78, 70, 22, 12
ENDED = frozenset({"SUCCESSFUL", "FAILED", "CANCELLED", "SKIPPED"})


@dataclass(frozen=True)
class RunLink:
    """One of a node's runs: its item number and status (empty while unknown)."""

    run_id: str
    item: int
    status: str


@dataclass
class NodeBox:
    """One node as drawn: where, its status, what it is, its runs."""

    index: int
    name: str
    status: str
    kind: str
    is_map: bool
    depth: int
    upstream: tuple[str, ...]
    items: int = 0
    started: int = 0
    ended: int = 0
    failed: int = 0
    error: str = ""
    runs: list[RunLink] = field(default_factory=list)
    row: int = 0

    @property
    def x(self) -> int:
        """The box's left edge in the drawing."""
        return PAD + self.depth * (NODE_W + GAP_X)

    @property
    def y(self) -> int:
        """The box's top edge in the drawing."""
        return PAD + self.row * (NODE_H + GAP_Y)

    @property
    def more_runs(self) -> int:
        """Runs started but not linked (past `RUNS_SHOWN`)."""
        return max(self.started - len(self.runs), 0)


@dataclass(frozen=True)
class Edge:
    """An edge from an upstream node to a dependent; `order_only` for `after` (no data)."""

    source: str
    target: str
    order_only: bool
    path: str


@dataclass(frozen=True)
class WorkflowTimelineRow:
    """One workflow event: seconds since the workflow was created, and what happened."""

    at_s: float
    type: str
    node: str
    detail: str


@dataclass
class WorkflowPage:
    """Everything the workflow page shows."""

    state: WorkflowState
    nodes: list[NodeBox]
    edges: list[Edge]
    width: int
    height: int
    timeline: list[WorkflowTimelineRow]
    duration_s: float

    @property
    def terminal(self) -> bool:
        """Whether the workflow has ended (the page stops updating)."""
        return self.state.status != RUNNING

    @property
    def ended(self) -> int:
        """Nodes that have ended, skipped ones included."""
        return sum(node.status in ENDED for node in self.nodes)

    @property
    def progress_pct(self) -> float:
        """Nodes ended, in percent of all."""
        return 100.0 * self.ended / len(self.nodes) if self.nodes else 100.0


def upstream_of(doc: NodeDoc) -> tuple[list[str], list[str]]:
    """The nodes a node takes data from (references, a map's list), and those it only
    waits for (`after`)."""
    data = [r.node for v in doc.kwargs.values() for r in refs_in(v)]
    if doc.map is not None and isinstance(doc.map.over.get("$ref"), str):
        data.append(Ref.parse(doc.map.over["$ref"]).node)
    data = list(dict.fromkeys(data))
    return data, [name for name in dict.fromkeys(doc.after) if name not in data]


def layers(upstream: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each node's layer: 0 for a root, else one more than its deepest upstream node.
    The graph is acyclic (checked at submit); an unknown upstream name is ignored."""
    depth: dict[str, int] = {}

    def visit(name: str, path: frozenset[str]) -> int:
        if name not in depth:
            ups = [u for u in upstream.get(name, ()) if u in upstream and u not in path]
            depth[name] = 1 + max((visit(u, path | {name}) for u in ups), default=-1)
        return depth[name]

    for name in upstream:
        visit(name, frozenset())
    return depth


def _rows(
    names: Sequence[str], depth: Mapping[str, int], upstream: Mapping[str, Sequence[str]]
) -> dict[str, int]:
    """Each node's row within its layer (barycentre of its upstream rows, then doc order)."""
    rows: dict[str, int] = {}
    for layer in range(max(depth.values(), default=-1) + 1):
        members = [n for n in names if depth[n] == layer]

        def weight(name: str) -> float:
            ups = [rows[u] for u in upstream[name] if u in rows]
            return sum(ups) / len(ups) if ups else -1.0

        ordered = sorted(members, key=lambda n: (weight(n), names.index(n)))
        rows.update({name: row for row, name in enumerate(ordered)})
    return rows


def shown_runs(state: WorkflowState) -> list[str]:
    """The node runs the page links to, whose statuses it needs."""
    return [
        node_run_id(state.workflow_id, node.index, item)
        for node in state.nodes
        for item in range(min(node.started, RUNS_SHOWN))
    ]


def _status(state: str, is_map: bool, first_run: str | None) -> str:
    if state != STARTED:
        return state
    return RUNNING if is_map else first_run or "PENDING"


def _edge(source: NodeBox, target: NodeBox, order_only: bool) -> Edge:
    x1, y1 = source.x + NODE_W, source.y + NODE_H // 2
    x2, y2 = target.x - 6, target.y + NODE_H // 2
    mid = (x1 + x2) / 2
    return Edge(
        source.name, target.name, order_only, f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"
    )


def _detail(event: WorkflowEvent | OtherWorkflowEvent) -> str:
    runs, status, error = (getattr(event, k, None) for k in ("runs", "status", "error"))
    parts = [f"{runs} run{'s' if runs != 1 else ''}" if runs is not None else "", status or ""]
    return " ".join(p for p in (*parts, error or "") if p)


def workflow_page(
    state: WorkflowState,
    statuses: Mapping[str, str | None],
    events: Sequence[WorkflowEvent | OtherWorkflowEvent],
    *,
    now: float,
) -> WorkflowPage:
    """The workflow page's content: its state, its node runs' statuses (`shown_runs`), and
    its events, oldest first."""
    docs = state.doc.nodes
    names = [node.name for node in state.nodes]
    data, order = {}, {}
    for name in names:
        data[name], order[name] = upstream_of(docs[name]) if name in docs else ([], [])
    upstream = {name: data[name] + order[name] for name in names}
    depth = layers(upstream)
    rows = _rows(names, depth, upstream)
    boxes: dict[str, NodeBox] = {}
    for node in state.nodes:
        doc = docs.get(node.name)
        runs = [
            RunLink(run_id, item, statuses.get(run_id) or "")
            for item in range(min(node.started, RUNS_SHOWN))
            for run_id in [node_run_id(state.workflow_id, node.index, item)]
        ]
        boxes[node.name] = NodeBox(
            index=node.index,
            name=node.name,
            status=_status(node.state, node.is_map, runs[0].status if runs else None),
            kind=(doc.task or "inline") if doc else "",
            is_map=node.is_map,
            depth=depth[node.name],
            row=rows[node.name],
            upstream=tuple(upstream[node.name]),
            items=node.items,
            started=node.started,
            ended=node.ended,
            failed=node.failed,
            error=node.error,
            runs=runs,
        )
    edges = [
        _edge(boxes[up], boxes[name], up in order[name])
        for name in names
        for up in upstream[name]
        if up in boxes
    ]
    columns = max(depth.values(), default=0) + 1
    tallest = max((sum(d == layer for d in depth.values()) for layer in range(columns)), default=1)
    end = state.finished_at or now
    return WorkflowPage(
        state=state,
        nodes=[boxes[name] for name in names],
        edges=edges,
        width=2 * PAD + columns * (NODE_W + GAP_X) - GAP_X,
        height=2 * PAD + tallest * (NODE_H + GAP_Y) - GAP_Y,
        timeline=[
            WorkflowTimelineRow(
                at_s=max(event.ts - state.created_at, 0.0),
                type=event.type,
                node=str(getattr(event, "node", "") or ""),
                detail=_detail(event),
            )
            for event in events
        ],
        duration_s=max(end - state.created_at, 0.0),
    )
