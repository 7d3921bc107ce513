"""A workflow's graph as a pure document: its model, its checks at submit, and how a node's
kwargs are resolved from its upstream outputs. No Redis here.

A workflow document is `{"name", "nodes": {name: node}, "max_cost"?, "max_tokens"?,
"timeout_s"?, "metadata"?, "callback_url"?}`. A node is an inline spec (`template`,
`response_schema`, `config`, `model`?, `validator_model`?) or a defined task (`task`), plus
`kwargs` whose values may hold references `{"$ref": "node#/json/pointer"}` to upstream
outputs, `after` (order without data), `skip_if` (a sandboxed Jinja expression over the
resolved kwargs), `allow_failed_inputs`, and for a map `map: {"over": {"$ref": ...}, "item",
"max_parallel"}`.

Nodes are numbered in the document's order; `check` refuses what cannot run (cycles, unknown
nodes, uncovered template variables, a map over a non-array, a reference into a field the
upstream's response schema lacks, sizes over the limits) before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quorum.shared.checks import compile_check
from quorum.shared.errors import InvalidRequestError, TemplateError
from quorum.shared.models import MAX_EXPRESSION_CHARS, ValidationConfig
from quorum.shared.prompts import Limits, template_variables

__all__ = [
    "MAX_MAP_ITEMS",
    "MAX_NODES",
    "Graph",
    "MapDoc",
    "NodeDoc",
    "Ref",
    "WorkflowDoc",
    "check",
    "parse_document",
    "pointer_get",
    "refs_in",
    "resolve",
]

MAX_NODES = 100
"""Nodes per workflow. Each scheduling step reads every node's counters (one hash of ~8
fields a node) and the end of the workflow reads every node's runs: 100 nodes keep a step
well under a millisecond of Redis time, and graphs written by hand stay far below it."""
_LIMITS = Limits()

MAX_MAP_ITEMS = 1000
"""Items per map node. A map's output, the list of its items' outputs, becomes one kwarg of
its dependents (bounded by the payload limit as well), and its runs are created in slices of
`max_parallel` from one step each."""

REF = "$ref"


class MapDoc(BaseModel):
    """A map: one run per item of an upstream list."""

    model_config = ConfigDict(extra="forbid")

    over: dict[str, str] = Field(description='The list to map over: {"$ref": "node#/pointer"}.')
    item: str = Field(min_length=1, description="The kwarg each run gets its item as.")
    max_parallel: int = Field(50, ge=1, le=MAX_MAP_ITEMS, description="Item runs at once.")


class NodeDoc(BaseModel):
    """One node: a defined task or an inline spec, its kwargs, and when it runs."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(None, description="A defined task's name (or an inline spec).")
    template: str | None = None
    response_schema: dict[str, Any] | None = None
    config: ValidationConfig | None = None
    model: str | None = None
    validator_model: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    after: list[str] = Field(default_factory=list, description="Nodes to wait for, no data.")
    skip_if: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_EXPRESSION_CHARS,
        description="Sandboxed Jinja expression over kwargs.",
    )
    allow_failed_inputs: bool = Field(False, description="Run even if an upstream failed.")
    map: MapDoc | None = None
    defined: dict[str, Any] | None = Field(
        None,
        description="Filled at submit for a defined task (its content hash, checks, options); "
        "refused in a submitted document.",
    )


class WorkflowDoc(BaseModel):
    """A workflow as submitted: its nodes and the bounds of all their runs together."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    nodes: dict[str, NodeDoc] = Field(min_length=1)
    max_cost: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, gt=0)
    timeout_s: float | None = Field(None, gt=0)
    metadata: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = Field(
        None,
        description="Where the workflow's final view is POSTed, signed, when it ends "
        "(an allowed host: QUORUM_WEBHOOK_ALLOWED_HOSTS).",
    )


@dataclass(frozen=True)
class Ref:
    """A reference to an upstream node's output, or a part of it (a JSON Pointer)."""

    node: str
    pointer: str = ""

    @classmethod
    def parse(cls, text: str) -> Ref:
        """`node#/a/0` → Ref("node", "/a/0"); `node` alone is the whole output."""
        node, _, pointer = text.partition("#")
        if not node or (pointer and not pointer.startswith("/")):
            raise InvalidRequestError(
                f'bad reference {text!r}: write "node" or "node#/json/pointer"'
            )
        return cls(node, pointer)

    def __str__(self) -> str:
        return f"{self.node}#{self.pointer}" if self.pointer else self.node


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(REF), str)


