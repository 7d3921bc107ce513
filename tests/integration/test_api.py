"""The HTTP API (`quorum api`) against the session's Redis, worker and simulator, over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quorum.producer import TaskClient
from quorum.producer.stack import ManagedProcess
from tests.integration.helpers import APPLES, Purchase, directive
from tests.integration.services import http, start_api

pytestmark = pytest.mark.integration

TOKEN = "test-token-123"
TEMPLATE = "Extract the purchase from: {{ message }} {{ sim }}"
SCHEMA = Purchase.model_json_schema()


@pytest.fixture(scope="module")
def api(redis_url: str, worker: ManagedProcess) -> Iterator[str]:
    """The API's base URL, with a bearer token set."""
    url, process = start_api({"QUORUM_REDIS_URL": redis_url, "QUORUM_API_TOKEN": TOKEN})
    try:
        yield url
    finally:
        process.stop()


def request_body(scope: str, **script: object) -> dict[str, object]:
    sim = directive(scope, outputs=[APPLES], **script)
    return {
        "template": TEMPLATE,
        "kwargs": {"message": "I want 5 apples", "sim": sim},
        "response_schema": SCHEMA,
        "config": {"mode": "threshold", "issues": ["names a product"], "count": 3},
        "metadata": {"caller": "test"},
    }


def test_openapi_document_describes_the_routes_and_every_route_but_healthz_needs_the_token(api):
    assert http("GET", f"{api}/healthz").json() == {"status": "ok"}
    for path in ("/openapi.json", "/v1/runs/x", "/metrics"):
        refused = http("GET", api + path)
        assert refused.status == 401, path
        assert refused.headers["www-authenticate"] == "Bearer"
        assert http("GET", api + path, token="wrong").status == 401
    assert http("POST", f"{api}/v1/runs", {"template": "x"}).status == 401
    assert http("GET", f"{api}/docs").status == 404  # the docs page is off with a token

    document = http("GET", f"{api}/openapi.json", token=TOKEN).json()
    assert document["info"]["title"] == "Quorum"
    assert {
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/events",
        "/v1/runs/{run_id}/result",
        "/v1/runs/{run_id}/cancel",
        "/healthz",
        "/metrics",
    } <= set(document["paths"])
    # Ad hoc (template, response_schema, config) or a defined task (task, kwargs).
    request = document["components"]["schemas"]["RunRequest"]
    assert "required" not in request
    assert {"task", "template", "response_schema", "config", "checks"} <= set(request["properties"])
    assert "HTTPBearer" in document["components"]["securitySchemes"]
    config = request["properties"]["config"]["anyOf"][0]
    assert config["discriminator"]["propertyName"] == "mode"
    links = document["paths"]["/v1/runs"]["post"]["responses"]["201"]["links"]
    assert set(links) == {"GetRun", "GetResult", "GetEvents", "Cancel"}


def test_submit_wait_and_read_a_successful_run(api, scope):
    created = http("POST", f"{api}/v1/runs", request_body(scope, votes={"*": True}), token=TOKEN)
    assert created.status == 201, created
    run_id = created.json()["id"]
    assert created.json()["status"] in ("PENDING", "RUNNING", "VALIDATING", "SUCCESSFUL")

    done = http("GET", f"{api}/v1/runs/{run_id}/result?timeout=30", token=TOKEN)
    assert done.status == 200, done
    assert done.json()["status"] == "SUCCESSFUL"
    assert done.json()["result"] == APPLES

    run = http("GET", f"{api}/v1/runs/{run_id}", token=TOKEN).json()
    assert run["attempt"] == 1 and run["error"] == "" and run["reasons"] == []
    assert run["usage"]["total_tokens"] > 0
    kinds = [e["type"] for e in http("GET", f"{api}/v1/runs/{run_id}/events", token=TOKEN).json()]
    assert kinds[0] == "submitted" and kinds[-1] == "succeeded"
    assert kinds.count("vote") >= 2


