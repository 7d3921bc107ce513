"""Response types: what a task's output is, for the LLM and for the producer.

A Pydantic model class, a JSON Schema, or any type a Pydantic `TypeAdapter` takes
(`Literal[...]`, `list[str]`, `int`, `bool`, ...). A type whose schema is not an object goes to
the LLM wrapped as `{"value": ...}` (`ResponseType.wrapped`); the run's result is stored
unwrapped, so every door returns the plain value. A model (or type) with validators of its own
runs them only where its code is: given ad hoc, it is refused (`refuse_ad_hoc_validators`).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, TypeAdapter

from quorum.shared.errors import SchemaError

__all__ = [
    "ResponseType",
    "own_validators",
    "read_result",
    "refuse_ad_hoc_validators",
    "response_type",
    "result_field",
    "unwrap",
]

_FUNCTION_SCHEMAS = frozenset(
    {"function-after", "function-before", "function-wrap", "function-plain"}
)

_LIBRARY_MODULES = frozenset({"pydantic", "pydantic_core", *sys.stdlib_module_names})
"""Where the validator functions Pydantic builds for standard types come from."""


def _wrapped_schema(inner: dict[str, Any]) -> dict[str, Any]:
    """`{"value": <inner>}` as a closed object schema; `$defs` kept at the top for `$ref`s."""
    inner = dict(inner)
    defs = inner.pop("$defs", None)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"value": inner},
        "required": ["value"],
        "additionalProperties": False,
    }
    if defs:
        schema["$defs"] = defs
    return schema


@dataclass(frozen=True)
class ResponseType:
    """What a response model becomes: the object schema the LLM is asked for, its name,
    whether it is wrapped as `{"value": ...}`, and the code that validates it (a Pydantic
    model class or a `TypeAdapter`; none for a JSON Schema)."""

    schema: dict[str, Any]
    name: str
    wrapped: bool = False
    model: type[BaseModel] | None = None
    adapter: TypeAdapter[Any] | None = None

    def validate(self, value: Any) -> Any:
        """The unwrapped output as the Python value the producer gets (a model instance, a
        plain value); a Pydantic `ValidationError` if the model or type rejects it."""
        if self.model is not None:
            return self.model.model_validate(value)
        if self.adapter is not None:
            return self.adapter.validate_python(value)
        return value

    def dump(self, value: Any) -> Any:
        """A value `validate` returned (or a validator replaced), as JSON-ready data."""
        if self.model is not None and isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        if self.adapter is not None:
            return self.adapter.dump_python(value, mode="json")
        return value


def response_type(response_model: Any) -> ResponseType:
    """The `ResponseType` of a Pydantic model class, a JSON Schema dict, or a type a
    `TypeAdapter` takes; `SchemaError` for anything else. A type's is made once."""
    if isinstance(response_model, dict):
        return _response_type(response_model)
    try:
        return _type_response(response_model)
    except TypeError:  # unhashable: not a type, and refused as such below
        return _response_type(response_model)


@lru_cache(maxsize=256)
def _type_response(response_model: Any) -> ResponseType:
    return _response_type(response_model)


def _response_type(response_model: Any) -> ResponseType:
    if isinstance(response_model, type) and issubclass(response_model, BaseModel):
        return ResponseType(
            response_model.model_json_schema(), response_model.__name__, model=response_model
        )
    if isinstance(response_model, dict):
        name = str(response_model.get("title") or "response")
        if response_model.get("type") == "object":
            return ResponseType(response_model, name)
        return ResponseType(_wrapped_schema(response_model), name, wrapped=True)
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(response_model)
        inner = adapter.json_schema()
    except Exception as exc:  # pydantic raises several kinds for a type it cannot take
        raise SchemaError(
            "response_model must be a Pydantic model class, a JSON Schema dict, or a type "
            f"a Pydantic TypeAdapter takes (Literal[...], list[str], int, ...): "
            f"{response_model!r}: {exc}"
        ) from exc
    name = re.sub(r"[^A-Za-z0-9_-]", "_", getattr(response_model, "__name__", "value"))[:64]
    if inner.get("type") == "object":
        return ResponseType(inner, name, adapter=adapter)
    return ResponseType(_wrapped_schema(inner), name, wrapped=True, adapter=adapter)


def unwrap(spec_wrapped: bool, output: Any) -> Any:
    """The producer's value of a stored output: `output["value"]` for a wrapped type."""
    if spec_wrapped and isinstance(output, dict) and "value" in output:
        return output["value"]
    return output


def result_field(wrapped: bool, output: Any) -> str:
    """The run hash's `result` field for an output: the producer's value as JSON (always
    encoded here: the store keeps a plain string as it is, which would not read back)."""
    return json.dumps(unwrap(wrapped, output))


def read_result(response_model: Any, result: Any) -> Any:
    """A successful run's stored result as the producer's type: a model instance for a
    Pydantic class, the type's value for a `TypeAdapter` type, the JSON for a schema."""
    if response_model is None or isinstance(response_model, dict):
        return result
    if isinstance(response_model, type) and issubclass(response_model, BaseModel):
        return response_model.model_validate(result)
    return response_type(response_model).validate(result)


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list | tuple):
        for value in node:
            yield from _walk(value)


@lru_cache(maxsize=256)
def own_validators(model: Any) -> list[str]:
    """The validator functions of a Pydantic model's own (and of the models in its fields),
    or of a type a `TypeAdapter` takes (`list[Annotated[int, AfterValidator(f)]]`):
    `field_validator`, `model_validator`, `AfterValidator`, ... — code that a worker can run
    only if it imports the model (a defined task). The functions Pydantic uses for standard
    types (from pydantic or the standard library) are not counted."""
    response = response_type(model)
    if response.model is not None:
        core = response.model.__pydantic_core_schema__
    elif response.adapter is not None:
        core = response.adapter.core_schema
    else:
        return []
    found = []
    for node in _walk(core):
        if node.get("type") not in _FUNCTION_SCHEMAS:
            continue
        inner = node.get("function")
        function = inner.get("function") if isinstance(inner, dict) else inner
        module = (getattr(function, "__module__", "") or "").split(".")[0]
        if function is not None and module not in _LIBRARY_MODULES:
            found.append(getattr(function, "__qualname__", repr(function)))
    return sorted(set(found))


def refuse_ad_hoc_validators(response_model: Any) -> None:
    """Refuse an ad-hoc Pydantic model (or type) with validators of its own: workers could
    not run them, and a run would end SUCCESSFUL with a result the producer's model rejects."""
    if isinstance(response_model, dict):
        return
    try:
        found = own_validators(response_model)
    except TypeError:  # unhashable: no type, refused as such by `response_type`
        return
    if found:
        name = getattr(response_model, "__name__", repr(response_model))
        raise SchemaError(
            f"response_model {name} has validators of its own "
            f"({', '.join(found)}) that workers cannot run for an ad-hoc task: define() it "
            "in a module the workers import (QUORUM_IMPORTS) and submit it by name"
        )