def refs_in(value: Any) -> Iterator[Ref]:
    """Every reference in a kwargs value, at any depth; an `InvalidRequestError` for an
    object of `$ref` alone that is no reference (`{"$ref": 5}`), which would otherwise pass
    to the template as it is."""
    if _is_ref(value):
        yield Ref.parse(value[REF])
    elif isinstance(value, dict) and value.keys() == {REF}:
        raise InvalidRequestError(
            f'bad reference {value[REF]!r}: a reference is {{"$ref": "node#/json/pointer"}}'
        )
    elif isinstance(value, dict):
        for item in value.values():
            yield from refs_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs_in(item)


def _tokens(pointer: str) -> list[str]:
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def pointer_get(value: Any, pointer: str) -> Any:
    """The part of `value` at a JSON Pointer; None where it has no such part."""
    for token in _tokens(pointer):
        if isinstance(value, dict):
            value = value.get(token)
        elif isinstance(value, list) and token.isdigit() and int(token) < len(value):
            value = value[int(token)]
        else:
            return None
    return value


def resolve(value: Any, outputs: Mapping[str, Any]) -> Any:
    """`value` with each reference replaced by the upstream output it points at (None for an
    upstream that has no output: it failed or was skipped)."""
    if _is_ref(value):
        ref = Ref.parse(value[REF])
        return pointer_get(outputs.get(ref.node), ref.pointer)
    if isinstance(value, dict):
        return {k: resolve(v, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, outputs) for v in value]
    return value


def _schema_at(schema: dict[str, Any], pointer: str, root: dict[str, Any]) -> dict[str, Any]:
    """The sub-schema a JSON Pointer reaches; `{}` (anything) where the schema cannot tell.
    Raises `InvalidRequestError` for a field the schema cannot have."""
    for token in _tokens(pointer):
        while isinstance(schema.get(REF), str) and schema[REF].startswith("#/"):
            schema = pointer_get(root, schema[REF][1:]) or {}
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            props = schema.get("properties", {})
            if token in props:
                schema = props[token]
            elif schema.get("additionalProperties", True) is False or (
                "additionalProperties" not in schema and props
            ):
                raise InvalidRequestError(f"field {token!r} is not in the response schema")
            else:
                extra = schema.get("additionalProperties")
                schema = extra if isinstance(extra, dict) else {}
        elif kind == "array":
            if not token.isdigit():
                raise InvalidRequestError(f"{token!r} is no index into an array")
            schema = schema.get("items") or {}
        elif kind is not None:
            raise InvalidRequestError(f"a {kind} has no field {token!r}")
        else:
            return {}
    return schema


@dataclass(frozen=True)
class Graph:
    """A checked document: node names in order, each node's upstream and dependents."""

    doc: WorkflowDoc
    names: tuple[str, ...]
    upstream: dict[str, tuple[str, ...]]
    dependents: dict[str, tuple[str, ...]]

    def index(self, name: str) -> int:
        """The node's number (its place in the document)."""
        return self.names.index(name)

    def node(self, name: str) -> NodeDoc:
        """The node's document."""
        return self.doc.nodes[name]


def parse_document(raw: Any) -> WorkflowDoc:
    """The workflow document, or an `InvalidRequestError` naming what is wrong with it."""
    try:
        return WorkflowDoc.model_validate(raw)
    except ValidationError as exc:
        raise InvalidRequestError(f"invalid workflow document: {exc}") from exc


def _output_schema(node: NodeDoc) -> dict[str, Any] | None:
    """The schema of a node's output: a map's is an array of its items'; None if unknown."""
    if node.response_schema is None:
        return None
    if node.defined and node.defined.get("wrapped"):  # a non-object type: its `value`
        value = node.response_schema.get("properties", {}).get("value")
        return {"type": "array", "items": value or {}} if node.map else value
    if node.map is not None:
        return {"type": "array", "items": node.response_schema}
    return node.response_schema


def _check_ref(doc: WorkflowDoc, where: str, ref: Ref) -> None:
    upstream = doc.nodes.get(ref.node)
    if upstream is None:
        raise InvalidRequestError(f"{where}: reference to an unknown node {ref.node!r}")
    schema = _output_schema(upstream)
    if schema is not None:
        try:
            _schema_at(schema, ref.pointer, schema)
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{where}: reference {ref}: {exc}") from None


