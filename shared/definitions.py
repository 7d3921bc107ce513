"""Defined tasks: a template, a response type, a config and its checks, named once.

    extract_purchase = define("extract_purchase", template=..., response_model=Purchase,
                              config=None, validators=[...], checks=[...])
    run = extract_purchase.submit(client, message="I want 5 apples")

A definition lives where Celery keeps code: in a module that the workers import
(`QUORUM_IMPORTS`) and Python producers may import too. So the Pydantic model's own
validators and the `validators` functions are real code on the worker that runs the cheap
checks (`shared/checks.py`). Workers publish what other producers need to submit by name
(`published()`) to the registry (`shared/registry.py`).

Response types: a Pydantic model class, a JSON Schema, or any type a Pydantic `TypeAdapter`
takes (`Literal[...]`, `list[str]`, `int`, `bool`, ...). A type whose schema is not an object
goes to the LLM wrapped as `{"value": ...}` (`ResponseType.wrapped`) and comes back unwrapped.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, overload

from jinja2 import TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, TypeAdapter, ValidationError

from quorum.shared.errors import InvalidRequestError, SchemaError, TemplateError, UnknownTaskError
from quorum.shared.models import ExpressionCheck, ValidationConfig

if TYPE_CHECKING:
    from quorum.producer.async_client import AsyncTaskClient, AsyncTaskRun
    from quorum.producer.client import TaskClient, TaskRun

__all__ = [
    "ResponseType",
    "TaskDefinition",
    "define",
    "defined",
    "definitions",
    "own_validators",
    "read_result",
    "response_type",
    "result_field",
    "unwrap",
]

_CONFIG: TypeAdapter[Any] = TypeAdapter(ValidationConfig | None)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")
_ENV = SandboxedEnvironment()
_FUNCTION_SCHEMAS = frozenset(
    {"function-after", "function-before", "function-wrap", "function-plain"}
)

_LIBRARY_MODULES = frozenset({"pydantic", "pydantic_core", *sys.stdlib_module_names})
"""Where the validator functions Pydantic builds for standard types come from."""

Validator = Callable[[Any], Any]
"""A Python check: rejects the parsed output by raising `ValueError` / `AssertionError`;
a value it returns (not None) replaces the output."""


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


def template_variables(template: str) -> frozenset[str]:
    """The variables a template needs; `TemplateError` if it does not parse."""
    try:
        return frozenset(meta.find_undeclared_variables(_ENV.parse(template)))
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc


def _source(code: Any) -> str:
    """The source of a function or class, for the content hash (its name if none)."""
    try:
        return inspect.getsource(code)
    except (OSError, TypeError):
        return f"{getattr(code, '__module__', '')}.{getattr(code, '__qualname__', repr(code))}"


def expression_checks(checks: Iterable[Any]) -> tuple[ExpressionCheck, ...]:
    """Checks (dicts or `ExpressionCheck`) validated, each expression compiled in the
    sandbox; an `InvalidRequestError` naming the bad one."""
    from quorum.shared.checks import compile_check  # checks import this module

    if isinstance(checks, str | bytes | Mapping):
        raise InvalidRequestError('checks must be a list of {"expr": ..., "message": ...}')
    checks = list(checks)
    if len(checks) > MAX_CHECKS:
        raise InvalidRequestError(f"at most {MAX_CHECKS} checks, got {len(checks)}")
    parsed = []
    for number, check in enumerate(checks, 1):
        try:
            one = ExpressionCheck.model_validate(
                check.model_dump() if isinstance(check, BaseModel) else check
            )
        except ValidationError as exc:
            raise InvalidRequestError(f"check {number} is invalid: {exc}") from exc
        compile_check(one.expr)
        parsed.append(one)
    return tuple(parsed)


@dataclass(frozen=True, eq=False)
class TaskDefinition:
    """A defined task: what `define()` returns. Submit it with `.submit(client, **kwargs)`."""

    name: str
    template: str
    response_model: Any
    config: Any = None
    validators: tuple[Validator, ...] = ()
    checks: tuple[ExpressionCheck, ...] = ()
    model: str | None = None
    validator_model: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    system: str | None = None
    response: ResponseType = field(init=False)
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "response", response_type(self.response_model))
        code = [_source(v) for v in self.validators]
        if self.response.model is not None:
            code.append(_source(self.response.model))
        content = json.dumps({**self._content(), "code": code}, sort_keys=True)
        object.__setattr__(self, "hash", hashlib.sha256(content.encode()).hexdigest()[:16])

    def _content(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "template": self.template,
            "response_schema": self.response.schema,
            "response_name": self.response.name,
            "wrapped": self.response.wrapped,
            "config": None if self.config is None else self.config.model_dump(mode="json"),
            "checks": [c.model_dump() for c in self.checks],
            "model": self.model,
            "validator_model": self.validator_model,
            "temperature": self.temperature,
            "max_output_tokens": self.max_output_tokens,
            "system": self.system,
        }

    def published(self) -> dict[str, Any]:
        """What the registry holds: everything a producer without the code needs to submit
        by name, the content hash, and the template's variables."""
        return {
            **self._content(),
            "hash": self.hash,
            "variables": sorted(template_variables(self.template)),
            "validators": [getattr(v, "__qualname__", repr(v)) for v in self.validators],
        }

    @overload
    def submit(self, client: TaskClient, /, **kwargs: Any) -> TaskRun: ...

    @overload
    def submit(
        self, client: AsyncTaskClient, /, **kwargs: Any
    ) -> Coroutine[Any, Any, AsyncTaskRun]: ...

    def submit(self, client: Any, /, **kwargs: Any) -> Any:
        """Submit this task with its template variables: `client.submit(task=name,
        kwargs=kwargs)` (with an `AsyncTaskClient`, await it)."""
        return client.submit(task=self.name, kwargs=kwargs)


