"""The HTTP API: submit runs, follow them, wait for their results, cancel them (FastAPI).

For producers in other languages; the response model is a JSON Schema. It is a thin layer over
`TaskClient`: the same validation (`build_spec`), the same store. Start it with `quorum api`.

    POST /v1/runs                   submit → 201 {id, status}; bad input → 422 {detail}
    GET  /v1/runs/{id}              status, attempt, result, error, reasons, usage
    GET  /v1/runs/{id}/events       provenance, oldest first; with `Accept: text/event-stream`,
                                    Server-Sent Events as they happen (`quorum.producer.sse`)
    GET  /v1/runs/{id}/result       wait up to ?timeout= s: 200 result, 409 failed or
                                    cancelled (with reasons), 202 not ended yet (ask again)
    POST /v1/runs/{id}/cancel       → {id, cancelled, status}
    GET  /v1/tasks                  the defined tasks the workers published, with their schemas
    GET  /v1/runs, POST /v1/batches listing and batch submits (`quorum.producer.doors`)
    POST /v1/workflows, GET /v1/workflows/{id}, GET /v1/workflows/{id}/events,
    POST /v1/workflows/{id}/cancel  workflows (`quorum.producer.workflow_api`)
    GET  /metrics                   run-level Prometheus metrics (`quorum.producer.metrics`)
    GET  /healthz                   200 when Redis answers, else 503; never needs the token
    GET  /ui                        the dashboard (`quorum.producer.dashboard`): runs, votes

With `QUORUM_API_TOKEN` set, every route but /healthz (the OpenAPI document included) requires
`Authorization: Bearer <token>`, and the interactive docs pages are off. The token, and the
body's size (`QUORUM_MAX_REQUEST_BYTES`, 413 past it), are checked before a body is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from quorum.producer import sse
from quorum.producer.bodies import (
    ERRORS,
    LINKS,
    Cancelled,
    Health,
    RunCreated,
    RunRequest,
    RunView,
)
from quorum.producer.client import TaskClient
from quorum.producer.dashboard import dashboard
from quorum.producer.guard import Guard
from quorum.producer.metrics import RunMetrics, TaskMetrics
from quorum.producer.workflow_api import router as workflow_routes
from quorum.shared.errors import (
    InvalidRequestError,
    RunNotFoundError,
    RunUnreadableError,
    StoreError,
)
from quorum.shared.live import EventHub, stream_id
from quorum.shared.models import ProvenanceEvent, TaskStatus
from quorum.shared.registry import PublishedTask
from quorum.shared.settings import Settings, get_settings

__all__ = ["create_app"]

MAX_WAIT_S = 300.0


def _tasks(request: Request) -> TaskClient:
    """The application's client."""
    client: TaskClient = request.app.state.client
    return client


Tasks = Annotated[TaskClient, Depends(_tasks)]
_BEARER = HTTPBearer(auto_error=False, description="QUORUM_API_TOKEN")