def _check_spec(name: str, node: NodeDoc) -> None:
    """A node is a defined task (filled in at submit: `template` and `defined` set) or an
    inline spec (`template`, `response_schema`, and a `config` or none: checks only)."""
    if node.template is None or node.response_schema is None:
        raise InvalidRequestError(
            f"node {name!r}: give a defined task's name (task), or template and response_schema"
        )


def _check_map(doc: WorkflowDoc, name: str, node: NodeDoc) -> Ref:
    """Check a map node's `over`; the reference it maps over."""
    assert node.map is not None
    if not _is_ref(node.map.over):
        raise InvalidRequestError(f'node {name!r}: map over must be {{"$ref": "node#/..."}}')
    over = Ref.parse(node.map.over[REF])
    _check_ref(doc, f"node {name!r} map", over)
    schema = _output_schema(doc.nodes[over.node])
    if schema is not None:
        kind = _schema_at(schema, over.pointer, schema).get("type")
        if kind not in (None, "array"):
            raise InvalidRequestError(f"node {name!r}: map over {over} is a {kind}, not an array")
    return over


def _check_expressions(name: str, node: NodeDoc, given: set[str], limits: Limits) -> None:
    """The template's variables are covered; the template and `skip_if` compile."""
    try:
        missing = sorted(template_variables(node.template, limits) - given) if node.template else []
    except TemplateError as exc:
        raise InvalidRequestError(f"node {name!r}: {exc}") from None
    try:
        if node.skip_if is not None:
            compile_check(node.skip_if)
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"node {name!r}: skip_if: {exc}") from None
    if missing:
        raise InvalidRequestError(
            f"node {name!r}: template variables no kwarg or reference covers: " + ", ".join(missing)
        )


def _check_node(doc: WorkflowDoc, name: str, node: NodeDoc, limits: Limits) -> tuple[str, ...]:
    """Check one node; return the nodes it waits for."""
    _check_spec(name, node)
    refs = [(f"node {name!r} kwarg {k!r}", r) for k, v in node.kwargs.items() for r in refs_in(v)]
    given = set(node.kwargs)
    if node.map is not None:
        refs.append((f"node {name!r} map", _check_map(doc, name, node)))
        given.add(node.map.item)
    for where, ref in refs:
        _check_ref(doc, where, ref)
    _check_expressions(name, node, given, limits)
    for other in node.after:
        if other not in doc.nodes:
            raise InvalidRequestError(f"node {name!r}: after names an unknown node {other!r}")
    waits = dict.fromkeys([r.node for _, r in refs] + list(node.after))
    if name in waits:
        raise InvalidRequestError(f"node {name!r} depends on itself")
    return tuple(waits)


def check(doc: WorkflowDoc, limits: Limits = _LIMITS) -> Graph:
    """The document's graph, or an `InvalidRequestError` naming why it cannot run; its
    templates compile within `limits`."""
    if len(doc.nodes) > MAX_NODES:
        raise InvalidRequestError(
            f"workflow has {len(doc.nodes)} nodes, over the limit of {MAX_NODES}"
        )
    for name in doc.nodes:
        if not name or "." in name or "#" in name or "/" in name:
            raise InvalidRequestError(f"node name {name!r} must be non-empty, without . # /")
    upstream = {name: _check_node(doc, name, node, limits) for name, node in doc.nodes.items()}
    dependents: dict[str, list[str]] = {name: [] for name in doc.nodes}
    for name, ups in upstream.items():
        for up in ups:
            dependents[up].append(name)
    pending = {name: len(ups) for name, ups in upstream.items()}
    ready = [name for name, n in pending.items() if n == 0]
    seen = 0
    while ready:
        name = ready.pop()
        seen += 1
        for dep in dependents[name]:
            pending[dep] -= 1
            if pending[dep] == 0:
                ready.append(dep)
    if seen < len(doc.nodes):
        cycle = sorted(name for name, n in pending.items() if n > 0)
        raise InvalidRequestError(f"workflow has a cycle through nodes: {', '.join(cycle)}")
    return Graph(
        doc=doc,
        names=tuple(doc.nodes),
        upstream=upstream,
        dependents={k: tuple(v) for k, v in dependents.items()},
    )
