"""Submitting a workflow and following it: the checks at submit (nothing written before
they pass), the `WorkflowRun` handle, the view the HTTP API shows, and `lineage`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from quorum.producer.spec import build_spec, template_limits
from quorum.shared import workflows
from quorum.shared.definitions import defined, unknown_task
from quorum.shared.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    RunNotFoundError,
    RunTimeoutError,
    WorkflowFailedError,
)
from quorum.shared.graph import Graph, NodeDoc, check, parse_document
from quorum.shared.keys import workflow_of
from quorum.shared.options import llm_options
from quorum.shared.payload import payload_problem
from quorum.shared.settings import Settings
from quorum.shared.webhooks import check_callback_url
from quorum.shared.wfevents import OtherWorkflowEvent, WorkflowEvent
from quorum.shared.wfstore import RUNNING, WorkflowState, WorkflowStatus, WorkflowStore
from quorum.shared.wfview import NodeView, node_outputs, node_view, workflow_view

if TYPE_CHECKING:
    from quorum.producer.client import TaskClient
    from quorum.producer.workflow import Workflow

__all__ = ["Lineage", "NodeView", "WorkflowRun", "lineage", "prepare", "submit_workflow"]

Lineage = list[dict[str, Any]]
"""A run and the runs upstream of it: per run its workflow, node, item, status, output and
inputs (upstream node, run ids, JSON Pointer)."""


def prepare(raw: Any, settings: Settings, client: TaskClient | None = None) -> Graph:
    """Check a workflow document at submit and fill in what its nodes leave out (a defined
    task's spec from this process's code or the registry, the default models); its graph.

    Raises an `InvalidRequestError` naming the problem; nothing is written."""
    problem = _payload_problem(raw, settings.max_nesting_depth)
    if problem is not None:
        raise InvalidRequestError(problem)
    try:
        size = len(json.dumps(raw, allow_nan=False).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"the workflow must be JSON-serializable: {exc}") from exc
    if size > settings.max_payload_bytes:
        raise PayloadTooLargeError(
            f"the workflow is {size} bytes, over the limit of {settings.max_payload_bytes}"
        )
    doc = parse_document(raw)
    if doc.callback_url is not None:
        check_callback_url(doc.callback_url, settings.webhook_allowed_hosts)
    nodes = {}
    for name, node in doc.nodes.items():
        try:
            nodes[name] = _filled(node, settings, client)
        except InvalidRequestError as exc:
            raise type(exc)(f"node {name!r}: {exc}") from None
    return check(doc.model_copy(update={"nodes": nodes}), template_limits(settings))


def _payload_problem(raw: Any, max_depth: int) -> str | None:
    """Where the document nests deeper than a run's fields may, or holds text that cannot be
    encoded: each field of the document and of its nodes is held to `max_depth` as a run's
    is, and every name must encode. None if nowhere (or if the document is no object:
    `parse_document` names that)."""
    parts: list[tuple[str, Any]] = []
    if isinstance(raw, dict):
        parts.append(("the workflow's field names", list(raw)))
        parts += [(key, value) for key, value in raw.items() if key != "nodes"]
        nodes = raw.get("nodes")
        if isinstance(nodes, dict):
            parts.append(("the node names", list(nodes)))
            for name, node in nodes.items():
                fields = node if isinstance(node, dict) else {}
                parts.append((f"node {name!r}'s field names", list(fields)))
                parts += [(f"nodes.{name}.{key}", value) for key, value in fields.items()]
    for what, value in parts:
        problem = payload_problem(value, what=what, max_depth=max_depth)
        if problem is not None:
            return problem
    return None


def _filled(node: NodeDoc, settings: Settings, client: TaskClient | None) -> NodeDoc:
    """The node with its spec complete and checked like a run's (`build_spec`)."""
    if node.defined is not None:
        raise InvalidRequestError("`defined` is filled in at submit; leave it out")
    fields = node.model_dump(exclude_none=True)
    if node.task is not None:
        if node.template is not None or node.response_schema is not None:
            raise InvalidRequestError("a defined task takes kwargs only; drop template, schema")
        published = _published(node.task, client)
        fields |= {
            "template": published["template"],
            "response_schema": published["response_schema"],
            "config": published["config"],
            "model": node.model or published.get("model"),
            "validator_model": node.validator_model or published.get("validator_model"),
            "defined": {
                "task": node.task,
                "task_hash": published["hash"],
                "wrapped": published["wrapped"],
                "response_name": published["response_name"],
                "checks": published["checks"],
                **llm_options(
                    temperature=published.get("temperature"),
                    max_output_tokens=published.get("max_output_tokens"),
                    system=published.get("system"),
                ),
            },
        }
    if fields.get("template") is None or fields.get("response_schema") is None:
        raise InvalidRequestError(
            "give a defined task's name (task), or template and response_schema"
        )
    spec = build_spec(
        template="-",  # the real template is checked against the graph's kwargs
        response_model=fields["response_schema"],
        kwargs=None,
        config=fields.get("config"),
        model=fields.get("model"),
        validator_model=fields.get("validator_model"),
        metadata=None,
        settings=settings,
    )
    fields |= {
        "model": spec.model,
        "validator_model": spec.validator_model,
        "response_schema": spec.response_schema,
        "config": spec.config.model_dump() if spec.config else None,
    }
    return NodeDoc.model_validate(fields)


