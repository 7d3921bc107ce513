"""Quorum's Celery jobs. Each parses its arguments, calls a step in `quorum.shared.flow`, and turns
our errors into a Celery retry (transient) or a failed run (permanent); none raises out.

A voting round is its vote jobs alone, no chord: the job that finishes the round's last vote
tallies it (`shared.rounds`), so Celery's chord join (a dozen result-backend commands per vote,
docs/benchmarks.md, History) had nothing left to do."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from celery import Signature, Task
from celery.signals import worker_ready
from celery.worker.state import active_requests

from quorum.shared import ballot, flow, retry, webhooks, workflows
from quorum.shared.broker import HeldBack, holds_back
from quorum.shared.errors import (
    CallHeldError,
    InvalidRequestError,
    PermanentLLMError,
    RoundIncompleteError,
    StoreError,
    TransientLLMError,
)
from quorum.shared.llm import LLMGateway
from quorum.shared.sandbox import Limits
from quorum.shared.settings import Settings, get_settings
from quorum.shared.store import RunStore
from quorum.shared.sweep import Sweeper
from quorum.worker.app import app
from quorum.worker.copies import send_copies

__all__ = [
    "advance",
    "round_jobs",
    "route",
    "start",
    "tally",
    "task_node",
    "vote",
    "webhook",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

_ROUND_WAITS = 40
"""Retries of a tally waiting for its round's last votes before it leaves them to the sweep."""

_JOB: dict[str, Any] = {"bind": True, "ignore_result": True, "max_retries": None}
"""What every job is declared with. `max_retries=None`: `_guarded` counts the retries itself
(`QUORUM_LLM_MAX_RETRIES`, `_ROUND_WAITS`); Celery's own default of 3 would otherwise turn a
4th retry into a MaxRetriesExceededError out of the job, leaving the run to the stall sweep."""


@dataclass(frozen=True)
class _Process:
    """What this worker process works with: its settings, read once, one store and one LLM
    client."""

    settings: Settings
    store: RunStore
    llm: LLMGateway


@lru_cache(maxsize=1)
def _process() -> _Process:
    """This worker process's `_Process`, made on first use (after any fork)."""
    settings = get_settings()
    store = RunStore.from_settings(settings)
    store.on_webhook = lambda run_id: webhook.apply_async(kwargs={"run_id": run_id})
    return _Process(settings, store, LLMGateway(settings))


@worker_ready.connect
def _warm_up(**_: Any) -> None:
    """Make the LLM clients (TLS contexts, connection pools) before the first job needs one,
    and start the sweep for late and stalled runs (one worker of many sweeps at a time)."""
    process = _process()
    process.llm.warm_up()
    settings = process.settings
    Sweeper(
        lambda: _context_for("sweep"),
        interval_s=settings.sweep_interval_s,
        stall_after_s=settings.stall_after_s,
    ).start()


_BUILD_AHEAD_BELOW = 8
"""Jobs running in this worker process (`active_requests`) above which a task job builds its
first round after its call, as the run's next step, rather than during it: in a burst of
runs, building ahead took the GIL from the burst's intake and cost calls in flight
(docs/benchmarks.md, History)."""


@lru_cache(maxsize=1)
def _builder() -> ThreadPoolExecutor:
    """The threads that build a first round's jobs while its task call waits (made after
    any fork). Two: building is CPU work under the GIL, and more would only interleave."""
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="quorum-round")


def _held_round(run_id: str, attempt: int, round_: int, plan: flow.Plan) -> HeldBack:
    with HeldBack() as held:
        send_copies(round_jobs(run_id, attempt, round_, plan))
    return held


class CeleryEnqueuer:
    """Sends a run's next jobs as Celery messages."""

    def task_node(self, run_id: str, attempt: int) -> None:
        """Send `quorum.task_node`."""
        task_node.apply_async(kwargs={"run_id": run_id, "attempt": attempt})

    def voting_round(self, run_id: str, attempt: int, round_: int, plan: flow.Plan) -> None:
        """Send a round's vote jobs (`round_jobs`) in one round trip to a Redis broker."""
        _held_round(run_id, attempt, round_, plan).send()

    def prepare_round(
        self, run_id: str, attempt: int, round_: int, plan: flow.Plan
    ) -> Callable[[], None]:
        """Build the round's jobs now, in a thread of `_builder`; the function returned sends
        them (waiting for the build, and raising what it raised). On a broker other than Redis,
        publishes cannot be held back, and on a busy worker building ahead would only take the
        GIL from jobs that need it: the jobs are then built and sent when called."""
        if not holds_back(_process().settings.broker) or len(active_requests) > _BUILD_AHEAD_BELOW:
            return lambda: self.voting_round(run_id, attempt, round_, plan)
        built = _builder().submit(_held_round, run_id, attempt, round_, plan)
        return lambda: built.result().send()

    def route(self, run_id: str, attempt: int) -> None:
        """Send `quorum.route`."""
        route.apply_async(kwargs={"run_id": run_id, "attempt": attempt})

    def advance(self, workflow_id: str) -> None:
        """Take the workflow's scheduling step here, in the job that ended a node run: the
        next node's first job leaves without a hop through the queue (a chain of runs pays
        no extra job per node). On any error the step goes out as `quorum.advance`; a
        worker that dies first leaves it to the sweep."""
        try:
            workflows.advance(_context_for("advance"), workflow_id)
        except Exception:
            log.warning("workflow %s: step failed here, sent as a job", workflow_id, exc_info=True)
            advance.apply_async(kwargs={"workflow_id": workflow_id})


