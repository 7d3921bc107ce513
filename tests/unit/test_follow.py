"""Following a run: which call is out, and how a run that reached its deadline is named; which
nodes a workflow waits for."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from quorum.producer.follow import Ending, call_out, follow, nodes_out, ticker
from quorum.shared.models import RunSpec, SingleShotValidationConfig, TaskStatus
from quorum.shared.state import RunState
from quorum.shared.wfevents import NodeFinished, NodeReady, NodeSkipped, NodeStarted
from tests.unit.test_demo import ev


@pytest.mark.parametrize(
    ("events", "waiting_for"),
    [
        ([], "attempt 1: the task model's answer"),
        ([ev("submitted", 0)], "attempt 1: the task model's answer"),
        ([ev("attempt_started", 1)], "attempt 1: the task model's answer"),
        (
            [ev("attempt_started", 1), ev("output", 1)],
            "attempt 1: a validator's vote (0 in so far)",
        ),
        (
            [ev("output", 2), ev("vote", 2, issue=0, index=0), ev("vote", 2, issue=1, index=0)],
            "attempt 2: a validator's vote (2 in so far)",
        ),
        ([ev("output", 1), ev("validation_failed", 1)], "attempt 2: the task model's answer"),
        ([ev("output_invalid", 1)], "attempt 2: the task model's answer"),
        ([ev("output", 1), ev("retry_scheduled", 1)], "attempt 2: the task model's answer"),
    ],
)
def test_the_call_out_is_told_from_the_events(
    events: list[dict[str, Any]], waiting_for: str
) -> None:
    assert call_out(events) == waiting_for


def state(status: TaskStatus, *, attempt: int, code: str = "") -> RunState:
    spec = RunSpec(
        template="t",
        kwargs={},
        response_schema={"type": "object"},
        config=SingleShotValidationConfig(issues=["x"]),
        model="m",
        validator_model="m",
        timeout_s=30.0,
    )
    return RunState(run_id="r1", status=status, attempt=attempt, spec=spec, code=code)


def test_a_run_ended_by_its_deadline_is_named_with_its_attempt() -> None:
    ending = Ending(state(TaskStatus.FAILED, attempt=2, code="timeout"), 31.4, timed_out=True)
    assert ending.headline() == (
        "run r1 timed out after 31 s on attempt 2 (its deadline: 30 s); ended FAILED"
    )


def test_a_run_that_ended_in_time_gives_its_status() -> None:
    ending = Ending(state(TaskStatus.SUCCESSFUL, attempt=1), 4.321, timed_out=False)
    assert ending.headline() == "SUCCESSFUL in 4.32s"


class LateRun:
    """A run still live when its deadline passes: `watch` shows its events, then gives up."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.cancels = 0
        self.status = TaskStatus.RUNNING

    def state(self) -> RunState:
        return state(self.status, attempt=2)

    def watch(self, *, timeout: float | None = None) -> Any:
        assert timeout is not None and 30 < timeout <= 33  # the deadline plus the grace
        return iter(self.events)

    def cancel(self) -> bool:
        self.cancels += 1
        if self.status.terminal:
            return False
        self.status = TaskStatus.CANCELLED
        return True


def test_a_run_live_past_its_deadline_is_cancelled_and_named_timed_out() -> None:
    run = LateRun([ev("attempt_started", 1), ev("output", 1), ev("retry_scheduled", 1)])
    shown: list[str] = []
    ending = follow(run, submitted=time.monotonic(), show=shown.append)  # type: ignore[arg-type]
    assert run.cancels == 1
    assert ending.timed_out
    assert ending.state.status is TaskStatus.CANCELLED
    assert ending.headline().startswith("run r1 timed out after 0 s on attempt 2")
    assert [line.split(":")[0] for line in shown] == [
        "   [attempt 1] attempt_started",
        "   [attempt 1] output",
        "   [attempt 1] retry_scheduled",
    ]


class SlowRun(LateRun):
    """A run whose task model takes a while to answer."""

    def watch(self, *, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        yield self.events[0]
        time.sleep(0.35)
        self.status = TaskStatus.SUCCESSFUL
        yield from self.events[1:]


def test_progress_is_shown_while_a_call_is_out() -> None:
    run = SlowRun([ev("attempt_started", 1), ev("output", 1), ev("succeeded", 1)])
    shown: list[str] = []
    ending = follow(run, submitted=time.monotonic(), tick_s=0.1, show=shown.append)  # type: ignore[arg-type]
    assert not ending.timed_out and run.cancels == 1  # a no-op on an ended run
    ticks = [line for line in shown if line.startswith("   … ")]
    assert ticks and all(
        line.endswith("s: waiting for attempt 1: the task model's answer") for line in ticks
    )
    assert shown.index(ticks[0]) == 1  # after the attempt started, before its output


@pytest.mark.parametrize(
    ("events", "waiting_for"),
    [
        ([], "the next node to start"),
        ([NodeReady(node="extract")], "the next node to start"),
        ([NodeStarted(node="extract", runs=1)], "node 'extract' (1 run(s))"),
        (
            [
                NodeStarted(node="extract", runs=1),
                NodeFinished(node="extract", status="SUCCESSFUL"),
                NodeStarted(node="check", runs=2),
            ],
            "node 'check' (2 run(s))",
        ),
        (
            [NodeStarted(node="a", runs=1), NodeStarted(node="b", runs=3)],
            "node 'a' (1 run(s)), node 'b' (3 run(s))",
        ),
        (
            [NodeStarted(node="a", runs=1), NodeFinished(node="a", status="FAILED")],
            "the next node to start",
        ),
        ([NodeSkipped(node="summary")], "the next node to start"),
    ],
)
def test_the_nodes_out_are_told_from_the_workflow_events(
    events: list[Any], waiting_for: str
) -> None:
    assert nodes_out(events) == waiting_for


def test_the_ticker_shows_the_time_and_what_is_out_until_stopped() -> None:
    shown: list[str] = []
    stop = ticker(lambda: "node 'check' (2 run(s))", time.monotonic(), 0.05, shown.append)
    time.sleep(0.3)
    stop.set()
    time.sleep(0.1)
    count = len(shown)
    time.sleep(0.15)
    assert count >= 1 and len(shown) == count  # none after the stop
    assert all(
        line.startswith("   … ") and line.endswith(" s: waiting for node 'check' (2 run(s))")
        for line in shown
    )
