"""The HTTP routes of workflows (FastAPI), a thin layer over `TaskClient.submit_workflow`
and `WorkflowRun` ([workflows.md](../docs/workflows.md)).

    POST /v1/workflows              the workflow document → 201 {id, status}; 422 refused
    GET  /v1/workflows/{id}         status, error, usage, per node: status, runs, output
    GET  /v1/workflows/{id}/events  the workflow's events, oldest first; with `Accept:
                                    text/event-stream`, Server-Sent Events as they happen
    POST /v1/workflows/{id}/cancel  → {id, cancelled, status}
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, Field

from quorum.producer import sse
from quorum.producer.client import TaskClient
from quorum.shared.graph import WorkflowDoc
from quorum.shared.live import stream_id
from quorum.shared.models import Usage
from quorum.shared.wfstore import WorkflowStatus

__all__ = ["router"]


def _client(request: Request) -> TaskClient:
    client: TaskClient = request.app.state.client
    return client


Client = Annotated[TaskClient, Depends(_client)]
router = APIRouter(prefix="/v1/workflows", tags=["workflows"])


class WorkflowRequest(WorkflowDoc):
    """A workflow document, with an optional idempotency key."""

    idempotency_key: str | None = Field(
        None, min_length=1, max_length=256, description="The same key gives back the first."
    )


class WorkflowCreated(BaseModel):
    """A workflow accepted: its id and status."""

    id: str
    status: WorkflowStatus


class NodeOut(BaseModel):
    """A node: its status, its runs, a map's progress, its output once it succeeded."""

    status: str
    run_ids: list[str]
    items: int
    ended: int
    error: str
    output: Any = None


class WorkflowView(BaseModel):
    """A workflow: status, error, usage of all its runs, metadata, and its nodes (also what
    its webhook POSTs when it ends)."""

    id: str
    name: str
    status: WorkflowStatus
    error: str
    created_at: float
    finished_at: float | None
    usage: Usage
    metadata: dict[str, Any]
    nodes: dict[str, NodeOut]


class WorkflowCancelled(BaseModel):
    """The outcome of a cancel."""

    id: str
    cancelled: bool = Field(description="False when the workflow had already ended.")
    status: WorkflowStatus


@router.post("", status_code=201)
def submit_workflow(request: WorkflowRequest, client: Client) -> WorkflowCreated:
    """Check and start a workflow. A bad graph: 422, and nothing is written or sent."""
    doc = request.model_dump(exclude={"idempotency_key"}, exclude_none=True)
    run = client.submit_workflow(doc, idempotency_key=request.idempotency_key)
    return WorkflowCreated(id=run.id, status=run.status())


@router.get("/{workflow_id}")
def get_workflow(workflow_id: str, client: Client) -> WorkflowView:
    """The workflow with its nodes, their run ids, statuses and outputs, and its usage."""
    return WorkflowView.model_validate(client.workflow(workflow_id).view())


@router.get(
    "/{workflow_id}/events",
    response_model=list[dict[str, Any]],
    responses={
        200: {
            "content": {sse.MEDIA_TYPE: {"schema": {"type": "string"}}},
            "description": "The events, oldest first; as Server-Sent Events when asked for "
            "`text/event-stream` (as for a run's events), ending after `workflow_finished`.",
        }
    },
)
def get_workflow_events(
    workflow_id: str,
    request: Request,
    client: Client,
    last_event_id: Annotated[
        str | None, Header(description="SSE: resume after this event id.")
    ] = None,
) -> Any:
    """The workflow's events (node_ready, node_started, ...), oldest first; with
    `Accept: text/event-stream`, each as it happens until `workflow_finished`."""
    run = client.workflow(workflow_id)
    if sse.wants_events(request.headers.get("accept")):
        hub = request.app.state.hub
        return sse.event_stream(
            hub,
            hub.workflow_stream(run.id),
            after=stream_id(last_event_id),
            heartbeat_s=client.settings.sse_heartbeat_s,
        )
    return [e.model_dump(mode="json") for e in run.provenance()]


@router.post("/{workflow_id}/cancel")
def cancel_workflow(workflow_id: str, client: Client) -> WorkflowCancelled:
    """Cancel the workflow and every live node run; no node starts after. Idempotent."""
    run = client.workflow(workflow_id)
    cancelled = run.cancel()
    return WorkflowCancelled(id=workflow_id, cancelled=cancelled, status=run.status())
