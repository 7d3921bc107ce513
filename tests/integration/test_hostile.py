"""Hostile producers: each hole found by fuzzing the API, driven through a real API process
(and a real worker where the case reaches it), with the status, a time bound, and that
nothing was written to Redis.

1. 500s on submit (lone surrogates, Jinja compile-time errors, deep nesting) → 422 naming it.
2. A failed submit no longer holds its idempotency key.
3. A run that cannot be read back cannot be submitted; reads and /metrics survive one anyway.
4. A template cannot freeze the API: no constant folding, a time bound on compile and render.
5. The body's size (413) and the token (401) are checked before the body is read.
6. The rendered prompt is capped (and so is every string a template builds).
7. Schemas are self-contained: a remote `$ref` is refused, and workers never fetch one.
8. Patterns run on RE2: `^(a+)+$` costs microseconds, and a backreference is refused.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from celery import Celery

from quorum.producer.stack import ManagedProcess, start_redis, start_worker
from quorum.shared.broker import celery_config
from quorum.shared.keys import Keys
from quorum.shared.models import RunSpec, SingleShotValidationConfig
from quorum.shared.settings import Settings
from quorum.shared.store import RunStore
from tests.integration.conftest import worker_env
from tests.integration.helpers import APPLES, Purchase, Simulator, directive
from tests.integration.services import http, start_api

pytestmark = pytest.mark.integration

TOKEN = "hostile-token-5e1"
KEYS = Keys("quorum")
SCHEMA = Purchase.model_json_schema()
CONFIG = {"mode": "single_shot", "issues": ["names a product"], "max_retries": 0}


@dataclass
class Stack:
    """A private Redis with its own worker and API (token set)."""

    api: str
    redis_url: str
    db: redis.Redis
    api_process: ManagedProcess

    def written(self) -> tuple[list[str], list[str]]:
        """What a submit writes: the runs (their hashes and the runs index) and the
        idempotency keys. (Runs of earlier tests may still be at work: their other keys move.)"""
        runs = [k for k in self.db.scan_iter(KEYS.run("*")) if k.endswith("}")]
        runs += self.db.zrange(KEYS.runs(), 0, -1)
        return sorted(runs), sorted(self.db.scan_iter(KEYS.idempotency("*")))

    def post(self, body: Any, *, timeout_s: float = 30) -> tuple[Any, float]:
        """POST /v1/runs; the reply and the seconds it took."""
        started = time.monotonic()
        reply = http("POST", f"{self.api}/v1/runs", body, token=TOKEN, timeout_s=timeout_s)
        return reply, time.monotonic() - started

    def refused(self, body: Any, status: int, match: str, *, within_s: float) -> str:
        """POST `body`; check the status, the message, the time, and that nothing was
        written; return the message."""
        before = self.written()
        reply, took = self.post(body)
        assert reply.status == status, reply
        detail = reply.json()["detail"]
        assert match in detail, detail
        assert took < within_s, f"took {took:.2f}s"
        assert self.written() == before
        return str(detail)


@pytest.fixture(scope="module")
def stack(simulator: Simulator) -> Iterator[Stack]:
    url, server = start_redis()
    worker = start_worker(worker_env(url, simulator), name="hostile worker")
    api, process = start_api({"QUORUM_REDIS_URL": url, "QUORUM_API_TOKEN": TOKEN})
    db = redis.Redis.from_url(url, decode_responses=True)
    try:
        yield Stack(api, url, db, process)
    finally:
        db.close()
        process.stop()
        worker.stop()
        server.stop()


def body(scope: str, **change: Any) -> dict[str, Any]:
    sim = directive(scope, outputs=[APPLES], votes={"*": True})
    return {
        "template": "Extract: {{ message }} {{ sim }}",
        "kwargs": {"message": "I want 5 apples", "sim": sim},
        "response_schema": SCHEMA,
        "config": CONFIG,
        **change,
    }


def nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = {"a": value}
    return value


def nested_properties(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


# -- 1. no 500 on submit ---------------------------------------------------------------------

LONE = "\ud800"


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"template": "hi " + LONE}, "template"),
        ({"kwargs": {"message": "x", "sim": "", "x": LONE}}, "kwargs.x"),
        ({"kwargs": {"message": "x", "sim": "", LONE: 1}}, "kwargs: a key"),
        ({"metadata": {"who": ["ok", LONE]}}, "metadata.who[1]"),
        ({"response_schema": {**SCHEMA, "title": LONE}}, "response_model.title"),
        ({"idempotency_key": "order-" + LONE}, "idempotency_key"),
        ({"model": LONE}, "model"),
        ({"config": {**CONFIG, "issues": [LONE]}}, "issues"),
    ],
    ids=["template", "kwargs", "kwargs key", "metadata", "schema", "key", "model", "issue"],
)
def test_a_lone_surrogate_is_422_naming_the_field(stack, scope, change, where):
    # Pydantic refuses it in a field typed `str`; submit's own check finds it anywhere else.
    detail = stack.refused(body(scope, **change), 422, where, within_s=2)
    assert "lone surrogate" in detail or "unable to parse raw data as a unicode" in detail


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"template": "{{ message|nope }}"}, "No filter named 'nope'"),
        ({"template": "{{ 10**5000 }}"}, "over 4096 bits"),
        ({"template": "{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}"}, "too deeply"),
        ({"kwargs": {"message": nested(256), "sim": ""}}, "nested"),
        ({"metadata": nested(256)}, "nested"),
        ({"response_schema": nested_properties(100)}, "nested deeper than 64"),
        ({"checks": [{"expr": "(" * 1900 + "1" + ")" * 1900, "message": "m"}]}, "too deeply"),
        ({"checks": [{"expr": "not " * 999 + "1", "message": "m"}]}, "too deeply"),
    ],
    ids=[
        "unknown filter",
        "huge power",
        "deep parens",
        "deep kwargs",
        "deep metadata",
        "schema",
        "deep check",
        "long not-chain check",
    ],
)
def test_a_template_or_nesting_that_made_a_500_is_422(stack, scope, change, match):
    stack.refused(body(scope, **change), 422, match, within_s=2)


NODE = {"template": "Say {{ message }}", "response_schema": SCHEMA, "kwargs": {"message": "hi"}}


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"nodes": {"a": {**NODE, "kwargs": {"message": LONE}}}}, "nodes.a.kwargs.message"),
        ({"nodes": {"a": NODE}, "metadata": {"m": LONE}}, "metadata.m holds a lone surrogate"),
        ({"nodes": {LONE: NODE}}, "the node names[0] holds a lone surrogate"),
        ({"nodes": {"a": {**NODE, "kwargs": {"message": nested(256)}}}}, "nested deeper than 64"),
        ({"nodes": {"a": NODE}, "metadata": nested(256)}, "nested deeper than 64"),
        ({"nodes": {"a": {**NODE, "skip_if": "(" * 1900 + "1" + ")" * 1900}}}, "too deeply"),
        ({"nodes": {"a": {**NODE, "template": "{{ " + "(" * 3000 + " }}"}}}, "too deeply"),
    ],
    ids=["kwargs", "metadata", "node name", "deep kwargs", "deep metadata", "skip_if", "template"],
)
def test_a_workflow_holding_what_a_run_refuses_is_422(stack, doc, match):
    before = set(stack.db.scan_iter("quorum:wf*"))
    started = time.monotonic()
    reply = http("POST", f"{stack.api}/v1/workflows", {"name": "w", **doc}, token=TOKEN)
    assert reply.status == 422, reply
    assert match in reply.json()["detail"]
    assert time.monotonic() - started < 2
    assert set(stack.db.scan_iter("quorum:wf*")) == before


# -- 2. a failed submit leaves its idempotency key free ---------------------------------------


def test_a_failed_submit_does_not_hold_its_idempotency_key(stack, scope):
    key = f"order-42-{scope}"
    bad = body(scope, idempotency_key=key, kwargs={"message": LONE, "sim": ""})
    stack.refused(bad, 422, "lone surrogate", within_s=2)
    assert stack.db.get(KEYS.idempotency(key)) is None
    created, _ = stack.post(body(scope, idempotency_key=key))
    assert created.status == 201, created
    run_id = created.json()["id"]
    assert http("GET", f"{stack.api}/v1/runs/{run_id}", token=TOKEN).status == 200
    again, _ = stack.post(body(scope, idempotency_key=key))
    assert again.status == 201 and again.json()["id"] == run_id


# -- 3. whatever is stored reads back; one bad run breaks no read ------------------------------


def test_nesting_the_store_could_not_read_back_is_refused(stack, scope):
    deep = body(scope, kwargs={"message": nested(220), "sim": ""})
    stack.refused(deep, 422, "nested", within_s=2)


def test_an_unreadable_stored_run_is_a_clear_error_and_metrics_skip_it(stack, scope):
    run_id = f"unreadable-{scope}"
    now = time.time()
    stack.db.hset(
        KEYS.run(run_id),
        mapping={"spec": '{"template": ' * 3, "status": "PENDING", "attempt": 0},
    )
    stack.db.zadd(KEYS.runs(), {run_id: now})
    try:
        for path in ("", "/result?timeout=0"):
            reply = http("GET", f"{stack.api}/v1/runs/{run_id}{path}", token=TOKEN)
            assert reply.status == 422, (path, reply)
            assert "cannot be read back" in reply.json()["detail"]
        scrape = http("GET", f"{stack.api}/metrics", token=TOKEN)
        assert scrape.status == 200, scrape
        assert "quorum_unreadable_runs 1.0" in scrape.text
    finally:
        stack.db.delete(KEYS.run(run_id))
        stack.db.zrem(KEYS.runs(), run_id)


# -- 4. a template cannot freeze the API ------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "match", "within_s"),
    [
        ("{{ 9**(9**7) }}", "bits", 1.0),
        ("{{ 9**(9**8) }}", "bits", 1.0),
        (
            "{% for i in range(100000) %}{% for j in range(1000) %}{{ j }}{% endfor %}{% endfor %}",
            "the rendered prompt",
            3.0,
        ),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "over 1 s to render",
            3.0,
        ),
        ("{{ message }} word " * 50000, "to compile", 3.0),
    ],
    ids=["9**(9**7)", "9**(9**8)", "nested loops", "nested empty loops", "huge template"],
)
def test_a_template_is_bounded_in_time_and_the_api_stays_responsive(
    stack, scope, template, match, within_s
):
    health: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            started = time.monotonic()
            assert http("GET", f"{stack.api}/healthz").status == 200
            health.append(time.monotonic() - started)
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        stack.refused(body(scope, template=template), 422, match, within_s=within_s)
    finally:
        stop.set()
        prober.join()
    assert health and max(health) < 1.0, health


# -- 5. the body's size and the token come first ----------------------------------------------


def _raw(api: str, head: str, payload: bytes) -> tuple[int, float]:
    """Send `head` and the start of a body that promises far more; the status and time."""
    host, port = api.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + payload)
        answer = sock.recv(4096).decode(errors="replace")
    return int(answer.split()[1]), time.monotonic() - started


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1])


def test_a_big_body_without_the_token_is_401_unread(stack):
    pid = stack.api_process.process.pid
    before_rss, before = _rss_kb(pid), stack.written()
    head = (
        "POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 200000000\r\n\r\n"
    )
    status, took = _raw(stack.api, head, b'{"template": "' + b"x" * 1_000_000)
    assert status == 401 and took < 2
    assert _rss_kb(pid) - before_rss < 20_000  # the body was not read (kB)
    assert stack.written() == before


def test_a_body_over_the_limit_is_413_before_it_is_read(stack):
    before = stack.written()
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    head = f"POST /v1/runs HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 200000000\r\n\r\n"
    status, took = _raw(stack.api, head, b"{")
    assert status == 413 and took < 2
    chunked = f"POST /v1/runs HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
    chunk = b"x" * 1_000_000
    payload = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6))
    status, took = _raw(stack.api, chunked, payload)
    assert status == 413 and took < 5
    assert stack.written() == before


# -- 6. the rendered prompt is capped ---------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "kwargs", "match"),
    [
        ("{{ 'a' * 20000000 }}", {}, "a repetition (*) would make 20000000 characters"),
        ("{% for i in range(3) %}{{ s }}{% endfor %}", {"s": "b" * 900_000}, "rendered prompt"),
        ("{{ s|replace('', s) }}", {"s": "c" * 10_000}, "the replace filter"),
    ],
    ids=["repetition", "loop", "replace"],
)
def test_a_prompt_over_the_cap_is_refused(stack, scope, template, kwargs, match):
    change = {"template": template, "kwargs": kwargs}
    stack.refused(body(scope, **change), 422, match, within_s=2)


# -- 7. no request leaves from a worker for a schema --------------------------------------------


@pytest.fixture
def listener() -> Iterator[tuple[str, list[float]]]:
    """A TCP listener that counts the connections it gets; its URL and their times."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    seen: list[float] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            seen.append(time.monotonic())
            conn.close()

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/x", seen
    finally:
        stop.set()
        thread.join()
        server.close()


