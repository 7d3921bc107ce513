"""The workflow index and its pages (`shared/wflisting.py`) against fakeredis."""

from __future__ import annotations

import fakeredis
import pytest

from quorum.producer.workflow_run import prepare
from quorum.shared.errors import InvalidRequestError
from quorum.shared.keys import Keys
from quorum.shared.settings import Settings
from quorum.shared.store import RunStore
from quorum.shared.wflisting import WorkflowListing
from quorum.shared.wfstore import WorkflowStatus, WorkflowStore
from tests.unit.test_workflows import inline

TTL = 1000


@pytest.fixture
def store() -> RunStore:
    return RunStore(fakeredis.FakeRedis(decode_responses=True), keys=Keys("quorum"), ttl_s=TTL)


def listing(store: RunStore) -> WorkflowListing:
    return WorkflowListing(store.redis, keys=store.keys, ttl_s=store.ttl_s)


def create(store: RunStore, workflow_id: str, name: str = "g") -> None:
    graph = prepare(
        {"name": name, "nodes": {"a": inline("go"), "b": inline("then", after=["a"])}},
        Settings(model="m"),
    )
    WorkflowStore.of(store).create(workflow_id, graph, timeout_s=60, idempotency_key=None)


def test_pages_go_newest_first_and_continue_from_their_cursor(store: RunStore):
    for n in range(5):
        create(store, f"w{n}", name=f"name {n}")
    first = listing(store).page(limit=2)
    assert [w.id for w in first.workflows] == ["w4", "w3"] and first.next_cursor
    summary = first.workflows[0]
    assert (summary.name, summary.status, summary.nodes, summary.left) == (
        "name 4",
        WorkflowStatus.RUNNING,
        2,
        2,
    )
    assert summary.ended_nodes == 0 and summary.usage.total_tokens == 0
    rest = listing(store).page(limit=10, cursor=first.next_cursor)
    assert [w.id for w in rest.workflows] == ["w2", "w1", "w0"] and rest.next_cursor is None
    assert store.redis.ttl(store.keys.workflow_index()) > 0


def test_a_page_filters_by_status_and_drops_expired_workflows(store: RunStore):
    for n in range(3):
        create(store, f"w{n}")
    WorkflowStore.of(store).finish("w1", "FAILED", error="node(s) failed: a")
    store.redis.delete(store.keys.workflow("w0"))  # expired
    failed = listing(store).page(status=WorkflowStatus.FAILED)
    assert [(w.id, w.error) for w in failed.workflows] == [("w1", "node(s) failed: a")]
    assert failed.workflows[0].finished_at is not None
    assert [w.id for w in listing(store).page().workflows] == ["w2", "w1"]
    assert store.redis.zrange(store.keys.workflow_index(), 0, -1) == ["w1", "w2"]


def test_discard_and_age_leave_the_index(store: RunStore):
    create(store, "old")
    store.redis.zadd(store.keys.workflow_index(), {"old": 1.0})  # created long ago
    create(store, "gone")
    WorkflowStore.of(store).discard("gone")
    create(store, "new")  # each submit trims what is older than the TTL
    assert store.redis.zrange(store.keys.workflow_index(), 0, -1) == ["new"]


def test_a_bad_cursor_is_refused(store: RunStore):
    with pytest.raises(InvalidRequestError, match="not one a listing gave"):
        listing(store).page(cursor="soon:w1")


def test_statuses_reads_each_run_in_one_round_trip(store: RunStore):
    assert listing(store).statuses(["nope"]) == {"nope": None}
