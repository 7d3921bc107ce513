"""The dashboard's view of a workflow (`producer/wfgraph.py`, pure) over a workflow scheduled
in fakeredis, and its template (autoescaped)."""

from __future__ import annotations

import fakeredis
import pytest

from quorum.producer.dashboard import TEMPLATES
from quorum.producer.runview import run_page, run_row
from quorum.producer.wfgraph import (
    NODE_H,
    NODE_W,
    RUNS_SHOWN,
    layers,
    shown_runs,
    upstream_of,
    workflow_page,
)
from quorum.producer.workflow_run import prepare
from quorum.shared import flow, workflows
from quorum.shared.graph import NodeDoc, WorkflowDoc
from quorum.shared.keys import Keys
from quorum.shared.settings import Settings
from quorum.shared.store import RunStore
from quorum.shared.wflisting import WorkflowListing
from quorum.shared.wfstore import NodeState, WorkflowState, WorkflowStore
from tests.unit.test_flow import FakeLLM
from tests.unit.test_workflows import LIST, Advancing, inline, succeed

WF = "w1"


@pytest.fixture
def store() -> RunStore:
    return RunStore(fakeredis.FakeRedis(decode_responses=True), keys=Keys("quorum"), ttl_s=100)


def diamond(store: RunStore, **more: dict) -> WorkflowStore:
    """a → b (a map over a's items) and c (skipped by its skip_if) → d (after c, data from b)."""
    nodes = {
        "a": inline("go", LIST),
        "b": inline("{{ x }}", map={"over": {"$ref": "a#/items"}, "item": "x"}),
        "c": inline("{{ y }}", kwargs={"y": {"$ref": "a#/items/0"}}, skip_if="y == 'p'"),
        "d": inline("{{ z }}", kwargs={"z": {"$ref": "b"}}, after=["c"]),
        **more,
    }
    graph = prepare({"name": "diamond", "nodes": nodes}, Settings(model="m"))
    ws = WorkflowStore.of(store)
    ws.create(WF, graph, timeout_s=60, idempotency_key=None)
    return ws


def drawn(store: RunStore, ws: WorkflowStore, now: float = 1e12):
    state = ws.load(WF)
    listing = WorkflowListing(store.redis, keys=store.keys, ttl_s=store.ttl_s)
    return workflow_page(state, listing.statuses(shown_runs(state)), ws.events(WF), now=now)


def test_layers_are_the_longest_path_from_a_root():
    upstream = {"a": [], "b": ["a"], "c": ["a", "b"], "d": [], "e": ["d", "c"]}
    assert layers(upstream) == {"a": 0, "b": 1, "c": 2, "d": 0, "e": 3}
    assert layers({"x": ["gone"]}) == {"x": 0}  # an unknown name is no edge


def test_a_nodes_upstream_separates_data_from_order():
    doc = NodeDoc(
        template="{{ v }} {{ w }}",
        response_schema={},
        kwargs={"v": {"$ref": "a#/x"}, "w": [{"$ref": "b"}, {"$ref": "a"}]},
        after=["c", "a"],
    )
    assert upstream_of(doc) == (["a", "b"], ["c"])


