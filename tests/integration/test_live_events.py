"""Server-Sent Events on `GET /v1/runs/{id}/events` from a real API process, with the
session's worker and simulator; and 1,000 streams held open by one API process."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import psutil
import pytest

from quorum.producer import TaskClient
from quorum.producer.stack import ManagedProcess, start_redis
from tests.integration.helpers import APPLES, Purchase, directive
from tests.integration.services import http, start_api

pytestmark = pytest.mark.integration

TEMPLATE = "Extract the purchase from: {{ message }} {{ sim }}"


@pytest.fixture(scope="module")
def api(redis_url: str, worker: ManagedProcess) -> Iterator[str]:
    url, process = start_api({"QUORUM_REDIS_URL": redis_url, "QUORUM_SSE_HEARTBEAT_S": "0.3"})
    try:
        yield url
    finally:
        process.stop()


def body(scope: str, **script: Any) -> dict[str, Any]:
    return {
        "template": TEMPLATE,
        "kwargs": {"message": "5 apples", "sim": directive(scope, outputs=[APPLES], **script)},
        "response_schema": Purchase.model_json_schema(),
        "config": {"mode": "threshold", "issues": ["names a product"], "count": 3},
    }


def frames(
    base: str, run_id: str, *, last_event_id: str | None = None, kind: str = "runs"
) -> list[dict[str, str]]:
    """Every frame of the run's (or, `kind="workflows"`, the workflow's) event stream until
    the server ends it (a comment frame is `{"comment": ...}`)."""
    url = urllib.parse.urlsplit(base)
    conn = HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    conn.request("GET", f"/v1/{kind}/{run_id}/events", headers=headers)
    reply = conn.getresponse()
    assert reply.status == 200, reply.read()
    assert reply.headers["content-type"].startswith("text/event-stream")
    text = reply.read().decode()  # returns once the server closes the stream
    conn.close()
    out = []
    for block in text.split("\n\n"):
        frame: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(":")
            frame["comment" if name == "" else name] = value.strip()
        if frame:
            out.append(frame)
    return out


def test_events_arrive_in_order_as_they_happen_and_the_stream_closes(api, scope):
    run_id = http("POST", f"{api}/v1/runs", body(scope, latency=1, votes={"*": True})).json()["id"]
    got = frames(api, run_id)
    assert got[0] == {"retry": "2000"}
    assert any("comment" in f for f in got), "a quiet second sends keep-alive comments"
    events = [f for f in got if "event" in f]
    assert events[0]["event"] == "submitted" and events[-1]["event"] == "succeeded"
    assert [json.loads(f["data"])["type"] for f in events] == [f["event"] for f in events]
    ids = [tuple(map(int, f["id"].split("-"))) for f in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    stored = http("GET", f"{api}/v1/runs/{run_id}/events").json()
    assert [(e["id"], e["type"]) for e in stored] == [(f["id"], f["event"]) for f in events]

    resumed = [f for f in frames(api, run_id, last_event_id=events[2]["id"]) if "event" in f]
    assert resumed == events[3:]
    assert [f for f in frames(api, run_id, last_event_id=events[-1]["id"]) if "id" in f] == []


def test_the_first_event_arrives_before_the_run_ends(api, scope):
    run_id = http("POST", f"{api}/v1/runs", body(scope, latency=1, votes={"*": True})).json()["id"]
    url = urllib.parse.urlsplit(api)
    conn = HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("GET", f"/v1/runs/{run_id}/events", headers={"Accept": "text/event-stream"})
    reply = conn.getresponse()
    while (line := reply.readline().decode()) and not line.startswith("event: submitted"):
        pass
    assert line.startswith("event: submitted")
    assert http("GET", f"{api}/v1/runs/{run_id}").json()["status"] in ("PENDING", "RUNNING")
    rest = reply.read().decode()  # the rest, once the run has ended
    conn.close()
    assert "event: succeeded" in rest


def test_a_stream_resumed_mid_run_gets_the_rest(api, scope):
    run_id = http("POST", f"{api}/v1/runs", body(scope, latency=0.5, votes={"*": True})).json()[
        "id"
    ]
    time.sleep(0.2)
    first = http("GET", f"{api}/v1/runs/{run_id}/events").json()
    assert first and first[0]["type"] == "submitted"
    resumed = [f for f in frames(api, run_id, last_event_id=first[0]["id"]) if "event" in f]
    everything = [f for f in frames(api, run_id) if "event" in f]
    assert resumed == everything[1:]


def test_a_bad_last_event_id_or_an_unknown_run_is_refused(api, scope):
    run_id = http("POST", f"{api}/v1/runs", body(scope, votes={"*": True})).json()["id"]
    url = urllib.parse.urlsplit(api)
    for path, headers, status in [
        (f"/v1/runs/{run_id}/events", {"Last-Event-ID": "nope"}, 422),
        ("/v1/runs/no-such-run/events", {}, 404),
    ]:
        conn = HTTPConnection(url.hostname, url.port, timeout=10)
        conn.request("GET", path, headers={"Accept": "text/event-stream", **headers})
        assert conn.getresponse().status == status
        conn.close()


async def _open_stream(port: int, run_id: str, opened: asyncio.Event, seen: set[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /v1/runs/{run_id}/events HTTP/1.1\r\nHost: x\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    text = ""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        text += chunk.decode()
        if "event: submitted" in text:
            opened.set()
        if "event: cancelled" in text:
            seen.add(run_id)
        if text.endswith("0\r\n\r\n"):  # the chunked body's end: the server closed the stream
            break
    writer.close()


def test_one_api_process_holds_1000_streams_without_a_thread_each():
    url, server = start_redis()
    base, process = start_api({"QUORUM_REDIS_URL": url, "QUORUM_SSE_HEARTBEAT_S": "5"})
    client = TaskClient(redis_url=url)
    try:
        spec = body("streams")
        runs = http("POST", f"{base}/v1/batches", {"runs": [spec] * 1000}).json()["ids"]
        api = psutil.Process(process.pid)
        rss_before, threads_before = api.memory_info().rss, api.num_threads()
        port = int(base.rsplit(":", 1)[1])

        async def hold() -> tuple[int, int, float, set[str]]:
            opened = [asyncio.Event() for _ in runs]
            seen: set[str] = set()
            tasks = [
                asyncio.create_task(_open_stream(port, run_id, event, seen))
                for run_id, event in zip(runs, opened, strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 120)
            await asyncio.sleep(1)
            rss, threads = api.memory_info().rss, api.num_threads()
            start = time.perf_counter()
            await asyncio.to_thread(lambda: [client.store.cancel(r) for r in runs])
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
            return rss, threads, time.perf_counter() - start, seen

        rss, threads, took, seen = asyncio.run(hold())
        per_stream = (rss - rss_before) / 1000
        print(
            f"1000 open streams: API RSS {rss_before / 2**20:.1f} -> {rss / 2**20:.1f} MiB "
            f"({per_stream / 1024:.1f} KiB per stream), threads {threads_before} -> {threads}; "
            f"1000 cancels reached every stream and closed it in {took:.2f} s"
        )
        assert seen == set(runs)
        assert threads - threads_before < 50
    finally:
        client.close()
        process.stop()
        server.stop()


def test_a_workflows_events_stream_as_they_happen_until_it_finishes(api, scope):
    text = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

    def node(template: str, **kwargs: Any) -> dict[str, Any]:
        config = {"mode": "single_shot", "issues": ["is text"]}
        return {"template": template, "response_schema": text, "config": config, "kwargs": kwargs}

    sim = {"latency": 0.5, "votes": {"*": True}}
    doc = {
        "name": "live",
        "nodes": {
            "a": node(
                "Start {{ sim }}", sim=directive(f"{scope}-a", outputs=[{"text": "x"}], **sim)
            ),
            "b": node(
                "Then {{ t }} {{ sim }}",
                t={"$ref": "a#/text"},
                sim=directive(f"{scope}-b", outputs=[{"text": "y"}], **sim),
            ),
        },
    }
    created = http("POST", f"{api}/v1/workflows", doc)
    assert created.status == 201, created.text
    workflow_id = created.json()["id"]
    events = [f for f in frames(api, workflow_id, kind="workflows") if "event" in f]
    assert events[-1]["event"] == "workflow_finished"
    assert [json.loads(f["data"])["type"] for f in events] == [f["event"] for f in events]
    ids = [tuple(map(int, f["id"].split("-"))) for f in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    stored = http("GET", f"{api}/v1/workflows/{workflow_id}/events").json()
    assert [e["type"] for e in stored] == [f["event"] for f in events]
    resumed = frames(api, workflow_id, last_event_id=events[0]["id"], kind="workflows")
    assert [f["id"] for f in resumed if "event" in f] == [f["id"] for f in events[1:]]
