"""From a request to a run spec: a defined task by name, or an ad-hoc task.

Every door ends here: `TaskClient.submit` (Python), `POST /v1/runs` (HTTP), `quorum submit`
(CLI) and the raw Celery job `quorum.submit`, whose JSON body is the HTTP one
(`SubmitRequest`). A defined task comes from this process's own definitions (a module it
imported) or else from the registry the workers publish; an unknown name or a missing
template variable is refused with an `InvalidRequestError` before anything is written.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quorum.producer.spec import build_spec
from quorum.shared.definitions import defined, expression_checks, unknown_task
from quorum.shared.errors import InvalidRequestError
from quorum.shared.models import RunSpec
from quorum.shared.options import llm_options
from quorum.shared.payload import payload_problem
from quorum.shared.responses import refuse_ad_hoc_validators, response_type
from quorum.shared.webhooks import check_callback_url

if TYPE_CHECKING:
    from quorum.producer.client import TaskClient, TaskRun

__all__ = [
    "SUBMIT_DEFAULTS",
    "Prepared",
    "SubmitRequest",
    "prepare",
    "prepare_batch",
    "prepare_spec",
    "submit_request",
]

SUBMIT_DEFAULTS: dict[str, Any] = {
    "task": None,
    "template": None,
    "response_model": None,
    "kwargs": None,
    "config": None,
    "checks": (),
    "model": None,
    "validator_model": None,
    "temperature": None,
    "max_output_tokens": None,
    "system": None,
    "metadata": None,
    "timeout_s": None,
    "max_tokens": None,
    "max_cost": None,
}
"""`submit`'s arguments but the idempotency key and the callback URL, with their defaults."""


class Prepared(NamedTuple):
    """A request checked and made a spec; nothing written yet."""

    run_id: str
    spec: RunSpec
    idempotency_key: str | None
    reader: Any
    """The type the run's result is read as (None: as JSON)."""


def prepare(
    client: TaskClient,
    *,
    idempotency_key: str | None = None,
    callback_url: str | None = None,
    **request: Any,
) -> Prepared:
    """A request (`TaskClient.submit`'s arguments, any left out taking their defaults)
    checked and made a spec (`prepare_spec`), with a new run id; nothing written."""
    if idempotency_key is not None and not (
        isinstance(idempotency_key, str) and 0 < len(idempotency_key) <= 256
    ):
        raise InvalidRequestError("idempotency_key must be a string of 1 to 256 characters")
    unknown = sorted(set(request) - set(SUBMIT_DEFAULTS))
    if unknown:
        raise InvalidRequestError(f"unknown argument(s): {', '.join(unknown)}")
    request = {**SUBMIT_DEFAULTS, **request}
    extra = (("idempotency_key", idempotency_key), ("callback_url", callback_url))
    for name, value in (*request.items(), *extra):
        if name != "response_model" or isinstance(value, dict):
            value = value.model_dump() if isinstance(value, BaseModel) else value
            depth = client.settings.max_nesting_depth
            problem = payload_problem(value, what=name, max_depth=depth)
            if problem is not None:
                raise InvalidRequestError(problem)
    spec, reader = prepare_spec(client, request)
    if callback_url is not None:
        url = check_callback_url(callback_url, client.settings.webhook_allowed_hosts)
        spec = spec.model_copy(update={"callback_url": url})
    return Prepared(uuid.uuid4().hex, spec, idempotency_key, reader)


def prepare_batch(client: TaskClient, requests: Any) -> list[Prepared]:
    """Every request of a batch prepared, all or nothing: the first bad one raises an
    `InvalidRequestError` whose message starts with its index (`runs[3]: ...`)."""
    if not isinstance(requests, Sequence) or isinstance(requests, str | bytes):
        raise InvalidRequestError("submit_many takes a list of requests")
    most = client.settings.max_batch
    if not 0 < len(requests) <= most:
        raise InvalidRequestError(f"a batch holds 1 to {most} runs, got {len(requests)}")
    prepared = []
    for i, request in enumerate(requests):
        try:
            if not isinstance(request, dict):
                raise InvalidRequestError("each request must be a dict of submit's arguments")
            prepared.append(prepare(client, **request))
        except InvalidRequestError as exc:
            raise type(exc)(f"runs[{i}]: {exc}") from exc
    return prepared


