"""Defined tasks: a template, a response type, a config and its checks, named once.

    extract_purchase = define("extract_purchase", template=..., response_model=Purchase,
                              config=None, validators=[...], checks=[...])
    run = extract_purchase.submit(client, message="I want 5 apples")

A definition lives where Celery keeps code: in a module that the workers import
(`QUORUM_IMPORTS`) and Python producers may import too. So the Pydantic model's own
validators and the `validators` functions are real code on the worker that runs the cheap
checks (`shared/checks.py`). Workers publish what other producers need to submit by name
(`published()`) to the registry (`shared/registry.py`). Response types are in
`shared/responses.py`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

from pydantic import BaseModel, TypeAdapter, ValidationError

from quorum.shared.errors import InvalidRequestError, UnknownTaskError
from quorum.shared.models import ExpressionCheck, ValidationConfig
from quorum.shared.prompts import template_variables
from quorum.shared.responses import ResponseType, response_type
from quorum.shared.sandbox import one_clock

if TYPE_CHECKING:
    from quorum.producer.async_client import AsyncTaskClient, AsyncTaskRun
    from quorum.producer.client import TaskClient, TaskRun

__all__ = [
    "TaskDefinition",
    "define",
    "defined",
    "definitions",
    "expression_checks",
    "unknown_task",
]

_CONFIG: TypeAdapter[Any] = TypeAdapter(ValidationConfig | None)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")

Validator = Callable[[Any], Any]
"""A Python check: rejects the parsed output by raising `ValueError` / `AssertionError`;
a value it returns (not None) replaces the output."""


def _source(code: Any) -> str:
    """The source of a function or class, for the content hash (its name if none)."""
    try:
        return inspect.getsource(code)
    except (OSError, TypeError):
        return f"{getattr(code, '__module__', '')}.{getattr(code, '__qualname__', repr(code))}"


def expression_checks(checks: Iterable[Any]) -> tuple[ExpressionCheck, ...]:
    """Checks (dicts or `ExpressionCheck`) validated, each expression compiled in the
    sandbox; an `InvalidRequestError` naming the bad one."""
    from quorum.shared.checks import CHECK_LIMITS, compile_check  # checks import this module

    if isinstance(checks, str | bytes | Mapping):
        raise InvalidRequestError('checks must be a list of {"expr": ..., "message": ...}')
    checks = list(checks)
    if len(checks) > MAX_CHECKS:
        raise InvalidRequestError(f"at most {MAX_CHECKS} checks, got {len(checks)}")
    parsed = []
    with one_clock(CHECK_LIMITS):  # all of them in one limit's time
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
