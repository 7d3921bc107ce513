"""A workflow's events, one typed model per type, kept in the workflow's own stream beside
each node run's provenance. The scheduling scripts (`lua/wf_lib.lua`) write them as JSON of
these shapes; `parse_workflow_event` reads them back."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from quorum.shared.events import StoredEvent

__all__ = [
    "NodeFinished",
    "NodeReady",
    "NodeSkipped",
    "NodeStarted",
    "WorkflowEvent",
    "WorkflowFinished",
    "parse_workflow_event",
]


class _WorkflowEvent(StoredEvent):
    """What every workflow event carries: its timestamp."""


class NodeReady(_WorkflowEvent):
    """Every upstream node of `node` has ended."""

    type: Literal["node_ready"] = "node_ready"
    node: str


class NodeStarted(_WorkflowEvent):
    """The node's runs were created (`runs`: how many in all; a map's item runs)."""

    type: Literal["node_started"] = "node_started"
    node: str
    runs: int


class NodeSkipped(_WorkflowEvent):
    """The node will not run: its `skip_if` held, or an upstream node failed."""

    type: Literal["node_skipped"] = "node_skipped"
    node: str


class NodeFinished(_WorkflowEvent):
    """Every run of the node has ended; `status` is the node's."""

    type: Literal["node_finished"] = "node_finished"
    node: str
    status: str


class WorkflowFinished(_WorkflowEvent):
    """The workflow ended with `status`."""

    type: Literal["workflow_finished"] = "workflow_finished"
    status: str
    error: str = ""


class OtherWorkflowEvent(_WorkflowEvent):
    """An event of a type this version does not know, kept as is."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str


WorkflowEvent = Annotated[
    NodeReady | NodeStarted | NodeSkipped | NodeFinished | WorkflowFinished,
    Field(discriminator="type"),
]

_EVENT: TypeAdapter[WorkflowEvent] = TypeAdapter(WorkflowEvent)


def parse_workflow_event(text: str | bytes) -> WorkflowEvent | OtherWorkflowEvent:
    """A workflow event from its stored JSON."""
    try:
        return _EVENT.validate_json(text)
    except ValidationError:
        return OtherWorkflowEvent.model_validate_json(text)
