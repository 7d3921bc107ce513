"""The Python client: submit validated tasks, watch them, wait for their results."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any

from celery import Celery

from quorum.producer.submission import prepare
from quorum.producer.workflow import Workflow
from quorum.producer.workflow_run import Lineage, WorkflowRun, lineage, submit_workflow
from quorum.shared.broker import celery_config
from quorum.shared.errors import (
    InvalidRequestError,
    RunTimeoutError,
    TaskFailedError,
)
from quorum.shared.events import Event, OtherEvent
from quorum.shared.keys import workflow_of
from quorum.shared.listing import RunFilter, RunPage
from quorum.shared.models import TaskStatus
from quorum.shared.registry import Registry
from quorum.shared.responses import read_result
from quorum.shared.settings import Settings, get_settings
from quorum.shared.state import RunState
from quorum.shared.store import RunStore

__all__ = ["TaskClient", "TaskRun", "outcome"]


class TaskRun:
    """A handle on one run: its status, provenance and result."""

    def __init__(self, client: TaskClient, run_id: str, response_model: Any = None) -> None:
        self._client = client
        self.id = run_id
        self.response_model = None if isinstance(response_model, dict) else response_model
        """The Pydantic class `result()` returns an instance of, or the type (`Literal`,
        `list[str]`, ...) it returns a value of (None: the output as JSON)."""

    @property
    def store(self) -> RunStore:
        """The store the run lives in."""
        return self._client.store

    def __repr__(self) -> str:
        return f"TaskRun(id={self.id!r})"

    def status(self) -> TaskStatus:
        """The run's current status."""
        return self._client.store.status(self.id)

    def provenance(self) -> list[Event | OtherEvent]:
        """Every event of the run, oldest first: attempts, outputs, votes, decisions, usage."""
        return self._client.store.events(self.id)

    def watch(self, *, timeout: float | None = None) -> Iterator[Event | OtherEvent]:
        """Yield the run's events as they happen, until it ends (or `timeout` seconds)."""
        return self._client.store.watch(self.id, timeout_s=timeout)

    def state(self) -> RunState:
        """Everything stored about the run: status, attempt, outputs, usage, errors."""
        return self._client.store.load(self.id)

    def cancel(self) -> bool:
        """End the run as CANCELLED; False if it had already ended."""
        cancelled = self._client.store.cancel(self.id)
        workflow = workflow_of(self.id)
        if cancelled and workflow is not None:  # a node run: its workflow moves on
            self._client.send("quorum.advance", workflow_id=workflow)
        return cancelled

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to end and return its validated output.

        Returns an instance of the Pydantic response model, a value of a type such as
        `Literal[...]` or `list[str]`, or the JSON for a JSON Schema.
        Raises `TaskFailedError` if the run failed or was cancelled, `RunTimeoutError` if it
        has not ended after `timeout` seconds.
        """
        state = self._client.store.wait(self.id, timeout_s=timeout)
        return outcome(state, timeout, self.response_model)


def outcome(state: RunState, timeout: float | None, model: Any) -> Any:
    """What waiting `timeout` seconds for a run gave: its output (read with `model` if there
    is one), or the error that says why there is none."""
    if state.status is TaskStatus.SUCCESSFUL:
        return read_result(model, state.result)
    if not state.status.terminal:
        raise RunTimeoutError(
            f"run {state.run_id} has not ended after {timeout}s (status {state.status.value})"
        )
    reasons = state.reasons or [state.error or state.status.value.lower()]
    raise TaskFailedError(
        f"run {state.run_id} {state.status.value}: {state.error or 'cancelled'}",
        status=state.status,
        reasons=reasons,
        last_output=state.last_output,
        code=state.code or ("cancelled" if state.status is TaskStatus.CANCELLED else ""),
        usage=state.usage,
    )


class TaskClient:
    """Submits validated LLM tasks to Quorum's workers and follows them in Redis."""

    def __init__(self, *, redis_url: str | None = None, settings: Settings | None = None) -> None:
        settings = settings or get_settings()
        if redis_url is not None:
            settings = settings.model_copy(update={"redis_url": redis_url})
        self.settings = settings
        self.store = RunStore.from_settings(settings)
        self._celery = Celery("quorum-producer", set_as_current=False)
        self._celery.conf.update(celery_config(settings))
        self.store.on_webhook = self._send_webhook  # a run cancelled here ends here

    @cached_property
    def registry(self) -> Registry:
        """The defined tasks the workers published."""
        return Registry(self.store.redis, self.store.keys, ttl_s=self.settings.registry_ttl_s)

    def tasks(self) -> dict[str, dict[str, Any]]:
        """The defined tasks the workers published, by name: template, JSON Schema, config,
        checks, content hash."""
        return self.registry.all()

    def submit(
        self,
        *,
        task: str | None = None,
        template: str | None = None,
        response_model: Any = None,
        kwargs: dict[str, Any] | None = None,
        config: Any = None,
        checks: Any = (),
        model: str | None = None,
        validator_model: str | None = None,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
        system: str | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        max_tokens: int | None = None,
        max_cost: float | None = None,
        callback_url: str | None = None,
    ) -> TaskRun:
        """Validate and enqueue a task; return its run at once.

        A defined task (`quorum.define`) is submitted by name with its kwargs:
        `submit(task="extract_purchase", kwargs={...})`. An ad-hoc task gives `template`,
        `response_model` (a Pydantic model without validators of its own, a JSON Schema, or
        a type such as `Literal[...]` or `list[str]`), `config` (None: no votes, the cheap
        checks decide, up to 3 retries) and `checks` (Jinja expressions over `output` and
        `kwargs`, each `{"expr": ..., "message": ...}`). `temperature`, `max_output_tokens`
        and `system` (a system prompt prepended) apply to the task calls.

        `timeout_s` is the run's deadline (default `QUORUM_RUN_TIMEOUT_S`): past it the run
        ends `FAILED` with code `timeout`. `max_tokens` and `max_cost` (USD, by the price
        table `QUORUM_PRICES`) bound what every LLM call of the run spends together: a run
        that would go over ends `FAILED` with code `budget_exceeded`, keeping its last output.

        `callback_url`: when the run ends, its final view is POSTed there, signed (see
        docs/http-api.md, Webhooks); its host must be in `QUORUM_WEBHOOK_ALLOWED_HOSTS`.

        Bad input raises an `InvalidRequestError` (a `ValueError`) before anything is written
        or enqueued. The same `idempotency_key` gives back the first run, executed once.
        """
        run_id, spec, key, reader = prepare(
            self,
            idempotency_key=idempotency_key,
            task=task,
            template=template,
            response_model=response_model,
            kwargs=kwargs,
            config=config,
            checks=checks,
            model=model,
            validator_model=validator_model,
            temperature=temperature,
            max_output_tokens=max_output_tokens,
            system=system,
            metadata=metadata,
            timeout_s=timeout_s,
            max_tokens=max_tokens,
            max_cost=max_cost,
            callback_url=callback_url,
        )
        existing = self.store.create(run_id, spec, idempotency_key=key)
        if existing == run_id:
            self._send([(run_id, key)])
        return TaskRun(self, existing, reader)

    def submit_many(self, requests: Sequence[dict[str, Any]]) -> list[TaskRun]:
        """Validate every request (each a dict of `submit`'s arguments), then write and
        enqueue them all; return their runs in order.

        All or nothing: the first bad request raises an `InvalidRequestError` whose message
        starts with its index (`runs[3]: ...`) before anything is written or enqueued. At most
        `QUORUM_MAX_BATCH` requests. Written in three Redis round trips whatever their number
        (`RunStore.create_many`), and started by one job (`quorum.start` on the control
        queue), which sends each run's first job.
        """
        from quorum.producer.submission import prepare_batch

        prepared = prepare_batch(self, requests)
        ids = self.store.create_many([(run_id, spec, key) for run_id, spec, key, _ in prepared])
        fresh = [(r, key) for (r, _, key, _), id_ in zip(prepared, ids, strict=True) if id_ == r]
        if fresh:
            self._send(fresh, as_batch=True)
        readers = [reader for *_, reader in prepared]
        return [TaskRun(self, id_, reader) for id_, reader in zip(ids, readers, strict=True)]

    def list(
        self,
        *,
        status: TaskStatus | str | None = None,
        task: str | None = None,
        metadata: dict[str, Any] | None = None,
        created_after: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Runs newest first, filtered by final or current `status`, defined `task`, metadata
        values and creation time (epoch seconds); at most `limit` (1 to 1000) in a page.
        `page.next_cursor`, passed back as `cursor`, continues the listing (None: no more)."""
        if not (isinstance(limit, int) and 0 < limit <= 1000):
            raise InvalidRequestError(f"limit must be an integer from 1 to 1000, got {limit!r}")
        where = RunFilter.checked(
            status=status, task=task, metadata=metadata, created_after=created_after
        )
        return self.store.list_runs(where, limit=limit, cursor=cursor)

    def _send(self, runs: Sequence[tuple[str, str | None]], *, as_batch: bool = False) -> None:
        """Send each new run's first job, or with `as_batch` one `quorum.start` job that sends
        them; if that fails, remove every run of `runs` so that nothing half-made is left, and
        raise."""
        try:
            if as_batch:
                ids = [run_id for run_id, _ in runs]
                self._celery.send_task(
                    "quorum.start",
                    kwargs={"run_ids": ids},
                    ignore_result=True,
                    kwargsrepr=f"{{'run_ids': [{len(ids)} runs]}}",
                )
            else:
                for run_id, _ in runs:
                    self._celery.send_task(
                        "quorum.task_node",
                        kwargs={"run_id": run_id, "attempt": 1},
                        ignore_result=True,
                    )
        except Exception:
            for run_id, key in runs:
                self.store.discard(run_id, idempotency_key=key)
            raise

    def _send_webhook(self, run_id: str) -> None:
        """Send `quorum.webhook` for a run or workflow that ended in this process (cancelled;
        `run_id` names the delivery: a run's id or `wf:<id>`)."""
        self._celery.send_task("quorum.webhook", kwargs={"run_id": run_id}, ignore_result=True)

    def send(self, job: str, **kwargs: Any) -> None:
        """Send a Quorum job by name (routed to its queue by the shared Celery config)."""
        self._celery.send_task(job, kwargs=kwargs, ignore_result=True)

    def submit_workflow(
        self,
        workflow: Workflow | dict[str, Any],
        *,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> WorkflowRun:
        """Check and start a workflow (a `Workflow`, or its JSON document); return its handle
        at once. A bad graph raises an `InvalidRequestError` before anything is written; the
        same `idempotency_key` gives back the first workflow. `callback_url` (or the
        document's): when the workflow ends, its final view is POSTed there, signed (see
        docs/workflows.md); its host must be in `QUORUM_WEBHOOK_ALLOWED_HOSTS`."""
        return submit_workflow(
            self, workflow, idempotency_key=idempotency_key, callback_url=callback_url
        )

    def workflow(self, workflow_id: str) -> WorkflowRun:
        """A handle on an existing workflow; `RunNotFoundError` if there is none."""
        run = WorkflowRun(self, workflow_id)
        run.state()
        return run

    def lineage(self, run_id: str) -> Lineage:
        """The run and the upstream runs that fed it, back to the workflow's roots: per run
        its node, status, output and inputs (upstream node, run ids, JSON Pointer)."""
        return lineage(self, run_id)

    def get(self, run_id: str, *, response_model: Any = None) -> TaskRun:
        """A handle on an existing run; `RunNotFoundError` if there is none."""
        self.store.status(run_id)
        return TaskRun(self, run_id, response_model)

    def jobs_running(self, run_id: str, *, timeout_s: float = 0.5) -> int:
        """How many jobs of the run the workers are running now (Celery's `inspect active`,
        from the workers that answer within `timeout_s`): 0 once none is at work on it."""
        replies = self._celery.control.inspect(timeout=timeout_s).active() or {}
        jobs = [job for running in replies.values() for job in running or []]
        return sum(run_id in f"{job.get('args')} {job.get('kwargs')}" for job in jobs)

    def close(self) -> None:
        """Release the client's connections."""
        self.store.redis.close()
        self._celery.close()

    def __enter__(self) -> TaskClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
