"""Workflow scheduling as plain functions: what `quorum.advance` does, without Celery.

The end of a node run counts down its node's dependents in the same Lua script that ends the
run (`lua/transition.lua`): the dependents whose upstream have all ended join the workflow's
ready set, and the job that ended the run sends `quorum.advance`. `advance` reads the
workflow's nodes and, for each that can move: skips it (an upstream failed and it does not
allow failed inputs, or its `skip_if` holds), or resolves its kwargs from the upstream
outputs and creates its runs (deterministic ids, created if absent, by compare-and-set on
the node's counters) and sends their first jobs; a map starts at most `max_parallel` item
runs and more as items end. Resolved kwargs over the payload limit a submit is held to
(`QUORUM_MAX_PAYLOAD_BYTES`; a map's, per item) end the node FAILED without a run. When no
node is left it ends the workflow; a step that finds it ended schedules its webhook, should
the process that ended it have died first. Every step is idempotent: a duplicated or late
`advance` finds the work done and does nothing.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from quorum.shared.checks import check_value
from quorum.shared.context import Context
from quorum.shared.errors import RunNotFoundError, StoreError
from quorum.shared.events import Submitted
from quorum.shared.graph import MAX_MAP_ITEMS, NodeDoc, Ref, pointer_get, refs_in, resolve
from quorum.shared.models import RunSpec, TaskStatus
from quorum.shared.wfstore import (
    RUNNING,
    STARTED,
    WAITING,
    NodeState,
    WorkflowState,
    WorkflowStore,
    node_run_id,
)

__all__ = ["advance", "cancel", "node_output"]

log = logging.getLogger(__name__)

_RACES = 5
"""Times a step re-reads a map's counters after losing a race to start its next items."""


def _outputs(ws: WorkflowStore, state: WorkflowState, names: list[str]) -> dict[str, Any]:
    """The outputs of the named upstream nodes (None for those that did not succeed)."""
    outputs: dict[str, Any] = {}
    for name in names:
        node = state.node(name)
        outputs[name] = node_output(ws, state, node) if node.state == "SUCCESSFUL" else None
    return outputs


def node_output(ws: WorkflowStore, state: WorkflowState, node: NodeState) -> Any:
    """A node's output: its run's result, or a map's item results in item order."""
    results = [r for _, r in ws.results(list(ws.node_runs(state.workflow_id, node)))]
    if node.is_map:
        return results
    return results[0] if results else None


def _lineage(state: WorkflowState, doc: NodeDoc) -> list[dict[str, Any]]:
    """Where a node's inputs come from: each reference's upstream node, runs and pointer."""
    refs = [r for v in doc.kwargs.values() for r in refs_in(v)]
    if doc.map is not None:
        refs.append(Ref.parse(doc.map.over["$ref"]))
    inputs = []
    for ref in dict.fromkeys(refs):
        up = state.node(ref.node)
        runs = [node_run_id(state.workflow_id, up.index, i) for i in range(up.started)]
        inputs.append({"node": ref.node, "pointer": ref.pointer, "runs": runs})
    return inputs


def _specs(
    state: WorkflowState, node: NodeState, inputs: dict[str, Any], first: int, count: int
) -> list[tuple[str, RunSpec, str]]:
    """The node's runs `first .. first + count - 1`: id, spec, submitted event."""
    doc = state.doc.nodes[node.name]
    assert doc.template is not None and doc.response_schema is not None
    model = doc.model or ""
    runs = []
    for i in range(first, first + count):
        kwargs = dict(inputs["kwargs"])
        if doc.map is not None:
            kwargs[doc.map.item] = inputs["items"][i]
        spec = RunSpec(
            template=doc.template,
            kwargs=kwargs,
            response_schema=doc.response_schema,
            config=doc.config,
            model=model,
            validator_model=doc.validator_model or model,
            metadata={"workflow": state.workflow_id, "node": node.name, "item": i},
            timeout_s=max(state.deadline - time.time(), 1.0),
            max_tokens=state.doc.max_tokens,
            max_cost=state.doc.max_cost,
            **(doc.defined or {}),
        )
        submitted = Submitted(
            model=model,
            mode=doc.config.mode if doc.config else "none",
            task=spec.task,
            task_hash=spec.task_hash,
        ).model_dump_json()
        runs.append((node_run_id(state.workflow_id, node.index, i), spec, submitted))
    return runs


def _send(ctx: Context, runs: list[tuple[str, RunSpec, str]]) -> None:
    for run_id, _, _ in runs:
        ctx.enqueue.task_node(run_id, 1)


