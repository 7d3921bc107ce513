"""A run's steps as plain functions: what each Celery job does, without Celery.

Each step is idempotent: it reads the run from the store, skips when the run is terminal or
the attempt stale, and moves the run only by compare-and-set, so a redelivered or duplicated
job changes nothing. The next job is sent through an `Enqueuer`, which the worker implements
with Celery and the unit tests with a list.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import jsonschema

from quorum.shared.context import Context, Enqueuer, Plan, fail_run
from quorum.shared.errors import RoundIncompleteError, RunNotFoundError, TransientLLMError
from quorum.shared.events import (
    AttemptStarted,
    IssueDecided,
    Output,
    OutputInvalid,
    RetryScheduled,
    Succeeded,
    ValidationFailed,
    ValidationPassed,
    VoteCast,
    VoteSkipped,
)
from quorum.shared.models import TaskStatus, Usage, Vote
from quorum.shared.prompts import (
    VOTE_SCHEMA,
    FailedAttempt,
    feedback_section,
    render_task_prompt,
    task_messages,
    validator_messages,
)
from quorum.shared.rounds import RoundContext, vote_slot
from quorum.shared.state import RunState
from quorum.shared.voting import (
    Tally,
    decide_after_round,
    decide_early,
    first_round_size,
    next_round_size,
)

__all__ = [
    "Context",
    "Enqueuer",
    "Plan",
    "backoff_s",
    "fail_run",
    "parse_output",
    "route",
    "tally",
    "task_node",
    "vote",
    "vote_error",
]

log = logging.getLogger(__name__)


def backoff_s(retries: int, *, retry_after: float | None = None, cap: float = 30.0) -> float:
    """Seconds before transient retry number `retries` (from 0): exponential, jittered, capped.

    A server's `Retry-After` is honoured when it asks for longer (up to five minutes).
    """
    ceiling = min(cap, 0.5 * 2**retries)
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return max(delay, min(retry_after or 0.0, 300.0))


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    return jsonschema.validators.validator_for(schema)(schema)


def parse_output(
    content: str, schema: dict[str, Any], *, max_bytes: int | None = None
) -> tuple[Any, str | None]:
    """Parse the model's text and check it against the schema (and the size limit).

    Returns `(output, None)` when it fits, else `(the parsed value or raw text, the error)`.
    """
    size = len(content.encode())
    if max_bytes is not None and size > max_bytes:
        return content[:200] + "…", f"output is {size} bytes, over the limit of {max_bytes}"
    try:
        output = json.loads(content)
    except json.JSONDecodeError as exc:
        return content, f"output is not valid JSON: {exc.msg} at position {exc.pos}"
    error = jsonschema.exceptions.best_match(
        _validator(json.dumps(schema, sort_keys=True)).iter_errors(output)
    )
    if error is None:
        return output, None
    where = "/".join(map(str, error.absolute_path)) or "(root)"
    return output, f"output does not fit the schema at {where}: {error.message}"


def _gone(run_id: str) -> None:
    log.info("run %s: gone, job skipped", run_id)


def _load(ctx: Context, run_id: str) -> RunState | None:
    try:
        return ctx.store.load(run_id)
    except RunNotFoundError:
        _gone(run_id)
        return None


def _begin_attempt(ctx: Context, run_id: str, attempt: int) -> tuple[str, RunState | None]:
    """Move the run into `attempt`; return "call", "relaunch" (redelivered) or "skip", and the
    run as it is now (None if it is gone)."""
    started = AttemptStarted(attempt=attempt, worker=ctx.worker)
    moved, state = ctx.store.begin_attempt(run_id, attempt, started)
    if state is None:
        _gone(run_id)
        return "skip", None
    if moved:
        return "call", state
    if state.status.terminal or state.attempt != attempt:
        return "skip", state
    # A redelivered job: carry on where the lost one stopped.
    return {TaskStatus.RUNNING: "call", TaskStatus.VALIDATING: "relaunch"}.get(
        state.status, "skip"
    ), state


def _launch(
    ctx: Context,
    run_id: str,
    attempt: int,
    round_: int,
    plan: Plan,
    prepared: Callable[[], None] | None = None,
) -> None:
    """Note a voting round's votes in the store, then send its chord (`prepared`: the chord
    built already, `Enqueuer.prepare_round`)."""
    ctx.store.plan_round(run_id, attempt, round_, plan)
    if prepared is None:
        ctx.enqueue.voting_round(run_id, attempt, round_, plan)
    else:
        prepared()


def _first_plan(state: RunState) -> Plan:
    config = state.spec.config
    return {issue: list(range(first_round_size(config))) for issue in range(len(config.issues))}


def task_node(ctx: Context, run_id: str, attempt: int) -> str:
    """Call the task model for `attempt`, check its output, and launch the first vote round."""
    step, state = _begin_attempt(ctx, run_id, attempt)
    if state is None:
        return "skipped"
    if step == "relaunch":
        _launch(ctx, run_id, attempt, 1, _first_plan(state))
    if step == "call" and attempt in state.failures:  # redelivered after an invalid output
        ctx.enqueue.route(run_id, attempt)
        return "skipped"
    if step != "call":
        return "skipped"
    spec = state.spec
    failures = [state.failures[n] for n in sorted(state.failures) if n < attempt]
    prompt = render_task_prompt(spec.template, spec.kwargs)
    # The first round's chord needs only the plan: it is built while the task model answers,
    # and sent once the output is stored (never, if it is not).
    plan = _first_plan(state)
    first_round = ctx.enqueue.prepare_round(run_id, attempt, 1, plan)
    reply = ctx.call(
        state,
        model=spec.model,
        messages=task_messages(prompt, failures),
        schema=spec.response_schema,
        name=spec.response_name,
    )
    if reply is None:
        return "failed"
    output, error = parse_output(
        reply.content, spec.response_schema, max_bytes=ctx.max_output_bytes
    )
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
        return "invalid"
    moved = ctx.store.transition(
        run_id,
        TaskStatus.VALIDATING,
        attempt=attempt,
        fields={f"output:{attempt}": output},
        events=[Output(attempt=attempt, worker=ctx.worker, output=output, **call)],
        usage=reply.usage,
    )
    if not moved or ctx.over_budget(state):
        return "skipped"
    log.info("run %s attempt %d: output valid, voting", run_id, attempt)
    _launch(ctx, run_id, attempt, 1, plan, first_round)
    return "validating"


def _vote_skip_reason(state: RunState | None, attempt: int, decided: bool) -> str | None:
    if state is None:
        return "run gone"
    if state.status.terminal:
        return f"run {state.status.value.lower()}"
    if state.attempt != attempt or state.status is not TaskStatus.VALIDATING:
        return "attempt stale"
    return "issue decided" if decided else None


def vote(ctx: Context, run_id: str, attempt: int, issue: int, index: int) -> dict[str, Any]:
    """Ask one validator about one issue, unless the run or issue no longer needs it."""
    state, decided, stored = ctx.store.vote_context(run_id, attempt, issue, index)
    if stored is not None:  # a redelivered vote job
        _finish(ctx, run_id, attempt, issue, index)
        return stored.model_dump()
    reason = _vote_skip_reason(state, attempt, decided)
    if reason is not None or state is None:
        skip = VoteSkipped(
            attempt=attempt, worker=ctx.worker, issue=issue, index=index, reason=reason
        )
        _finish(ctx, run_id, attempt, issue, index, skip)
        return {"issue": issue, "index": index, "skipped": reason}
    spec = state.spec
    prompt = render_task_prompt(spec.template, spec.kwargs)
    messages = validator_messages(prompt, state.outputs[attempt], spec.config.issues[issue])
    reply = ctx.call(
        state,
        model=spec.validator_model,
        messages=messages,
        schema=VOTE_SCHEMA,
        name="quorum_vote",
    )
    if reply is None:
        return {"issue": issue, "index": index, "skipped": "budget exceeded"}
    verdict, error = parse_output(reply.content, VOTE_SCHEMA, max_bytes=ctx.max_output_bytes)
    if error is not None:
        ctx.store.bill(run_id, reply.usage)
        raise TransientLLMError(f"validator answered badly: {error}")
    cast = Vote(issue=issue, index=index, **verdict)
    extra = {"latency_s": round(reply.latency_s, 4), "usage": reply.usage}
    return _store_vote(ctx, state, attempt, cast, reply.usage, extra)


def vote_error(
    ctx: Context, run_id: str, attempt: int, issue: int, index: int, reason: str
) -> dict[str, Any]:
    """Record an error vote (counts for neither side) when the validator cannot answer."""
    state, _, stored = ctx.store.vote_context(run_id, attempt, issue, index)
    if stored is not None or state is None:
        _finish(ctx, run_id, attempt, issue, index)
        return stored.model_dump() if stored else {"issue": issue, "index": index}
    cast = Vote(issue=issue, index=index, is_valid=None, reasoning=f"validator error: {reason}")
    return _store_vote(ctx, state, attempt, cast, Usage(), {})


def _store_vote(
    ctx: Context, state: RunState, attempt: int, cast: Vote, usage: Usage, extra: dict[str, Any]
) -> dict[str, Any]:
    run_id = state.run_id
    recorded = VoteCast(
        attempt=attempt,
        worker=ctx.worker,
        issue=cast.issue,
        index=cast.index,
        is_valid=cast.is_valid,
        reasoning=cast.reasoning,
        **extra,
    )
    stored = ctx.store.record_vote(run_id, attempt, cast, recorded, usage)
    if stored.votes is not None and ctx.over_budget(state):
        return cast.model_dump()  # the run ended FAILED: nothing left to decide
    # An issue is decided early here unless it is already, or this job tallies the round
    # (the tally decides every open issue, with the same rule and every vote).
    if stored.votes is not None and not stored.decided and stored.tally is None:
        config = state.spec.config
        counted = Tally.of(v.is_valid for v in stored.votes if v.issue == cast.issue)
        decision = decide_early(config, counted, planned=config.count)
        if decision is not None:
            _decide(ctx, run_id, attempt, cast.issue, decision.outcome, decision.reason, counted)
    if stored.last_of:
        slot = vote_slot(cast.issue, cast.index)
        tally(ctx, run_id, attempt, stored.last_of, claimant=slot, round_ctx=stored.tally)
    # DEBUG: a line per vote at INFO costs hundreds of threads a lock on the log handler, and
    # the run's provenance has every vote with its reasoning.
    log.debug(
        "run %s attempt %d: issue %d vote %d: %s",
        run_id,
        attempt,
        cast.issue,
        cast.index,
        cast.is_valid,
    )
    return cast.model_dump()


def _finish(
    ctx: Context,
    run_id: str,
    attempt: int,
    issue: int,
    index: int,
    skipped: VoteSkipped | None = None,
) -> None:
    """Mark a vote finished (with the `vote_skipped` event, if it was); tally its round here
    when it was the round's last vote (a redelivered job: again)."""
    last_of = ctx.store.finish_vote(run_id, attempt, issue, index, skipped)
    if last_of:
        tally(ctx, run_id, attempt, last_of, claimant=vote_slot(issue, index))


