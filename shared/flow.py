"""A run's steps as plain functions: what each Celery job does, without Celery. The task
step and the retry router are here; the voting steps (a vote, a round's tally) are in
`shared.ballot`.

Each step is idempotent: it reads the run from the store, skips when the run is terminal or
the attempt stale, and moves the run only by compare-and-set, so a redelivered or duplicated
job changes nothing. The next job is sent through an `Enqueuer`, which the worker implements
with Celery and the unit tests with a list.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable
from typing import Any

from quorum.shared import checks
from quorum.shared.context import Context, Enqueuer, Plan, fail_run
from quorum.shared.errors import CallHeldError, RunNotFoundError
from quorum.shared.events import (
    AttemptStarted,
    Output,
    OutputInvalid,
    RetryScheduled,
)
from quorum.shared.llm import Completion
from quorum.shared.models import TaskStatus
from quorum.shared.options import cut_off, task_call_options, with_system
from quorum.shared.payload import depth_over, payload_problem
from quorum.shared.prompts import (
    FailedAttempt,
    feedback_section,
    render_task_prompt,
    task_messages,
)
from quorum.shared.schemas import output_error
from quorum.shared.state import RunState
from quorum.shared.voting import (
    first_round_size,
)

__all__ = [
    "Context",
    "Enqueuer",
    "Plan",
    "Step",
    "fail_run",
    "gone",
    "launch",
    "parse_output",
    "route",
    "task_node",
]

log = logging.getLogger(__name__)


class Step(enum.StrEnum):
    """How a step ended (what its job returns)."""

    SKIPPED = "skipped"
    """Nothing to do: the run ended or moved on, or a job beside this one did it."""
    FAILED = "failed"
    """The attempt failed (sent to the router) or the run ended FAILED."""
    INVALID = "invalid"
    """The task model's output failed a check: a failed attempt, sent to the router."""
    VALIDATING = "validating"
    """The output is stored and its first voting round sent."""
    NEXT_ROUND = "next round"
    """Issues are still open: the next voting round is sent."""
    SUCCEEDED = "succeeded"
    """Every issue passed: the run ended SUCCESSFUL."""
    RETRYING = "retrying"
    """Another attempt is sent, with feedback."""


class _Begin(enum.Enum):
    """What a task job does once it has tried to move the run into its attempt."""

    CALL = enum.auto()
    """Call the task model (the attempt is this job's, or a lost job's that never called)."""
    RELAUNCH = enum.auto()
    """Send the first voting round again (a lost job stored the output but never sent it)."""
    SKIP = enum.auto()


def parse_output(
    content: str, schema: dict[str, Any], *, max_bytes: int | None = None, max_depth: int = 64
) -> tuple[Any, str | None]:
    """Parse the model's text and check it against the schema (and the size and depth limits).

    Returns `(output, None)` when it fits, else `(the parsed value or raw text, the error)`.
    """
    size = len(content.encode(errors="replace"))
    if max_bytes is not None and size > max_bytes:
        return content[:200] + "…", f"output is {size} bytes, over the limit of {max_bytes}"
    try:
        output = json.loads(content)
    except json.JSONDecodeError as exc:
        return content, f"output is not valid JSON: {exc.msg} at position {exc.pos}"
    except RecursionError:
        return content[:200] + "…", "output is nested too deeply to parse"
    if depth_over(output, max_depth):
        return content[:200] + "…", f"output is nested deeper than {max_depth} levels"
    problem = payload_problem(output, what="output", max_depth=max_depth)
    if problem is not None:
        return content.encode(errors="replace").decode()[:200] + "…", problem
    return output, output_error(output, schema)


def gone(run_id: str) -> None:
    log.info("run %s: gone, job skipped", run_id)


def _load(ctx: Context, run_id: str) -> RunState | None:
    try:
        return ctx.store.load(run_id)
    except RunNotFoundError:
        gone(run_id)
        return None


def _begin_attempt(ctx: Context, run_id: str, attempt: int) -> tuple[_Begin, RunState | None]:
    """Move the run into `attempt`; return what the task job does next, and the run as it is
    now (None if it is gone)."""
    started = AttemptStarted(attempt=attempt, worker=ctx.worker)
    moved, state = ctx.store.begin_attempt(run_id, attempt, started)
    if state is None:
        gone(run_id)
        return _Begin.SKIP, None
    if moved:
        return _Begin.CALL, state
    if state.status.terminal or state.attempt != attempt:
        return _Begin.SKIP, state
    # A redelivered job: carry on where the lost one stopped.
    return {TaskStatus.RUNNING: _Begin.CALL, TaskStatus.VALIDATING: _Begin.RELAUNCH}.get(
        state.status, _Begin.SKIP
    ), state


def launch(
    ctx: Context,
    run_id: str,
    attempt: int,
    round_: int,
    plan: Plan,
    prepared: Callable[[], None] | None = None,
) -> None:
    """Note a voting round's votes in the store, then send its jobs (`prepared`: the round
    built already, `Enqueuer.prepare_round`). A round after the first marks progress: the
    first comes with the move to `VALIDATING`, which did (and planned it, `start_voting`;
    a redelivered task job plans it here again, which keeps the first plan)."""
    ctx.store.plan_round(run_id, attempt, round_, plan, progress=round_ > 1)
    _send_round(ctx, run_id, attempt, round_, plan, prepared)