def test_a_remote_ref_is_refused_at_submit(stack, scope, listener):
    url, seen = listener
    for schema in (
        {"type": "object", "$ref": url},
        {"type": "object", "properties": {"a": {"$ref": url}}},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
    ):
        stack.refused(body(scope, response_schema=schema), 422, "$ref", within_s=2)
    assert seen == []


def test_a_worker_never_fetches_a_ref_a_stored_spec_holds(stack, scope, listener):
    # A run stored without submit's checks (as an older version may have stored it).
    url, seen = listener
    settings = Settings(redis_url=stack.redis_url)
    store = RunStore.from_settings(settings)
    spec = RunSpec(
        template="Extract: I want 5 apples {{ sim }}",
        kwargs={"sim": directive(scope, outputs=[APPLES], votes={"*": True})},
        response_schema={"type": "object", "properties": {"product": {"$ref": url}}},
        config=SingleShotValidationConfig(issues=["names a product"], max_retries=0),
        model="gpt-4o-mini",
        validator_model="gpt-4o-mini",
    )
    sender = Celery("hostile-test", set_as_current=False)
    sender.conf.update(celery_config(settings))
    try:
        run_id = store.create(f"ref-{scope}", spec)
        started = time.monotonic()
        sender.send_task("quorum.task_node", kwargs={"run_id": run_id, "attempt": 1})
        ended = http("GET", f"{stack.api}/v1/runs/{run_id}/result?timeout=10", token=TOKEN)
    finally:
        sender.close()
        store.redis.close()
    assert ended.status == 409, ended
    assert time.monotonic() - started < 10
    assert "cannot be resolved" in " ".join(ended.json()["reasons"])
    assert seen == []


