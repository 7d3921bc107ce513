"""What a run's steps work with: the store, the LLM, the next-job sender (an `Enqueuer`,
which the worker implements with Celery and the unit tests with a list), the price table and
limits, and how a step ends a run `FAILED`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from quorum.shared import budget
from quorum.shared.events import Failed
from quorum.shared.keys import workflow_of
from quorum.shared.llm import Completion
from quorum.shared.models import TaskStatus, Usage
from quorum.shared.sandbox import Limits
from quorum.shared.settings import Price
from quorum.shared.state import RunState
from quorum.shared.store import RunStore

__all__ = ["LLM", "Context", "Enqueuer", "Plan", "fail_run"]

log = logging.getLogger(__name__)

Plan = dict[int, list[int]]
"""Issue index → vote indices to draw in a round."""


class Enqueuer(Protocol):
    """Sends the next job of a run."""

    def task_node(self, run_id: str, attempt: int) -> None:
        """Send `quorum.task_node`."""

    def voting_round(self, run_id: str, attempt: int, round_: int, plan: Plan) -> None:
        """Send a round: a `quorum.vote` per planned vote."""

    def prepare_round(
        self, run_id: str, attempt: int, round_: int, plan: Plan
    ) -> Callable[[], None]:
        """Start building that round now; the function returned sends it (`voting_round`)."""

    def route(self, run_id: str, attempt: int) -> None:
        """Send `quorum.route`."""

    def advance(self, workflow_id: str) -> None:
        """Send `quorum.advance`: a scheduling step of a workflow (`shared.workflows`)."""


class LLM(Protocol):
    """What the steps need of the LLM gateway."""

    def complete_json(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        schema: dict[str, Any],
        name: str,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
    ) -> Completion:
        """Ask for JSON fitting `schema` (with the run's settings, where set)."""
        ...


@dataclass(frozen=True)
class Context:
    """What a step works with: the store, the model, the next-job sender, the worker's name,
    the price table, the largest and deepest output accepted, the largest kwargs, and what a
    template may cost."""

    store: RunStore
    llm: LLM
    enqueue: Enqueuer
    worker: str = ""
    prices: Mapping[str, Price] = field(default_factory=dict)
    max_output_bytes: int = 1_000_000
    max_payload_bytes: int = 1_000_000
    """The largest kwargs a run is made with: a submit's, and a workflow node's resolved from
    its upstream outputs (`shared.workflows`)."""
    max_depth: int = 64
    template_limits: Limits = field(default_factory=Limits)
    call_lease_s: float = 0.0
    """How long a task job holds the lease of its attempt's call (0: no lease): longer than
    one call may take, so that a duplicate of the job finds it held and does not call."""
    progress_after_s: float = 0.0
    """How old a run's last change of status (which marked progress on the sweep's index)
    grows before its votes mark progress again (0: every vote marks it). A quarter of the
    sweep's stall threshold: a round that lasts longer is kept from looking stalled by its
    votes, and a short one costs no mark per vote."""

    def call(
        self, state: RunState, *, model: str, messages: list[dict[str, str]], **kw: Any
    ) -> Completion | None:
        """Call the LLM within the run's budget, and bill the call to the run.

        Returns None, having ended the run FAILED (`budget_exceeded`), when the call would go
        over the budget.
        """
        price = self.prices.get(model)
        if budget.limited(state.spec):
            spent = self._spent(state.run_id) if workflow_of(state.run_id) else state.usage
            over = budget.exceeded(state.spec, spent, budget.estimate(messages, price))
            if over is not None:
                fail_run(self, state.run_id, over, [over], code="budget_exceeded")
                return None
        reply = self.llm.complete_json(model=model, messages=messages, **kw)
        usage = budget.priced(reply.usage, price)
        return Completion(
            content=reply.content, usage=usage, latency_s=reply.latency_s, truncated=reply.truncated
        )

    def claim_call(self, run_id: str, attempt: int) -> bool:
        """Whether this job may call the task model for the attempt (it took the lease)."""
        if self.call_lease_s <= 0:
            return True
        return self.store.claim_call(run_id, attempt, hold_s=self.call_lease_s)

    def _spent(self, run_id: str) -> Usage:
        """What counts against the run's budget: its own usage, or for a workflow's node run
        its workflow's (every node's runs together)."""
        workflow = workflow_of(run_id)
        return self.store.usage(run_id) if workflow is None else self.store.workflow_usage(workflow)

    def run_ended(self, run_id: str) -> None:
        """After a run's end: a workflow's node run takes its workflow's scheduling step.
        Every step that ends a run calls it once the end happened: `fail_run`, a tally's
        success, a vote-free run's success (`checks.succeed`)."""
        workflow = workflow_of(run_id)
        if workflow is not None:
            self.enqueue.advance(workflow)

    def over_budget(self, state: RunState) -> bool:
        """End the run FAILED (`budget_exceeded`) if what it has spent is over its budget."""
        if not budget.limited(state.spec):
            return False
        over = budget.exceeded(state.spec, self._spent(state.run_id))
        if over is not None:
            fail_run(self, state.run_id, over, [over], code="budget_exceeded")
        return over is not None


def fail_run(
    ctx: Context,
    run_id: str,
    error: str,
    reasons: list[str],
    attempt: int | None = None,
    *,
    code: str = "llm_error",
) -> bool:
    """End the run FAILED with `error`, every failure reasoning and a one-word `code`
    (`validation_failed`, `timeout`, `budget_exceeded`, `llm_error`, `internal`), unless it
    has already ended."""
    failed = ctx.store.transition(
        run_id,
        TaskStatus.FAILED,
        attempt=attempt,
        fields={"error": error, "reasons": reasons, "code": code},
        events=[
            Failed(attempt=attempt or 0, worker=ctx.worker, error=error, reasons=reasons, code=code)
        ],
    )
    if failed:
        log.info("run %s: failed: %s", run_id, error)
        ctx.run_ended(run_id)
    return failed
