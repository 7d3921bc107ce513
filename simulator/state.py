"""Mutable server state: the call log, per-key call counters and concurrency stats."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from quorum.simulator.config import SimConfig


@dataclass(slots=True, kw_only=True)
class CallRecord:
    """One logged call; ``status`` and ``ended`` stay None while it is in flight."""

    n: int
    kind: str
    scope: str | None
    issue: str | None
    attempt: int | None
    verdict: bool | None = None
    fault: str | None = None
    status: int | None = None
    started: float
    ended: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data."""
        return {
            "n": self.n,
            "kind": self.kind,
            "scope": self.scope,
            "issue": self.issue,
            "attempt": self.attempt,
            "verdict": self.verdict,
            "fault": self.fault,
            "status": self.status,
            "started": self.started,
            "ended": self.ended,
        }


class SimState:
    """Holds the live config, the call log and counters for one simulator app."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.calls: list[CallRecord] = []
        self.counters: dict[tuple[Any, ...], int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._next_n = 1

    def take(self, key: tuple[Any, ...]) -> int:
        """Return how many calls ``key`` has seen so far, and count this one."""
        index = self.counters.get(key, 0)
        self.counters[key] = index + 1
        return index

    def begin(
        self, *, kind: str, scope: str | None, issue: str | None, attempt: int | None
    ) -> CallRecord:
        """Log a call as in flight and return its record."""
        record = CallRecord(
            n=self._next_n,
            kind=kind,
            scope=scope,
            issue=issue,
            attempt=attempt,
            started=time.time(),
        )
        self._next_n += 1
        self.calls.append(record)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return record

    def end(self, record: CallRecord, *, status: int) -> None:
        """Mark a call as finished with an HTTP ``status``."""
        record.status = status
        record.ended = time.time()
        self.in_flight -= 1

    def clear(self) -> None:
        """Forget logged calls and counters; in-flight calls still finish normally."""
        self.calls = []
        self.counters = {}
        self.max_in_flight = self.in_flight
        self._next_n = 1

    def stats(self) -> dict[str, int]:
        """Return ``{"calls", "in_flight", "max_in_flight"}``."""
        return {
            "calls": len(self.calls),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }
