"""The Python client for asyncio code: `TaskClient`'s surface, awaitable.

Each call runs the synchronous client's own code in a thread (submit, status, provenance,
cancel: one short Redis round trip or a Celery send each), except the wait for a result,
which blocks on the run's done list over an asyncio Redis connection, so that thousands of
waits cost no thread each. There is no second copy of the client's logic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from quorum.producer.client import TaskClient, TaskRun, outcome
from quorum.producer.workflow_run import Lineage, NodeView, WorkflowRun
from quorum.shared.events import Event, OtherEvent
from quorum.shared.listing import RunPage
from quorum.shared.models import TaskStatus
from quorum.shared.settings import Settings
from quorum.shared.state import RunState
from quorum.shared.wfstore import WorkflowStatus

__all__ = ["AsyncTaskClient", "AsyncTaskRun", "AsyncWorkflowRun"]


class AsyncTaskRun:
    """A handle on one run, for asyncio code (see `TaskRun`)."""

    def __init__(self, run: TaskRun) -> None:
        self._run = run
        self.id = run.id

    def __repr__(self) -> str:
        return f"AsyncTaskRun(id={self.id!r})"

    async def status(self) -> TaskStatus:
        """The run's current status."""
        return await asyncio.to_thread(self._run.status)

    async def provenance(self) -> list[Event | OtherEvent]:
        """Every event of the run, oldest first."""
        return await asyncio.to_thread(self._run.provenance)

    async def state(self) -> RunState:
        """Everything stored about the run."""
        return await asyncio.to_thread(self._run.state)

    async def cancel(self) -> bool:
        """End the run as CANCELLED; False if it had already ended."""
        return await asyncio.to_thread(self._run.cancel)

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to end, without blocking the loop, and return its validated
        output (see `TaskRun.result`)."""
        state = await self._run.store.wait_async(self.id, timeout_s=timeout)
        return outcome(state, timeout, self._run.response_model)


class AsyncWorkflowRun:
    """A handle on one workflow, for asyncio code: `WorkflowRun`'s surface, awaitable."""

    def __init__(self, run: WorkflowRun) -> None:
        self._run = run
        self.id = run.id

    def __repr__(self) -> str:
        return f"AsyncWorkflowRun(id={self.id!r})"

    async def status(self) -> WorkflowStatus:
        """`RUNNING`, `SUCCESSFUL`, `FAILED` or `CANCELLED`."""
        return await asyncio.to_thread(self._run.status)

    async def nodes(self) -> dict[str, NodeView]:
        """Node name → its status and run ids."""
        return await asyncio.to_thread(self._run.nodes)

    async def provenance(self) -> list[Any]:
        """The workflow's events, oldest first."""
        return await asyncio.to_thread(self._run.provenance)

    async def cancel(self) -> bool:
        """Cancel the workflow and every live node run."""
        return await asyncio.to_thread(self._run.cancel)

    async def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the workflow to end; node → output, or `WorkflowFailedError`."""
        return await asyncio.to_thread(self._run.result, timeout)


class AsyncTaskClient:
    """Submits validated LLM tasks and follows them, for asyncio code.

    `async with AsyncTaskClient() as client: run = await client.submit(...)`; the arguments
    are `TaskClient`'s.
    """

    def __init__(self, *, redis_url: str | None = None, settings: Settings | None = None) -> None:
        self.client = TaskClient(redis_url=redis_url, settings=settings)

    async def submit(self, **request: Any) -> AsyncTaskRun:
        """Validate and enqueue a task (`TaskClient.submit`); return its run at once."""
        return AsyncTaskRun(await asyncio.to_thread(lambda: self.client.submit(**request)))

    async def submit_many(self, requests: Sequence[dict[str, Any]]) -> list[AsyncTaskRun]:
        """Validate, write and enqueue a batch, all or nothing (`TaskClient.submit_many`)."""
        runs = await asyncio.to_thread(self.client.submit_many, requests)
        return [AsyncTaskRun(run) for run in runs]

    async def list(self, **filters: Any) -> RunPage:
        """A page of runs, newest first (`TaskClient.list`: status, task, metadata,
        created_after, limit, cursor)."""
        return await asyncio.to_thread(lambda: self.client.list(**filters))

    async def get(self, run_id: str, *, response_model: Any = None) -> AsyncTaskRun:
        """A handle on an existing run; `RunNotFoundError` if there is none."""
        run = await asyncio.to_thread(self.client.get, run_id, response_model=response_model)
        return AsyncTaskRun(run)

    async def submit_workflow(self, workflow: Any, **options: Any) -> AsyncWorkflowRun:
        """Check and start a workflow (`TaskClient.submit_workflow`); its handle at once."""
        run = await asyncio.to_thread(lambda: self.client.submit_workflow(workflow, **options))
        return AsyncWorkflowRun(run)

    async def lineage(self, run_id: str) -> Lineage:
        """The run and the upstream runs that fed it (`TaskClient.lineage`)."""
        return await asyncio.to_thread(self.client.lineage, run_id)

    async def close(self) -> None:
        """Release the client's connections."""
        await asyncio.to_thread(self.client.close)

    async def __aenter__(self) -> AsyncTaskClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