def _decide(
    ctx: Context, run_id: str, attempt: int, issue: int, outcome: str, reason: str, t: Tally
) -> IssueDecided | None:
    """Record an issue's decision; its `issue_decided` event, or None if a job beside this
    one decided the issue first."""
    decided = IssueDecided(
        attempt=attempt,
        worker=ctx.worker,
        issue=issue,
        outcome=outcome,
        reason=reason,
        passing=t.passing,
        failing=t.failing,
        errors=t.errors,
    )
    return decided if ctx.store.decide(run_id, attempt, issue, decided) else None


def tally(
    ctx: Context,
    run_id: str,
    attempt: int,
    round_: int,
    *,
    claimant: str = "tally",
    round_ctx: RoundContext | None = None,
) -> str:
    """Decide every issue from the votes in Redis; finish, route, or draw another round.

    A round is tallied once, by whoever claims it first once none of its votes is still out:
    the vote job that finished its last vote (`claimant`: that vote's slot), right away, or
    else the chord's `quorum.tally` (`tally`), which Celery sends once every vote job of the
    round has returned. A tally that comes while votes are still out (Celery counted a
    redelivered vote twice) raises `RoundIncompleteError`, to be retried once they are in.
    `round_ctx`: what the tally works with, if the claimant read it already (`record_vote`).
    """
    if round_ctx is None:
        round_ctx = ctx.store.round_context(run_id, attempt, round_, claimant)
    state = round_ctx.state
    if state is None:
        _gone(run_id)
        return "skipped"
    if state.attempt != attempt or state.status is not TaskStatus.VALIDATING:
        return "skipped"
    if round_ctx.tallier is None:
        raise RoundIncompleteError(f"round {round_} still waits for votes")
    if round_ctx.tallier != claimant:
        return "skipped"  # tallied by the job that finished its last vote
    decided = dict(round_ctx.decided)
    plan = _decide_round(ctx, state, attempt, round_ctx, decided)
    if plan:
        _launch(ctx, run_id, attempt, round_ + 1, plan)
        return "next round"
    return _conclude(ctx, state, attempt, round_ctx.votes, decided)