def _send_round(
    ctx: Context,
    run_id: str,
    attempt: int,
    round_: int,
    plan: Plan,
    prepared: Callable[[], None] | None,
) -> None:
    if prepared is None:
        ctx.enqueue.voting_round(run_id, attempt, round_, plan)
    else:
        prepared()


def _first_plan(state: RunState) -> Plan:
    config = state.spec.voting
    return {issue: list(range(first_round_size(config))) for issue in range(len(config.issues))}


def _claimed(ctx: Context, run_id: str, attempt: int) -> bool:
    """True once this job holds the lease of the attempt's call. Held by another job (a
    duplicate of this one, or a worker that died mid-call): `CallHeldError`, and the job is
    retried when the lease has run out."""
    if ctx.claim_call(run_id, attempt):
        return True
    left = ctx.store.call_held_s(run_id, attempt)
    raise CallHeldError(
        f"run {run_id} attempt {attempt}: another job holds the call", retry_after=left + 0.1
    )


def _task_call(
    ctx: Context, state: RunState, attempt: int, messages: list[dict[str, str]]
) -> Completion | None:
    """The attempt's task call; on no answer the lease goes back, so that the job's retry
    (or the sweep's resend) calls again."""
    spec = state.spec
    try:
        return ctx.call(
            state,
            model=spec.model,
            messages=messages,
            schema=spec.response_schema,
            name=spec.response_name,
            **task_call_options(spec),
        )
    except BaseException:
        if ctx.call_lease_s > 0:
            ctx.store.release_call(state.run_id, attempt)
        raise


def task_node(ctx: Context, run_id: str, attempt: int) -> Step:
    """Call the task model for `attempt`, check its output, and launch the first vote round."""
    step, state = _begin_attempt(ctx, run_id, attempt)
    if state is None:
        return Step.SKIPPED
    if step is _Begin.RELAUNCH:
        launch(ctx, run_id, attempt, 1, _first_plan(state))
    if step is _Begin.CALL and attempt in state.failures:  # redelivered after an invalid output
        ctx.enqueue.route(run_id, attempt)
        return Step.SKIPPED
    if step is not _Begin.CALL or not _claimed(ctx, run_id, attempt):
        return Step.SKIPPED
    spec = state.spec
    failures = [state.failures[n] for n in sorted(state.failures) if n < attempt]
    prompt = render_task_prompt(spec.template, spec.kwargs, ctx.template_limits)
    # The first round's jobs need only the plan: it is built while the task model answers,
    # and sent once the output is stored (never, if it is not).
    plan = _first_plan(state) if spec.config else {}
    first_round = ctx.enqueue.prepare_round(run_id, attempt, 1, plan) if plan else None
    reply = _task_call(
        ctx, state, attempt, with_system(spec.system, task_messages(prompt, failures))
    )
    if reply is None:
        return Step.FAILED
    output, error = parse_output(
        reply.content,
        spec.response_schema,
        max_bytes=ctx.max_output_bytes,
        max_depth=ctx.max_depth,
    )
    error = cut_off(spec, reply.truncated) or error
    call = {"latency_s": round(reply.latency_s, 4), "usage": reply.usage}
    if error is not None:
        ctx.store.bill(run_id, reply.usage)
        log.info("run %s attempt %d: invalid output: %s", run_id, attempt, error)
        invalid = OutputInvalid(
            attempt=attempt, worker=ctx.worker, output=output, error=error, **call
        )
        ctx.store.record_failure(run_id, attempt, FailedAttempt(output, [error]), invalid)
        if not ctx.over_budget(state):
            ctx.enqueue.route(run_id, attempt)
        return Step.INVALID
    checked = checks.run_checks(spec, output)  # the cheap checks: no vote on what they reject
    if checked.failure is not None or spec.config is None:
        return Step(checks.conclude(ctx, state, attempt, checked, reply.usage, call))
    output = checked.output
    stored = Output(attempt=attempt, worker=ctx.worker, output=output, **call)
    moved = ctx.store.start_voting(run_id, attempt, output, stored, reply.usage, plan)
    if not moved or ctx.over_budget(state):
        return Step.SKIPPED
    log.info("run %s attempt %d: output valid, voting", run_id, attempt)
    _send_round(ctx, run_id, attempt, 1, plan, first_round)
    return Step.VALIDATING


def route(ctx: Context, run_id: str, attempt: int) -> Step:
    """The retry router: retry with feedback while retries are left, else end FAILED."""
    state = _load(ctx, run_id)
    if state is None or state.status.terminal or state.attempt != attempt:
        return Step.SKIPPED
    if state.status is TaskStatus.RETRYING:  # redelivered after the retry was scheduled
        ctx.enqueue.task_node(run_id, attempt + 1)
        return Step.RETRYING
    failure = state.failures.get(attempt)
    if failure is None:
        return Step.SKIPPED
    if attempt <= state.spec.max_retries:
        scheduled = RetryScheduled(
            attempt=attempt,
            worker=ctx.worker,
            next_attempt=attempt + 1,
            feedback=feedback_section([failure]),
        )
        if ctx.store.transition(run_id, TaskStatus.RETRYING, attempt=attempt, events=[scheduled]):
            log.info("run %s attempt %d: retry scheduled", run_id, attempt)
            ctx.enqueue.task_node(run_id, attempt + 1)
            return Step.RETRYING
        return Step.SKIPPED
    reasons = [r for n in sorted(state.failures) for r in state.failures[n].reasonings]
    error = f"validation failed after {attempt} attempt(s)"
    fail_run(ctx, run_id, error, reasons, attempt, code="validation_failed")
    return Step.FAILED
