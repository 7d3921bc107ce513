"""Workflow scheduling (`shared/workflows.py`, `shared/wfstore.py`, the workflow half of
`lua/transition.lua`) against fakeredis, with a recording enqueuer: no Celery, no LLM."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest
from pydantic import BaseModel

from quorum import define
from quorum.producer.workflow_run import prepare
from quorum.shared import flow, workflows
from quorum.shared.errors import InvalidRequestError
from quorum.shared.events import Succeeded
from quorum.shared.keys import Keys
from quorum.shared.models import TaskStatus, Usage
from quorum.shared.settings import Settings
from quorum.shared.store import RunStore
from quorum.shared.wfstore import WorkflowStore
from tests.unit.test_flow import FakeLLM, Recorder

WF = "w1"
CONFIG = {"mode": "single_shot", "issues": ["ok"]}
TEXT = {"type": "object", "properties": {"text": {"type": "string"}}}
LIST = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"}}}}


class Advancing(Recorder):
    def advance(self, workflow_id: str) -> None:
        self.sent.append(("advance", workflow_id))


def inline(template: str, schema: dict[str, Any] = TEXT, **extra: Any) -> dict[str, Any]:
    return {"template": template, "response_schema": schema, "config": CONFIG, **extra}


@pytest.fixture
def store() -> RunStore:
    return RunStore(fakeredis.FakeRedis(decode_responses=True), keys=Keys("quorum"), ttl_s=100)


@pytest.fixture
def ctx(store: RunStore) -> flow.Context:
    return flow.Context(store=store, llm=FakeLLM(), enqueue=Advancing(), worker="w")


def create(store: RunStore, **nodes: dict[str, Any]) -> WorkflowStore:
    graph = prepare({"name": "g", "nodes": nodes}, Settings(model="m"))
    ws = WorkflowStore.of(store)
    assert ws.create(WF, graph, timeout_s=60, idempotency_key=None) == WF
    return ws


def started(ctx: flow.Context) -> list[str]:
    assert isinstance(ctx.enqueue, Advancing)
    return [job[1] for job in ctx.enqueue.sent if job[0] == "task_node"]


def succeed(ctx: flow.Context, run_id: str, result: Any) -> None:
    ctx.store.transition(run_id, TaskStatus.RUNNING, fields={"attempt": 1})
    assert ctx.store.transition(
        run_id, TaskStatus.SUCCESSFUL, fields={"result": result}, events=[Succeeded(attempt=1)]
    )


def test_a_chain_starts_each_node_once_its_upstream_ends(
    ctx: flow.Context, store: RunStore
) -> None:
    ws = create(store, a=inline("go"), b=inline("{{ x }}", kwargs={"x": {"$ref": "a#/text"}}))
    workflows.advance(ctx, WF)
    workflows.advance(ctx, WF)  # a duplicate step creates nothing more
    assert started(ctx) == [f"{WF}.0.0"]
    assert store.load(f"{WF}.0.0").status is TaskStatus.PENDING
    succeed(ctx, f"{WF}.0.0", {"text": "alpha"})
    assert ws.load(WF, step=True).ready == {"1"}  # counted down in the run's own transition
    workflows.advance(ctx, WF)
    assert started(ctx) == [f"{WF}.0.0", f"{WF}.1.0"]
    assert store.load(f"{WF}.1.0").spec.kwargs == {"x": "alpha"}
    succeed(ctx, f"{WF}.1.0", {"text": "beta"})
    workflows.advance(ctx, WF)
    state = ws.load(WF)
    assert state.status == "SUCCESSFUL" and state.left == 0
    assert ws.load(WF, step=True).ready == set()
    types = [e.type for e in ws.events(WF)]
    assert types == [
        "node_ready",
        "node_started",
        "node_finished",
        "node_ready",
        "node_started",
        "node_finished",
        "workflow_finished",
    ]


def test_a_map_starts_max_parallel_items_and_more_as_they_end(
    ctx: flow.Context, store: RunStore
) -> None:
    ws = create(
        store,
        a=inline("go", LIST),
        m=inline("{{ it }}", map={"over": {"$ref": "a#/items"}, "item": "it", "max_parallel": 2}),
    )
    workflows.advance(ctx, WF)
    succeed(ctx, f"{WF}.0.0", {"items": ["p", "q", "r"]})
    workflows.advance(ctx, WF)
    assert started(ctx)[1:] == [f"{WF}.1.0", f"{WF}.1.1"]
    workflows.advance(ctx, WF)
    assert len(started(ctx)) == 3  # no room until an item ends
    succeed(ctx, f"{WF}.1.1", {"text": "Q"})
    workflows.advance(ctx, WF)
    assert started(ctx)[-1] == f"{WF}.1.2"
    assert store.load(f"{WF}.1.2").spec.kwargs == {"it": "r"}
    succeed(ctx, f"{WF}.1.0", {"text": "P"})
    succeed(ctx, f"{WF}.1.2", {"text": "R"})
    workflows.advance(ctx, WF)
    state = ws.load(WF)
    assert state.status == "SUCCESSFUL"
    node = state.node("m")
    assert workflows.node_output(ws, state, node) == [{"text": "P"}, {"text": "Q"}, {"text": "R"}]


def test_a_failed_node_skips_its_dependents_and_fails_the_workflow(
    ctx: flow.Context, store: RunStore
) -> None:
    ws = create(
        store,
        a=inline("go"),
        b=inline("{{ x }}", kwargs={"x": {"$ref": "a#/text"}}),
        c=inline("{{ x }}", kwargs={"x": {"$ref": "b"}}),
        d=inline("{{ x }}", kwargs={"x": {"$ref": "a"}}, allow_failed_inputs=True),
    )
    workflows.advance(ctx, WF)
    flow.fail_run(ctx, f"{WF}.0.0", "boom", ["boom"])
    assert ("advance", WF) in ctx.enqueue.sent  # type: ignore[attr-defined]
    workflows.advance(ctx, WF)
    state = ws.load(WF)
    assert {n.name: n.state for n in state.nodes} == {
        "a": "FAILED",
        "b": "SKIPPED",
        "c": "SKIPPED",
        "d": "STARTED",
    }
    assert store.load(f"{WF}.3.0").spec.kwargs == {"x": None}
    succeed(ctx, f"{WF}.3.0", {"text": "tolerant"})
    workflows.advance(ctx, WF)
    assert ws.load(WF).status == "FAILED"


def test_a_skip_if_that_would_build_something_huge_fails_its_node(
    ctx: flow.Context, store: RunStore
) -> None:
    # 10 GB in 21 s of a worker's CPU, when expressions ran in Jinja's plain sandbox.
    huge = "(range(100000) | list | join(x * 100000)) | length > 0"
    ws = create(
        store, a=inline("go"), b=inline("{{ x }}", kwargs={"x": {"$ref": "a#/text"}}, skip_if=huge)
    )
    workflows.advance(ctx, WF)
    succeed(ctx, f"{WF}.0.0", {"text": "x"})
    workflows.advance(ctx, WF)
    b = ws.load(WF).nodes[1]
    assert b.state == "FAILED" and "expression refused: the join filter" in b.error


def test_cancel_ends_live_runs_and_nothing_starts_after(ctx: flow.Context, store: RunStore) -> None:
    ws = create(store, a=inline("go"), b=inline("{{ x }}", kwargs={"x": {"$ref": "a#/text"}}))
    workflows.advance(ctx, WF)
    assert workflows.cancel(store, WF) is True
    assert workflows.cancel(store, WF) is False
    assert store.load(f"{WF}.0.0").status is TaskStatus.CANCELLED
    workflows.advance(ctx, WF)
    assert started(ctx) == [f"{WF}.0.0"]
    state = ws.load(WF)
    assert state.status == "CANCELLED" and state.node("b").state == "WAITING"


def test_node_run_keys_share_the_workflows_hash_tag(store: RunStore) -> None:
    keys = Keys("quorum")
    assert keys.run(f"{WF}.3.7") == "quorum:run:{w1}.3.7"
    assert keys.events("abc") == "quorum:run:{abc}:events"
    assert keys.wf_nodes(WF) == "quorum:wf:{w1}:nodes"


def test_calls_of_a_node_run_count_the_whole_workflows_spending(
    ctx: flow.Context, store: RunStore
) -> None:
    graph = prepare(
        {"name": "g", "max_tokens": 20, "nodes": {"a": inline("go"), "b": inline("go")}},
        Settings(model="m"),
    )
    ws = WorkflowStore.of(store)
    ws.create(WF, graph, timeout_s=60, idempotency_key=None)
    workflows.advance(ctx, WF)
    store.bill(f"{WF}.0.0", Usage(total_tokens=18))
    assert ws.load(WF).usage.total_tokens == 18
    state = store.load(f"{WF}.1.0")
    assert ctx.call(state, model="m", messages=[{"role": "user", "content": "x" * 40}]) is None
    assert store.load(f"{WF}.1.0").code == "budget_exceeded"


def test_a_step_past_the_deadline_ends_the_workflow_and_its_live_runs(
    ctx: flow.Context, store: RunStore
) -> None:
    ws = create(store, a=inline("go"), b=inline("{{ x }}", kwargs={"x": {"$ref": "a#/text"}}))
    workflows.advance(ctx, WF)
    store.redis.hset(store.keys.workflow(WF), "deadline", 1.0)
    workflows.advance(ctx, WF)
    state = ws.load(WF)
    assert state.status == "FAILED" and state.error.startswith("timeout")
    assert store.load(f"{WF}.0.0").status is TaskStatus.CANCELLED
    assert started(ctx) == [f"{WF}.0.0"]


class Verdict(BaseModel):
    supported: bool


def test_a_defined_task_node_runs_with_its_definition(ctx: flow.Context, store: RunStore) -> None:
    define(
        "wf_unit_check",
        template="Is {{ claim }} supported?",
        response_model=Verdict,
        config=None,
        checks=[{"expr": "output.supported is boolean", "message": "say yes or no"}],
    )
    ws = create(
        store,
        a=inline("go", LIST),
        b={"task": "wf_unit_check", "map": {"over": {"$ref": "a#/items"}, "item": "claim"}},
        c=inline("{{ v }}", kwargs={"v": {"$ref": "b#/0/supported"}}),
    )
    workflows.advance(ctx, WF)
    succeed(ctx, f"{WF}.0.0", {"items": ["sky is blue"]})
    workflows.advance(ctx, WF)
    spec = store.load(f"{WF}.1.0").spec
    assert spec.task == "wf_unit_check" and spec.task_hash and spec.config is None
    assert spec.kwargs == {"claim": "sky is blue"} and len(spec.checks) == 1
    assert ws.load(WF).node("b").state == "STARTED"


def test_defined_tasks_are_checked_at_submit() -> None:
    with pytest.raises(InvalidRequestError, match="node 'a': unknown task 'nowhere'"):
        prepare({"name": "g", "nodes": {"a": {"task": "nowhere"}}}, Settings(model="m"))
    define("wf_unit_named", template="Say {{ x }}", response_model=Verdict, config=None)
    with pytest.raises(InvalidRequestError, match="takes kwargs only"):
        prepare(
            {"name": "g", "nodes": {"a": {"task": "wf_unit_named", "template": "x"}}},
            Settings(model="m"),
        )
    with pytest.raises(InvalidRequestError, match="variables no kwarg or reference covers: x"):
        prepare({"name": "g", "nodes": {"a": {"task": "wf_unit_named"}}}, Settings(model="m"))
    with pytest.raises(InvalidRequestError, match="filled in at submit"):
        prepare(
            {"name": "g", "nodes": {"a": {**inline("go"), "defined": {"task": "x"}}}},
            Settings(model="m"),
        )


def test_a_node_whose_inputs_make_no_valid_run_fails_without_blocking_the_workflow(
    ctx: flow.Context, store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = create(store, a=inline("go"), b=inline("{{ x }}", kwargs={"x": {"$ref": "a#/text"}}))
    workflows.advance(ctx, WF)
    succeed(ctx, f"{WF}.0.0", {"text": "alpha"})

    def refused(*args: Any) -> Any:
        raise ValueError("no valid spec")

    monkeypatch.setattr(workflows, "_specs", refused)
    workflows.advance(ctx, WF)
    state = ws.load(WF)
    assert state.node("b").state == "FAILED" and "no valid spec" in state.node("b").error
    assert state.status == "FAILED"


def _kwargs_bytes(kwargs: dict[str, Any]) -> int:
    return len(json.dumps(kwargs).encode())


def test_resolved_kwargs_over_the_payload_limit_fail_the_node_without_a_run(
    store: RunStore,
) -> None:
    limit = 100
    ctx = flow.Context(
        store=store, llm=FakeLLM(), enqueue=Advancing(), worker="w", max_payload_bytes=limit
    )
    ws = create(
        store,
        a=inline("go"),
        b=inline("go"),
        c=inline("{{ x }} {{ y }}", kwargs={"x": {"$ref": "a#/text"}, "y": {"$ref": "b#/text"}}),
        d=inline("{{ z }}", kwargs={"z": {"$ref": "c"}}),
        e=inline("{{ z }}", kwargs={"z": {"$ref": "c"}}, allow_failed_inputs=True),
    )
    workflows.advance(ctx, WF)
    succeed(ctx, f"{WF}.0.0", {"text": "α" * 10})  # each output alone is well under the limit
    succeed(ctx, f"{WF}.1.0", {"text": "b" * 60})
    workflows.advance(ctx, WF)
    size = _kwargs_bytes({"x": "α" * 10, "y": "b" * 60})  # as a submit measures: \u03b1 escapes
    assert size > limit
    state = ws.load(WF)
    c = state.node("c")
    assert c.state == "FAILED" and c.started == 0
    assert c.error == (
        f"node 'c': its resolved kwargs are {size} bytes, over the payload limit of "
        f"{limit} bytes (QUORUM_MAX_PAYLOAD_BYTES)"
    )
    assert not store.redis.exists(store.keys.run(f"{WF}.2.0"))
    assert ws.inputs(WF, 2) is None  # nothing of the oversized inputs is written
    assert state.node("d").state == "SKIPPED" and state.node("e").state == "STARTED"
    assert store.load(f"{WF}.4.0").spec.kwargs == {"z": None}
    succeed(ctx, f"{WF}.4.0", {"text": "tolerant"})
    workflows.advance(ctx, WF)
    assert ws.load(WF).status == "FAILED"


@pytest.mark.parametrize("shared", [{}, {"doc": "the text ✓", "n": [1, 2]}])
def test_a_map_items_kwargs_are_measured_exactly_against_the_limit(
    store: RunStore, shared: dict[str, Any]
) -> None:
    items = ["p", "q" * 30, {"r": "ü"}]
    largest = max(_kwargs_bytes({**shared, "it": item}) for item in items)

    def run_map(limit: int) -> WorkflowStore:
        store.redis.flushall()
        ctx = flow.Context(
            store=store, llm=FakeLLM(), enqueue=Advancing(), worker="w", max_payload_bytes=limit
        )
        ws = create(
            store,
            a=inline("go", {"type": "object", "properties": {"items": {"type": "array"}}}),
            m=inline(
                "{{ it }}",
                kwargs={**shared, "it": "replaced by each item"},
                map={"over": {"$ref": "a#/items"}, "item": "it"},
            ),
        )
        workflows.advance(ctx, WF)
        succeed(ctx, f"{WF}.0.0", {"items": items})
        workflows.advance(ctx, WF)
        return ws

    node = run_map(largest).load(WF).node("m")
    assert node.state == "STARTED" and node.started == 3
    assert store.load(f"{WF}.1.1").spec.kwargs == {**shared, "it": "q" * 30}
    node = run_map(largest - 1).load(WF).node("m")
    assert node.state == "FAILED" and node.started == 0
    assert node.error.startswith("node 'm': the resolved kwargs of its item 1 are ")
    assert f"{largest} bytes, over the payload limit of {largest - 1} bytes" in node.error
