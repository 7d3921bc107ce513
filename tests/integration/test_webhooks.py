"""Webhooks end to end: a real API process, real workers, the simulator, and a receiver on
127.0.0.1 that fails first then succeeds, or stalls while its worker is killed; for runs and
for workflows."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from quorum.producer import TaskClient
from quorum.shared.settings import Settings
from quorum.shared.webhooks import SIGNATURE_HEADER, verify
from tests.integration.conftest import DedicatedStack
from tests.integration.helpers import APPLES, Purchase, directive
from tests.integration.services import http, poll, start_api

pytestmark = pytest.mark.integration

SECRET = "webhook-test-secret"
HOOKS = {
    "QUORUM_WEBHOOK_SECRET": SECRET,
    "QUORUM_WEBHOOK_ALLOWED_HOSTS": '["127.0.0.1"]',
    "QUORUM_WEBHOOK_TIMEOUT_S": "5",
    "QUORUM_SWEEP_INTERVAL_S": "1",
}


class Receiver:
    """An HTTP server that answers each POST with the next scripted status (the last one
    repeats); `"stall"` holds the request until the test ends."""

    def __init__(self, script: list[int | str]) -> None:
        self.script = list(script)
        self.received: list[dict[str, Any]] = []
        self.stalled = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                step = receiver.script.pop(0) if len(receiver.script) > 1 else receiver.script[0]
                receiver.received.append({"headers": dict(self.headers), "body": body})
                if step == "stall":
                    receiver.stalled.set()
                    receiver.release.wait(60)
                    step = 503
                self.send_response(int(step))
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict[str, Any]]:
        return self.received

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[[list[int | str]], Receiver]]:
    """Makes receivers; closes them after the test."""
    made: list[Receiver] = []

    def make(script: list[int | str]) -> Receiver:
        made.append(Receiver(script))
        return made[-1]

    yield make
    for one in made:
        one.close()


def request(scope: str, **extra: Any) -> dict[str, Any]:
    return {
        "template": "Extract the purchase from: {{ message }} {{ sim }}",
        "kwargs": {
            "message": "5 apples",
            "sim": directive(scope, outputs=[APPLES], votes={"*": True}),
        },
        "response_schema": Purchase.model_json_schema(),
        "config": {"mode": "threshold", "issues": ["names a product"], "count": 1},
        **extra,
    }


def test_a_receiver_that_fails_first_gets_the_signed_final_view(
    dedicated_stack: DedicatedStack, receiver: Any, scope: str
):
    dedicated_stack.worker(**HOOKS)
    hook = receiver([500, 204])
    api, process = start_api({"QUORUM_REDIS_URL": dedicated_stack.redis_url, **HOOKS})
    try:
        created = http(
            "POST", f"{api}/v1/runs", request(scope, callback_url=hook.url, metadata={"order": 7})
        )
        assert created.status == 201, created
        run_id = created.json()["id"]
        done = http("GET", f"{api}/v1/runs/{run_id}/result?timeout=30")
        assert done.json()["status"] == "SUCCESSFUL"
        poll(lambda: len(hook.delivered()) >= 2, timeout_s=30, what="the retried delivery")
    finally:
        process.stop()
    first, last = hook.delivered()[:2]
    assert json.loads(first["body"])["id"] == json.loads(last["body"])["id"] == run_id
    signed = last["headers"][SIGNATURE_HEADER]
    assert verify(signed, last["body"], SECRET)
    assert not verify(signed, last["body"], "another secret")
    view = json.loads(last["body"])
    assert view["id"] == run_id and view["status"] == "SUCCESSFUL"
    assert view["result"] == APPLES and view["metadata"] == {"order": 7}
    state = dedicated_stack.redis.hget(f"quorum:run:{{{run_id}}}", "webhook")
    assert state == "delivered"
    time.sleep(1.5)
    assert len(hook.delivered()) == 2  # settled: not sent again


def test_a_worker_killed_during_the_delivery_still_delivers(
    dedicated_stack: DedicatedStack, receiver: Any, scope: str
):
    first = dedicated_stack.worker(name="doomed", **HOOKS)
    hook = receiver(["stall", 204])
    settings = Settings(redis_url=dedicated_stack.redis_url, webhook_allowed_hosts=["127.0.0.1"])
    client = TaskClient(settings=settings)
    try:
        body = request(scope)
        run = client.submit(
            template=body["template"],
            response_model=Purchase,
            kwargs=body["kwargs"],
            config=body["config"],
            callback_url=hook.url,
        )
        assert run.result(timeout=30) == Purchase(**APPLES)  # the run's end did not wait
        assert hook.stalled.wait(30), "the first delivery never came"
        first.kill()  # SIGKILL, mid-delivery: its job is neither acked nor settled
        dedicated_stack.worker(name="heir", **HOOKS)
        poll(lambda: len(hook.delivered()) >= 2, timeout_s=60, what="the sweep's redelivery")
        poll(
            lambda: (
                client.store.redis.hget(client.store.keys.run(run.id), "webhook") == "delivered"
            ),
            timeout_s=10,
            what="the delivery settled",
        )
    finally:
        client.close()
    last = hook.delivered()[1]
    assert verify(last["headers"][SIGNATURE_HEADER], last["body"], SECRET)
    assert json.loads(last["body"])["id"] == run.id


def test_a_callback_url_outside_the_allowed_hosts_is_refused(
    dedicated_stack: DedicatedStack, scope: str
):
    api, process = start_api({"QUORUM_REDIS_URL": dedicated_stack.redis_url, **HOOKS})
    try:
        before = dedicated_stack.redis.dbsize()
        for url, message in [
            ("http://10.0.0.1/admin", "'10.0.0.1' is not allowed"),
            ("http://localhost:6379/", "'localhost' is not allowed"),
            ("file:///etc/passwd", "http:// or https://"),
        ]:
            refused = http("POST", f"{api}/v1/runs", request(scope, callback_url=url))
            assert refused.status == 422, refused
            assert message in refused.json()["detail"]
        batch = {"runs": [request(scope), request(scope, callback_url="http://evil.test/")]}
        refused = http("POST", f"{api}/v1/batches", batch)
        assert refused.status == 422 and refused.json()["detail"].startswith("runs[1]: ")
        doc = {**workflow_doc(scope), "callback_url": "http://10.0.0.1/admin"}
        refused = http("POST", f"{api}/v1/workflows", {**doc, "idempotency_key": scope})
        assert refused.status == 422 and "'10.0.0.1' is not allowed" in refused.json()["detail"]
        assert dedicated_stack.redis.dbsize() == before
    finally:
        process.stop()
    off = TaskClient(settings=Settings(redis_url=dedicated_stack.redis_url))
    try:
        with pytest.raises(ValueError, match="no callback host is allowed"):
            off.submit(**{**_client_args(scope), "callback_url": "http://127.0.0.1/x"})
    finally:
        off.close()


def _client_args(scope: str) -> dict[str, Any]:
    body = request(scope)
    return {
        "template": body["template"],
        "response_model": Purchase,
        "kwargs": body["kwargs"],
        "config": body["config"],
    }


def workflow_doc(scope: str) -> dict[str, Any]:
    """A two-node workflow document (`a` feeds `b`), its answers scripted under `scope`."""
    text = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    config = {"mode": "single_shot", "issues": ["names a product"], "max_retries": 0}

    def node(template: str, answer: str, **extra: Any) -> dict[str, Any]:
        sim = directive(f"{scope}-{answer}", outputs=[{"text": answer}], votes={"*": True})
        kwargs = {**extra.pop("kwargs", {}), "sim": sim}
        return {
            "template": template + " {{ sim }}",
            "response_schema": text,
            "config": config,
            "kwargs": kwargs,
            **extra,
        }

    return {
        "name": "hooked",
        "metadata": {"doc": 42},
        "nodes": {
            "a": node("Start.", "alpha"),
            "b": node("After {{ x }}.", "beta", kwargs={"x": {"$ref": "a#/text"}}),
        },
    }


def test_a_workflow_posts_its_signed_final_view_when_it_ends(
    dedicated_stack: DedicatedStack, receiver: Any, scope: str
):
    dedicated_stack.worker(**HOOKS)
    hook = receiver([503, 200])
    settings = Settings(redis_url=dedicated_stack.redis_url, webhook_allowed_hosts=["127.0.0.1"])
    client = TaskClient(settings=settings)
    api, process = start_api({"QUORUM_REDIS_URL": dedicated_stack.redis_url, **HOOKS})
    try:
        run = client.submit_workflow(workflow_doc(scope), callback_url=hook.url)
        assert run.result(timeout=30) == {"a": {"text": "alpha"}, "b": {"text": "beta"}}
        poll(lambda: len(hook.delivered()) >= 2, timeout_s=30, what="the retried delivery")
        poll(
            lambda: (
                client.store.redis.hget(client.store.keys.workflow(run.id), "webhook")
                == "delivered"
            ),
            timeout_s=10,
            what="the delivery settled",
        )
        shown = http("GET", f"{api}/v1/workflows/{run.id}").json()
    finally:
        process.stop()
        client.close()
    first, last = hook.delivered()[:2]
    assert verify(last["headers"][SIGNATURE_HEADER], last["body"], SECRET)
    view = json.loads(last["body"])
    assert json.loads(first["body"]) == view  # the same final view, sent again
    assert view == shown  # the JSON GET /v1/workflows/{id} answers
    assert view["id"] == run.id and view["status"] == "SUCCESSFUL"
    assert view["metadata"] == {"doc": 42}
    assert view["nodes"]["b"]["output"] == {"text": "beta"}
    assert view["nodes"]["b"]["run_ids"] == [f"{run.id}.1.0"]
    time.sleep(1.5)
    assert len(hook.delivered()) == 2  # settled: not sent again
    runs_hooked = [
        key for key in dedicated_stack.redis.scan_iter("quorum:run:*") if key.count(":") == 2
    ]
    assert all(dedicated_stack.redis.hget(k, "webhook") is None for k in runs_hooked)
