"""Following one run to its end, as `quorum demo` does: its events as they happen, a line of
progress while a model call is out, and its own deadline as the only time bound. A workflow is
followed the same way, its progress told by node.

A run's deadline is the `timeout_s` it was submitted with: past it a worker's sweep ends the
run `FAILED` with code `timeout`. The follower waits for that until `grace_s` after the
deadline, then cancels the run itself, so a run never outlives its deadline by more than the
grace, whichever side ends it. Once the run has ended, the follower waits for the run's jobs
that are still at work (a model call in flight ends on its own, its result unused): the next
run then starts with nothing of this one left running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from quorum.producer.client import TaskClient, TaskRun
from quorum.producer.terminal import describe
from quorum.shared.events import Event, OtherEvent
from quorum.shared.state import RunState
from quorum.shared.wfevents import OtherWorkflowEvent, WorkflowEvent

__all__ = ["Ending", "call_out", "follow", "nodes_out", "settle", "ticker"]

Show = Callable[[str], None]


@dataclass(frozen=True)
class Ending:
    """How a followed run ended."""

    state: RunState
    seconds: float  # from submit to the end, as the follower saw it
    timed_out: bool  # ended by its deadline: the sweep's timeout, or cancelled past it

    def headline(self) -> str:
        """One line: the run's status, or that its deadline ended it, and when."""
        if self.timed_out:
            limit = self.state.spec.timeout_s
            given = f" (its deadline: {limit:.0f} s)" if limit else ""
            return (
                f"run {self.state.run_id} timed out after {self.seconds:.0f} s on attempt "
                f"{self.state.attempt}{given}; ended {self.state.status.value}"
            )
        return f"{self.state.status.value} in {self.seconds:.2f}s"


def call_out(events: Sequence[Event | OtherEvent]) -> str:
    """Which model call a live run is waiting for, told from its events so far."""
    attempt = max((e["attempt"] for e in events if e.get("attempt")), default=0)
    mine = [e for e in events if e.get("attempt") == attempt]
    kinds = {e["type"] for e in mine}
    if attempt == 0 or kinds & {"validation_failed", "output_invalid", "retry_scheduled"}:
        return f"attempt {attempt + 1}: the task model's answer"
    if "output" not in kinds:
        return f"attempt {attempt}: the task model's answer"
    votes = sum(e["type"] == "vote" for e in mine)
    return f"attempt {attempt}: a validator's vote ({votes} in so far)"


def nodes_out(events: Sequence[WorkflowEvent | OtherWorkflowEvent]) -> str:
    """Which nodes of a live workflow have runs out, told from its events so far."""
    out: dict[str, int] = {}
    for event in events:
        node = getattr(event, "node", "")
        if event.type == "node_started":
            out[node] = getattr(event, "runs", 1)
        elif event.type in ("node_finished", "node_skipped"):
            out.pop(node, None)
    if not out:
        return "the next node to start"
    return ", ".join(f"node {node!r} ({runs} run(s))" for node, runs in out.items())


def ticker(
    waiting_for: Callable[[], str], started: float, tick_s: float, show: Show
) -> threading.Event:
    """Start a thread that shows, every `tick_s`, the time since `started` and what is out
    (`waiting_for()`); set the returned event to stop it."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(tick_s):
            show(f"   … {time.monotonic() - started:.0f} s: waiting for {waiting_for()}")

    threading.Thread(target=tick, name="quorum-demo-progress", daemon=True).start()
    return stop


def follow(
    run: TaskRun,
    *,
    submitted: float,
    grace_s: float = 3.0,
    tick_s: float = 5.0,
    show: Show = print,
) -> Ending:
    """Show the run's events until it ends or its deadline (plus `grace_s`) passes; a run
    still live then is cancelled. `submitted` is the `time.monotonic()` of the submit."""
    limit = run.state().spec.timeout_s  # None: the store's default deadline, which it enforces
    deadline = None if limit is None else submitted + limit + grace_s
    seen: list[Event | OtherEvent] = []
    stop = ticker(lambda: call_out(seen), submitted, tick_s, show)
    try:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        for event in run.watch(timeout=left):
            seen.append(event)
            show("   " + describe(event))
    finally:
        stop.set()
    cancelled = run.cancel()  # a no-op (False) for a run that has ended
    seconds = time.monotonic() - submitted
    state = run.state()
    return Ending(state, seconds, timed_out=cancelled or state.code == "timeout")


def settle(client: TaskClient, run: TaskRun, *, timeout_s: float, show: Show = print) -> bool:
    """Wait until no worker runs a job of the ended `run`; False if one still does after
    `timeout_s` (its model call outlived the wait)."""
    deadline = time.monotonic() + timeout_s
    shown = -1
    while (busy := client.jobs_running(run.id)) and time.monotonic() < deadline:
        if busy != shown:
            show(f"   … {busy} job(s) of this run still at work; waiting for their calls to end")
            shown = busy
        time.sleep(0.5)
    return not busy
