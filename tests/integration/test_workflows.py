"""Workflows end to end: real Redis, a real worker, the simulator (docs/workflows.md)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from quorum import (
    AsyncTaskClient,
    SingleShotValidationConfig,
    TaskClient,
    Workflow,
    WorkflowFailedError,
)
from quorum.producer.stack import ManagedProcess
from quorum.shared.errors import InvalidRequestError
from quorum.shared.prompts import render_task_prompt
from tests.integration.conftest import DedicatedStack
from tests.integration.helpers import Simulator, directive, wait_until
from tests.integration.services import http, start_api

TOKEN = "workflow-token"
ROOT = Path(__file__).resolve().parents[2]

CONFIG = SingleShotValidationConfig(issues=["The answer is right"], max_retries=0)
TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
LIST = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": {"type": "string"}}},
    "required": ["items"],
}


def node(template: str, scope: str, schema: dict[str, Any] = TEXT, **script: Any) -> dict[str, Any]:
    """An inline node whose task answer the simulator scripts under `scope`."""
    return {
        "template": template + " {{ sim }}",
        "response_model": schema,
        "config": CONFIG,
        "sim": directive(scope, **script),
    }


def add(
    wf: Workflow, name: str, spec: dict[str, Any], kwargs: dict[str, Any] | None = None, **kw: Any
) -> Any:
    sim = spec.pop("sim")
    return wf.task(name, task=spec, kwargs={**(kwargs or {}), "sim": sim}, **kw)


def test_diamond_joins_both_upstream_values(client: TaskClient, scope: str) -> None:
    wf = Workflow("diamond", timeout_s=60)
    a = add(wf, "a", node("Start.", f"{scope}-a", outputs=[{"text": "alpha"}]))
    b = add(
        wf,
        "b",
        node("Left of {{ x }}.", f"{scope}-b", outputs=[{"text": "LEFT"}]),
        {"x": a["text"]},
    )
    c = add(
        wf,
        "c",
        node("Right of {{ x }}.", f"{scope}-c", outputs=[{"text": "RIGHT"}]),
        {"x": a["text"]},
    )
    add(
        wf,
        "d",
        node("Join {{ l }} and {{ r }}.", f"{scope}-d", outputs=[{"text": "done"}]),
        {"l": b["text"], "r": c["text"]},
    )
    run = client.submit_workflow(wf)
    outputs = run.result(timeout=60)
    assert outputs == {
        "a": {"text": "alpha"},
        "b": {"text": "LEFT"},
        "c": {"text": "RIGHT"},
        "d": {"text": "done"},
    }
    assert run.status() == "SUCCESSFUL"
    d_run = run.nodes()["d"].run_ids[0]
    spec = client.store.load(d_run).spec
    prompt = render_task_prompt(spec.template, spec.kwargs)
    assert "LEFT" in prompt and "RIGHT" in prompt
    types = [e["type"] for e in run.provenance()]
    assert types.count("node_finished") == 4 and types[-1] == "workflow_finished"
    lineage = client.lineage(d_run)
    assert [e["node"] for e in lineage] == ["d", "b", "c", "a"]
    assert lineage[0]["inputs"][0]["node"] == "b" and lineage[0]["inputs"][0]["pointer"] == "/text"
    assert lineage[-1]["inputs"] == [] and lineage[-1]["output"] == {"text": "alpha"}


def _max_concurrent(calls: list[dict[str, Any]]) -> int:
    edges = sorted([(c["started"], 1) for c in calls] + [(c["ended"], -1) for c in calls])
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def test_map_over_50_items_honours_max_parallel_and_joins_in_order(
    client: TaskClient, simulator: Simulator, scope: str
) -> None:
    claims = [
        f"claim {i} " + directive(f"{scope}-i{i}", outputs=[{"text": f"v{i}"}]) for i in range(50)
    ]
    wf = Workflow("map", timeout_s=120)
    ex = add(wf, "extract", node("Extract.", f"{scope}-ex", LIST, outputs=[{"items": claims}]))
    wf.map(
        "check",
        over=ex["items"],
        item="claim",
        task={"template": "Check {{ claim }}", "response_model": TEXT, "config": CONFIG},
        max_parallel=5,
    )
    sm = node(
        "Summarise {{ verdicts | length }} verdicts.", f"{scope}-sm", outputs=[{"text": "ok"}]
    )
    add(wf, "summary", sm, {"verdicts": {"$ref": "check"}})
    run = client.submit_workflow(wf)
    outputs = run.result(timeout=120)
    assert outputs["check"] == [{"text": f"v{i}"} for i in range(50)]
    assert outputs["summary"] == {"text": "ok"}
    assert len(run.nodes()["check"].run_ids) == 50
    calls = [c for c in simulator.calls(kind="task") if str(c["scope"]).startswith(f"{scope}-i")]
    assert len(calls) == 50
    assert _max_concurrent(calls) <= 5


def test_failing_middle_node_skips_dependents_unless_they_allow_failed_inputs(
    client: TaskClient, simulator: Simulator, scope: str
) -> None:
    wf = Workflow("failing", timeout_s=60)
    a = add(wf, "a", node("Start.", f"{scope}-a", outputs=[{"text": "alpha"}]))
    b = add(wf, "b", node("Fail on {{ x }}.", f"{scope}-b", votes={"*": False}), {"x": a["text"]})
    add(wf, "c", node("Needs {{ y }}.", f"{scope}-c"), {"y": b["text"]})
    d = node("Tolerates {{ y }}.", f"{scope}-d", outputs=[{"text": "tolerant"}])
    add(wf, "d", d, {"y": b["text"]}, allow_failed_inputs=True)
    run = client.submit_workflow(wf)
    with pytest.raises(WorkflowFailedError) as caught:
        run.result(timeout=60)
    assert caught.value.status == "FAILED"
    assert list(caught.value.failures) == ["b"]
    assert caught.value.outputs["d"] == {"text": "tolerant"}
    nodes = run.nodes()
    assert nodes["b"].status == "FAILED" and nodes["c"].status == "SKIPPED"
    assert nodes["c"].run_ids == []
    assert simulator.calls(f"{scope}-c") == []
    d_spec = client.store.load(nodes["d"].run_ids[0]).spec
    assert d_spec.kwargs["y"] is None


def test_skip_if_skips_the_node_and_its_dependents(
    client: TaskClient, simulator: Simulator, scope: str
) -> None:
    wf = Workflow("skipping", timeout_s=60)
    a = add(wf, "a", node("Start.", f"{scope}-a", outputs=[{"text": "alpha"}]))
    b = add(wf, "b", node("Maybe {{ x }}.", f"{scope}-b"), {"x": a["text"]}, skip_if="x == 'alpha'")
    add(wf, "c", node("After {{ y }}.", f"{scope}-c"), {"y": b})
    run = client.submit_workflow(wf)
    outputs = run.result(timeout=60)
    assert outputs == {"a": {"text": "alpha"}, "b": None, "c": None}
    assert {n: v.status for n, v in run.nodes().items()} == {
        "a": "SUCCESSFUL",
        "b": "SKIPPED",
        "c": "SKIPPED",
    }
    assert simulator.calls(f"{scope}-b") == [] and simulator.calls(f"{scope}-c") == []


def test_cancel_mid_graph_ends_live_runs_and_starts_nothing(
    client: TaskClient, simulator: Simulator, scope: str
) -> None:
    wf = Workflow("cancelled", timeout_s=60)
    a = add(wf, "a", node("Slow.", f"{scope}-a", outputs=[{"text": "alpha"}], latency=1.5))
    add(wf, "b", node("After {{ x }}.", f"{scope}-b"), {"x": a["text"]})
    run = client.submit_workflow(wf)
    deadline = time.monotonic() + 10
    while not simulator.calls(f"{scope}-a") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert run.cancel() is True
    with pytest.raises(WorkflowFailedError) as caught:
        run.result(timeout=10)
    assert caught.value.status == "CANCELLED"
    time.sleep(2.0)  # the call in flight returns; nothing may follow it
    nodes = run.nodes()
    assert nodes["a"].status == "CANCELLED"
    assert nodes["b"].status == "WAITING" and nodes["b"].run_ids == []
    assert simulator.calls(f"{scope}-b") == []
    assert run.status() == "CANCELLED"
    assert run.cancel() is False


def _inline(template: str, schema: dict[str, Any] = TEXT) -> dict[str, Any]:
    return {"template": template, "response_schema": schema, "config": CONFIG.model_dump()}


REFUSALS = {
    "cycle": (
        {
            "a": {**_inline("{{ x }}"), "kwargs": {"x": {"$ref": "b#/text"}}},
            "b": {**_inline("{{ x }}"), "kwargs": {"x": {"$ref": "a#/text"}}},
        },
        "cycle through nodes: a, b",
    ),
    "unknown node": (
        {"a": {**_inline("{{ x }}"), "kwargs": {"x": {"$ref": "nowhere#/text"}}}},
        "unknown node 'nowhere'",
    ),
    "uncovered variable": (
        {"a": {**_inline("{{ x }} and {{ y }}"), "kwargs": {"x": 1}}},
        "template variables no kwarg or reference covers: y",
    ),
    "map over a non-array": (
        {
            "a": _inline("go"),
            "b": {**_inline("{{ it }}"), "map": {"over": {"$ref": "a#/text"}, "item": "it"}},
        },
        "is a string, not an array",
    ),
    "missing field": (
        {"a": _inline("go"), "b": {**_inline("{{ x }}"), "kwargs": {"x": {"$ref": "a#/nope"}}}},
        "field 'nope' is not in the response schema",
    ),
    "too many nodes": ({f"n{i}": _inline("go") for i in range(101)}, "over the limit of 100"),
    "bad skip_if": ({"a": {**_inline("go"), "skip_if": "x ==="}}, "skip_if"),
    "deep skip_if": (
        {"a": {**_inline("go"), "skip_if": "(" * 1900 + "1" + ")" * 1900}},
        "skip_if: .* nested too deeply",
    ),
    "long skip_if": ({"a": {**_inline("go"), "skip_if": "1 or " * 800 + "1"}}, "4000 char"),
    "deep template": ({"a": _inline("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}")}, "too deeply"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_graphs_are_refused_with_nothing_written(
    client: TaskClient, redis_url: str, case: str
) -> None:
    nodes, message = REFUSALS[case]
    plain = redis.Redis.from_url(redis_url, decode_responses=True)
    before = set(plain.scan_iter("quorum:wf*"))
    with pytest.raises(InvalidRequestError, match=message):
        client.submit_workflow({"name": case, "nodes": nodes}, idempotency_key=f"refused-{case}")
    assert set(plain.scan_iter("quorum:wf*")) == before
    assert plain.get(f"quorum:wfidem:refused-{case}") is None


def test_idempotency_key_gives_back_the_first_workflow(client: TaskClient, scope: str) -> None:
    doc = {
        "name": "once",
        "nodes": {"a": {**_inline("go {{ sim }}"), "kwargs": {"sim": directive(scope)}}},
    }
    first = client.submit_workflow(doc, idempotency_key=scope)
    again = client.submit_workflow(doc, idempotency_key=scope)
    assert again.id == first.id
    assert first.result(timeout=60)["a"] is not None


@pytest.fixture(scope="module")
def api(redis_url: str, worker: ManagedProcess) -> Iterator[str]:
    """The HTTP API on the session's Redis, with a bearer token."""
    url, process = start_api({"QUORUM_REDIS_URL": redis_url, "QUORUM_API_TOKEN": TOKEN})
    try:
        yield url
    finally:
        process.stop()


