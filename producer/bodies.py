"""The HTTP API's bodies: the run request, the answers, the error shape, and what the
OpenAPI document says about them beyond their fields (which request fields go together, the
errors every route may answer, the links from a created run)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from quorum.shared.models import TaskStatus, Usage, ValidationConfig

__all__ = [
    "ERRORS",
    "LINKS",
    "Cancelled",
    "ErrorBody",
    "Health",
    "RunCreated",
    "RunRequest",
    "RunView",
]


_BY_NAME: dict[str, Any] = {
    "title": "a defined task",
    "required": ["task"],
    "properties": {"task": {"type": "string"}},
    "not": {
        "anyOf": [
            {"required": [name]} for name in ("template", "response_schema", "config", "checks")
        ]
    },
}
_AD_HOC: dict[str, Any] = {
    "title": "an ad-hoc task",
    "required": ["template", "response_schema"],
    "properties": {
        "task": {"type": "null"},
        "template": {"type": "string"},
        "response_schema": {"type": "object"},
    },
}


class RunRequest(BaseModel):  # type: ignore[no-redef]  # the mypy plugin clashes with **kwargs
    """A task to run: a defined task by name (`task`, `kwargs`), or a template, its
    variables, a JSON Schema for the output and a config."""

    # The document says which fields go together, so that clients (and fuzzers) can tell.
    model_config = ConfigDict(json_schema_extra={"oneOf": [_BY_NAME, _AD_HOC]})

    task: str | None = Field(None, description="A defined task's name (GET /v1/tasks).")
    template: str | None = Field(
        None,
        min_length=1,
        pattern=r"\S",
        description="Jinja template of the prompt (sandboxed).",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Template variables.")
    response_schema: dict[str, Any] | None = Field(
        None,
        description="JSON Schema of the output, self-contained (only local '#…' references), "
        'its patterns in RE2 syntax; one that is no object goes as {"value": …}.',
    )
    config: ValidationConfig | None = Field(
        None,
        description="Validation config, by `mode`: single_shot, threshold or k_ahead; null: "
        "no votes, the cheap checks decide.",
        examples=[{"mode": "threshold", "issues": ["The quantity is a number"], "count": 3}],
    )
    model: str | None = Field(None, description="Task model (default: the workers' default).")
    validator_model: str | None = Field(None, description="Validator model for the votes.")
    checks: list[dict[str, Any]] = Field(
        default_factory=list,
        description='Cheap checks before any vote: [{"expr": Jinja expression over output '
        'and kwargs, "message": feedback when false}].',
    )
    temperature: float | None = Field(None, description="Temperature of the task calls.")
    max_output_tokens: int | None = Field(
        None, description="Output-token cap of the task calls; a cut-off output is invalid."
    )
    system: str | None = Field(None, description="System prompt prepended to the task calls.")
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="The same key returns the first run instead of running again.",
    )
    metadata: dict[str, Any] | None = Field(None, description="Kept with the run, unused.")
    timeout_s: float | None = Field(
        None,
        gt=0,
        lt=1e15,
        description="Deadline in seconds; past it the run ends FAILED (code timeout).",
    )
    max_tokens: int | None = Field(
        None, gt=0, lt=10**15, description="Token budget of the whole run."
    )
    max_cost: float | None = Field(
        None, gt=0, lt=1e15, description="Cost budget in USD (by the workers' price table)."
    )
    callback_url: str | None = Field(
        None,
        max_length=2048,
        description="When the run ends, its final view is POSTed here, signed "
        "(Quorum-Signature); the host must be in QUORUM_WEBHOOK_ALLOWED_HOSTS.",
    )


class RunCreated(BaseModel):
    """A run accepted for execution."""

    id: str
    status: TaskStatus


class RunView(BaseModel):
    """A run as it stands."""

    id: str
    status: TaskStatus
    attempt: int
    result: Any = None
    error: str = ""
    code: str = Field("", description="Why it failed: validation_failed, timeout, budget_exceeded…")
    reasons: list[str] = Field(default_factory=list)
    last_output: Any = None
    usage: Usage
    created_at: float
    updated_at: float


class Cancelled(BaseModel):
    """The outcome of a cancel request."""

    id: str
    cancelled: bool = Field(description="False when the run had already ended.")
    status: TaskStatus


class Health(BaseModel):
    """Whether the API reaches its Redis store."""

    status: str = Field(description="ok, or unavailable")
    detail: str | None = Field(None, description="Why it is unavailable.")


class ErrorBody(BaseModel):
    """An error: what was wrong, in one message."""

    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body cannot be read (not UTF-8 text)."},
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
    404: {"model": ErrorBody, "description": "No such run (unknown id, or expired)."},
    413: {"model": ErrorBody, "description": "Request body over QUORUM_MAX_REQUEST_BYTES."},
    422: {
        "model": ErrorBody,
        "description": "Invalid request, nothing written or sent; or a stored run that "
        "cannot be read back.",
    },
    503: {"model": ErrorBody, "description": "The Redis store cannot be reached."},
}
RUN_ID = "$response.body#/id"
LINKS = {
    name: {"operationId": operation, "parameters": {"run_id": RUN_ID}}
    for name, operation in (
        ("GetRun", "get_run"),
        ("GetResult", "get_result"),
        ("GetEvents", "get_events"),
        ("Cancel", "cancel_run"),
    )
}
"""OpenAPI links from a created run to what can be done with it (clients and fuzzers
follow them)."""
