"""What `quorum bench` shows while a workload runs: the runs finished so far.

The driver (`quorum.bench.driver`) prints `DONE <n>` as its measured runs finish, at most
every `TICK_S` and always for the last one, so that telling costs its measured CPU nearly
nothing; the runner reads those lines while it waits for the driver's `RESULT` and moves a
Rich progress line: the workload, a bar, runs finished of all, and the time it has taken.
On a terminal only, like any live view; the summary line each workload prints when it ends
is the same either way.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["DONE", "TICK_S", "Ticker", "follow", "workload_progress"]

TICK_S = 0.25
"""The driver tells the runs finished at most this often."""
DONE = re.compile(r"^(?:RESULT (?P<result>.*)|DONE (?P<done>\d+))$")


class Ticker:
    """Counts a driver's finished runs and prints `DONE <n>`, at most every `every_s` and
    always for the last one."""

    def __init__(self, total: int, *, every_s: float = TICK_S) -> None:
        self.total = total
        self.every_s = every_s
        self.done = 0
        self._told = float("-inf")

    def tick(self) -> None:
        """One more run has finished."""
        self.done += 1
        now = time.monotonic()
        if self.done >= self.total or now - self._told >= self.every_s:
            self._told = now
            print(f"DONE {self.done}", flush=True)


class Lines(Protocol):
    """What `follow` reads a driver through (`ManagedProcess`)."""

    def wait_for(self, pattern: str, *, timeout_s: float = ...) -> re.Match[str]: ...


@contextmanager
def workload_progress(console: Console, what: str, runs: int) -> Iterator[Progress]:
    """A progress line for one workload, gone once it ends (its summary line follows)."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with progress:
        progress.add_task(what, total=runs)
        yield progress


def follow(driver: Lines, progress: Progress, *, timeout_s: float) -> str:
    """Move `progress` as the driver's runs finish; the driver's `RESULT` JSON."""
    deadline = time.monotonic() + timeout_s
    task = progress.task_ids[0]
    while True:
        match = driver.wait_for(DONE.pattern, timeout_s=max(deadline - time.monotonic(), 0.001))
        if match["result"] is not None:
            return match["result"]
        progress.update(task, completed=int(match["done"]))
