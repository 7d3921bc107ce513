"""Webhooks of runs and workflows: the callback URL check, the signature, and delivery against
fakeredis with a scripted receiver."""

from __future__ import annotations

import json
import time
from typing import Any

import fakeredis
import pytest

from quorum.producer.workflow_run import prepare
from quorum.shared import flow, sweep, workflows
from quorum.shared.errors import InvalidRequestError
from quorum.shared.keys import Keys
from quorum.shared.models import RunSpec, TaskStatus, ThresholdVotingValidationConfig
from quorum.shared.settings import Settings
from quorum.shared.store import RunStore
from quorum.shared.webhooks import (
    SIGNATURE_HEADER,
    check_callback_url,
    deliver,
    signature,
    verify,
)
from quorum.shared.wfstore import WorkflowStore
from quorum.shared.wfview import workflow_view
from tests.unit.test_flow import FakeLLM
from tests.unit.test_workflows import Advancing, inline, succeed

KEYS = Keys("quorum")
ALLOWED = ["hooks.example.com"]
SETTINGS = Settings(webhook_secret="s3cret", webhook_allowed_hosts=ALLOWED, webhook_retry_for_s=60)


def spec(callback_url: str | None = "https://hooks.example.com/quorum") -> RunSpec:
    return RunSpec(
        template="Extract: {{ message }}",
        kwargs={"message": "5 apples"},
        response_schema={"type": "object"},
        config=ThresholdVotingValidationConfig(issues=["the quantity matches"]),
        model="m",
        validator_model="v",
        metadata={"order": 42},
        callback_url=callback_url,
    )


