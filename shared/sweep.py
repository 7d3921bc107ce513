"""The sweep: no run stays stuck. Run by one worker at a time, every few seconds.

- A live run past its deadline (submit's `timeout_s`, else `QUORUM_RUN_TIMEOUT_S`) ends
  `FAILED` with code `timeout`.
- A webhook delivery whose lease ran out is sent again (`shared.webhooks`).
- A live run that has made no progress (no transition, vote or decision) for
  `QUORUM_STALL_AFTER_S` has lost its job: the broker lost a message. Its current step is
  sent again; every step is idempotent, so a job that was only slow and still runs does no
  harm.
- A live workflow with no scheduling step for `QUORUM_STALL_AFTER_S` (a node run ended but
  the job that would have sent `quorum.advance` died first) gets a step; steps are
  idempotent.

The worker side runs `Sweeper` in a daemon thread; one worker of many sweeps per interval
(`RunStore.claim_sweep`, a Redis `SET NX PX`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from quorum.shared.errors import QuorumError, RunNotFoundError
from quorum.shared.flow import Context, fail_run
from quorum.shared.models import TaskStatus
from quorum.shared.state import RunState
from quorum.shared.wfstore import WorkflowStore

__all__ = ["Sweeper", "expire", "redrive_webhooks", "resume", "sweep"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Swept:
    """What one sweep did."""

    timed_out: int = 0
    resumed: int = 0
    webhooks: int = 0


def _live(ctx: Context, run_id: str) -> RunState | None:
    try:
        state = ctx.store.load(run_id)
    except RunNotFoundError:
        state = None
    if state is None or state.status.terminal:
        ctx.store.unindex(run_id)
        if state is not None:
            ctx.store.recover_webhook(run_id)  # its end's next step may not have run
        return None
    return state


def expire(ctx: Context, run_id: str, *, now: float) -> bool:
    """End a live run past its deadline `FAILED` with code `timeout`."""
    state = _live(ctx, run_id)
    if state is None:
        return False
    took = now - state.created_at
    error = f"timeout: the run did not finish within its deadline ({took:.0f} s after submit)"
    return fail_run(ctx, run_id, error, [error], code="timeout")


def resume(ctx: Context, run_id: str, *, now: float) -> str | None:
    """Send a stalled run's current step again; return the job sent, if any."""
    state = _live(ctx, run_id)
    if state is None:
        return None
    attempt = state.attempt
    if state.status is TaskStatus.PENDING:
        ctx.enqueue.task_node(run_id, 1)
        step = "task_node"
    elif state.status is TaskStatus.RETRYING or attempt in state.failures:
        ctx.enqueue.route(run_id, attempt)
        step = "route"
    else:  # RUNNING calls again; VALIDATING relaunches the votes (stored ones count once)
        ctx.enqueue.task_node(run_id, attempt)
        step = "task_node"
    ctx.store.touch(run_id, now)
    log.warning(
        "run %s attempt %d: no progress in %s for %.0f s, %s sent again",
        run_id,
        attempt,
        state.status.value,
        now - state.updated_at,
        step,
    )
    return step


def sweep(ctx: Context, *, now: float, stall_after_s: float, limit: int = 500) -> Swept:
    """End the runs past their deadline, then resume the stalled ones."""
    timed_out = sum(expire(ctx, r, now=now) for r in ctx.store.past_deadline(now, limit=limit))
    stalled = ctx.store.stalled(now - stall_after_s, limit=limit)
    resumed = sum(resume(ctx, r, now=now) is not None for r in stalled)
    ws = WorkflowStore.of(ctx.store)
    for workflow_id in ws.live(now - stall_after_s, limit=limit):
        ws.touch(workflow_id)
        ctx.enqueue.advance(workflow_id)
        resumed += 1
    return Swept(timed_out=timed_out, resumed=resumed, webhooks=redrive_webhooks(ctx, now=now))


def redrive_webhooks(ctx: Context, *, now: float, limit: int = 500) -> int:
    """Send `quorum.webhook` again for every delivery whose lease ran out (a worker died
    while it delivered, or its job was lost); each is leased anew first."""
    due = ctx.store.due_webhooks(now, limit=limit)
    for run_id in due:
        ctx.store.schedule_webhook(run_id, now + ctx.store.webhook_lease_s)
        ctx.store.send_webhook(run_id)
    if due:
        log.info("sweep: %d webhook deliveries sent again", len(due))
    return len(due)


class Sweeper:
    """A daemon thread that sweeps every `interval_s`, when this process wins the claim."""

    def __init__(
        self, context: Callable[[], Context], *, interval_s: float, stall_after_s: float
    ) -> None:
        self._context = context
        self.interval_s = interval_s
        self.stall_after_s = stall_after_s
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="quorum-sweep", daemon=True)

    def start(self) -> None:
        """Start sweeping in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current sweep."""
        self._stop.set()

    def once(self) -> Swept | None:
        """Sweep now if no other worker has this interval; None when another has it."""
        ctx = self._context()
        if not ctx.store.claim_sweep(self.owner, hold_s=self.interval_s * 0.9):
            return None
        return sweep(ctx, now=time.time(), stall_after_s=self.stall_after_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                swept = self.once()
            except QuorumError as exc:
                log.warning("sweep skipped: %s", exc)
                continue
            except Exception:  # the sweep must outlive any one bad run
                log.exception("sweep failed")
                continue
            if swept and (swept.timed_out or swept.resumed):
                log.info("sweep: %d run(s) timed out, %d resumed", swept.timed_out, swept.resumed)
