"""`build_spec`: every bad request is refused at the boundary with a message naming it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from quorum.producer.spec import build_spec
from quorum.shared.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    SchemaError,
    TemplateError,
)
from quorum.shared.models import (
    KAheadVotingValidationConfig,
    RunSpec,
    SingleShotValidationConfig,
    ThresholdVotingValidationConfig,
)
from quorum.shared.settings import Settings


class Purchase(BaseModel):
    product: str
    quantity: int


SCHEMA = {
    "type": "object",
    "properties": {"product": {"type": "string"}, "quantity": {"type": "integer"}},
    "required": ["product", "quantity"],
}
CONFIG = ThresholdVotingValidationConfig(issues=["the quantity matches"])
SETTINGS = Settings(model="task-model", validator_model=None)


def build(**overrides: Any) -> RunSpec:
    request: dict[str, Any] = {
        "template": "Extract the purchase from: {{ message }}",
        "response_model": Purchase,
        "kwargs": {"message": "I want 5 apples"},
        "config": CONFIG,
        "model": None,
        "validator_model": None,
        "metadata": None,
        "settings": SETTINGS,
        **overrides,
    }
    return build_spec(**request)


def test_accepts_a_pydantic_class() -> None:
    spec = build()
    assert spec.response_schema == Purchase.model_json_schema()
    assert spec.response_name == "Purchase"
    assert spec.config == CONFIG
    assert (spec.model, spec.validator_model) == ("task-model", "task-model")
    assert spec.kwargs == {"message": "I want 5 apples"}


def test_accepts_a_json_schema_dict() -> None:
    spec = build(response_model={**SCHEMA, "title": "My purchase!"})
    assert spec.response_schema["properties"] == SCHEMA["properties"]
    assert spec.response_name == "My_purchase_"


def test_accepts_a_config_as_a_dict_and_explicit_models() -> None:
    spec = build(
        config={"mode": "k_ahead", "issues": ["x"], "count": 3},
        model="big",
        validator_model="small",
        metadata={"team": "sales"},
    )
    assert isinstance(spec.config, KAheadVotingValidationConfig)
    assert spec.config.max_votes == 12
    assert (spec.model, spec.validator_model, spec.metadata) == ("big", "small", {"team": "sales"})


def test_spec_survives_the_wire() -> None:
    spec = build(config=SingleShotValidationConfig(issues=["x"]))
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"template": "Extract {{ message"}, TemplateError, "syntax error"),
        ({"template": "{{ message }} {{ shop }}"}, TemplateError, "missing from kwargs: shop"),
        ({"template": "{{ ''.__class__.__mro__ }}"}, TemplateError, "sandbox"),
        ({"template": "{{ message|attr('__class__') }}"}, TemplateError, "sandbox"),
        ({"template": "   "}, InvalidRequestError, "template must be a non-empty string"),
        (
            {"kwargs": {"message": object()}},
            InvalidRequestError,
            "kwargs must be JSON-serializable",
        ),
        ({"kwargs": {"message": float("nan")}}, InvalidRequestError, "kwargs must be JSON"),
        ({"kwargs": {1: "x"}}, InvalidRequestError, "string keys"),
        ({"metadata": {"at": {1, 2}}}, InvalidRequestError, "metadata must be JSON-serializable"),
        ({"response_model": int}, SchemaError, "Pydantic model class or a JSON Schema"),
        ({"response_model": "str"}, SchemaError, "Pydantic model class or a JSON Schema"),
        ({"response_model": Purchase(product="a", quantity=1)}, SchemaError, "Pydantic model"),
        (
            {"response_model": {"type": "object", "properties": {"a": {"type": "strng"}}}},
            SchemaError,
            "not a valid JSON Schema",
        ),
        ({"response_model": {"type": "string"}}, SchemaError, '"type": "object"'),
        (
            {"response_model": {"type": "object", "enum": {1, 2}}},
            SchemaError,
            "response_model must be JSON-serializable",
        ),
        (
            {"config": {"mode": "threshold", "issues": ["x"], "count": 2}},
            InvalidRequestError,
            "odd",
        ),
        ({"config": {"mode": "majority", "issues": ["x"]}}, InvalidRequestError, "mode"),
        ({"config": {"mode": "single_shot", "issues": []}}, InvalidRequestError, "issues"),
    ],
    ids=[
        "syntax",
        "missing variable",
        "mro",
        "attr filter",
        "blank template",
        "object kwarg",
        "nan kwarg",
        "non-string key",
        "set metadata",
        "int class",
        "string",
        "model instance",
        "bad type",
        "not an object",
        "set in schema",
        "even count",
        "unknown mode",
        "no issues",
    ],
)
def test_refuses_bad_input(overrides: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as caught:
        build(**overrides)
    assert isinstance(caught.value, ValueError)


def test_checks_are_remembered_per_schema_and_template_not_per_answer() -> None:
    """The schema check and the template parse are cached; what they decide is not reused
    for a different request."""
    bad = {"type": "object", "properties": {"a": {"type": "strng"}}}
    for _ in range(2):
        with pytest.raises(SchemaError, match="not a valid JSON Schema"):
            build(response_model=bad)
        build(template="{{ message }} from {{ shop }}", kwargs={"message": "hi", "shop": "s"})
        with pytest.raises(TemplateError, match="missing from kwargs: shop"):
            build(template="{{ message }} from {{ shop }}", kwargs={"message": "hi"})


@pytest.mark.parametrize(
    ("overrides", "what"),
    [
        ({"template": "{{ message }}" + "x" * 200}, "template"),
        ({"kwargs": {"message": "x" * 200}}, "kwargs"),
        ({"metadata": {"note": "x" * 200}}, "metadata"),
        ({"response_model": {"type": "object", "description": "x" * 200}}, "response_model"),
    ],
)
def test_refuses_a_payload_over_the_limit(overrides: dict[str, Any], what: str) -> None:
    small = Settings(max_payload_bytes=100)
    request = {"response_model": {"type": "object"}, "settings": small, **overrides}
    with pytest.raises(PayloadTooLargeError, match=f"{what}.* over the limit of 100 bytes"):
        build(**request)


def test_accepts_a_payload_within_the_limit() -> None:
    small = Settings(max_payload_bytes=100)
    spec = build(response_model={"type": "object"}, settings=small)
    assert spec.response_schema == {"type": "object"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kwargs": {"message": "\ud800"}}, "kwargs.message holds a lone surrogate"),
        ({"template": "hi \udc00"}, "template holds a lone surrogate"),
        ({"metadata": {"who": "\ud800"}}, "metadata.who holds a lone surrogate"),
        ({"model": "m\ud800"}, "model holds a lone surrogate"),
        (
            {"response_model": {"type": "object", "title": "\ud800"}},
            "response_schema.title holds a lone surrogate",
        ),
        ({"kwargs": {"message": [[[[1]]]]}}, "kwargs.message[0][0][0] is nested deeper than 4"),
        ({"response_model": {"type": "object", "$ref": "http://h/x"}}, "is not local"),
        ({"template": "{{ message * 1000 }}"}, "repetition"),
        ({"template": "{{ message }}{{ message }}"}, "the rendered prompt would make 30"),
        ({"template": "{{ message }}", "kwargs": {"message": "é" * 15}}, "prompt is 30 bytes"),
    ],
)
def test_refuses_what_could_not_be_stored_or_would_cost_too_much(
    overrides: dict[str, Any], message: str
) -> None:
    tight = Settings(max_nesting_depth=4, max_prompt_bytes=20)
    with pytest.raises(InvalidRequestError, match=message.replace("[", r"\[")) as caught:
        build(settings=tight, **overrides)
    assert isinstance(caught.value, ValueError)
