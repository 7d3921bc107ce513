"""Defined tasks end to end: a worker started with the documented command and
`QUORUM_IMPORTS=tests.integration.defined_tasks`, a real Redis, the simulator.

Each cheap check (the model's own validator, a Python validator, an expression) rejects a
first answer: the retry carries its message, no vote is drawn on the rejected attempt, and the
run ends SUCCESSFUL. Choices and lists come back as plain values; a vote-free task makes one
LLM call; a task is submitted by name through Python, HTTP, the CLI and a raw Celery message
from code that never imports Quorum; bad names and kwargs are refused with nothing written.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from quorum import AsyncTaskClient, SchemaError, TaskClient, TaskStatus, UnknownTaskError
from quorum.producer.stack import celery_command
from tests.integration import defined_tasks as tasks
from tests.integration.conftest import DedicatedStack
from tests.integration.helpers import Simulator, directive, events, wait_until
from tests.integration.services import ROOT, http, start_api

pytestmark = pytest.mark.integration

IMPORTS = "tests.integration.defined_tasks"
RAW_PRODUCER = Path(__file__).with_name("raw_celery_producer.py")


@pytest.fixture(scope="module")
def stack(simulator: Simulator) -> Iterator[DedicatedStack]:
    """A Redis of its own and one worker that imports the test definitions."""
    stack = DedicatedStack(simulator)
    try:
        stack.worker(QUORUM_IMPORTS=IMPORTS, PYTHONPATH=str(ROOT))
        wait_until(
            lambda: stack.redis.hexists("quorum:{tasks}:definitions", "it_choice"),
            timeout_s=10,
            what="the worker to publish its definitions",
        )
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def client(stack: DedicatedStack) -> TaskClient:
    return stack.client()


def run_keys(stack: DedicatedStack) -> tuple[int, frozenset[str]]:
    """What a refused submit must not add to: runs indexed, run keys. (A key of an earlier
    run may go meanwhile, such as its call lease: compare with `nothing_added`.)"""
    r = stack.redis
    return r.zcard("quorum:runs"), frozenset(r.scan_iter("quorum:run:*"))


def nothing_added(before: tuple[int, frozenset[str]], stack: DedicatedStack) -> bool:
    """Whether no run was indexed and no run key written since `before`."""
    runs, keys = run_keys(stack)
    return runs == before[0] and keys <= before[1]


def kwargs(scope: str, **script: Any) -> dict[str, Any]:
    return {"message": "I want some fruit", "sim": directive(scope, **script)}


PASS = {"*": True}
REFUND = {"value": "refund"}


@pytest.mark.parametrize(
    ("definition", "first", "second", "check", "message"),
    [
        (
            tasks.model_check,
            {"product": "apples", "quantity": 5},
            {"product": "apples", "quantity": 12},
            "model",
            "quantity must be at least 10",
        ),
        (
            tasks.python_check,
            {"product": "Pears", "quantity": 2},
            {"product": "Apples", "quantity": 2},
            "validator",
            "pears are out of stock",
        ),
        (
            tasks.expression_check,
            {"product": "apples", "quantity": 50},
            {"product": "apples", "quantity": 3},
            "expression",
            "quantity over the limit",
        ),
    ],
    ids=["model validator", "python validator", "expression"],
)
def test_a_cheap_check_rejects_the_first_answer_without_a_vote(
    client: TaskClient,
    simulator: Simulator,
    scope: str,
    definition: Any,
    first: dict[str, Any],
    second: dict[str, Any],
    check: str,
    message: str,
) -> None:
    run = definition.submit(client, limit=10, **kwargs(scope, outputs=[first, second], votes=PASS))
    result = run.result(timeout=30)
    assert run.status() is TaskStatus.SUCCESSFUL
    failed = events(run, "check_failed")
    assert [(e["attempt"], e["check"]) for e in failed] == [(1, check)]
    assert message in failed[0]["message"]
    assert failed[0]["task"] == definition.name
    assert failed[0]["definition_hash"] == definition.hash
    retry = events(run, "retry_scheduled")
    assert len(retry) == 1 and message in retry[0]["feedback"]
    assert [e["attempt"] for e in events(run, "vote")] == [2]  # no vote on attempt 1
    task_calls = simulator.calls(scope, kind="task")
    assert [c["attempt"] for c in task_calls] == [1, 2]  # the 2nd prompt held the feedback
    assert len(simulator.calls(scope, kind="vote")) == 1
    if definition is tasks.python_check:
        assert result.product == "apples"  # the validator's returned value replaced it
    else:
        assert result.model_dump() == definition.response.validate(second).model_dump()


def test_a_choice_comes_back_plain_and_a_wrong_choice_is_retried(
    client: TaskClient, simulator: Simulator, scope: str
) -> None:
    outputs = [{"value": "repair"}, {"value": "exchange"}]
    run = tasks.choice.submit(client, **kwargs(scope, outputs=outputs))
    assert run.result(timeout=30) == "exchange"
    assert run.state().result == "exchange"
    invalid = events(run, "output_invalid")
    assert len(invalid) == 1 and "value" in invalid[0]["error"]
    assert len(simulator.calls(scope, kind="task")) == 2
    assert simulator.calls(scope, kind="vote") == []


def test_a_list_comes_back_plain_after_its_expression_check(
    client: TaskClient, simulator: Simulator, scope: str
) -> None:
    outputs = [{"value": ["fruit"]}, {"value": ["fruit", "apples"]}]
    run = tasks.tags.submit(client, **kwargs(scope, outputs=outputs))
    assert run.result(timeout=30) == ["fruit", "apples"]
    assert [e["message"] for e in events(run, "check_failed")] == ["give at least two tags"]


def test_a_vote_free_task_makes_exactly_one_llm_call(
    client: TaskClient, simulator: Simulator, scope: str
) -> None:
    run = client.submit(
        task="it_vote_free", kwargs=kwargs(scope, outputs=[{"product": "kiwis", "quantity": 3}])
    )
    assert run.result(timeout=30) == tasks.Purchase(product="kiwis", quantity=3)
    assert len(simulator.calls(scope)) == 1
    spec = run.state().spec
    assert (spec.task, spec.task_hash, spec.config) == ("it_vote_free", tasks.vote_free.hash, None)
    assert [e["type"] for e in events(run)][-2:] == ["output", "succeeded"]


def test_the_async_client_submits_by_name_too(stack: DedicatedStack, scope: str) -> None:
    async def submit() -> tuple[object, object]:
        async with AsyncTaskClient(redis_url=stack.redis_url) as aclient:
            first = await tasks.choice.submit(aclient, **kwargs(f"{scope}-1", outputs=[REFUND]))
            second = await aclient.submit(
                task="it_choice", kwargs=kwargs(f"{scope}-2", outputs=[REFUND])
            )
            return await first.result(timeout=30), await second.result(timeout=30)

    assert asyncio.run(submit()) == ("refund", "refund")


def test_an_output_cut_off_at_the_token_cap_is_an_invalid_attempt(
    client: TaskClient, simulator: Simulator, scope: str
) -> None:
    long = {"product": "apples of a very long and rambling description", "quantity": 5}
    run = tasks.capped.submit(
        client, **kwargs(scope, outputs=[long, {"product": "a", "quantity": 1}])
    )
    assert run.result(timeout=30) == tasks.Purchase(product="a", quantity=1)
    invalid = events(run, "output_invalid")
    assert len(invalid) == 1 and "cut off at max_output_tokens (12)" in invalid[0]["error"]


def test_an_ad_hoc_model_with_validators_of_its_own_is_refused(
    client: TaskClient, stack: DedicatedStack
) -> None:
    before = run_keys(stack)
    with pytest.raises(SchemaError, match=r"validators of its own.*define\(\) it"):
        client.submit(template="x", response_model=tasks.Order, config=None)
    assert nothing_added(before, stack)
    run = client.submit(  # a model without validators of its own still works ad hoc
        template="{{ sim }}",
        response_model=tasks.Purchase,
        kwargs={"sim": directive("adhoc-ok", outputs=[{"product": "a", "quantity": 1}])},
    )
    assert run.result(timeout=30) == tasks.Purchase(product="a", quantity=1)


def test_unknown_names_and_missing_kwargs_are_refused_with_nothing_written(
    client: TaskClient, stack: DedicatedStack
) -> None:
    before = run_keys(stack)
    with pytest.raises(UnknownTaskError, match=r"unknown task 'nope'.*it_choice"):
        client.submit(task="nope", kwargs={})
    with pytest.raises(ValueError, match=r"task 'it_vote_free': kwargs missing: message, sim"):
        client.submit(task="it_vote_free", kwargs={})
    with pytest.raises(ValueError, match="by name and kwargs only; drop template"):
        client.submit(task="it_vote_free", template="x", kwargs={})
    assert nothing_added(before, stack)


def test_submit_by_name_over_http_and_list_the_tasks(
    stack: DedicatedStack, simulator: Simulator, scope: str
) -> None:
    url, api = start_api({"QUORUM_REDIS_URL": stack.redis_url})
    try:
        listed = http("GET", f"{url}/v1/tasks").json()
        assert listed["it_choice"]["response_schema"]["properties"]["value"]["enum"] == [
            "refund",
            "exchange",
        ]
        assert listed["it_vote_free"]["variables"] == ["message", "sim"]
        before = run_keys(stack)
        unknown = http("POST", f"{url}/v1/runs", {"task": "nope", "kwargs": {}})
        assert unknown.status == 422 and "unknown task 'nope'" in unknown.json()["detail"]
        missing = http("POST", f"{url}/v1/runs", {"task": "it_choice", "kwargs": {}})
        assert missing.status == 422 and "kwargs missing: message, sim" in missing.text
        assert nothing_added(before, stack)
        body = {"task": "it_choice", "kwargs": kwargs(scope, outputs=[{"value": "refund"}])}
        created = http("POST", f"{url}/v1/runs", body)
        assert created.status == 201, created
        done = http("GET", f"{url}/v1/runs/{created.json()['id']}/result?timeout=30")
        assert (done.status, done.json()["result"]) == (200, "refund")
        metrics = http("GET", f"{url}/metrics").text
        assert "quorum_defined_tasks 7.0" in metrics
    finally:
        api.stop()


def test_submit_by_name_from_the_cli(stack: DedicatedStack, scope: str) -> None:
    quorum = str(Path(celery_command()[0]).with_name("quorum"))
    env = {"QUORUM_REDIS_URL": stack.redis_url, "PATH": str(Path(quorum).parent)}
    listed = subprocess.run([quorum, "tasks"], env=env, capture_output=True, text=True, check=True)
    assert "it_vote_free  [no votes]  kwargs: message, sim" in listed.stdout
    args = json.dumps(kwargs(scope, outputs=[{"product": "figs", "quantity": 4}]))
    command = [quorum, "submit", "--task", "it_vote_free", "--kwargs", args, "--wait"]
    done = subprocess.run([*command, "--timeout", "30"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.split("\n", 1)[1]) == {"product": "figs", "quantity": 4}
    refused = subprocess.run(
        [quorum, "submit", "--task", "nope"], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "unknown task 'nope'" in refused.stderr


def raw_celery(stack: DedicatedStack, spec: dict[str, Any]) -> dict[str, Any]:
    """Send `quorum.submit(spec)` from a process that has only celery (see the script)."""
    done = subprocess.run(
        [sys.executable, str(RAW_PRODUCER), stack.redis_url, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_submit_by_name_with_a_raw_celery_message_from_code_without_quorum(
    stack: DedicatedStack, client: TaskClient, scope: str
) -> None:
    spec = {"task": "it_tags", "kwargs": kwargs(scope, outputs=[{"value": ["a", "b"]}])}
    sent = raw_celery(stack, spec)
    assert sent["quorum_imported"] is False
    assert client.get(sent["run_id"]).result(timeout=30) == ["a", "b"]

    before = run_keys(stack)
    unknown = raw_celery(stack, {"task": "nope", "kwargs": {}})
    assert unknown["error"] == "ValueError" and "unknown task 'nope'" in unknown["message"]
    missing = raw_celery(stack, {"task": "it_tags", "kwargs": {}})
    assert "kwargs missing: message, sim" in missing["message"]
    assert nothing_added(before, stack)


def test_a_conflicting_definition_is_reported(stack: DedicatedStack) -> None:
    """A second worker publishing other content under a taken name: logged, counted."""
    r: redis.Redis = stack.redis
    published = json.loads(r.hget("quorum:{tasks}:definitions", "it_choice") or "{}")
    forged = {**published, "hash": "0" * 16, "worker": "old-worker"}
    r.hset("quorum:{tasks}:definitions", "it_choice", json.dumps(forged))
    worker = stack.worker(QUORUM_IMPORTS=IMPORTS, PYTHONPATH=str(ROOT), name="second")
    wait_until(
        lambda: any("CONFLICT: task 'it_choice'" in line for line in worker.lines),
        timeout_s=10,
        what="the conflict logged",
    )
    conflict = json.loads(r.hget("quorum:{tasks}:conflicts", "it_choice") or "{}")
    assert conflict["hashes"] == ["0" * 16, tasks.choice.hash]
    assert conflict["workers"][0] == "old-worker"
