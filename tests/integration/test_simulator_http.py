"""End-to-end tests of the simulator over HTTP with the real ``openai`` SDK."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Iterator

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from quorum.producer import stack
from quorum.simulator.control import SimulatorControl

pytestmark = pytest.mark.integration

PURCHASE = {
    "type": "object",
    "properties": {"product": {"type": "string"}, "quantity": {"type": "integer"}},
    "required": ["product", "quantity"],
    "additionalProperties": False,
}
VOTE = {
    "type": "object",
    "properties": {"is_valid": {"type": "boolean"}, "reasoning": {"type": "string"}},
    "required": ["is_valid", "reasoning"],
    "additionalProperties": False,
}
PROMPT = "Extract purchase from: I want 5 apples"


@contextlib.contextmanager
def start_simulator(*args: str) -> Iterator[SimulatorControl]:
    """A simulator process for the test, stopped after it."""
    base_url, process = stack.start_simulator(*args)
    try:
        yield SimulatorControl(base_url)
    finally:
        process.stop()


def json_schema_format(schema: dict, name: str = "Purchase") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def sim_directive(**data: object) -> str:
    return f"<<sim:{json.dumps(data)}>>"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorControl]:
    with start_simulator("--seed", "1", "--hang-s", "30") as control:
        yield control


@pytest.fixture
def client(sim: SimulatorControl) -> OpenAI:
    sim.clear()
    return OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)


def test_json_schema_completion_fits_schema_and_reports_usage(client, sim):
    completion = client.chat.completions.create(
        model="sim-model", messages=user(PROMPT), response_format=json_schema_format(PURCHASE)
    )
    content = completion.choices[0].message.content
    assert json.loads(content) == {"product": "apples", "quantity": 5}
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "sim-model"
    usage = completion.usage
    assert usage.prompt_tokens == math.ceil(len(PROMPT) / 4)
    assert usage.completion_tokens == math.ceil(len(content) / 4)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0
    [call] = sim.calls()
    assert call["kind"] == "task" and call["attempt"] == 1 and call["status"] == 200


def test_json_object_dialect_request(client):
    completion = client.chat.completions.create(
        model="m",
        messages=user(PROMPT),
        response_format={"type": "json_object", "schema": PURCHASE},
    )
    assert json.loads(completion.choices[0].message.content) == {"product": "apples", "quantity": 5}
    bare = client.chat.completions.create(
        model="m", messages=user("hi"), response_format={"type": "json_object"}
    )
    assert json.loads(bare.choices[0].message.content) == {}


def test_scripted_outputs_and_votes(client, sim):
    tag = sim_directive(
        id="run-a",
        outputs=[{"product": "pears", "quantity": 2}],
        votes={"quantity is 5": {"pass_if": {"quantity": 5}}, "*": True},
    )
    task = client.chat.completions.create(
        model="m", messages=user(f"{PROMPT} {tag}"), response_format=json_schema_format(PURCHASE)
    )
    output = task.choices[0].message.content
    assert json.loads(output) == {"product": "pears", "quantity": 2}
    verdicts = {}
    for issue in ("quantity is 5", "names a product"):
        prompt = f"# Task\n{PROMPT} {tag}\n\n# Output\n{output}\n\n# Criterion\n{issue}"
        vote = client.chat.completions.create(
            model="m",
            messages=[{"role": "system", "content": "Judge."}, *user(prompt)],
            response_format=json_schema_format(VOTE, "Vote"),
        )
        answer = json.loads(vote.choices[0].message.content)
        assert issue in answer["reasoning"]
        verdicts[issue] = answer["is_valid"]
    assert verdicts == {"quantity is 5": False, "names a product": True}
    calls = sim.calls()
    assert [(c["kind"], c["scope"], c["issue"], c["verdict"]) for c in calls] == [
        ("task", "run-a", None, None),
        ("vote", "run-a", "quantity is 5", False),
        ("vote", "run-a", "names a product", True),
    ]


def test_rate_limit_fault_raises_with_retry_after(client, sim):
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="m",
            messages=user(PROMPT + sim_directive(task_faults=["429"])),
            response_format=json_schema_format(PURCHASE),
        )
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.body["code"] == "rate_limit_exceeded"
    [call] = sim.calls()
    assert call["fault"] == "429" and call["status"] == 429


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("500", openai.InternalServerError),
        ("503", openai.InternalServerError),
        ("400", openai.BadRequestError),
        ("401", openai.AuthenticationError),
        ("404", openai.NotFoundError),
    ],
)
def test_http_faults_map_to_sdk_exceptions(client, fault, error):
    tag = sim_directive(id=f"fault-{fault}", task_faults=[fault])
    with pytest.raises(error):
        client.chat.completions.create(model="m", messages=user(PROMPT + tag))
    second = client.chat.completions.create(model="m", messages=user(PROMPT + tag))
    assert second.choices[0].message.content == "{}"


def test_timeout_fault_makes_client_time_out(sim):
    sim.clear()
    client = OpenAI(base_url=sim.base_url, api_key="x", max_retries=0, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model="m", messages=user(PROMPT + sim_directive(task_faults=["timeout"]))
        )
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while sim.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    [call] = sim.calls()
    assert call["fault"] == "timeout"
    assert call["status"] == 499  # the handler stops once the client hangs up


def test_bad_directive_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="invalid sim directive"):
        client.chat.completions.create(model="m", messages=user("x <<sim:{oops}>>"))


def test_invalid_json_fault_returns_unparseable_content(client):
    completion = client.chat.completions.create(
        model="m",
        messages=user(PROMPT + sim_directive(task_faults=["invalid_json"])),
        response_format=json_schema_format(PURCHASE),
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(completion.choices[0].message.content)


def test_runtime_config_and_models_and_health(client, sim):
    try:
        assert sim.configure(pass_rate=0.0, dialect="json_schema")["pass_rate"] == 0.0
        prompt = "# Task\nt\n\n# Output\n{}\n\n# Criterion\nanything"
        vote = client.chat.completions.create(
            model="m", messages=user(prompt), response_format=json_schema_format(VOTE, "Vote")
        )
        assert json.loads(vote.choices[0].message.content)["is_valid"] is False
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="m", messages=user("x"), response_format={"type": "json_object"}
            )
    finally:
        sim.configure(pass_rate=1.0, dialect="any")
    assert [m.id for m in client.models.list()] == ["sim"]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="m", input="x")


def test_dialect_json_object_refuses_json_schema():
    with start_simulator("--dialect", "json_object") as sim:
        client = OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(
                model="m", messages=user(PROMPT), response_format=json_schema_format(PURCHASE)
            )
        assert "Input should be 'text' or 'json_object'" in info.value.response.text
        ok = client.chat.completions.create(
            model="m",
            messages=user(PROMPT),
            response_format={"type": "json_object", "schema": PURCHASE},
        )
        assert json.loads(ok.choices[0].message.content)["quantity"] == 5


def test_api_key_is_enforced():
    with start_simulator("--api-key", "secret") as sim:
        wrong = OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="m", messages=user(PROMPT))
        assert [(c["fault"], c["status"]) for c in sim.calls()] == [("auth", 401)]
        right = OpenAI(base_url=sim.base_url, api_key="secret", max_retries=0)
        assert right.chat.completions.create(model="m", messages=user(PROMPT)).choices


def test_concurrent_calls_overlap_and_are_logged():
    with start_simulator("--latency", "0.3") as sim:
        client = AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0)

        async def one(i: int):
            return await client.chat.completions.create(
                model="m",
                messages=user(f"Extract purchase from: I want {i} apples"),
                response_format=json_schema_format(PURCHASE),
            )

        async def run_all() -> list:
            try:
                return await asyncio.gather(*(one(i) for i in range(50)))
            finally:
                await client.close()

        started = time.monotonic()
        results = asyncio.run(run_all())
        elapsed = time.monotonic() - started
        assert [json.loads(r.choices[0].message.content)["quantity"] for r in results] == list(
            range(50)
        )
        assert elapsed < 2.0
        stats = sim.stats()
        assert stats["calls"] == 50 and stats["in_flight"] == 0
        assert stats["max_in_flight"] >= 50
        calls = sim.calls()
        assert len(calls) == 50 and all(c["status"] == 200 for c in calls)
        assert all(c["ended"] - c["started"] >= 0.29 for c in calls)
        sim.clear()
        assert sim.stats() == {"calls": 0, "in_flight": 0, "max_in_flight": 0}