@pytest.fixture
def redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def store(redis: fakeredis.FakeRedis) -> RunStore:
    return RunStore(redis, keys=KEYS, ttl_s=100)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example.com/x", "http:// or https://"),
        ("https://evil.example.com/x", "'evil.example.com' is not allowed"),
        ("http://169.254.169.254/latest", "is not allowed"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https://hooks.example.com:notaport/x", "not a valid URL"),
        ("", "1 to 2048"),
        (42, "1 to 2048"),
    ],
)
def test_a_callback_url_outside_the_allowed_hosts_is_refused(url: object, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        check_callback_url(url, ALLOWED)


def test_callbacks_are_off_without_allowed_hosts() -> None:
    assert check_callback_url("https://HOOKS.example.com/q?a=1", ALLOWED)
    with pytest.raises(InvalidRequestError, match="no callback host is allowed"):
        check_callback_url("https://hooks.example.com/x", [])


def test_the_signature_verifies_and_rejects_tampering_and_replays() -> None:
    body = b'{"id":"r1"}'
    header = signature("s3cret", 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=")
    assert verify(header, body, "s3cret", now=1_700_000_010)
    assert not verify(header, b'{"id":"r2"}', "s3cret", now=1_700_000_010)
    assert not verify(header, body, "other", now=1_700_000_010)
    assert not verify(header, body, "s3cret", now=1_700_001_000)  # too old
    assert not verify("garbage", body, "s3cret")


def test_the_end_of_a_run_records_its_delivery_in_the_same_step(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    sent: list[str] = []
    store.on_webhook = sent.append
    store.create("r1", spec())
    store.create("r2", spec(callback_url=None))
    assert store.transition("r1", TaskStatus.FAILED, fields={"error": "boom"})
    assert store.transition("r2", TaskStatus.FAILED)
    assert redis.hget(KEYS.run("r1"), "webhook") == "pending"
    assert redis.hget(KEYS.run("r2"), "webhook") is None
    assert redis.zrange(KEYS.webhooks(), 0, -1) == ["r1"]
    assert sent == ["r1"]
    assert store.pending_webhook("r1") is not None
    assert not store.transition("r1", TaskStatus.CANCELLED)  # ended once: recorded once
    assert sent == ["r1"]


def test_a_receiver_that_fails_first_then_succeeds_gets_the_signed_view(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    store.create("r1", spec())
    assert store.transition("r1", TaskStatus.RUNNING)
    assert store.transition("r1", TaskStatus.SUCCESSFUL, fields={"result": {"quantity": 5}})
    received: list[tuple[str, bytes, dict[str, str]]] = []

    def http(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        received.append((url, body, headers))
        return 503 if len(received) == 1 else 204

    first = deliver(store, SETTINGS, "r1", retries=0, http=http)
    assert first.outcome == "retry" and first.retry_in is not None and first.detail == "HTTP 503"
    assert redis.zscore(KEYS.webhooks(), "r1") > time.time()  # leased until the retry
    second = deliver(store, SETTINGS, "r1", retries=1, http=http)
    assert second.outcome == "delivered"
    assert redis.hget(KEYS.run("r1"), "webhook") == "delivered"
    assert redis.zscore(KEYS.webhooks(), "r1") is None
    assert deliver(store, SETTINGS, "r1", retries=2, http=http).outcome == "none"

    url, body, headers = received[-1]
    assert url == "https://hooks.example.com/quorum"
    assert verify(headers[SIGNATURE_HEADER], body, "s3cret")
    view = json.loads(body)
    assert view["id"] == "r1" and view["status"] == "SUCCESSFUL"
    assert view["result"] == {"quantity": 5} and view["metadata"] == {"order": 42}


def test_a_delivery_is_given_up_after_its_retry_time(store: RunStore, redis: fakeredis.FakeRedis):
    store.create("r1", spec())
    store.transition("r1", TaskStatus.FAILED)
    redis.hset(KEYS.run("r1"), "updated_at", time.time() - 120)
    assert deliver(store, SETTINGS, "r1", retries=5, http=lambda *a: 500).outcome == "failed"
    assert redis.hget(KEYS.run("r1"), "webhook") == "failed"
    assert redis.zscore(KEYS.webhooks(), "r1") is None


def test_a_worker_without_the_secret_does_not_send_unsigned(store: RunStore) -> None:
    store.create("r1", spec())
    store.transition("r1", TaskStatus.FAILED)
    calls: list[object] = []

    def http(*args: object) -> int:
        calls.append(args)
        return 200

    unsigned = Settings(webhook_allowed_hosts=ALLOWED)
    sent = deliver(store, unsigned, "r1", retries=0, http=http)
    assert sent.outcome == "retry" and "QUORUM_WEBHOOK_SECRET" in sent.detail and calls == []


def test_the_sweep_recovers_and_redrives_deliveries(store: RunStore, redis: fakeredis.FakeRedis):
    sent: list[str] = []
    store.on_webhook = sent.append
    store.create("r1", spec())
    store.transition("r1", TaskStatus.FAILED)
    redis.zrem(KEYS.webhooks(), "r1")  # as if its process died before scheduling it
    assert store.recover_webhook("r1")
    assert store.due_webhooks(time.time() + 1) == ["r1"]
    store.settle_webhook("r1", "delivered")
    assert not store.recover_webhook("r1")
    assert store.due_webhooks(time.time() + 1) == []


# -- a workflow's webhook: the same machinery, its state in the workflow's own hash ----------

WF = "w1"
HOOK = "https://hooks.example.com/wf"


def workflow(store: RunStore, callback_url: str | None = HOOK) -> flow.Context:
    """A started two-node workflow `w1` with a callback, and the context that steps it."""
    doc: dict[str, Any] = {
        "name": "hooked",
        "metadata": {"doc": 42},
        "nodes": {"a": inline("go"), "b": inline("{{ x }}", kwargs={"x": {"$ref": "a#/text"}})},
    }
    if callback_url is not None:
        doc["callback_url"] = callback_url
    graph = prepare(doc, Settings(model="m", webhook_allowed_hosts=ALLOWED))
    WorkflowStore.of(store).create(WF, graph, timeout_s=60, idempotency_key=None)
    ctx = flow.Context(store=store, llm=FakeLLM(), enqueue=Advancing(), worker="w")
    workflows.advance(ctx, WF)
    return ctx


def test_a_workflow_callback_url_is_checked_at_submit() -> None:
    doc = {"name": "g", "nodes": {"a": inline("go")}, "callback_url": "https://evil.test/x"}
    with pytest.raises(InvalidRequestError, match=r"'evil\.test' is not allowed"):
        prepare(doc, Settings(model="m", webhook_allowed_hosts=ALLOWED))
    with pytest.raises(InvalidRequestError, match="no callback host is allowed"):
        prepare({**doc, "callback_url": HOOK}, Settings(model="m"))
    graph = prepare(
        {**doc, "callback_url": HOOK}, Settings(model="m", webhook_allowed_hosts=ALLOWED)
    )
    assert graph.doc.callback_url == HOOK


def test_the_end_of_a_workflow_records_its_delivery_in_the_same_step(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    sent: list[str] = []
    store.on_webhook = sent.append
    ctx = workflow(store)
    assert redis.hget(KEYS.workflow(WF), "callback") == HOOK
    succeed(ctx, f"{WF}.0.0", {"text": "alpha"})
    workflows.advance(ctx, WF)
    assert sent == [] and redis.hget(KEYS.workflow(WF), "webhook") is None  # node runs: none
    succeed(ctx, f"{WF}.1.0", {"text": "beta"})
    workflows.advance(ctx, WF)
    assert redis.hget(KEYS.workflow(WF), "status") == "SUCCESSFUL"
    assert redis.hget(KEYS.workflow(WF), "webhook") == "pending"
    assert redis.zrange(KEYS.webhooks(), 0, -1) == ["wf:w1"] and sent == ["wf:w1"]
    assert redis.zscore(KEYS.workflows(), WF) is None
    workflows.advance(ctx, WF)  # a late step: ended once, recorded once
    assert workflows.cancel(store, WF) is False
    assert sent == ["wf:w1"]


def test_a_workflow_without_a_callback_records_no_delivery(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    sent: list[str] = []
    store.on_webhook = sent.append
    workflow(store, callback_url=None)
    assert workflows.cancel(store, WF) is True
    assert redis.hget(KEYS.workflow(WF), "webhook") is None and sent == []
    assert redis.zcard(KEYS.webhooks()) == 0


def test_a_cancelled_workflow_posts_its_signed_final_view(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    sent: list[str] = []
    store.on_webhook = sent.append
    ctx = workflow(store)
    succeed(ctx, f"{WF}.0.0", {"text": "alpha"})
    workflows.advance(ctx, WF)
    assert workflows.cancel(store, WF) is True
    assert sent == ["wf:w1"]
    received: list[tuple[str, bytes, dict[str, str]]] = []

    def http(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        received.append((url, body, headers))
        return 200

    assert deliver(store, SETTINGS, "wf:w1", retries=0, http=http).outcome == "delivered"
    assert redis.hget(KEYS.workflow(WF), "webhook") == "delivered"
    assert redis.zscore(KEYS.webhooks(), "wf:w1") is None
    url, body, headers = received[0]
    assert url == HOOK and verify(headers[SIGNATURE_HEADER], body, "s3cret")
    ws = WorkflowStore.of(store)
    view = json.loads(body)
    assert view == json.loads(json.dumps(workflow_view(ws, ws.load(WF))))  # GET's JSON
    assert view["id"] == WF and view["status"] == "CANCELLED" and view["metadata"] == {"doc": 42}
    assert view["nodes"]["a"]["output"] == {"text": "alpha"}
    assert view["nodes"]["b"]["status"] == "CANCELLED"
    assert deliver(store, SETTINGS, "wf:w1", retries=1, http=http).outcome == "none"
    assert len(received) == 1


def test_a_workflow_delivery_retries_then_gives_up_after_its_end(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    workflow(store)
    workflows.cancel(store, WF)
    first = deliver(store, SETTINGS, "wf:w1", retries=0, http=lambda *a: 502)
    assert first.outcome == "retry" and first.detail == "HTTP 502"
    assert redis.zscore(KEYS.webhooks(), "wf:w1") > time.time()
    redis.hset(KEYS.workflow(WF), "finished_at", time.time() - 120)
    assert deliver(store, SETTINGS, "wf:w1", retries=1, http=lambda *a: 502).outcome == "failed"
    assert redis.hget(KEYS.workflow(WF), "webhook") == "failed"


def test_settling_is_a_compare_and_set_from_pending(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    workflow(store)
    workflows.cancel(store, WF)
    assert store.settle_webhook("wf:w1", "delivered") is True
    assert store.settle_webhook("wf:w1", "failed") is False  # a late, slower attempt
    assert redis.hget(KEYS.workflow(WF), "webhook") == "delivered"
    store.create("r1", spec())
    assert store.settle_webhook("r1", "delivered") is False  # the run has not ended
    assert redis.hget(KEYS.run("r1"), "webhook") is None


def test_a_workflow_whose_process_died_after_its_end_is_recovered_by_its_next_step(
    store: RunStore, redis: fakeredis.FakeRedis
) -> None:
    sent: list[str] = []
    store.on_webhook = sent.append
    ctx = workflow(store)
    ws = WorkflowStore.of(store)
    ws._script(  # the end's script alone, as if its process died right after it
        ws._finish,
        [KEYS.workflow(WF), KEYS.wf_events(WF), KEYS.wf_done(WF)],
        ["CANCELLED", 100, "cancelled"],
    )
    assert redis.zcard(KEYS.webhooks()) == 0 and redis.zscore(KEYS.workflows(), WF) is not None
    later = time.time() + 10**6
    swept = sweep.sweep(ctx, now=later, stall_after_s=1)  # a step for the idle workflow
    assert ("advance", WF) in ctx.enqueue.sent  # type: ignore[attr-defined]
    workflows.advance(ctx, WF)
    assert redis.zscore(KEYS.workflows(), WF) is None
    assert store.due_webhooks(later) == ["wf:w1"]
    assert sweep.redrive_webhooks(ctx, now=later) == 1 and sent == ["wf:w1"]
    assert swept.webhooks == 0
