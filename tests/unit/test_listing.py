"""Listing runs against fakeredis: indexes written at submit and at the end, pages, cursors."""

from __future__ import annotations

import fakeredis
import pytest

from quorum.shared.errors import InvalidRequestError
from quorum.shared.keys import Keys
from quorum.shared.listing import RunFilter, metadata_text
from quorum.shared.models import RunSpec, TaskStatus, ThresholdVotingValidationConfig
from quorum.shared.store import RunStore

KEYS = Keys("quorum")


def spec(**metadata: object) -> RunSpec:
    return RunSpec(
        template="Extract: {{ message }}",
        kwargs={"message": "5 apples"},
        response_schema={"type": "object"},
        config=ThresholdVotingValidationConfig(issues=["the quantity matches"]),
        model="m",
        validator_model="v",
        metadata=metadata,
    )


@pytest.fixture
def redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def store(redis: fakeredis.FakeRedis) -> RunStore:
    return RunStore(redis, keys=KEYS, ttl_s=100)


def ids(store: RunStore, where: RunFilter, **options: object) -> list[str]:
    return [run.id for run in store.list_runs(where, **options)]  # type: ignore[arg-type]


def test_runs_are_listed_newest_first_and_filtered_by_metadata(store: RunStore) -> None:
    store.create_many([(f"r{i}", spec(team="a" if i % 2 else "b", n=i), None) for i in range(6)])
    assert ids(store, RunFilter()) == ["r5", "r4", "r3", "r2", "r1", "r0"]
    assert ids(store, RunFilter(metadata={"team": "a"})) == ["r5", "r3", "r1"]
    assert ids(store, RunFilter(metadata={"team": "a", "n": "3"})) == ["r3"]
    assert ids(store, RunFilter(metadata={"team": "c"})) == []
    summary = store.list_runs(RunFilter(metadata={"n": "2"}))[0]
    assert summary.metadata == {"team": "b", "n": 2}
    assert summary.status is TaskStatus.PENDING


def test_final_status_has_its_own_index_and_live_ones_are_checked(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    store.create_many([(f"r{i}", spec(), None) for i in range(4)])
    store.transition("r1", TaskStatus.FAILED, fields={"error": "boom"})
    store.transition("r3", TaskStatus.CANCELLED)
    store.transition("r2", TaskStatus.RUNNING)
    assert redis.zrange(KEYS.runs_by_status("FAILED"), 0, -1) == ["r1"]
    assert ids(store, RunFilter(status=TaskStatus.FAILED)) == ["r1"]
    assert store.list_runs(RunFilter(status=TaskStatus.FAILED))[0].error == "boom"
    assert ids(store, RunFilter(status=TaskStatus.RUNNING)) == ["r2"]
    assert ids(store, RunFilter(status=TaskStatus.PENDING)) == ["r0"]


def test_pages_follow_the_cursor_to_the_end(store: RunStore) -> None:
    store.create_many([(f"r{i:02}", spec(), None) for i in range(25)])
    seen, cursor = [], None
    while True:
        page = store.list_runs(RunFilter(), limit=10, cursor=cursor)
        seen += [run.id for run in page]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"r{i:02}" for i in reversed(range(25))]


def test_a_short_page_keeps_a_cursor_when_the_scan_stops(store: RunStore) -> None:
    store.create_many([(f"r{i:02}", spec(), None) for i in range(30)])
    store.transition("r00", TaskStatus.RUNNING)
    page = store.index.page(RunFilter(status=TaskStatus.RUNNING), limit=5, scan_limit=20)
    assert len(page) == 0 and page.next_cursor is not None
    rest = store.index.page(
        RunFilter(status=TaskStatus.RUNNING), limit=5, cursor=page.next_cursor, scan_limit=20
    )
    assert [r.id for r in rest] == ["r00"] and rest.next_cursor is None


def test_created_after_and_expired_runs(store: RunStore, redis: fakeredis.FakeRedis) -> None:
    store.create_many([(f"r{i}", spec(), None) for i in range(3)])
    middle = float(redis.hget(KEYS.run("r1"), "created_at"))
    assert ids(store, RunFilter(created_after=middle)) == ["r2"]
    redis.delete(KEYS.run("r2"))
    assert ids(store, RunFilter()) == ["r1", "r0"]
    assert redis.zscore(KEYS.runs(), "r2") is None  # an expired run leaves the index


def test_a_bad_cursor_is_refused(store: RunStore) -> None:
    with pytest.raises(InvalidRequestError, match="cursor"):
        store.list_runs(RunFilter(), cursor="nonsense")


def test_every_index_key_has_a_ttl(store: RunStore, redis: fakeredis.FakeRedis) -> None:
    store.create_many([("r1", spec(team="a"), None)])
    store.transition("r1", TaskStatus.SUCCESSFUL)
    for key in redis.keys("quorum:runs*"):
        assert 0 < redis.ttl(key) <= 100, key


def test_metadata_values_indexed_as_text() -> None:
    assert metadata_text("acme") == "acme"
    assert metadata_text(5) == "5"
    assert metadata_text(True) == "true"
    assert metadata_text({"nested": 1}) is None
    assert metadata_text("x" * 300) is None


def test_create_many_honours_idempotency_keys(store: RunStore) -> None:
    first = store.create_many([("a", spec(), "k1"), ("b", spec(), "k1"), ("c", spec(), None)])
    assert first == ["a", "a", "c"]
    assert store.create_many([("d", spec(), "k1")]) == ["a"]
    assert ids(store, RunFilter()) == ["c", "a"]


def test_runs_of_a_defined_task_have_their_own_index(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    named = spec().model_copy(update={"task": "extract", "task_hash": "h1"})
    store.create_many([("a", named, None), ("b", spec(), None), ("c", named, None)])
    assert redis.zrange(KEYS.runs_by_task("extract"), 0, -1) == ["a", "c"]
    assert ids(store, RunFilter(task="extract")) == ["c", "a"]
    assert store.list_runs(RunFilter(task="extract"))[0].task == "extract"
    store.transition("a", TaskStatus.FAILED)
    assert ids(store, RunFilter(task="extract", status=TaskStatus.FAILED)) == ["a"]
