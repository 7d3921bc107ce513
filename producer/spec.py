"""The boundary check of an ad-hoc request: every field refused with a message that names the
problem, before anything is written, then turned into a `RunSpec`."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from quorum.shared.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    SchemaError,
)
from quorum.shared.models import RunSpec, ValidationConfig
from quorum.shared.payload import payload_problem
from quorum.shared.prompts import Limits, check_template
from quorum.shared.schemas import schema_problem
from quorum.shared.settings import Settings

__all__ = ["ResponseModel", "build_spec", "template_limits"]

_CONFIG = TypeAdapter(ValidationConfig)
ResponseModel = type[BaseModel] | dict[str, Any]


def _size(what: str, value: Any, limit: int) -> str:
    """`value` as JSON, refused if it is not JSON-serializable or larger than `limit` bytes."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{what} must be JSON-serializable: {exc}") from exc
    if len(text.encode()) > limit:
        raise PayloadTooLargeError(
            f"{what} is {len(text.encode())} bytes, over the limit of {limit} bytes"
        )
    return text


def _clean(what: str, value: Any, settings: Settings) -> None:
    """Refuse `value` if it nests too deeply or holds text that cannot be encoded."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    problem = payload_problem(value, what=what, max_depth=settings.max_nesting_depth)
    if problem is not None:
        raise InvalidRequestError(problem)


def template_limits(settings: Settings) -> Limits:
    """What a template may cost, by the settings."""
    return Limits(max_chars=settings.max_prompt_bytes, timeout_s=settings.template_timeout_s)


def _schema_of(response_model: Any, settings: Settings) -> tuple[dict[str, Any], str]:
    """The JSON Schema and name of a Pydantic model class or a JSON Schema dict."""
    if isinstance(response_model, type) and issubclass(response_model, BaseModel):
        return response_model.model_json_schema(), response_model.__name__
    if not isinstance(response_model, dict):
        raise SchemaError(
            "response_model must be a Pydantic model class or a JSON Schema dict, "
            f"got {response_model!r}"[:300]
        )
    _clean("response_schema", response_model, settings)
    try:
        canonical = json.dumps(response_model, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"response_model must be JSON-serializable: {exc}") from exc
    problem = schema_problem(canonical)
    if problem is not None:
        raise SchemaError(f"response_model is not a valid JSON Schema: {problem}")
    if response_model.get("type") != "object":
        raise SchemaError('response_model JSON Schema must describe an object ("type": "object")')
    return response_model, str(response_model.get("title") or "response")


def _config_of(config: Any) -> Any:
    if config is None:  # no votes: the cheap checks decide alone
        return None
    try:
        return _CONFIG.validate_python(
            config.model_dump() if isinstance(config, BaseModel) else config
        )
    except ValidationError as exc:
        raise InvalidRequestError(f"invalid validation config: {exc}") from exc


def _positive(name: str, value: Any, kind: type) -> Any:
    """`value` if it is None or a positive number of `kind`, else an `InvalidRequestError`."""
    if value is None:
        return None
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if not numeric or (kind is int and not isinstance(value, int)) or not 0 < value < 1e15:
        what = "a positive integer" if kind is int else "a positive number"
        raise InvalidRequestError(f"{name} must be {what}, got {value!r}")
    return value


def build_spec(
    *,
    template: str,
    response_model: ResponseModel,
    kwargs: dict[str, Any] | None,
    config: Any,
    model: str | None,
    validator_model: str | None,
    metadata: dict[str, Any] | None,
    settings: Settings,
    timeout_s: float | None = None,
    max_tokens: int | None = None,
    max_cost: float | None = None,
) -> RunSpec:
    """Validate a request at the boundary and turn it into a run spec.

    Raises an `InvalidRequestError` (a `ValueError`) naming the problem.
    """
    limit = settings.max_payload_bytes
    timeout_s = _positive("timeout_s", timeout_s, float)
    max_tokens = _positive("max_tokens", max_tokens, int)
    max_cost = _positive("max_cost", max_cost, float)
    if not isinstance(template, str) or not template.strip():
        raise InvalidRequestError("template must be a non-empty string")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise InvalidRequestError("kwargs must be a dict with string keys")
    for what, value in (("template", template), ("kwargs", kwargs), ("metadata", metadata)):
        _clean(what, value, settings)
    for what, value in (("model", model), ("validator_model", validator_model)):
        _clean(what, value, settings)
    _clean("config", config, settings)
    _size("template", template, limit)
    _size("kwargs", kwargs, limit)
    _size("metadata", metadata or {}, limit)
    schema, name = _schema_of(response_model, settings)
    _size("response_model schema", schema, limit)
    prompt = check_template(template, kwargs, template_limits(settings))
    if len(prompt.encode()) > settings.max_prompt_bytes:
        raise PayloadTooLargeError(
            f"the rendered prompt is {len(prompt.encode())} bytes, over the limit of "
            f"{settings.max_prompt_bytes} bytes"
        )
    task_model = model or settings.model
    return RunSpec(
        template=template,
        kwargs=kwargs,
        response_schema=schema,
        response_name="".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64],
        config=_config_of(config),
        model=task_model,
        validator_model=validator_model or settings.validator_model or task_model,
        metadata=metadata or {},
        timeout_s=timeout_s or settings.run_timeout_s,
        max_tokens=max_tokens,
        max_cost=max_cost,
    )
