"""`quorum workflow …`: submit a workflow document from a file (and wait for it), watch its
events live, print its status, cancel it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from quorum.producer.client import TaskClient
from quorum.shared.errors import WorkflowFailedError
from quorum.shared.wfevents import OtherWorkflowEvent, WorkflowEvent

__all__ = ["describe_workflow_event", "workflow_app"]

workflow_app = typer.Typer(help="Submit and follow workflows (graphs of validated tasks).")
WorkflowId = Annotated[str, typer.Argument(help="The workflow's id.", show_default=False)]
Timeout = Annotated[float | None, typer.Option(help="Seconds to follow it at most.")]


def describe_workflow_event(event: WorkflowEvent | OtherWorkflowEvent) -> str:
    """One readable line for a workflow event."""
    kind = event.type
    node = getattr(event, "node", "")
    if kind == "node_started":
        return f"{kind}: {node} ({getattr(event, 'runs', 1)} run(s))"
    if kind == "node_finished":
        return f"{kind}: {node} {getattr(event, 'status', '')}"
    if kind == "workflow_finished":
        error = getattr(event, "error", "")
        return f"{kind}: {getattr(event, 'status', '')}" + (f" — {error}" if error else "")
    return f"{kind}: {node}" if node else kind


def _follow(client: TaskClient, workflow_id: str, timeout: float | None) -> None:
    for event in client.workflow(workflow_id).watch(timeout=timeout):
        print(describe_workflow_event(event), flush=True)


@workflow_app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="The workflow document (JSON).")],
    wait: Annotated[bool, typer.Option(help="Follow it and print the outputs.")] = False,
    timeout: Timeout = None,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    callback_url: Annotated[
        str | None, typer.Option(help="POST the final view here, signed, when it ends.")
    ] = None,
) -> None:
    """Submit a workflow document; print its id (and with --wait its events and outputs)."""
    document = json.loads(file.read_text())
    key = idempotency_key or document.pop("idempotency_key", None)
    with TaskClient() as client:
        run = client.submit_workflow(document, idempotency_key=key, callback_url=callback_url)
        print(run.id, flush=True)
        if not wait:
            return
        _follow(client, run.id, timeout)
        try:
            outputs = run.result(timeout=1.0)  # it has ended, or the watch timed out
        except WorkflowFailedError as exc:
            print(str(exc), file=sys.stderr)
            for node, reasons in exc.failures.items():
                print(f"- {node}: " + "; ".join(reasons), file=sys.stderr)
            raise typer.Exit(1) from None
        print(json.dumps(outputs, ensure_ascii=False, indent=2, default=str))


@workflow_app.command()
def watch(workflow_id: WorkflowId, timeout: Timeout = None) -> None:
    """Follow a workflow's events live until it ends."""
    with TaskClient() as client:
        _follow(client, workflow_id, timeout)


@workflow_app.command()
def status(
    workflow_id: WorkflowId,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a workflow's status and its nodes."""
    with TaskClient() as client:
        view = client.workflow(workflow_id).view()
    if as_json:
        print(json.dumps(view, ensure_ascii=False, indent=2, default=str))
        return
    print(f"{view['id']} {view['name']}: {view['status']} {view['error']}".rstrip())
    for name, node in view["nodes"].items():
        runs = len(node["run_ids"])
        print(f"  {name}: {node['status']} ({runs} run(s)) {node['error']}".rstrip())


@workflow_app.command()
def cancel(workflow_id: WorkflowId) -> None:
    """Cancel a workflow and every live node run."""
    with TaskClient() as client:
        cancelled = client.workflow(workflow_id).cancel()
    print("cancelled" if cancelled else "already ended")