def test_a_running_workflow_shows_each_node_its_layer_status_and_runs(store: RunStore):
    ctx = flow.Context(store=store, llm=FakeLLM(), enqueue=Advancing(), worker="w")
    ws = diamond(store)
    workflows.advance(ctx, WF)
    page = drawn(store, ws)
    assert [(n.name, n.status, n.depth) for n in page.nodes] == [
        ("a", "PENDING", 0),  # a started node shows its run's status
        ("b", "WAITING", 1),
        ("c", "WAITING", 1),
        ("d", "WAITING", 2),
    ]
    assert page.nodes[0].runs[0].run_id == f"{WF}.0.0" and not page.terminal

    succeed(ctx, f"{WF}.0.0", {"items": ["p", "q", "r"]})
    workflows.advance(ctx, WF)
    succeed(ctx, f"{WF}.1.1", {"text": "q!"})
    page = drawn(store, ws)
    a, b, c, d = page.nodes
    assert (a.status, b.status, c.status, d.status) == (
        "SUCCESSFUL",
        "RUNNING",
        "SKIPPED",
        "WAITING",
    )
    assert (b.is_map, b.items, b.ended) == (True, 3, 1)
    assert [(r.item, r.status) for r in b.runs] == [
        (0, "PENDING"),
        (1, "SUCCESSFUL"),
        (2, "PENDING"),
    ]
    assert (b.row, c.row) == (0, 1) and b.y < c.y and b.x == c.x > a.x
    assert d.upstream == ("b", "c")
    assert [(e.source, e.target, e.order_only) for e in page.edges] == [
        ("a", "b", False),
        ("a", "c", False),
        ("b", "d", False),
        ("c", "d", True),
    ]
    assert page.ended == 2 and page.progress_pct == 50.0
    assert page.width >= 3 * NODE_W and page.height >= 2 * NODE_H
    assert [t.type for t in page.timeline][:3] == ["node_ready", "node_started", "node_finished"]
    assert page.timeline[1].detail == "1 run" and page.timeline[2].detail == "SUCCESSFUL"


def test_a_large_map_links_its_first_runs_and_counts_the_rest():
    node = NodeDoc(template="{{ x }}", response_schema={}, map={"over": {"$ref": "a"}, "item": "x"})
    state = WorkflowState(
        workflow_id=WF,
        doc=WorkflowDoc(name="g", nodes={"m": node}),
        status="RUNNING",
        created_at=0.0,
        deadline=60.0,
        left=1,
        nodes=[NodeState(0, "m", "STARTED", is_map=True, items=80, started=80, ended=3)],
    )
    assert len(shown_runs(state)) == RUNS_SHOWN
    (box,) = workflow_page(state, {}, [], now=5.0).nodes
    assert (box.status, len(box.runs), box.more_runs) == ("RUNNING", RUNS_SHOWN, 80 - RUNS_SHOWN)
    assert box.runs[0].status == ""  # not read: shown as unknown


def test_the_workflow_page_escapes_names_and_goes_live_until_it_ends(store: RunStore):
    ctx = flow.Context(store=store, llm=FakeLLM(), enqueue=Advancing(), worker="w")
    ws = diamond(store, **{"<i>x": inline("later", after=["d"])})
    workflows.advance(ctx, WF)
    page = drawn(store, ws)
    html = TEMPLATES.get_template("workflow.html").render(
        page=page, refresh_s=2, after="1-0", now=1e12, signed_in=True
    )
    assert "&lt;i&gt;x" in html and "<i>x" not in html
    assert f'href="/ui/runs/{WF}.0.0"' in html and 'data-node="d"' in html
    assert f'data-events="/ui/workflows/{WF}/events?after=1-0"' in html
    assert 'data-ends="workflow_finished"' in html

    workflows.cancel(store, WF)
    ended = TEMPLATES.get_template("workflow.html").render(
        page=drawn(store, ws), refresh_s=2, after="1-0", now=1e12, signed_in=True
    )
    assert "data-events" not in ended and 'class="status CANCELLED"' in ended


def test_a_node_runs_row_and_page_name_its_workflow(store: RunStore):
    ctx = flow.Context(store=store, llm=FakeLLM(), enqueue=Advancing(), worker="w")
    diamond(store)
    workflows.advance(ctx, WF)
    state = store.load(f"{WF}.0.0")
    row = run_row(state)
    assert (row.workflow_id, row.node) == (WF, "a")
    page = run_page(state, store.events(f"{WF}.0.0"))
    assert page.workflow == WF
    html = TEMPLATES.get_template("run.html").render(page=page, refresh_s=2, after="0-0", now=1e12)
    assert f'<a id="workflow" href="/ui/workflows/{WF}">' in html