def _decide_round(
    ctx: Context,
    state: RunState,
    attempt: int,
    round_ctx: RoundContext,
    decided: dict[int, IssueDecided],
) -> Plan:
    """Decide each open issue that the round's votes settle, adding the decisions made to
    `decided`; plan the next round's votes, numbered after every vote planned so far, for
    the others."""
    config = state.spec.config
    by_issue: dict[int, list[Vote]] = defaultdict(list)
    launched: dict[int, int] = defaultdict(int)
    for cast in round_ctx.votes:
        by_issue[cast.issue].append(cast)
    for issue, index in [*round_ctx.planned, *((v.issue, v.index) for v in round_ctx.votes)]:
        launched[issue] = max(launched[issue], index + 1)
    plan: Plan = {}
    for issue in range(len(config.issues)):
        if issue in decided:
            continue
        counted = Tally.of(v.is_valid for v in by_issue[issue])
        decision = decide_after_round(config, counted)
        if decision is None:
            start = launched[issue]
            plan[issue] = list(range(start, start + next_round_size(config, counted)))
        else:
            made = _decide(
                ctx, state.run_id, attempt, issue, decision.outcome, decision.reason, counted
            )
            if made is not None:
                decided[issue] = made
    return plan


def _conclude(
    ctx: Context,
    state: RunState,
    attempt: int,
    votes: list[Vote],
    decided: dict[int, IssueDecided],
) -> str:
    """End the attempt on its decisions: `decided`, unless a job beside the tally decided an
    issue first, whose decision stands."""
    run_id, issues = state.run_id, state.spec.config.issues
    if len(decided) < len(issues):  # read what stands
        decided = ctx.store.decisions(run_id, attempt)
    failed = {issue: d for issue, d in decided.items() if d.outcome == "failed"}
    output = state.outputs[attempt]
    if not failed:
        ctx.store.transition(
            run_id,
            TaskStatus.SUCCESSFUL,
            attempt=attempt,
            fields={"result": output},
            events=[
                ValidationPassed(attempt=attempt, worker=ctx.worker),
                Succeeded(attempt=attempt, worker=ctx.worker),
            ],
        )
        log.info("run %s attempt %d: validation passed, run succeeded", run_id, attempt)
        return "succeeded"
    reasons = [
        f"{issues[v.issue]}: {v.reasoning}"
        for v in sorted(votes, key=lambda v: (v.issue, v.index))
        if v.issue in failed and v.is_valid is False
    ]
    reasons += [f"{issues[i]}: {d.reason}" for i, d in sorted(failed.items()) if d.reason]
    failure = FailedAttempt(output, reasons)
    ctx.store.record_failure(
        run_id,
        attempt,
        failure,
        ValidationFailed(
            attempt=attempt, worker=ctx.worker, failed_issues=sorted(failed), reasons=reasons
        ),
    )
    log.info("run %s attempt %d: validation failed on issues %s", run_id, attempt, sorted(failed))
    ctx.enqueue.route(run_id, attempt)
    return "failed"


def route(ctx: Context, run_id: str, attempt: int) -> str:
    """The retry router: retry with feedback while retries are left, else end FAILED."""
    state = _load(ctx, run_id)
    if state is None or state.status.terminal or state.attempt != attempt:
        return "skipped"
    if state.status is TaskStatus.RETRYING:  # redelivered after the retry was scheduled
        ctx.enqueue.task_node(run_id, attempt + 1)
        return "retrying"
    failure = state.failures.get(attempt)
    if failure is None:
        return "skipped"
    if attempt <= state.spec.config.max_retries:
        scheduled = RetryScheduled(
            attempt=attempt,
            worker=ctx.worker,
            next_attempt=attempt + 1,
            feedback=feedback_section([failure]),
        )
        if ctx.store.transition(run_id, TaskStatus.RETRYING, attempt=attempt, events=[scheduled]):
            log.info("run %s attempt %d: retry scheduled", run_id, attempt)
            ctx.enqueue.task_node(run_id, attempt + 1)
            return "retrying"
        return "skipped"
    reasons = [r for n in sorted(state.failures) for r in state.failures[n].reasonings]
    error = f"validation failed after {attempt} attempt(s)"
    fail_run(ctx, run_id, error, reasons, attempt, code="validation_failed")
    return "failed"