MAX_CHECKS = 100
"""The most expression checks one task may have."""

_DEFINED: dict[str, TaskDefinition] = {}
"""This process's definitions by name, as its imported modules made them."""


def define(
    name: str,
    *,
    template: str,
    response_model: Any,
    config: Any = None,
    validators: Sequence[Validator] = (),
    checks: Iterable[Any] = (),
    model: str | None = None,
    validator_model: str | None = None,
    temperature: float | None = None,
    max_output_tokens: int | None = None,
    system: str | None = None,
) -> TaskDefinition:
    """Define a task once, under a unique `name`, in a module the workers import
    (`QUORUM_IMPORTS`).

    `response_model`: a Pydantic model (its own validators run on the workers), a JSON
    Schema, or a type a `TypeAdapter` takes. `config`: a validation config, or None for a
    vote-free task (the cheap checks decide alone; up to 3 retries). `validators`: functions
    of the parsed output that raise `ValueError` / `AssertionError` to reject it (a value
    returned replaces it). `checks`: `{"expr": <Jinja expression over output and kwargs>,
    "message": <feedback>}`. `temperature`, `max_output_tokens`, `system`: the task calls'.

    Raises an `InvalidRequestError` (a `ValueError`) naming the problem; the same name
    defined again with other content is one.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequestError(
            f"task name must be 1 to 128 letters, digits or _.:- (not first), got {name!r}"
        )
    if not isinstance(template, str) or not template.strip():
        raise InvalidRequestError("template must be a non-empty string")
    template_variables(template)
    if not all(callable(v) for v in validators):
        raise InvalidRequestError("validators must be functions of the parsed output")
    try:
        parsed_config = _CONFIG.validate_python(
            config.model_dump() if isinstance(config, BaseModel) else config
        )
    except ValidationError as exc:
        raise InvalidRequestError(f"invalid validation config: {exc}") from exc
    from quorum.shared.options import llm_options  # options import the models only

    llm_options(temperature=temperature, max_output_tokens=max_output_tokens, system=system)
    definition = TaskDefinition(
        name=name,
        template=template,
        response_model=response_model,
        config=parsed_config,
        validators=tuple(validators),
        checks=expression_checks(checks),
        model=model,
        validator_model=validator_model,
        temperature=temperature,
        max_output_tokens=max_output_tokens,
        system=system,
    )
    earlier = _DEFINED.get(name)
    if earlier is not None and earlier.hash != definition.hash:
        raise InvalidRequestError(f"task {name!r} is already defined with other content")
    _DEFINED[name] = definition
    return definition


def defined(name: str) -> TaskDefinition | None:
    """This process's definition of `name`, if a module it imported defined it."""
    return _DEFINED.get(name)


def definitions() -> list[TaskDefinition]:
    """Every task this process defined, by name."""
    return [_DEFINED[name] for name in sorted(_DEFINED)]


def unknown_task(name: str, known: Iterable[str]) -> UnknownTaskError:
    """The error for a name neither this process nor the registry defines."""
    known = sorted(known)
    names = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
    names = names or "none"
    return UnknownTaskError(
        f"unknown task {name!r}: no worker has published it and this process did not define "
        f"it (known tasks: {names})"
    )
