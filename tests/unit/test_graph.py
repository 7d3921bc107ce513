"""The workflow document and its checks at submit (`shared/graph.py`), pure."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from quorum import SingleShotValidationConfig, Workflow
from quorum.shared.errors import InvalidRequestError
from quorum.shared.graph import Ref, check, parse_document, pointer_get, refs_in, resolve

CONFIG = {"mode": "single_shot", "issues": ["ok"]}
TEXT = {"type": "object", "properties": {"text": {"type": "string"}}}


class Claims(BaseModel):
    claims: list[str]


def inline(template: str, schema: dict[str, Any] = TEXT, **extra: Any) -> dict[str, Any]:
    return {"template": template, "response_schema": schema, "config": CONFIG, **extra}


def graph(**nodes: dict[str, Any]) -> Any:
    return check(parse_document({"name": "g", "nodes": nodes}))


def test_references_parse_and_resolve_by_json_pointer() -> None:
    assert Ref.parse("a#/x/0") == Ref("a", "/x/0")
    assert Ref.parse("a") == Ref("a", "")
    with pytest.raises(InvalidRequestError, match="bad reference"):
        Ref.parse("a#x")
    value = {"k": [{"$ref": "a#/x/1"}, {"deep": {"$ref": "b"}}], "plain": 3}
    assert [str(r) for r in refs_in(value)] == ["a#/x/1", "b"]
    outputs = {"a": {"x": ["zero", "one"]}, "b": {"whole": True}}
    assert resolve(value, outputs) == {"k": ["one", {"deep": {"whole": True}}], "plain": 3}
    assert pointer_get({"a/b": {"~": 1}}, "/a~1b/~0") == 1
    assert pointer_get({"a": []}, "/a/5") is None


def test_the_builder_writes_the_document_with_references() -> None:
    wf = Workflow("claims", max_cost=0.5, timeout_s=900)
    config = SingleShotValidationConfig(issues=["ok"])
    ex = wf.task(
        "extract", template="{{ doc }}", response_model=Claims, config=config, kwargs={"doc": "d"}
    )
    ck = wf.map(
        "check",
        over=ex["claims"],
        item="claim",
        template="{{ claim }}",
        response_model=TEXT,
        config=config,
        max_parallel=7,
    )
    wf.task(
        "summary",
        template="{{ v }}",
        response_model=TEXT,
        config=config,
        kwargs={"v": ck},
        after=[ex],
        skip_if="v | length == 0",
    )
    doc = wf.document()
    assert doc["max_cost"] == 0.5 and doc["timeout_s"] == 900
    assert doc["nodes"]["check"]["map"] == {
        "over": {"$ref": "extract#/claims"},
        "item": "claim",
        "max_parallel": 7,
    }
    assert doc["nodes"]["summary"]["kwargs"] == {"v": {"$ref": "check"}}
    assert doc["nodes"]["summary"]["after"] == ["extract"]
    g = check(parse_document(doc))
    assert g.upstream == {"extract": (), "check": ("extract",), "summary": ("check", "extract")}
    assert g.dependents["extract"] == ("check", "summary")


def test_pydantic_schemas_with_defs_are_followed() -> None:
    class Inner(BaseModel):
        name: str

    class Outer(BaseModel):
        items: list[Inner]

    schema = Outer.model_json_schema()
    ok = graph(
        a=inline("go", schema), b=inline("{{ x }}", kwargs={"x": {"$ref": "a#/items/0/name"}})
    )
    assert ok.upstream["b"] == ("a",)
    with pytest.raises(InvalidRequestError, match="field 'nope' is not in the response schema"):
        graph(
            a=inline("go", schema), b=inline("{{ x }}", kwargs={"x": {"$ref": "a#/items/0/nope"}})
        )


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ({"a": inline("{{ x }}", kwargs={"x": {"$ref": "a#/text"}})}, "depends on itself"),
        ({"a": inline("go", after=["zz"])}, "after names an unknown node 'zz'"),
        ({"a": inline("{% if %}")}, "syntax error"),
        ({"a.b": inline("go")}, "without . # /"),
        ({"a": {"template": "go", "config": CONFIG}}, "or template and response_schema"),
        (
            {"a": inline("go"), "b": inline("{{ it }}", map={"over": {"x": "a"}, "item": "it"})},
            "map over must be",
        ),
        (
            {"a": inline("go"), "b": inline("{{ x }}", kwargs={"x": {"$ref": "a#/text/0"}})},
            "no field",
        ),
        (
            {"a": inline("go"), "b": inline("{{ x }}", kwargs={"x": [{"$ref": 5}]})},
            "bad reference 5",
        ),
    ],
)
def test_bad_graphs_are_refused(nodes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        graph(**nodes)


def test_a_map_over_an_array_passes_and_its_output_is_a_list() -> None:
    schema = Claims.model_json_schema()
    g = graph(
        a=inline("go", schema),
        b=inline("{{ it }}", map={"over": {"$ref": "a#/claims"}, "item": "it"}),
        c=inline("{{ first }}", kwargs={"first": {"$ref": "b#/0/text"}}),
    )
    assert g.upstream["c"] == ("b",)


def test_the_document_itself_is_validated() -> None:
    with pytest.raises(InvalidRequestError, match="invalid workflow document"):
        parse_document({"name": "g", "nodes": {}})
    with pytest.raises(InvalidRequestError, match="invalid workflow document"):
        parse_document({"name": "g", "nodes": {"a": {"unknown": 1}}})
    with pytest.raises(InvalidRequestError, match="invalid workflow document"):
        parse_document(
            {
                "name": "g",
                "nodes": {
                    "a": inline("go", map={"over": {"$ref": "x"}, "item": "i", "max_parallel": 0})
                },
            }
        )