def test_failed_run_answers_409_with_every_reason(api, scope):
    body = request_body(scope, votes={"*": False})
    run_id = http("POST", f"{api}/v1/runs", body, token=TOKEN).json()["id"]
    failed = http("GET", f"{api}/v1/runs/{run_id}/result?timeout=30", token=TOKEN)
    assert failed.status == 409, failed
    assert failed.json()["status"] == "FAILED"
    assert failed.json()["reasons"] and failed.json()["last_output"] == APPLES


def test_deadline_and_budget_pass_through_to_the_run(api, scope):
    body = {**request_body(scope, votes={"*": True}), "max_tokens": 1, "timeout_s": 60}
    run_id = http("POST", f"{api}/v1/runs", body, token=TOKEN).json()["id"]
    ended = http("GET", f"{api}/v1/runs/{run_id}/result?timeout=30", token=TOKEN)
    assert ended.status == 409, ended
    assert ended.json()["code"] == "budget_exceeded"


def test_result_not_ready_answers_202_then_cancel_ends_it(api, simulator, scope):
    run_id = http(
        "POST", f"{api}/v1/runs", request_body(scope, latency=3, votes={"*": True}), token=TOKEN
    ).json()["id"]
    waiting = http("GET", f"{api}/v1/runs/{run_id}/result?timeout=0.3", token=TOKEN)
    assert waiting.status == 202, waiting
    assert waiting.json()["status"] in ("PENDING", "RUNNING")

    cancelled = http("POST", f"{api}/v1/runs/{run_id}/cancel", token=TOKEN).json()
    assert cancelled == {"id": run_id, "cancelled": True, "status": "CANCELLED"}
    again = http("POST", f"{api}/v1/runs/{run_id}/cancel", token=TOKEN).json()
    assert again["cancelled"] is False
    ended = http("GET", f"{api}/v1/runs/{run_id}/result?timeout=5", token=TOKEN)
    assert ended.status == 409 and ended.json()["status"] == "CANCELLED"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"template": "Hello {{ missing }}"}, "missing"),
        ({"config": {"mode": "threshold", "issues": ["x"], "count": 2}}, "count must be odd"),
        ({"response_schema": {"type": "strng"}}, "not a valid JSON Schema"),
        ({"config": {"mode": "nope", "issues": ["x"]}}, "body.config"),
        ({"template": None}, "or a template and a response_model"),
        ({"kwargs": ["not", "a", "dict"]}, "body.kwargs"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_input_is_422_with_the_message_and_writes_nothing(
    api, client: TaskClient, scope, change, message
):
    before = client.store.redis.dbsize()
    body = {**request_body(scope, votes={"*": True}), **change}
    refused = http("POST", f"{api}/v1/runs", body, token=TOKEN)
    assert refused.status == 422, refused
    assert message in refused.json()["detail"]
    assert client.store.redis.dbsize() == before


def test_unknown_run_is_404(api):
    for path in ("", "/events", "/result?timeout=1", "/cancel"):
        method = "POST" if path == "/cancel" else "GET"
        missing = http(method, f"{api}/v1/runs/no-such-run{path}", token=TOKEN)
        assert missing.status == 404, (path, missing)
        assert "no run 'no-such-run'" in missing.json()["detail"]


def test_metrics_count_runs_attempts_votes_tokens_and_latency(api, scope):
    body = request_body(scope, votes={"*": True})
    run_id = http("POST", f"{api}/v1/runs", body, token=TOKEN).json()["id"]
    assert http("GET", f"{api}/v1/runs/{run_id}/result?timeout=30", token=TOKEN).status == 200

    reply = http("GET", f"{api}/metrics", token=TOKEN)
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }
    assert samples[("quorum_runs", (("status", "SUCCESSFUL"),))] >= 1
    assert samples[("quorum_run_attempts_gcount", (("status", "SUCCESSFUL"),))] >= 1
    assert samples[("quorum_run_duration_seconds_gcount", (("status", "SUCCESSFUL"),))] >= 1
    assert samples[("quorum_issue_votes_gcount", (("outcome", "passed"),))] >= 1
    assert ("quorum_retries", ()) in samples
    models = {labels for name, labels in samples if name == "quorum_tokens"}
    assert (("kind", "completion"), ("model", "gpt-4o-mini")) in models
