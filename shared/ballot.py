"""The voting steps: cast (or skip) one vote, and tally a round once its last vote is in.

A vote job asks one validator about one issue, unless the run, the attempt or the issue no
longer needs it; the job that finishes a round's last vote tallies the round at once (the
claim protocol is `shared.rounds`'). A tally decides each open issue by the config's rule
(`shared.voting`), then ends the attempt or sends the next round.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import defaultdict
from typing import Any

from quorum.shared import budget
from quorum.shared.context import Context
from quorum.shared.errors import RoundIncompleteError, TransientLLMError
from quorum.shared.events import (
    IssueDecided,
    Succeeded,
    ValidationFailed,
    ValidationPassed,
    VoteCast,
    VoteSkipped,
)
from quorum.shared.flow import Plan, Step, gone, launch, parse_output
from quorum.shared.models import TaskStatus, Usage, Vote
from quorum.shared.payload import payload_problem
from quorum.shared.prompts import VOTE_SCHEMA, FailedAttempt, render_task_prompt, validator_messages
from quorum.shared.responses import result_field
from quorum.shared.rounds import RoundContext, vote_slot
from quorum.shared.sandbox import Limits
from quorum.shared.state import SHARED_SPEC_CHARS, RunState, shared_spec
from quorum.shared.voting import (
    Tally,
    decide_after_round,
    decide_early,
    early_rule,
    next_round_size,
)

__all__ = ["parse_vote", "tally", "vote", "vote_error"]

log = logging.getLogger(__name__)

_VOTE_FIELDS = VOTE_SCHEMA["properties"].keys()


def _vote_skip_reason(state: RunState | None, attempt: int, decided: bool) -> str | None:
    if state is None:
        return "run gone"
    if state.status.terminal:
        return f"run {state.status.value.lower()}"
    if state.attempt != attempt or state.status is not TaskStatus.VALIDATING:
        return "attempt stale"
    return "issue decided" if decided else None


def _task_prompt(state: RunState, limits: Limits) -> str:
    """The run's task prompt, which each of its votes shows the validator: rendered once per
    run in a worker process (the spec never changes), unless the spec is large."""
    spec = state.spec
    if not state.spec_json or len(state.spec_json) > SHARED_SPEC_CHARS:
        return render_task_prompt(spec.template, spec.kwargs, limits)
    return _rendered(state.spec_json, limits)


@functools.lru_cache(maxsize=64)
def _rendered(spec_json: str, limits: Limits) -> str:
    spec = shared_spec(spec_json)
    return render_task_prompt(spec.template, spec.kwargs, limits)


def parse_vote(content: str, *, max_bytes: int | None = None) -> tuple[Any, str | None]:
    """`parse_output` of a validator's answer against `VOTE_SCHEMA`, in fewer steps for the
    answer every validator gives: an object of exactly a boolean `is_valid` and a string
    `reasoning` (checking it against the schema cost more than the rest of the vote's own
    work). Anything else goes through `parse_output`, for its error."""
    try:
        verdict = json.loads(content)
    except (ValueError, RecursionError):
        verdict = None
    if (
        type(verdict) is dict
        and verdict.keys() == _VOTE_FIELDS
        and type(verdict["is_valid"]) is bool
        and type(verdict["reasoning"]) is str
        and payload_problem(verdict["reasoning"], what="", max_depth=1) is None
        and (max_bytes is None or len(content.encode(errors="replace")) <= max_bytes)
    ):
        return verdict, None
    return parse_output(content, VOTE_SCHEMA, max_bytes=max_bytes)


def vote(ctx: Context, run_id: str, attempt: int, issue: int, index: int) -> dict[str, Any]:
    """Ask one validator about one issue, unless the run or issue no longer needs it."""
    state, decided, stored, finished = ctx.store.vote_context(run_id, attempt, issue, index)
    if finished:  # a redelivered vote job
        _finish(ctx, run_id, attempt, issue, index)
        return stored.model_dump() if stored else {"issue": issue, "index": index}
    reason = _vote_skip_reason(state, attempt, decided)
    if reason is not None or state is None:
        skip = VoteSkipped(
            attempt=attempt, worker=ctx.worker, issue=issue, index=index, reason=reason
        )
        _finish(ctx, run_id, attempt, issue, index, skip)
        return {"issue": issue, "index": index, "skipped": reason}
    spec = state.spec
    prompt = _task_prompt(state, ctx.template_limits)
    messages = validator_messages(prompt, state.outputs[attempt], spec.voting.issues[issue])
    reply = ctx.call(
        state,
        model=spec.validator_model,
        messages=messages,
        schema=VOTE_SCHEMA,
        name="quorum_vote",
    )
    if reply is None:
        return {"issue": issue, "index": index, "skipped": "budget exceeded"}
    verdict, error = parse_vote(reply.content, max_bytes=ctx.max_output_bytes)
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
    state, _, stored, finished = ctx.store.vote_context(run_id, attempt, issue, index)
    if finished or state is None:
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
    progress = time.time() - state.updated_at >= ctx.progress_after_s
    # A run with a budget bills each vote as it ends, so that the next call's check sees it;
    # the others bill a round's votes together when it closes (two counters fewer per vote).
    spec = state.spec
    bill_now = budget.limited(spec)
    config = spec.voting
    # The record decides the issue early in its own step; a run with a budget checks it first.
    early = None if bill_now else early_rule(config)
    stored = ctx.store.record_vote(
        run_id,
        attempt,
        cast,
        recorded,
        usage,
        max_votes=config.max_votes,
        progress=progress,
        bill_now=bill_now,
        early=early,
    )
    if stored.votes is not None and ctx.over_budget(state):
        return cast.model_dump()  # the run ended FAILED: nothing left to decide
    # An issue is decided early unless it is already, or this job tallies the round (the
    # tally decides every open issue, with the same rule and every vote).
    if early is None and stored.votes is not None and not stored.decided and stored.tally is None:
        counted = Tally.of(v.is_valid for v in stored.votes)
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
) -> Step:
    """Decide every issue from the votes in Redis; finish, route, or draw another round.

    A round is tallied once, by whoever claims it first once none of its votes is still out:
    the vote job that finished its last vote (`claimant`: that vote's slot), right away, or a
    `quorum.tally` job that someone sent (`tally`). A tally asked for while votes are still
    out raises `RoundIncompleteError`, to be retried once they are in.
    `round_ctx`: what the tally works with, if the claimant read it already (`record_vote`).
    """
    if round_ctx is None:
        round_ctx = ctx.store.round_context(run_id, attempt, round_, claimant)
    state = round_ctx.state
    if state is None:
        gone(run_id)
        return Step.SKIPPED
    if state.attempt != attempt or state.status is not TaskStatus.VALIDATING:
        return Step.SKIPPED
    if round_ctx.tallier is None:
        raise RoundIncompleteError(f"round {round_} still waits for votes")
    if round_ctx.tallier != claimant:
        return Step.SKIPPED  # tallied by the job that finished its last vote
    planned = round_ctx.plan_of(round_ + 1)
    if planned:  # tallied before (a job run again, a relaunch): send that round as planned
        launch(ctx, run_id, attempt, round_ + 1, planned)
        return Step.NEXT_ROUND
    decided = dict(round_ctx.decided)
    plan = _decide_round(ctx, state, attempt, round_ctx, decided)
    if plan:
        launch(ctx, run_id, attempt, round_ + 1, plan)
        return Step.NEXT_ROUND
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
    config = state.spec.voting
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
) -> Step:
    """End the attempt on its decisions: `decided`, unless a job beside the tally decided an
    issue first, whose decision stands."""
    run_id, issues = state.run_id, state.spec.voting.issues
    if len(decided) < len(issues):  # read what stands
        decided = ctx.store.decisions(run_id, attempt)
    failed = {issue: d for issue, d in decided.items() if d.outcome == "failed"}
    output = state.outputs[attempt]
    if not failed:
        ended = ctx.store.transition(
            run_id,
            TaskStatus.SUCCESSFUL,
            attempt=attempt,
            fields={"result": result_field(state.spec.wrapped, output)},
            events=[
                ValidationPassed(attempt=attempt, worker=ctx.worker),
                Succeeded(attempt=attempt, worker=ctx.worker),
            ],
        )
        log.info("run %s attempt %d: validation passed, run succeeded", run_id, attempt)
        if ended:
            ctx.run_ended(run_id)
        return Step.SUCCEEDED
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
    return Step.FAILED