def test_http_submit_view_events_and_refusal(api: str, redis_url: str, scope: str) -> None:
    doc = {
        "name": "http",
        "nodes": {
            "a": {
                **_inline("Start {{ sim }}"),
                "kwargs": {"sim": directive(f"{scope}-a", outputs=[{"text": "alpha"}])},
            },
            "b": {
                **_inline("After {{ x }} {{ sim }}"),
                "kwargs": {
                    "x": {"$ref": "a#/text"},
                    "sim": directive(f"{scope}-b", outputs=[{"text": "beta"}]),
                },
            },
        },
        "idempotency_key": scope,
    }
    assert http("POST", f"{api}/v1/workflows", doc).status == 401
    created = http("POST", f"{api}/v1/workflows", doc, token=TOKEN)
    assert created.status == 201, created.json()
    workflow_id = created.json()["id"]
    view: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view = http("GET", f"{api}/v1/workflows/{workflow_id}", token=TOKEN).json()
        if view["status"] != "RUNNING":
            break
        time.sleep(0.1)
    assert view["status"] == "SUCCESSFUL"
    assert view["nodes"]["b"]["output"] == {"text": "beta"}
    assert view["nodes"]["a"]["run_ids"] == [f"{workflow_id}.0.0"]
    assert view["usage"]["total_tokens"] > 0
    events = http("GET", f"{api}/v1/workflows/{workflow_id}/events", token=TOKEN).json()
    assert events[-1]["type"] == "workflow_finished"
    cancelled = http("POST", f"{api}/v1/workflows/{workflow_id}/cancel", token=TOKEN).json()
    assert cancelled == {"id": workflow_id, "cancelled": False, "status": "SUCCESSFUL"}
    plain = redis.Redis.from_url(redis_url, decode_responses=True)
    before = set(plain.scan_iter("quorum:wf*"))
    bad = {"name": "bad", "nodes": {"a": {**_inline("{{ missing }}")}}}
    refused = http("POST", f"{api}/v1/workflows", bad, token=TOKEN)
    assert refused.status == 422 and "missing" in refused.json()["detail"]
    assert set(plain.scan_iter("quorum:wf*")) == before
    assert http("GET", f"{api}/v1/workflows/nope", token=TOKEN).status == 404


