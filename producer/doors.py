"""The HTTP routes for services that hold many runs: listing and batch submits.

    GET  /v1/runs       ?status=&task=&metadata.<key>=&created_after=&limit=&cursor=
                        → {runs: [summary, …], next_cursor}, newest first
    POST /v1/batches    {"runs": [spec, …]} → 201 {ids: […]}; all validated before any is
                        written: one bad spec → 422 naming its index (`runs[3]: …`)

Included by `quorum.producer.api.create_app`, behind the same bearer token.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from quorum.producer.api import RunRequest, Tasks, submit_arguments
from quorum.shared.listing import RunSummary
from quorum.shared.models import TaskStatus

__all__ = ["doors"]

doors = APIRouter(tags=["runs"])

_META = "metadata."


class BatchRequest(BaseModel):
    """Runs to submit together: each one as `POST /v1/runs` takes it."""

    runs: list[RunRequest] = Field(description="The runs, at most QUORUM_MAX_BATCH of them.")


class BatchCreated(BaseModel):
    """A batch accepted: the run ids, in the order of the request's runs."""

    ids: list[str]


class RunList(BaseModel):
    """A page of runs, newest first."""

    runs: list[RunSummary]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` for the next page; null: no more runs."
    )


@doors.get(
    "/v1/runs",
    openapi_extra={
        "parameters": [
            {
                "name": "metadata.{key}",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "Runs whose metadata holds this value at `key` "
                "(e.g. `metadata.customer=acme`); several may be given.",
            }
        ]
    },
)
def list_runs(
    request: Request,
    tasks: Tasks,
    status: Annotated[TaskStatus | None, Query(description="Current or final status.")] = None,
    task: Annotated[str | None, Query(description="A defined task's name.")] = None,
    created_after: Annotated[
        float | None, Query(description="Only runs created after this time (epoch seconds).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most runs in the page.")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the page before.")] = None,
) -> RunList:
    """Runs newest first, filtered; a page may be short while `next_cursor` is not null."""
    metadata = {
        name.removeprefix(_META): value
        for name, value in request.query_params.items()
        if name.startswith(_META) and len(name) > len(_META)
    }
    page = tasks.list(
        status=status,
        task=task,
        metadata=metadata,
        created_after=created_after,
        limit=limit,
        cursor=cursor,
    )
    return RunList(runs=page.runs, next_cursor=page.next_cursor)


@doors.post("/v1/batches", status_code=201, tags=["batches"])
def submit_batch(batch: BatchRequest, tasks: Tasks) -> BatchCreated:
    """Validate every run, then write and enqueue them all (three Redis round trips and one
    publish per run). One bad run: 422 naming its index (`runs[3]: …`), nothing written."""
    runs = tasks.submit_many([submit_arguments(run) for run in batch.runs])
    return BatchCreated(ids=[run.id for run in runs])
