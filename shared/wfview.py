"""A workflow as it is shown outside: its status, error, usage and metadata, and per node its
status, runs, map progress and output. The same JSON answers `GET /v1/workflows/{id}` and is
what a workflow's webhook POSTs when it ends (`shared.webhooks`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel

from quorum.shared.wfstore import RUNNING, STARTED, NodeState, WorkflowState, WorkflowStore
from quorum.shared.workflows import node_output

__all__ = ["NodeView", "node_outputs", "node_view", "workflow_view"]


@dataclass
class NodeView:
    """A node as a producer sees it: its status, its runs, and for a map its progress."""

    status: str
    run_ids: list[str] = field(default_factory=list)
    items: int = 0
    ended: int = 0
    error: str = ""


def node_view(ws: WorkflowStore, state: WorkflowState, node: NodeState) -> NodeView:
    """The node's status (`WAITING`, its run's status, a map's `RUNNING` until its last item
    ends, `SKIPPED`), run ids and progress."""
    runs = list(ws.node_runs(state.workflow_id, node))
    status = node.state
    if status == STARTED:
        status = RUNNING if node.is_map else str(ws.results(runs)[0][0] or RUNNING)
    return NodeView(status, runs, node.items, node.ended, node.error)


def node_outputs(
    ws: WorkflowStore, state: WorkflowState, models: dict[str, type[BaseModel]] | None = None
) -> dict[str, Any]:
    """Node → output, for the nodes that succeeded (as their Pydantic class in `models`)."""
    models = models or {}
    outputs = {}
    for node in state.nodes:
        if node.state != "SUCCESSFUL":
            continue
        output = node_output(ws, state, node)
        model = models.get(node.name)
        if model is not None:
            output = (
                [model.model_validate(o) for o in output]
                if node.is_map
                else model.model_validate(output)
            )
        outputs[node.name] = output
    return outputs


def workflow_view(ws: WorkflowStore, state: WorkflowState) -> dict[str, Any]:
    """The workflow as JSON: id, name, status, error, timestamps, usage of all its runs,
    metadata, and per node its `NodeView` with its output."""
    outputs = node_outputs(ws, state)
    nodes = {}
    for node in state.nodes:
        shown = asdict(node_view(ws, state, node))
        shown["output"] = outputs.get(node.name)
        nodes[node.name] = shown
    return {
        "id": state.workflow_id,
        "name": state.doc.name,
        "status": state.status,
        "error": state.error,
        "created_at": state.created_at,
        "finished_at": state.finished_at,
        "usage": state.usage.model_dump(mode="json"),
        "metadata": state.doc.metadata,
        "nodes": nodes,
    }