def test_cli_submits_a_workflow_file_and_waits(
    redis_url: str, worker: ManagedProcess, scope: str, tmp_path: Path
) -> None:
    doc = {
        "name": "cli",
        "nodes": {
            "a": {
                **_inline("Go {{ sim }}"),
                "kwargs": {"sim": directive(scope, outputs=[{"text": "cli"}])},
            },
            "b": {**_inline("Then {{ x }}"), "kwargs": {"x": {"$ref": "a#/text"}}, "after": ["a"]},
        },
    }
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(doc))
    env = {**os.environ, "QUORUM_REDIS_URL": redis_url}
    quorum = str(Path(sys.executable).with_name("quorum"))
    done = subprocess.run(
        [quorum, "workflow", "submit", str(path), "--wait", "--timeout", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "node_started: a (1 run(s))" in lines
    assert "workflow_finished: SUCCESSFUL" in lines
    assert '"text": "cli"' in done.stdout
    status = subprocess.run(
        [quorum, "workflow", "status", lines[0]],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "a: SUCCESSFUL (1 run(s))" in status.stdout


def test_nodes_given_as_defined_tasks_run_with_their_checks(
    dedicated_stack: DedicatedStack, scope: str
) -> None:
    dedicated_stack.worker(QUORUM_IMPORTS="tests.integration.defined_tasks", PYTHONPATH=str(ROOT))
    wait_until(
        lambda: dedicated_stack.redis.hexists("quorum:{tasks}:definitions", "it_python_check"),
        timeout_s=15,
        what="the worker to publish its definitions",
    )
    client = dedicated_stack.client()
    wf = Workflow("defined", timeout_s=60)
    tags = wf.task(
        "tags",
        task="it_tags",  # list[str], with an expression check
        kwargs={
            "message": "fruit",
            "sim": directive(f"{scope}-t", outputs=[{"value": ["x", "y"]}]),
        },
    )
    wf.map(
        "orders",
        over=tags,
        item="message",
        task="it_python_check",  # a Python check that lower-cases the product
        kwargs={"sim": directive(f"{scope}-o", outputs=[{"product": "APPLES", "quantity": 3}])},
        max_parallel=2,
    )
    run = client.submit_workflow(wf)
    outputs = run.result(timeout=60)
    assert outputs["tags"] == ["x", "y"]
    assert outputs["orders"] == [{"product": "apples", "quantity": 3}] * 2
    spec = client.store.load(run.nodes()["orders"].run_ids[0]).spec
    assert spec.task == "it_python_check" and spec.task_hash
    with pytest.raises(InvalidRequestError, match="unknown task 'it_nowhere'"):
        client.submit_workflow({"name": "x", "nodes": {"a": {"task": "it_nowhere"}}})


def test_the_async_client_submits_and_waits_for_a_workflow(
    redis_url: str, worker: ManagedProcess, scope: str
) -> None:
    doc = {
        "name": "async",
        "nodes": {
            "a": {
                **_inline("Go {{ sim }}"),
                "kwargs": {"sim": directive(scope, outputs=[{"text": "async"}])},
            }
        },
    }

    async def go() -> dict[str, Any]:
        async with AsyncTaskClient(redis_url=redis_url) as aclient:
            run = await aclient.submit_workflow(doc)
            outputs = await run.result(timeout=60)
            assert await run.status() == "SUCCESSFUL"
            lineage = await aclient.lineage((await run.nodes())["a"].run_ids[0])
            assert lineage[0]["node"] == "a"
            return outputs

    assert asyncio.run(go()) == {"a": {"text": "async"}}


def test_kwargs_resolved_over_the_payload_limit_fail_the_node_without_a_call(
    dedicated_stack: DedicatedStack, simulator: Simulator, scope: str
) -> None:
    dedicated_stack.worker(QUORUM_MAX_PAYLOAD_BYTES="3000")
    client = dedicated_stack.client()
    wf = Workflow("oversized", timeout_s=60)
    a = add(wf, "a", node("Left.", f"{scope}-a", outputs=[{"text": "x" * 1600}]))
    b = add(wf, "b", node("Right.", f"{scope}-b", outputs=[{"text": "y" * 1600}]))
    c = add(wf, "c", node("Join {{ l }} {{ r }}.", f"{scope}-c"), {"l": a["text"], "r": b["text"]})
    add(wf, "d", node("After {{ j }}.", f"{scope}-d"), {"j": c})
    e = node("Tolerates {{ j }}.", f"{scope}-e", outputs=[{"text": "tolerant"}])
    add(wf, "e", e, {"j": c}, allow_failed_inputs=True)
    run = client.submit_workflow(wf)  # each output alone is under the limit; both together not
    with pytest.raises(WorkflowFailedError) as caught:
        run.result(timeout=60)
    assert caught.value.status == "FAILED" and list(caught.value.failures) == ["c"]
    (reason,) = caught.value.failures["c"]
    assert reason.startswith("node 'c': its resolved kwargs are ")
    assert reason.endswith("over the payload limit of 3000 bytes (QUORUM_MAX_PAYLOAD_BYTES)")
    nodes = run.nodes()
    assert nodes["a"].status == nodes["b"].status == "SUCCESSFUL"
    assert nodes["c"].status == "FAILED" and nodes["c"].run_ids == []
    assert nodes["d"].status == "SKIPPED" and nodes["e"].status == "SUCCESSFUL"
    assert caught.value.outputs["e"] == {"text": "tolerant"}
    assert simulator.calls(f"{scope}-c") == [] and simulator.calls(f"{scope}-d") == []
