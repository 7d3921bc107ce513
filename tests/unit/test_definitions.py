"""Defined tasks without Redis or workers: define(), response types, the ad-hoc refusal,
the registry (against fakeredis) and the per-run settings."""

from __future__ import annotations

import json
import threading
from typing import Annotated, Literal

import fakeredis
import pytest
from pydantic import AfterValidator, BaseModel, field_validator

from quorum import SingleShotValidationConfig, define
from quorum.producer.metrics import TaskMetrics
from quorum.shared.definitions import defined
from quorum.shared.errors import InvalidRequestError, SchemaError, StoreError
from quorum.shared.keys import Keys
from quorum.shared.options import llm_options, with_system
from quorum.shared.registry import Registry
from quorum.shared.responses import (
    own_validators,
    read_result,
    refuse_ad_hoc_validators,
    response_type,
    result_field,
)


class Plain(BaseModel):
    product: str
    quantity: int


class Checked(BaseModel):
    product: str
    quantity: int

    @field_validator("quantity")
    @classmethod
    def positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("quantity must be positive")
        return value


class Nested(BaseModel):
    items: list[Annotated[int, AfterValidator(lambda v: v)]]


def test_a_non_object_type_is_wrapped_for_the_llm_and_unwrapped_for_the_producer() -> None:
    choice = response_type(Literal["refund", "exchange"])
    assert choice.wrapped
    assert choice.schema == {
        "type": "object",
        "properties": {"value": {"enum": ["refund", "exchange"], "type": "string"}},
        "required": ["value"],
        "additionalProperties": False,
    }
    assert result_field(True, {"value": "refund"}) == '"refund"'
    assert read_result(list[str], ["a"]) == ["a"]
    assert read_result(int, 3) == 3
    assert read_result(Plain, {"product": "a", "quantity": 1}) == Plain(product="a", quantity=1)
    assert not response_type(Plain).wrapped
    assert response_type({"type": "string"}).wrapped
    with pytest.raises(SchemaError, match="TypeAdapter"):
        response_type(object())


def test_own_validators_are_found_in_the_model_and_its_fields_but_not_pydantics() -> None:
    assert own_validators(Checked) == ["Checked.positive"]
    assert own_validators(Nested) == ["<lambda>"]
    assert own_validators(Plain) == []
    with pytest.raises(SchemaError, match=r"Checked has validators of its own.*define\(\) it"):
        refuse_ad_hoc_validators(Checked)
    refuse_ad_hoc_validators(Plain)


def test_define_checks_its_parts_and_keeps_one_content_per_name() -> None:
    first = define("unit_define", template="{{ a }}", response_model=Checked)
    assert defined("unit_define") is first
    assert first.published()["variables"] == ["a"]
    assert first.published()["config"] is None
    again = define("unit_define", template="{{ a }}", response_model=Checked)
    assert again.hash == first.hash
    with pytest.raises(InvalidRequestError, match="already defined with other content"):
        define("unit_define", template="{{ b }}", response_model=Checked)
    bad = [
        ({"template": "{{ a"}, "syntax error"),
        ({"config": {"mode": "single_shot", "issues": []}}, "invalid validation config"),
        ({"checks": [{"expr": "output.__class__", "message": "m"}]}, "unsafe"),
        ({"checks": [{"expr": "output ==", "message": "m"}]}, "does not compile"),
        ({"checks": [{"expr": "true"}]}, "check 1 is invalid"),
        ({"validators": ["not a function"]}, "validators must be functions"),
        ({"temperature": 3}, "temperature must be"),
        ({"max_output_tokens": 0}, "max_output_tokens must be"),
    ]
    for overrides, message in bad:
        request = {"template": "{{ a }}", "response_model": Plain, **overrides}
        with pytest.raises(InvalidRequestError, match=message):
            define("unit_bad", **request)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="task name"):
        define("no spaces", template="x", response_model=Plain)
    voted = define(
        "unit_voted",
        template="x",
        response_model=Plain,
        config=SingleShotValidationConfig(issues=["ok"]),
    )
    assert voted.published()["config"]["mode"] == "single_shot"


def test_the_registry_publishes_refreshes_and_reports_a_conflict() -> None:
    redis = fakeredis.FakeRedis(decode_responses=True)
    registry = Registry(redis, Keys(), ttl_s=600)
    definition = define("unit_registry", template="{{ a }}", response_model=Plain)
    assert registry.publish([definition], worker="w1") == []
    assert registry.publish([definition], worker="w2") == []  # same content: no conflict
    assert registry.get("unit_registry")["hash"] == definition.hash
    assert 0 < redis.ttl("quorum:{tasks}:definitions") <= 600
    forged = {**(registry.get("unit_registry") or {}), "hash": "other", "worker": "w0"}
    redis.hset("quorum:{tasks}:definitions", "unit_registry", json.dumps(forged))
    assert registry.publish([definition], worker="w1") == ["unit_registry"]
    assert registry.conflicts()["unit_registry"]["hashes"] == ["other", definition.hash]
    assert registry.get("unknown") is None


def test_the_run_settings_are_checked_and_the_system_prompt_is_prepended() -> None:
    assert llm_options(temperature=0, max_output_tokens=5, system="s")["temperature"] == 0
    for bad in ({"temperature": True}, {"max_output_tokens": 1.5}, {"system": 3}):
        with pytest.raises(InvalidRequestError):
            llm_options(**bad)
    messages = [{"role": "system", "content": "JSON only."}, {"role": "user", "content": "x"}]
    assert with_system(None, messages) is messages
    assert with_system("Be terse.", messages)[0]["content"] == "Be terse.\n\nJSON only."


def test_an_ad_hoc_type_with_a_validator_of_its_own_is_refused_too() -> None:
    with pytest.raises(SchemaError, match="validators of its own"):
        refuse_ad_hoc_validators(list[Annotated[int, AfterValidator(lambda v: v)]])
    refuse_ad_hoc_validators(list[str])
    refuse_ad_hoc_validators({"type": "object"})


def test_the_registry_keeps_trying_while_redis_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis = fakeredis.FakeRedis(decode_responses=True)
    registry = Registry(redis, Keys(), ttl_s=600)
    definition = define("unit_retry", template="{{ a }}", response_model=Plain)
    tries: list[float] = []

    def down(definitions: object, *, worker: str) -> list[str]:
        tries.append(1.0)
        raise StoreError("down")

    sleeps: list[float] = []
    parked = threading.Event()

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) > 2:
            parked.set()
            threading.Event().wait()  # the daemon thread stays here

    monkeypatch.setattr(registry, "publish", down)
    monkeypatch.setattr("quorum.shared.registry.time.sleep", sleep)
    assert registry.keep_published([definition], worker="w") is not None
    assert parked.wait(timeout=5)
    assert sleeps[:2] == [5.0, 5.0] and len(tries) == 3


def test_the_metrics_count_the_tasks_and_the_conflicts() -> None:
    redis = fakeredis.FakeRedis(decode_responses=True)
    registry = Registry(redis, Keys(), ttl_s=600)
    definition = define("unit_metrics", template="{{ a }}", response_model=Plain)
    registry.publish([definition], worker="w1")
    redis.hset("quorum:{tasks}:conflicts", "unit_metrics", json.dumps({"hashes": ["a", "b"]}))
    families = {f.name: f for f in TaskMetrics(registry).collect()}
    assert families["quorum_defined_tasks"].samples[0].value == 1
    conflict = families["quorum_task_definition_conflicts"].samples[0]
    assert conflict.labels == {"task": "unit_metrics"} and conflict.value == 1