def _begin(ctx: Context, ws: WorkflowStore, state: WorkflowState, node: NodeState) -> bool:
    """Settle or start a node whose upstream have all ended; True if it settled (ended
    without a run), which may free its dependents at once."""
    wid, doc = state.workflow_id, state.doc.nodes[node.name]
    if node.bad and not doc.allow_failed_inputs:
        return ws.settle(wid, node.index, "SKIPPED")
    if time.time() > state.deadline:
        return ws.settle(wid, node.index, "FAILED", error="the workflow's deadline passed")
    outputs = _outputs(ws, state, _upstream_names(doc))
    kwargs = resolve(doc.kwargs, outputs)
    try:
        if doc.skip_if is not None and check_value(doc.skip_if, kwargs):
            return ws.settle(wid, node.index, "SKIPPED")
    except Exception as exc:  # the expression raised on these values
        return ws.settle(wid, node.index, "FAILED", error=f"skip_if failed: {exc}")
    inputs: dict[str, Any] = {"kwargs": kwargs, "lineage": _lineage(state, doc)}
    items = 1
    if doc.map is not None:
        over = _items(doc, outputs)
        if isinstance(over, str):
            return ws.settle(wid, node.index, "FAILED", error=over)
        inputs["items"], items = over, len(over)
    too_large = _oversized(node.name, doc, kwargs, inputs.get("items", []), ctx.max_payload_bytes)
    if too_large is not None:
        log.warning("workflow %s: %s", wid, too_large)
        return ws.settle(wid, node.index, "FAILED", error=too_large)
    count = min(items, doc.map.max_parallel if doc.map else 1)
    runs = _specs(state, node, inputs, 0, count)
    made = ws.start(
        wid,
        node.index,
        started=None,
        items=items,
        inputs=inputs,
        runs=runs,
        deadline=state.deadline,
    )
    if made > 0:
        log.info("workflow %s: node %s started, %d of %d run(s)", wid, node.name, made, items)
        _send(ctx, runs)
    return made == 0  # an empty map ended at once


def _items(doc: NodeDoc, outputs: dict[str, Any]) -> list[Any] | str:
    """A map's items from its upstream output, or why there are none to map over."""
    assert doc.map is not None
    ref = Ref.parse(doc.map.over["$ref"])
    over = pointer_get(outputs.get(ref.node), ref.pointer)
    if not isinstance(over, list) or len(over) > MAX_MAP_ITEMS:
        what = "not a list" if not isinstance(over, list) else f"{len(over)} items"
        return f"map over {ref} is {what} (at most {MAX_MAP_ITEMS} items)"
    return over


def _json_bytes(value: Any) -> int:
    """The size of `value` as JSON, measured as a submit measures its kwargs."""
    return len(json.dumps(value, allow_nan=False).encode())


def _oversized(
    name: str, doc: NodeDoc, kwargs: dict[str, Any], items: list[Any], limit: int
) -> str | None:
    """Why the node's runs cannot be made: the kwargs of one (resolved from upstream outputs;
    a map item's with its item) over `limit`, the payload limit a producer's own submit is
    held to; None if none is over. A map's items are measured one by one, each added to the
    shared kwargs without serializing those again."""
    limit_name = f"the payload limit of {limit} bytes (QUORUM_MAX_PAYLOAD_BYTES)"
    if doc.map is None:
        size = _json_bytes(kwargs)
        if size > limit:
            return f"node {name!r}: its resolved kwargs are {size} bytes, over {limit_name}"
        return None
    shared = {k: v for k, v in kwargs.items() if k != doc.map.item}
    base = _json_bytes(shared) + (2 if shared else 0) + _json_bytes(doc.map.item) + 2
    for i, item in enumerate(items):  # `{…, "item": value}`: ", " and ": " join the pair
        size = base + _json_bytes(item)
        if size > limit:
            return (
                f"node {name!r}: the resolved kwargs of its item {i} are {size} bytes, "
                f"over {limit_name}"
            )
    return None


def _upstream_names(doc: NodeDoc) -> list[str]:
    names = [r.node for v in doc.kwargs.values() for r in refs_in(v)]
    if doc.map is not None:
        names.append(Ref.parse(doc.map.over["$ref"]).node)
    return list(dict.fromkeys(names))


