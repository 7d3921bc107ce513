"""The cheap checks (docs/architecture.md §2.2) and vote-free runs, with the step functions of
`test_flow` (fakeredis store, scripted LLM, recording enqueuer)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
from pydantic import BaseModel, field_validator

from quorum import define
from quorum.shared import checks, flow
from quorum.shared.checks import run_checks
from quorum.shared.definitions import expression_checks
from quorum.shared.errors import InvalidRequestError, UnknownTaskError
from quorum.shared.keys import Keys
from quorum.shared.llm import Completion
from quorum.shared.models import (
    ExpressionCheck,
    RunSpec,
    SingleShotValidationConfig,
    TaskStatus,
    Usage,
)
from quorum.shared.sandbox import Limits
from quorum.shared.store import RunStore
from tests.unit.test_flow import GOOD, RUN, SCHEMA, FakeLLM, Recorder, context, sent, types


class Order(BaseModel):
    product: str
    quantity: int
    note: str = ""

    @field_validator("quantity")
    @classmethod
    def at_least_ten(cls, value: int) -> int:
        if value < 10:
            raise ValueError("quantity must be at least 10")
        return value


def shout(order: Order) -> Order:
    if order.product == "pears":
        raise AssertionError("no pears")
    return order.model_copy(update={"note": order.note or "checked"})


ORDERS = define(
    "unit_orders",
    template="Order: {{ message }}",
    response_model=Order,
    validators=[shout],
    checks=[{"expr": "output.quantity < kwargs.limit", "message": "over the limit"}],
)


@pytest.fixture
def store() -> RunStore:
    return RunStore(fakeredis.FakeRedis(decode_responses=True), keys=Keys("quorum"), ttl_s=100)


def spec(**fields: Any) -> RunSpec:
    base: dict[str, Any] = {
        "template": "Extract the purchase from: {{ message }}",
        "kwargs": {"message": "I want 5 apples", "limit": 100},
        "response_schema": SCHEMA,
        "config": None,
        "model": "task-model",
        "validator_model": "judge-model",
    }
    return RunSpec(**{**base, **fields})


def orders(**fields: Any) -> RunSpec:
    return spec(task="unit_orders", task_hash=ORDERS.hash, **fields)


@pytest.mark.parametrize(
    ("output", "check", "message"),
    [
        ({"product": "apples", "quantity": 5}, "model", "quantity: Value error, quantity must"),
        ({"product": "pears", "quantity": 50}, "validator", "no pears"),
        ({"product": "apples", "quantity": 500}, "expression", "over the limit"),
    ],
)
def test_each_check_names_itself_and_gives_its_message(
    output: dict[str, Any], check: str, message: str
) -> None:
    checks = (ExpressionCheck(expr="output.quantity < kwargs.limit", message="over the limit"),)
    checked = run_checks(orders(checks=checks), output)
    assert checked.failure is not None
    assert checked.failure.check == check and message in checked.failure.message
    assert checked.output == output and checked.definition_hash == ORDERS.hash


def test_a_validator_may_replace_the_output_and_a_wrapped_type_stays_wrapped() -> None:
    checked = run_checks(orders(), {"product": "apples", "quantity": 12})
    assert checked.failure is None
    assert checked.output == {"product": "apples", "quantity": 12, "note": "checked"}
    wrapped = spec(wrapped=True, checks=(ExpressionCheck(expr="output > 1", message="m"),))
    assert run_checks(wrapped, {"value": 2}).output == {"value": 2}
    assert run_checks(wrapped, {"value": 1}).failure is not None


def test_a_check_that_cannot_be_evaluated_fails_with_the_reason() -> None:
    bad = spec(checks=(ExpressionCheck(expr="output.missing > 1", message="m"),))
    failure = run_checks(bad, GOOD).failure
    assert failure is not None and "could not be evaluated" in failure.message


def test_a_worker_without_the_definition_refuses_to_drop_its_checks() -> None:
    with pytest.raises(UnknownTaskError, match="QUORUM_IMPORTS"):
        run_checks(spec(task="nowhere"), GOOD)


def test_a_vote_free_run_succeeds_on_its_checks_with_one_call(store: RunStore) -> None:
    store.create(RUN, spec())
    llm = FakeLLM(outputs=[json.dumps(GOOD)])
    ctx = context(store, llm)
    assert flow.task_node(ctx, RUN, 1) == "succeeded"
    state = store.load(RUN)
    assert (state.status, state.result) == (TaskStatus.SUCCESSFUL, GOOD)
    assert len(llm.calls) == 1 and sent(ctx) == []
    assert types(store)[-2:] == ["output", "succeeded"]


def test_a_rejected_output_spends_no_vote_and_its_message_is_the_feedback(
    store: RunStore,
) -> None:
    config = SingleShotValidationConfig(issues=["fine"])
    store.create(RUN, orders(config=config))
    first, second = {"product": "apples", "quantity": 5}, {"product": "apples", "quantity": 20}
    llm = FakeLLM(outputs=[json.dumps(first), json.dumps(second)])
    ctx = context(store, llm)
    assert flow.task_node(ctx, RUN, 1) == "invalid"
    assert sent(ctx) == [("route", RUN, 1)]
    assert "check_failed" in types(store) and "vote" not in types(store)
    assert flow.route(ctx, RUN, 1) == "retrying"
    assert flow.task_node(ctx, RUN, 2) == "validating"
    assert "quantity must be at least 10" in llm.prompts("response")[1]
    assert store.load(RUN).outputs[2]["note"] == "checked"


def test_a_vote_free_run_gives_up_after_three_retries(store: RunStore) -> None:
    store.create(RUN, orders())
    llm = FakeLLM(outputs=[json.dumps({"product": "apples", "quantity": 1})] * 4)
    ctx = context(store, llm)
    for attempt in range(1, 5):
        assert flow.task_node(ctx, RUN, attempt) == "invalid"
        flow.route(ctx, RUN, attempt)
    state = store.load(RUN)
    assert (state.status, state.code) == (TaskStatus.FAILED, "validation_failed")
    assert len(llm.calls) == 4


@pytest.mark.parametrize(
    "expr",
    [
        "('a' * 1000000) | length > 0",
        "2 ** 100000 > 1",
        "([1] * 200000) | length > 0",
        # Jinja's own sandbox let these through: 100 MB, and 10 GB in 21 s of a worker's CPU.
        "(('a' * 10000) | replace('a', 'a' * 10000)) | length > 0",
        "('a' * 10000).replace('a', 'a' * 10000) | length > 0",
        "(range(100000) | list | join('x' * 100000)) | length > 0",
        "('%099999999d' | format(1)) | length > 0",
        "('{:099999999}'.format(1)) | length > 0",
    ],
)
def test_an_expression_cannot_make_the_worker_build_something_huge(expr: str) -> None:
    started = time.process_time()
    failure = run_checks(spec(checks=(ExpressionCheck(expr=expr, message="m"),)), GOOD).failure
    assert failure is not None and "expression refused" in failure.message
    assert time.process_time() - started < 0.5


def test_a_runs_checks_are_evaluated_on_one_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each check within its own second, a hundred of them a hundred seconds: one in all.
    monkeypatch.setattr(checks, "CHECK_LIMITS", Limits(max_chars=100_000, timeout_s=0.2))
    slow = "(range(99999) | map('string') | map('length') | sum) > {}"
    many = tuple(ExpressionCheck(expr=slow.format(-i), message="m") for i in range(100))
    started = time.monotonic()
    failure = run_checks(spec(checks=many), GOOD).failure
    assert time.monotonic() - started < 2
    assert failure is not None and "for all of them together" in failure.message


@pytest.mark.parametrize(
    "expr",
    ["(" * 1900 + "1" + ")" * 1900, "[" * 1999 + "]" * 1999, "not " * 999 + "1", "-" * 3990 + "1"],
    ids=["parens", "lists", "nots", "minuses"],
)
def test_an_expression_nested_too_deeply_is_refused_at_submit(expr: str) -> None:
    with pytest.raises(InvalidRequestError, match="nested too deeply"):
        expression_checks([{"expr": expr, "message": "m"}])


@dataclass
class RecordingLLM:
    """Answers every task call with `content`, remembering the keyword arguments."""

    content: str
    truncated: bool = False
    calls: list[dict[str, Any]] = field(default_factory=list)

    def complete_json(self, **kwargs: Any) -> Completion:
        self.calls.append(kwargs)
        return Completion(self.content, Usage(), 0.01, truncated=self.truncated)


def test_the_run_settings_reach_the_task_call_and_a_cut_off_output_is_invalid(
    store: RunStore,
) -> None:
    store.create(RUN, spec(temperature=0.3, max_output_tokens=50, system="Be terse."))
    llm = RecordingLLM(json.dumps(GOOD)[:10], truncated=True)
    assert flow.task_node(flow.Context(store=store, llm=llm, enqueue=Recorder()), RUN, 1) == (
        "invalid"
    )
    call = llm.calls[0]
    assert (call["temperature"], call["max_output_tokens"]) == (0.3, 50)
    assert call["messages"][0]["content"].startswith("Be terse.\n\n")
    invalid = [e for e in store.events(RUN) if e["type"] == "output_invalid"]
    assert "cut off at max_output_tokens (50)" in invalid[0]["error"]
