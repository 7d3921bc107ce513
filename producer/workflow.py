"""The Python builder of workflows: `Workflow`, whose `task` and `map` add nodes and return
handles that index into references to their outputs (`ex["claims"]` is
`{"$ref": "extract#/claims"}`). `document()` is the JSON document `POST /v1/workflows`
takes (`quorum.shared.graph`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from quorum.shared.errors import InvalidRequestError
from quorum.shared.responses import refuse_ad_hoc_validators

__all__ = ["NodeHandle", "NodeRef", "Workflow"]


def _escape(token: str | int) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


class NodeRef:
    """A reference to a node's output or a part of it; index it to go deeper."""

    def __init__(self, node: str, pointer: str = "") -> None:
        self.node = node
        self.pointer = pointer

    def __getitem__(self, key: str | int) -> NodeRef:
        return NodeRef(self.node, f"{self.pointer}/{_escape(key)}")

    def to_json(self) -> dict[str, str]:
        """The reference as the document writes it."""
        return {"$ref": f"{self.node}#{self.pointer}" if self.pointer else self.node}

    def __repr__(self) -> str:
        return f"NodeRef({self.to_json()['$ref']!r})"


class NodeHandle(NodeRef):
    """A node of a workflow being built: its name, and a reference to its whole output."""

    def __init__(self, name: str) -> None:
        super().__init__(name)

    @property
    def name(self) -> str:
        """The node's name."""
        return self.node


def _jsonable(value: Any) -> Any:
    """`value` with every `NodeRef` written as a reference."""
    if isinstance(value, NodeRef):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _schema(response_model: Any) -> Any:
    if isinstance(response_model, type) and issubclass(response_model, BaseModel):
        return response_model.model_json_schema()
    return response_model


class Workflow:
    """A graph of validated tasks, built node by node, submitted with
    `TaskClient.submit_workflow`. `max_cost`, `max_tokens` and `timeout_s` bound all its
    runs together."""

    def __init__(
        self,
        name: str,
        *,
        max_cost: float | None = None,
        max_tokens: int | None = None,
        timeout_s: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.max_cost = max_cost
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.metadata = metadata or {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.models: dict[str, type[BaseModel]] = {}
        """Node → the Pydantic class its output is returned as (`WorkflowRun.result`)."""

    def task(
        self,
        name: str,
        *,
        task: str | dict[str, Any] | None = None,
        template: str | None = None,
        response_model: type[BaseModel] | dict[str, Any] | None = None,
        config: Any = None,
        kwargs: dict[str, Any] | None = None,
        after: Sequence[str | NodeRef] = (),
        skip_if: str | None = None,
        allow_failed_inputs: bool = False,
        model: str | None = None,
        validator_model: str | None = None,
    ) -> NodeHandle:
        """Add a node that runs once: a defined task (`task="name"`) or an inline spec
        (`template`, `response_model`, `config`, or all three as a dict in `task`). Its
        kwargs may hold handles and references to upstream outputs."""
        if name in self.nodes:
            raise InvalidRequestError(f"node {name!r} is already in the workflow")
        node: dict[str, Any] = {}
        if isinstance(task, dict):
            inline = dict(task)
            template = inline.pop("template", template)
            response_model = inline.pop("response_model", inline.pop("response_schema", None))
            config = inline.pop("config", config)
            node |= inline
        elif task is not None:
            node["task"] = task
        if isinstance(response_model, type) and issubclass(response_model, BaseModel):
            refuse_ad_hoc_validators(response_model)  # its validators run only if defined
            self.models[name] = response_model
        parts = {
            "template": template,
            "response_schema": _schema(response_model),
            "config": config.model_dump() if isinstance(config, BaseModel) else config,
            "model": model,
            "validator_model": validator_model,
        }
        node |= {key: value for key, value in parts.items() if value is not None}
        node["kwargs"] = _jsonable(kwargs or {})
        node["after"] = [a.node if isinstance(a, NodeRef) else a for a in after]
        if skip_if is not None:
            node["skip_if"] = skip_if
        node["allow_failed_inputs"] = allow_failed_inputs
        self.nodes[name] = node
        return NodeHandle(name)

    def map(
        self,
        name: str,
        *,
        over: NodeRef | dict[str, str],
        item: str,
        max_parallel: int = 50,
        **node: Any,
    ) -> NodeHandle:
        """Add a node that runs once per item of an upstream list (`over`), each run with
        the item as the kwarg `item`, at most `max_parallel` at once. Its output is the list
        of the items' outputs, in item order. Takes `task`'s other options."""
        handle = self.task(name, **node)
        self.nodes[name]["map"] = {
            "over": _jsonable(over),
            "item": item,
            "max_parallel": max_parallel,
        }
        return handle

    def document(self) -> dict[str, Any]:
        """The workflow as the JSON document `POST /v1/workflows` takes."""
        doc: dict[str, Any] = {"name": self.name, "nodes": self.nodes, "metadata": self.metadata}
        for key in ("max_cost", "max_tokens", "timeout_s"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        return doc