def _more(ctx: Context, ws: WorkflowStore, state: WorkflowState, node: NodeState) -> None:
    """Start a map's next items, as many as its `max_parallel` leaves room for."""
    doc = state.doc.nodes[node.name]
    assert doc.map is not None
    inputs = ws.inputs(state.workflow_id, node.index)
    if inputs is None:
        return
    for _ in range(_RACES):
        room = min(node.items - node.started, doc.map.max_parallel - (node.started - node.ended))
        if room <= 0:
            return
        runs = _specs(state, node, inputs, node.started, room)
        made = ws.start(
            state.workflow_id,
            node.index,
            started=node.started,
            items=node.items,
            inputs=None,
            runs=runs,
            deadline=state.deadline,
        )
        if made >= 0:
            _send(ctx, runs)
            return
        if made == -2:
            return
        node = ws.load(state.workflow_id).node(node.name)  # lost a race: read again
        if node.state != STARTED:
            return


def _finish(ws: WorkflowStore, state: WorkflowState) -> None:
    failed = [n for n in state.nodes if n.state in ("FAILED", "CANCELLED")]
    if failed:
        error = "node(s) failed: " + ", ".join(n.name for n in failed)
        ended = ws.finish(state.workflow_id, "FAILED", error=error)
    else:
        ended = ws.finish(state.workflow_id, "SUCCESSFUL")
    if ended:
        log.info("workflow %s: ended %s", state.workflow_id, "FAILED" if failed else "SUCCESSFUL")


def _pass(ctx: Context, ws: WorkflowStore, state: WorkflowState) -> tuple[int, bool]:
    """Start or settle every node that can move; how many it acted on, and whether one
    settled without a run (its dependents may move now)."""
    acted, settled = 0, False
    for node in state.nodes:
        if node.state == WAITING and node.pending == 0:
            try:
                settled |= _begin(ctx, ws, state, node)
            except StoreError:
                raise  # transient: the step runs again
            except Exception as exc:  # its inputs make no valid run: the node fails, visibly
                log.warning(
                    "workflow %s: node %s cannot start: %s", state.workflow_id, node.name, exc
                )
                error = f"the node's run could not be made: {type(exc).__name__}: {exc}"
                settled |= ws.settle(state.workflow_id, node.index, "FAILED", error=error[:2000])
            acted += 1
        elif node.state == STARTED and node.is_map and node.started < node.items:
            _more(ctx, ws, state, node)
            acted += 1
    return acted, settled


def advance(ctx: Context, workflow_id: str) -> int:
    """One scheduling step of a workflow; returns how many nodes it acted on."""
    ws = WorkflowStore.of(ctx.store)
    try:
        state = ws.load(workflow_id, step=True)
    except RunNotFoundError:
        log.info("workflow %s: gone, step skipped", workflow_id)
        return 0
    seen, acted = state.ready, 0
    if state.status != RUNNING:
        ws.ended(workflow_id)  # a process that ended it may have died before its next step
    elif time.time() > state.deadline:
        _end(ctx.store, ws, state.workflow_id, "FAILED", _TIMEOUT, worker=ctx.worker)
        return 0
    for _ in range(len(state.nodes) + 1):  # a node settled without a run frees others
        if state.status != RUNNING:
            break
        done, settled = _pass(ctx, ws, state)
        acted += done
        if settled:
            state = ws.load(workflow_id)
        if state.left <= 0 and state.status == RUNNING:
            _finish(ws, state)
        if not settled:
            break
    ws.clear_ready(workflow_id, seen)
    return acted


_TIMEOUT = "timeout: the workflow did not finish within its deadline"


def _end(
    store: Any, ws: WorkflowStore, workflow_id: str, status: str, error: str, *, worker: str
) -> bool:
    """End the workflow with `status`, then every live node run CANCELLED (the workflow's
    end comes first: no node starts after it)."""
    ended = ws.finish(workflow_id, status, error=error)
    state = ws.load(workflow_id)
    for node in state.nodes:
        if node.state == STARTED:
            for run_id in ws.node_runs(workflow_id, node):
                store.cancel(run_id, worker=worker)
    if ended:
        log.info("workflow %s: ended %s: %s", workflow_id, status, error)
    return ended


def cancel(store: Any, workflow_id: str, *, worker: str = "") -> bool:
    """End the workflow CANCELLED and every live node run with it; no node starts after.
    True if it was cancelled now. `store` is the `RunStore`."""
    ws = WorkflowStore.of(store)
    return _end(store, ws, workflow_id, TaskStatus.CANCELLED.value, "cancelled", worker=worker)
