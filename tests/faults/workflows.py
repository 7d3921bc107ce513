"""Workflows under faults: a five-node graph whose right outputs are known in advance, and
the checks that turn a case into figures (every workflow terminal and correct, no node run
created twice, no task call beyond one per attempt but the ones in flight at a kill)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import redis

from quorum import Workflow, WorkflowRun
from tests.faults.harness import Figures, Fleet
from tests.integration.helpers import directive

CONFIG = {"mode": "single_shot", "issues": ["The answer is right"], "max_retries": 1}
TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
LIST = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": {"type": "string"}}},
    "required": ["items"],
}
ITEMS = 3


def _node(template: str, schema: dict[str, Any] = TEXT) -> dict[str, Any]:
    return {"template": template, "response_model": schema, "config": CONFIG}


def graph(tag: str) -> tuple[Workflow, dict[str, Any]]:
    """extract → check each of 3 items (a map) → join; side after extract; end after both.
    Returns the workflow and its right outputs."""
    items = [
        f"item {j} " + directive(f"{tag}-b{j}", outputs=[{"text": f"v{j}"}]) for j in range(ITEMS)
    ]
    wf = Workflow(tag, timeout_s=600)
    sim = {n: directive(f"{tag}-{n}", outputs=[{"text": n.upper()}]) for n in "cde"}
    a = wf.task(
        "a",
        task=_node("Extract {{ sim }}", LIST),
        kwargs={"sim": directive(f"{tag}-a", outputs=[{"items": items}])},
    )
    b = wf.map("b", over=a["items"], item="claim", task=_node("Check {{ claim }}"))
    c = wf.task(
        "c", task=_node("Join {{ v | length }} {{ sim }}"), kwargs={"v": b, "sim": sim["c"]}
    )
    d = wf.task(
        "d", task=_node("Side {{ sim }} {{ x }}"), kwargs={"x": a["items"][0], "sim": sim["d"]}
    )
    wf.task("e", task=_node("End {{ sim }}"), kwargs={"sim": sim["e"]}, after=[c, d])
    right = {
        "a": {"items": items},
        "b": [{"text": f"v{j}"} for j in range(ITEMS)],
        **{n: {"text": n.upper()} for n in "cde"},
    }
    return wf, right


@dataclass
class Sent:
    """A workflow the case submitted, and its right outputs."""

    run: WorkflowRun
    right: dict[str, Any]


def submit(fleet: Fleet, n: int, tag: str, *, pace_s: float = 0.0) -> list[Sent]:
    """Submit `n` workflows, each with simulator scopes of its own."""
    out = []
    for i in range(n):
        wf, right = graph(f"{tag}-{i}-{uuid.uuid4().hex[:6]}")
        out.append(Sent(fleet.client.submit_workflow(wf), right))
        if pace_s:
            time.sleep(pace_s)
    return out


def wait_ended(fleet: Fleet, sent: list[Sent], *, timeout_s: float) -> None:
    """Wait until every workflow has ended, or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with fleet.db.pipeline(transaction=False) as pipe:
                for item in sent:
                    pipe.hget(fleet.keys.workflow(item.run.id), "status")
                statuses = pipe.execute()
        except redis.ConnectionError:
            time.sleep(0.5)
            continue
        if all(s not in (None, "RUNNING") for s in statuses):
            return
        time.sleep(0.5)


def _run_problems(fleet: Fleet, run_id: str, calls: int) -> tuple[list[str], int]:
    """Why a node run shows a double, and its task calls beyond one per attempt."""
    events = fleet.client.store.events(run_id)
    kinds = Counter(e["type"] for e in events)
    problems = []
    if kinds["submitted"] != 1:
        problems.append(f"run {run_id} created {kinds['submitted']} times")
    if kinds["succeeded"] + kinds["failed"] + kinds["cancelled"] > 1:
        problems.append(f"run {run_id} ended more than once")
    starts = Counter(e["attempt"] for e in events if e["type"] == "attempt_started")
    if any(n > 1 for n in starts.values()):
        problems.append(f"run {run_id}: an attempt started twice {dict(starts)}")
    return problems, max(0, calls - len(starts))


def evaluate(
    fleet: Fleet, case: str, sent: list[Sent], *, started: float, faults: str
) -> tuple[Figures, list[int]]:
    """Figures of the case (runs = workflows) and, per node run that has any, its task
    calls beyond one per attempt."""
    figures = Figures(case, runs=len(sent), seconds=time.monotonic() - started, faults=faults)
    calls = Counter(
        c["scope"] for c in fleet.sim.request("GET", "/_sim/calls") if c["kind"] == "task"
    )
    extra: list[int] = []
    for item in sent:
        state = item.run.state()
        if state.status == "RUNNING":
            figures.stuck += 1
            figures.problems.append(f"workflow {item.run.id}: stuck, nodes {item.run.nodes()}")
            continue
        figures.terminal += 1
        for node in state.nodes:
            expected = ITEMS if node.is_map else 1
            if node.started != expected:
                figures.problems.append(
                    f"workflow {item.run.id} node {node.name}: {node.started} runs"
                )
            for run_id in item.run.nodes()[node.name].run_ids:
                scope = _scope(fleet, run_id)
                problems, beyond = _run_problems(fleet, run_id, calls[scope])
                if beyond:
                    extra.append(beyond)
                if problems:
                    figures.double_counted += 1
                    figures.problems.extend(problems)
        outputs = item.run.outputs(state) if state.status == "SUCCESSFUL" else None
        if outputs == item.right:
            figures.correct += 1
        else:
            figures.problems.append(
                f"workflow {item.run.id} {state.status} {state.error} {outputs}"
            )
    return figures, extra


def _scope(fleet: Fleet, run_id: str) -> str:
    """The simulator scope of a node run: the first directive id in its kwargs."""
    kwargs = fleet.client.store.load(run_id).spec.kwargs
    text = kwargs.get("sim") or kwargs.get("claim") or ""
    return str(text).split('"id": "', 1)[-1].split('"', 1)[0]