# -- 8. patterns run in linear time -----------------------------------------------------------

WORD_SCHEMA = {
    "type": "object",
    "properties": {"word": {"type": "string", "pattern": "^(a+)+$"}},
    "required": ["word"],
}


def test_a_backtracking_pattern_is_refused_or_runs_in_linear_time(stack, scope):
    backref = {"type": "object", "properties": {"w": {"type": "string", "pattern": "(a)\\1"}}}
    stack.refused(body(scope, response_schema=backref), 422, "RE2 cannot run", within_s=2)

    evil = {"word": "a" * 28 + "!"}
    slow = body(
        scope,
        response_schema=WORD_SCHEMA,
        kwargs={"message": "", "sim": directive(scope, outputs=[evil], votes={"*": True})},
    )
    created, _ = stack.post(slow)
    assert created.status == 201, created
    other, _ = stack.post(body(scope + "-other"))
    started = time.monotonic()
    ids = [created.json()["id"], other.json()["id"]]
    replies = [
        http("GET", f"{stack.api}/v1/runs/{run_id}/result?timeout=10", token=TOKEN)
        for run_id in ids
    ]
    took = time.monotonic() - started
    assert replies[0].status == 409, replies[0]
    assert "does not match" in json.dumps(replies[0].json()["reasons"])
    assert replies[1].status == 200, replies[1]
    assert took < 3, f"took {took:.2f}s"
