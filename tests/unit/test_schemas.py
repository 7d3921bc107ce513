"""Producers' JSON Schemas: self-contained, RE2 patterns; outputs checked without fetching or
backtracking. And what a request's JSON may hold (`payload_problem`)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from quorum.shared.payload import depth_over, payload_problem
from quorum.shared.schemas import MAX_PATTERN_CHARS, output_error, schema_problem


def problem(schema: dict[str, Any]) -> str | None:
    return schema_problem(json.dumps(schema, sort_keys=True))


def obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


@pytest.mark.parametrize(
    ("schema", "match"),
    [
        ({"type": "object", "$ref": "http://127.0.0.1:9/x"}, "is not local"),
        (obj(a={"$ref": "https://example.com/s.json#/x"}), "is not local"),
        (obj(a={"$ref": "other.json"}), "is not local"),
        (obj(a={"$dynamicRef": "http://x/y"}), "is not local"),
        (obj(a={"$ref": "#/$defs/missing"}), "points at nothing"),
        (obj(a={"type": "string", "pattern": "(a)\\1"}), "RE2 cannot run"),
        (obj(a={"type": "string", "pattern": "a(?=b)"}), "RE2 cannot run"),
        (obj(a={"type": "string", "pattern": "a" * (MAX_PATTERN_CHARS + 1)}), "longer than"),
        ({"type": "object", "patternProperties": {"(x)\\1": {}}}, "RE2 cannot run"),
        (
            {"type": "object", "patternProperties": {"^a": {}}, "unevaluatedProperties": False},
            "unevaluatedProperties",
        ),
        ({"type": "object", "properties": 5}, "is not of type"),
    ],
)
def test_a_schema_that_is_not_self_contained_or_safe_is_refused(schema, match):
    found = problem(schema)
    assert found is not None and match in found, found


@pytest.mark.parametrize(
    "schema",
    [
        obj(a={"$ref": "#/$defs/A"}) | {"$defs": {"A": {"type": "string"}}},
        obj(a={"type": "string", "pattern": "^(a+)+$"}),
        obj(a={"type": "string", "pattern": "^\\d{3}-[[:alpha:]]+$"}),
        {"type": "object", "patternProperties": {"^x_": {"type": "integer"}}},
        obj(tree={"$ref": "#"}),
    ],
)
def test_self_contained_schemas_with_re2_patterns_are_accepted(schema):
    assert problem(schema) is None


def test_a_backtracking_pattern_runs_in_linear_time():
    schema = obj(w={"type": "string", "pattern": "^(a+)+$"})
    started = time.process_time()  # CPU time: a busy host does not stretch it
    error = output_error({"w": "a" * 100_000 + "!"}, schema)
    assert time.process_time() - started < 0.5
    assert error is not None and "does not match" in error
    assert output_error({"w": "aaa"}, schema) is None


def test_pattern_properties_and_additional_properties_use_re2():
    schema = {
        "type": "object",
        "patternProperties": {"^(x+)+$": {"type": "integer"}},
        "additionalProperties": False,
    }
    assert output_error({"xxx": 1}, schema) is None
    assert "not of type" in (output_error({"xx": "s"}, schema) or "")
    started = time.process_time()
    assert "not allowed" in (output_error({"x" * 50_000 + "!": 1}, schema) or "")
    assert time.process_time() - started < 0.5


def test_a_remote_ref_in_a_stored_schema_is_never_fetched():
    schema = obj(a={"$ref": "http://127.0.0.1:9/never"})
    error = output_error({"a": 1}, schema)
    assert error is not None and "cannot be resolved" in error


def test_an_output_nested_past_the_recursion_limit_is_a_misfit_not_a_crash():
    deep: Any = 1
    for _ in range(2000):
        deep = {"tree": deep}
    error = output_error(deep, obj(tree={"$ref": "#"}))
    assert error is not None and "nested too deeply" in error


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"x": "\ud800"}, "kwargs.x holds a lone surrogate (U+D800) at character 0"),
        ({"x": ["ok", {"y": "ab\udfff"}]}, "kwargs.x[1].y holds a lone surrogate"),
        ({"\ud800": 1}, "kwargs: a key holds a lone surrogate"),
        ({"a": {"a": {"a": {"a": 1}}}}, "kwargs.a.a.a is nested deeper than 3 levels"),
    ],
)
def test_payload_problems_name_the_place(value, match):
    assert payload_problem(value, what="kwargs", max_depth=3) == match or match in str(
        payload_problem(value, what="kwargs", max_depth=3)
    )


def test_clean_payloads_and_depth():
    assert payload_problem({"a": ["é", "ok", {"b": 1}]}, what="kwargs", max_depth=3) is None
    assert depth_over([[[1]]], 2) and not depth_over([[[1]]], 3)


def test_a_pattern_that_compiles_too_big_is_refused():
    found = problem(obj(a={"type": "string", "pattern": "a[ab]{300}c"}))
    assert found is not None and "instructions" in found


def test_the_pattern_checks_of_one_output_stop_at_their_cost_bound():
    many = obj(w={"allOf": [{"type": "string", "pattern": "a[ab]{190}c"}] * 50})
    started = time.monotonic()
    error = output_error({"w": "ab" * 500_000}, many)
    assert error is not None and "cost too much" in error
    assert time.monotonic() - started < 5