def _authorized(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> None:
    """Refuse the request unless it carries the configured bearer token (if one is set)."""
    token: str | None = request.app.state.token
    if token is None:
        return
    given = credentials.credentials if credentials else ""
    if not secrets.compare_digest(given.encode(), token.encode()):
        raise _Unauthorized


runs = APIRouter(prefix="/v1/runs", tags=["runs"], dependencies=[Depends(_authorized)])
ops = APIRouter(tags=["ops"])
tasks_router = APIRouter(prefix="/v1/tasks", tags=["tasks"], dependencies=[Depends(_authorized)])


def submit_arguments(request: RunRequest) -> dict[str, Any]:
    """`TaskClient.submit`'s arguments for a request (its JSON Schema is `response_model`)."""
    arguments = request.model_dump()
    arguments["response_model"] = arguments.pop("response_schema")
    return arguments


@runs.post(
    "",
    status_code=201,
    operation_id="submit_run",
    responses={201: {"description": "The run, accepted.", "links": LINKS}},
)
def submit(request: RunRequest, tasks: Tasks) -> RunCreated:
    """Validate and enqueue a task. Bad input: 422, and nothing is written or sent."""
    run = tasks.submit(
        task=request.task,
        template=request.template,
        response_model=request.response_schema,
        kwargs=request.kwargs,
        config=request.config,
        checks=request.checks,
        model=request.model,
        validator_model=request.validator_model,
        temperature=request.temperature,
        max_output_tokens=request.max_output_tokens,
        system=request.system,
        idempotency_key=request.idempotency_key,
        metadata=request.metadata,
        timeout_s=request.timeout_s,
        max_tokens=request.max_tokens,
        max_cost=request.max_cost,
        callback_url=request.callback_url,
    )
    return RunCreated(id=run.id, status=run.status())


@runs.get("/{run_id}", operation_id="get_run")
def get_run(run_id: str, tasks: Tasks) -> RunView:
    """The run's status, attempt, result, error, failure reasons and token usage."""
    return _view(tasks, run_id)


@runs.get(
    "/{run_id}/events",
    operation_id="get_events",
    response_model=list[ProvenanceEvent],
    responses={
        200: {
            "content": {sse.MEDIA_TYPE: {"schema": {"type": "string"}}},
            "description": "The events, oldest first; as Server-Sent Events when asked for "
            "`text/event-stream`: `id:` the stream id, `event:` the type, `data:` the event.",
        }
    },
)
def get_events(
    run_id: str,
    request: Request,
    tasks: Tasks,
    last_event_id: Annotated[
        str | None, Header(description="SSE: resume after this event id.")
    ] = None,
) -> Any:
    """The run's provenance: attempts, outputs, votes, decisions, with workers and usage;
    each event's `id` is its stream id (`Last-Event-ID` resumes a live stream after it).

    With `Accept: text/event-stream`, Server-Sent Events instead: each event as it happens,
    from the first (or after `Last-Event-ID`), until the terminal one; then the stream ends.
    """
    run = tasks.get(run_id)
    if sse.wants_events(request.headers.get("accept")):
        return sse.event_stream(
            request.app.state.hub,
            request.app.state.hub.run_stream(run_id),
            after=stream_id(last_event_id),
            heartbeat_s=tasks.settings.sse_heartbeat_s,
        )
    entries = tasks.store.event_entries(run.id)
    return [
        ProvenanceEvent.model_validate({"id": entry_id, **event.model_dump(mode="json")})
        for entry_id, event in entries
    ]


@runs.get(
    "/{run_id}/result",
    operation_id="get_result",
    responses={
        202: {"model": RunView, "description": "Not ended within `timeout`; ask again."},
        409: {"model": RunView, "description": "Ended FAILED or CANCELLED: see reasons."},
    },
)
async def get_result(
    run_id: str,
    response: Response,
    tasks: Tasks,
    timeout: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait.")] = 30.0,
) -> RunView:
    """Wait for the run to end (blocking on its done list, without polling).

    200: SUCCESSFUL, with the result. 409: FAILED or CANCELLED, with the error and every
    failure reason. 202: not ended within `timeout` seconds; ask again.
    """
    await asyncio.to_thread(tasks.store.status, run_id)  # 404 at once for an unknown id
    await tasks.store.wait_async(run_id, timeout_s=timeout)
    view = await asyncio.to_thread(_view, tasks, run_id)
    if not view.status.terminal:
        response.status_code = 202
    elif view.status is not TaskStatus.SUCCESSFUL:
        response.status_code = 409
    return view


@runs.post("/{run_id}/cancel", operation_id="cancel_run")
def cancel(run_id: str, tasks: Tasks) -> Cancelled:
    """End the run CANCELLED; no LLM call starts after this. Idempotent."""
    run = tasks.get(run_id)
    cancelled = run.cancel()
    return Cancelled(id=run_id, cancelled=cancelled, status=run.status())


@tasks_router.get("")
def list_tasks(tasks: Tasks) -> dict[str, PublishedTask]:
    """The defined tasks the workers published, by name: template, response JSON Schema,
    config, checks, template variables, content hash."""
    return {name: PublishedTask.model_validate(task) for name, task in tasks.tasks().items()}


@ops.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Redis does not answer."}},
)
def healthz(tasks: Tasks) -> JSONResponse:
    """200 when the Redis store answers, 503 otherwise (never needs the token)."""
    try:
        tasks.store.redis.ping()
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
    return JSONResponse({"status": "ok"})