_ENQUEUER = CeleryEnqueuer()


def _shown(kwargs: dict[str, Any], args: str = "()") -> dict[str, str]:
    """Send options that show a job's arguments (in Flower, in the worker's log) as `repr`
    writes them. Celery's own `saferepr`, the same text for these small arguments but a walk
    in pure Python, was a large share of the time a voting round took to send."""
    return {"argsrepr": args, "kwargsrepr": repr(kwargs)}


def round_jobs(run_id: str, attempt: int, round_: int, plan: flow.Plan) -> list[Signature]:
    """A voting round: a `quorum.vote` per planned vote. The job that finishes the round's
    last vote tallies the round; a job that dies first is redelivered and tallies it then."""
    jobs = []
    for issue, indices in plan.items():
        for index in indices:
            kwargs = {"run_id": run_id, "attempt": attempt, "issue": issue, "index": index}
            jobs.append(vote.si(**kwargs).set(**_shown(kwargs)))
    return jobs


def _context_for(worker: str) -> flow.Context:
    process = _process()
    settings = process.settings
    return flow.Context(
        store=process.store,
        llm=process.llm,
        enqueue=_ENQUEUER,
        worker=worker,
        prices=settings.prices,
        max_output_bytes=settings.max_payload_bytes,
        max_payload_bytes=settings.max_payload_bytes,
        max_depth=settings.max_nesting_depth,
        template_limits=Limits(
            max_chars=settings.max_prompt_bytes, timeout_s=settings.template_timeout_s
        ),
        call_lease_s=settings.llm_timeout_s + 1.0,
        progress_after_s=settings.stall_after_s / 4,
    )


def _context(job: Task) -> flow.Context:
    return _context_for(job.request.hostname or "")


def _guarded(
    job: Task,
    step: Callable[[flow.Context], T],
    *,
    exhausted: Callable[[flow.Context, str], T],
    permanent: Callable[[flow.Context, str, str], T],
) -> T:
    """Run a step; retry transient errors with backoff, hand the others to the callbacks."""
    settings = _process().settings
    ctx = _context(job)
    retries = job.request.retries
    label = job.request.kwargs or job.request.args
    try:
        return step(ctx)
    except TransientLLMError as exc:
        if retries >= settings.llm_max_retries:
            return exhausted(ctx, f"{exc} (after {retries} retries)")
        delay = retry.backoff_s(
            retries, retry_after=exc.retry_after, cap=settings.llm_backoff_max_s
        )
        log.info("%s %s: transient LLM error, retry in %.1fs: %s", job.name, label, delay, exc)
        raise job.retry(countdown=delay) from exc
    except CallHeldError as exc:
        log.info("%s %s: retry in %.1fs: %s", job.name, label, exc.retry_after, exc)
        raise job.retry(countdown=exc.retry_after) from exc
    except RoundIncompleteError as exc:
        if retries >= _ROUND_WAITS:
            log.warning(
                "%s %s: gave up waiting, the sweep resumes it: %s", job.name, job.request.args, exc
            )
            return exhausted(ctx, "")
        delay = retry.backoff_s(retries, cap=settings.llm_backoff_max_s)
        log.info("%s %s: retry in %.1fs: %s", job.name, job.request.args, delay, exc)
        raise job.retry(countdown=delay) from exc
    except StoreError as exc:
        delay = retry.backoff_s(retries, cap=settings.llm_backoff_max_s)
        log.warning("%s %s: store unavailable, retry in %.1fs: %s", job.name, label, delay, exc)
        raise job.retry(countdown=delay) from exc
    except (PermanentLLMError, InvalidRequestError) as exc:
        return permanent(ctx, str(exc), "llm_error")
    except Exception as exc:  # a bug must end the run visibly, not leave it hanging
        log.exception("%s %s: unexpected error", job.name, label)
        return permanent(ctx, f"internal error: {type(exc).__name__}: {exc}", "internal")


def _failing(run_id: str, result: T) -> Callable[[flow.Context, str, str], T]:
    """A callback that ends the run FAILED with the error and its code, and returns `result`."""

    def fail(ctx: flow.Context, error: str, code: str) -> T:
        flow.fail_run(ctx, run_id, error, [error], code=code)
        return result

    return fail


@app.task(name="quorum.task_node", **_JOB)
def task_node(self: Task, run_id: str, attempt: int) -> str:
    """Call the task model for one attempt and launch its first voting round."""
    fail = _failing(run_id, "failed")
    return _guarded(
        self,
        lambda ctx: flow.task_node(ctx, run_id, attempt),
        exhausted=lambda ctx, error: fail(ctx, error, "llm_error"),
        permanent=fail,
    )


@app.task(name="quorum.vote", **_JOB)
def vote(self: Task, run_id: str, attempt: int, issue: int, index: int) -> dict[str, Any]:
    """One validator vote on one issue; an error vote when the validator cannot answer.
    Its return value is for the worker's log and Flower: the store holds the vote."""

    def error_vote(ctx: flow.Context, error: str) -> dict[str, Any]:
        return ballot.vote_error(ctx, run_id, attempt, issue, index, error)

    def fail(ctx: flow.Context, error: str, code: str) -> dict[str, Any]:
        flow.fail_run(ctx, run_id, error, [error], code=code)
        return error_vote(ctx, error)

    return _guarded(
        self,
        lambda ctx: ballot.vote(ctx, run_id, attempt, issue, index),
        exhausted=error_vote,
        permanent=fail,
    )


@app.task(name="quorum.tally", **_JOB)
def tally(self: Task, *votes: Any, run_id: str, attempt: int, round_: int) -> str:
    """Decide the issues of a voting round once none of its votes is out, unless the vote
    job that finished the round's last vote did already (it always does: Quorum sends no
    `quorum.tally` of its own). Any Celery client may send it to have a round tallied; `votes`
    (what a chord's join would pass) go unread: the store holds every vote."""
    return _guarded(
        self,
        lambda ctx: ballot.tally(ctx, run_id, attempt, round_),
        exhausted=lambda ctx, error: "incomplete",
        permanent=_failing(run_id, "failed"),
    )


@app.task(name="quorum.route", **_JOB)
def route(self: Task, run_id: str, attempt: int) -> str:
    """Retry a failed attempt with feedback, or end the run FAILED."""
    fail = _failing(run_id, "failed")
    return _guarded(
        self,
        lambda ctx: flow.route(ctx, run_id, attempt),
        exhausted=lambda ctx, error: fail(ctx, error, "llm_error"),
        permanent=fail,
    )


@app.task(name="quorum.start", **_JOB)
def start(self: Task, run_ids: list[str]) -> int:
    """Send the first job of each run of a batch (`TaskClient.submit_many`), all in one round
    trip to a Redis broker: the producer sends this one job instead of a job per run. If it
    is lost, the sweep resumes the runs it would have started (they stay PENDING)."""
    try:
        with HeldBack() as held:
            for run_id in run_ids:
                _ENQUEUER.task_node(run_id, 1)
        held.send()
    except StoreError as exc:
        delay = retry.backoff_s(self.request.retries, cap=_process().settings.llm_backoff_max_s)
        log.warning(
            "quorum.start of %d runs: broker unavailable, retry in %.1fs", len(run_ids), delay
        )
        raise self.retry(countdown=delay) from exc
    return len(run_ids)


@app.task(name="quorum.webhook", **_JOB)
def webhook(self: Task, run_id: str) -> str:
    """POST an ended run's or workflow's final view to its callback URL, signed; retried with
    backoff for `QUORUM_WEBHOOK_RETRY_FOR_S` (`shared.webhooks`). `run_id` names the delivery:
    a run's id, or `wf:<id>` for a workflow's."""
    process = _process()
    try:
        sent = webhooks.deliver(
            process.store, process.settings, run_id, retries=self.request.retries
        )
    except StoreError as exc:
        delay = retry.backoff_s(self.request.retries, cap=process.settings.llm_backoff_max_s)
        log.warning("quorum.webhook %s: store unavailable, retry in %.1fs: %s", run_id, delay, exc)
        raise self.retry(countdown=delay) from exc
    if sent.retry_in is not None:
        raise self.retry(countdown=sent.retry_in)
    return sent.outcome


@app.task(name="quorum.advance", **_JOB)
def advance(self: Task, workflow_id: str) -> int:
    """One scheduling step of a workflow: start the nodes that can start, settle those that
    cannot, end the workflow when no node is left (`quorum.shared.workflows`)."""

    def unexpected(ctx: flow.Context, error: str, code: str) -> int:
        log.error("quorum.advance %s: %s (the sweep drives it again)", workflow_id, error)
        return 0

    return _guarded(
        self,
        lambda ctx: workflows.advance(ctx, workflow_id),
        exhausted=lambda ctx, error: 0,
        permanent=unexpected,
    )