def _published(task: str, client: TaskClient | None) -> dict[str, Any]:
    """A defined task's published definition: this process's own, else the registry's."""
    local = defined(task)
    if local is not None:
        return local.published()
    published = None if client is None else client.registry.get(task)
    if published is None:
        raise unknown_task(task, [] if client is None else client.registry.all())
    return published


def submit_workflow(
    client: TaskClient,
    workflow: Workflow | dict[str, Any],
    *,
    idempotency_key: str | None,
    callback_url: str | None = None,
) -> WorkflowRun:
    """Check, write and start a workflow (`TaskClient.submit_workflow`); `callback_url`,
    if given, replaces the document's."""
    from quorum.producer.workflow import Workflow

    if idempotency_key is not None and not (
        isinstance(idempotency_key, str) and 0 < len(idempotency_key) <= 256
    ):
        raise InvalidRequestError("idempotency_key must be a string of 1 to 256 characters")
    models = workflow.models if isinstance(workflow, Workflow) else {}
    raw = workflow.document() if isinstance(workflow, Workflow) else workflow
    if callback_url is not None:
        raw = {**raw, "callback_url": callback_url} if isinstance(raw, dict) else raw
    graph = prepare(raw, client.settings, client)
    ws = WorkflowStore.of(client.store)
    workflow_id = uuid.uuid4().hex
    timeout_s = graph.doc.timeout_s or client.settings.run_timeout_s
    existing = ws.create(workflow_id, graph, timeout_s=timeout_s, idempotency_key=idempotency_key)
    if existing == workflow_id:
        try:
            client.send("quorum.advance", workflow_id=workflow_id)
        except Exception:
            ws.discard(workflow_id, idempotency_key=idempotency_key)
            raise
    return WorkflowRun(client, existing, models)


def _failures(ws: WorkflowStore, state: WorkflowState) -> dict[str, list[str]]:
    failures: dict[str, list[str]] = {}
    for node in state.nodes:
        if node.state not in ("FAILED", "CANCELLED"):
            continue
        reasons = [node.error] if node.error else []
        for run_id in ws.node_runs(state.workflow_id, node):
            run = ws.runs.load(run_id)
            if run.status.terminal and run.status.value != "SUCCESSFUL":
                reasons += [f"{run_id}: {r}" for r in run.reasons or [run.error or "cancelled"]]
        failures[node.name] = reasons or [node.state.lower()]
    return failures