class SubmitRequest(BaseModel):
    """One run, as JSON: a defined task by name (`task`, `kwargs`) or an ad-hoc task
    (`template`, `response_schema`, `config`), plus the options of every door."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(None, description="A defined task's name (GET /v1/tasks).")
    template: str | None = Field(None, description="Jinja template of the prompt (ad hoc).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Template variables.")
    response_schema: dict[str, Any] | None = Field(
        None, description='JSON Schema of the output (ad hoc); a non-object one is {"value": …}.'
    )
    config: dict[str, Any] | None = Field(
        None, description="Validation config (ad hoc); null: no votes, the checks decide."
    )
    checks: list[dict[str, Any]] = Field(
        default_factory=list, description='Expression checks (ad hoc): [{"expr", "message"}].'
    )
    model: str | None = None
    validator_model: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    system: str | None = None
    idempotency_key: str | None = None
    metadata: dict[str, Any] | None = None
    timeout_s: float | None = None
    max_tokens: int | None = None
    max_cost: float | None = None
    callback_url: str | None = Field(
        None, description="Where the run's final view is POSTed, signed, when it ends."
    )


def submit_request(client: TaskClient, body: Any) -> TaskRun:
    """Submit a JSON request (a `SubmitRequest` as a dict); `InvalidRequestError` naming
    the problem, nothing written, if it is refused."""
    if not isinstance(body, Mapping):
        raise InvalidRequestError(f"a run request must be a JSON object, got {type(body).__name__}")
    try:
        request = SubmitRequest.model_validate(dict(body))
    except ValidationError as exc:
        parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise InvalidRequestError("invalid run request: " + "; ".join(parts)) from exc
    fields = request.model_dump(exclude={"response_schema"})
    if request.response_schema is not None:
        fields["response_model"] = request.response_schema
    return client.submit(**fields)


def _published(client: TaskClient, task: Any) -> tuple[dict[str, Any], Any]:
    """A task's published definition and, if this process defined it, its response model."""
    if not isinstance(task, str):
        raise InvalidRequestError(f"task must be a task name, got {task!r}")
    local = defined(task)
    if local is not None:
        return local.published(), local.response_model
    published = client.registry.get(task)
    if published is None:
        raise unknown_task(task, client.registry.all())
    return published, None


def _defined_spec(client: TaskClient, task: Any, request: dict[str, Any]) -> tuple[RunSpec, Any]:
    published, reader = _published(client, task)
    kwargs = request["kwargs"] if request["kwargs"] is not None else {}
    if isinstance(kwargs, dict):
        missing = sorted(set(published["variables"]) - set(kwargs))
        if missing:
            raise InvalidRequestError(f"task {task!r}: kwargs missing: {', '.join(missing)}")
    options = llm_options(
        temperature=_given(request["temperature"], published["temperature"]),
        max_output_tokens=_given(request["max_output_tokens"], published["max_output_tokens"]),
        system=_given(request["system"], published["system"]),
    )
    spec = build_spec(
        template=published["template"],
        response_model=published["response_schema"],
        kwargs=kwargs,
        config=published["config"],
        model=request["model"] or published["model"],
        validator_model=request["validator_model"] or published["validator_model"],
        metadata=request["metadata"],
        settings=client.settings,
        timeout_s=request["timeout_s"],
        max_tokens=request["max_tokens"],
        max_cost=request["max_cost"],
    )
    update = {
        "task": task,
        "task_hash": published["hash"],
        "wrapped": published["wrapped"],
        "response_name": published["response_name"],
        "checks": expression_checks(published["checks"]),
        **options,
    }
    return spec.model_copy(update=update), reader


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def prepare_spec(client: TaskClient, request: dict[str, Any]) -> tuple[RunSpec, Any]:
    """The run spec of a request (`TaskClient.submit`'s arguments), and the response model
    its result is read with (None: as JSON)."""
    task = request.pop("task")
    ad_hoc = ("template", "response_model", "config", "checks")
    if task is not None:
        given = [name for name in ad_hoc if request[name] not in (None, (), [])]
        if given:
            raise InvalidRequestError(
                f"a defined task is submitted by name and kwargs only; drop {', '.join(given)}"
            )
        return _defined_spec(client, task, request)
    if request["template"] is None or request["response_model"] is None:
        raise InvalidRequestError(
            "give a defined task's name (task), or a template and a response_model "
            "(response_schema over HTTP)"
        )
    response_model = request["response_model"]
    refuse_ad_hoc_validators(response_model)
    response = response_type(response_model)
    plain = isinstance(response_model, dict) or response.model is not None
    options = llm_options(
        temperature=request["temperature"],
        max_output_tokens=request["max_output_tokens"],
        system=request["system"],
    )
    spec = build_spec(
        template=request["template"],
        response_model=response_model if plain and not response.wrapped else response.schema,
        kwargs=request["kwargs"],
        config=request["config"],
        model=request["model"],
        validator_model=request["validator_model"],
        metadata=request["metadata"],
        settings=client.settings,
        timeout_s=request["timeout_s"],
        max_tokens=request["max_tokens"],
        max_cost=request["max_cost"],
    )
    update: dict[str, Any] = {
        "wrapped": response.wrapped,
        "checks": expression_checks(request["checks"]),
        **options,
    }
    if not plain or response.wrapped:
        update["response_name"] = re.sub(r"[^A-Za-z0-9_-]", "_", response.name)[:64]
    return spec.model_copy(update=update), response_model