@ops.get(
    "/metrics",
    dependencies=[Depends(_authorized)],
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format.",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        }
    },
)
def metrics(request: Request) -> Response:
    """Run-level metrics in the Prometheus text format."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


@ops.get("/openapi.json", include_in_schema=False, dependencies=[Depends(_authorized)])
def openapi(request: Request) -> dict[str, Any]:
    """The OpenAPI document."""
    return request.app.openapi()


@ops.get("/docs", include_in_schema=False)
def docs(request: Request) -> Response:
    """Swagger UI, when no token is set (it could not fetch the document otherwise)."""
    if request.app.state.token is not None:
        return _detail(404, "the docs pages are off while QUORUM_API_TOKEN is set")
    return get_swagger_ui_html(openapi_url="/openapi.json", title="Quorum API")


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Close the event hub's connections when the server stops."""
    yield
    await app.state.hub.close()


def create_app(settings: Settings, *, client: TaskClient | None = None) -> FastAPI:
    """The API application on the configured Redis and broker."""
    app = FastAPI(
        title="Quorum",
        version="1",
        description=__doc__ or "",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        responses=ERRORS,
        lifespan=_lifespan,
    )
    app.state.token = settings.api_token.get_secret_value() if settings.api_token else None
    app.state.client = client or TaskClient(settings=settings)
    store = app.state.client.store
    app.state.hub = EventHub(store.url, keys=store.keys, options=store.asyncio_options)
    app.state.registry = CollectorRegistry(auto_describe=False)
    app.state.registry.register(
        RunMetrics(
            app.state.client.store,
            window_s=settings.metrics_window_s,
            max_runs=settings.metrics_max_runs,
        )
    )
    app.state.registry.register(TaskMetrics(app.state.client.registry))
    from quorum.producer.doors import doors  # its routes use this module's models

    app.include_router(runs)
    app.include_router(doors, dependencies=[Depends(_authorized)])
    app.include_router(tasks_router)
    app.include_router(workflow_routes, dependencies=[Depends(_authorized)])
    app.include_router(ops)
    app.include_router(dashboard)
    _errors(app)
    app.add_middleware(Guard, token=app.state.token, max_bytes=settings.max_request_bytes)
    return app


class _Unauthorized(Exception):
    """A request without the right bearer token."""


def _view(tasks: TaskClient, run_id: str) -> RunView:
    state = tasks.get(run_id).state()
    return RunView(
        id=run_id,
        status=state.status,
        attempt=state.attempt,
        result=state.result,
        error=state.error,
        code=state.code,
        reasons=state.reasons,
        last_output=state.last_output,
        usage=state.usage,
        created_at=state.created_at,
        updated_at=state.updated_at,
    )


def _detail(status: int, detail: str, **headers: str) -> JSONResponse:
    # A message may quote the request, and a lone surrogate in it would not encode.
    text = detail.encode(errors="backslashreplace").decode()
    return JSONResponse({"detail": text}, status_code=status, headers=headers or None)


def _errors(app: FastAPI) -> None:
    """Our errors as HTTP answers: one JSON shape, `{"detail": "..."}`."""

    @app.exception_handler(_Unauthorized)
    async def unauthorized(_: Request, __: Exception) -> JSONResponse:
        return _detail(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RunNotFoundError)
    async def not_found(_: Request, exc: Exception) -> JSONResponse:
        return _detail(404, str(exc))

    @app.exception_handler(RunUnreadableError)
    async def unreadable(_: Request, exc: Exception) -> JSONResponse:
        return _detail(422, str(exc))

    @app.exception_handler(InvalidRequestError)
    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        return _detail(422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, exc: Exception) -> JSONResponse:
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors]
        return _detail(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StoreError)
    async def store_down(_: Request, exc: Exception) -> JSONResponse:
        return _detail(503, str(exc), **{"Retry-After": "1"})


def main_app() -> FastAPI:
    """The application for the process's settings
    (`uvicorn --factory quorum.producer.api:main_app`)."""
    return create_app(get_settings())