class WorkflowRun:
    """A handle on one workflow: its status, nodes, events and outputs."""

    def __init__(
        self,
        client: TaskClient,
        workflow_id: str,
        models: dict[str, type[BaseModel]] | None = None,
    ) -> None:
        self._client = client
        self.id = workflow_id
        self.models = models or {}

    def __repr__(self) -> str:
        return f"WorkflowRun(id={self.id!r})"

    @property
    def _ws(self) -> WorkflowStore:
        return WorkflowStore.of(self._client.store)

    def state(self) -> WorkflowState:
        """Everything stored about the workflow's scheduling."""
        return self._ws.load(self.id)

    def status(self) -> WorkflowStatus:
        """`RUNNING`, `SUCCESSFUL`, `FAILED` or `CANCELLED`."""
        return WorkflowStatus(self.state().status)

    def nodes(self) -> dict[str, NodeView]:
        """Node name → its status (`WAITING`, a run's status, `SKIPPED`) and run ids."""
        state = self.state()
        return {n.name: node_view(self._ws, state, n) for n in state.nodes}

    def provenance(self) -> list[WorkflowEvent | OtherWorkflowEvent]:
        """The workflow's events, oldest first (each node run keeps its own provenance)."""
        return self._ws.events(self.id)

    def watch(
        self, *, timeout: float | None = None
    ) -> Iterator[WorkflowEvent | OtherWorkflowEvent]:
        """Yield the workflow's events as they happen, until it ends (or `timeout` seconds)."""
        return self._ws.watch(self.id, timeout_s=timeout)

    def cancel(self) -> bool:
        """Cancel the workflow and every live node run; False if it had already ended."""
        return workflows.cancel(self._client.store, self.id)

    def outputs(self, state: WorkflowState | None = None) -> dict[str, Any]:
        """Node → output, for the nodes that succeeded (as their Pydantic class if given)."""
        return node_outputs(self._ws, state or self.state(), self.models)

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the workflow to end; node name → output (None for a skipped node).

        Raises `WorkflowFailedError` (every failed node's reasons) if it failed or was
        cancelled, `RunTimeoutError` if it has not ended after `timeout` seconds.
        """
        state = self._ws.wait(self.id, timeout_s=timeout)
        if state.status == RUNNING:
            raise RunTimeoutError(f"workflow {self.id} has not ended after {timeout}s")
        outputs = self.outputs(state)
        if state.status != "SUCCESSFUL":
            raise WorkflowFailedError(
                f"workflow {self.id} {state.status}: {state.error}",
                status=state.status,
                failures=_failures(self._ws, state),
                outputs=outputs,
            )
        return {n.name: outputs.get(n.name) for n in state.nodes}

    def view(self) -> dict[str, Any]:
        """The workflow as the HTTP API shows it (and its webhook POSTs): status, error,
        usage, metadata, and per node its status, run ids, progress and output."""
        return workflow_view(self._ws, self.state())


def lineage(client: TaskClient, run_id: str) -> list[dict[str, Any]]:
    """The run and every run upstream of it, back to the roots: per run its workflow, node,
    item, status, output and inputs (upstream node, run ids, JSON Pointer)."""
    ws = WorkflowStore.of(client.store)
    seen: dict[str, dict[str, Any]] = {}
    todo = [run_id]
    while todo:
        current = todo.pop(0)
        if current in seen:
            continue
        run = client.store.load(current)
        entry: dict[str, Any] = {
            "run_id": current,
            "workflow_id": workflow_of(current),
            "node": run.spec.metadata.get("node"),
            "item": run.spec.metadata.get("item"),
            "status": run.status.value,
            "output": run.result,
            "inputs": [],
        }
        workflow_id = workflow_of(current)
        if workflow_id is not None:
            node = int(current.split(".")[1])
            inputs = ws.inputs(workflow_id, node) or {}
            entry["inputs"] = inputs.get("lineage", [])
            for upstream in entry["inputs"]:
                todo += upstream["runs"]
        seen[current] = entry
    if not seen:
        raise RunNotFoundError(f"no run {run_id!r}")
    return list(seen.values())
