"""A run as stored in its Redis hash: the parsed state, its usage counters, its events."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from quorum.shared.errors import RunUnreadableError
from quorum.shared.models import RunSpec, TaskStatus, Usage
from quorum.shared.prompts import FailedAttempt

__all__ = [
    "SHARED_SPEC_CHARS",
    "USAGE_FIELDS",
    "RunState",
    "read_state",
    "shared_spec",
    "usage_counters",
    "usage_of",
]

TOKEN_FIELDS = tuple(n for n in Usage.model_fields if n not in ("cost_usd", "total_tokens"))
"""The token counts kept as counters of their own. The total is the prompt's and the
completion's tokens, plus `usage:extra_tokens` when a provider counts more (never, for
OpenAI's): one counter fewer to add to per call."""
NANO = 1_000_000_000  # cost is summed in Redis as integer nano-dollars, exactly

SHARED_SPEC_CHARS = 65_536
"""The largest stored spec a worker process parses once for every job of its run that only
reads it (`shared_spec`): the run's votes. Larger ones are parsed by each job."""


@functools.lru_cache(maxsize=64)
def shared_spec(spec_json: str) -> RunSpec:
    """The spec stored as `spec_json`, parsed once per process: one object for every vote of
    the run (a spec never changes, and votes only read it)."""
    return RunSpec.model_validate_json(spec_json)


def usage_counters(usage: Usage | None) -> list[tuple[str, int]]:
    """The run-hash counters a call adds to: `usage:<tokens field>`, `usage:extra_tokens` and
    `usage:cost_nusd`, those it adds nothing to left out."""
    usage = usage or Usage()
    counters = [(f"usage:{name}", getattr(usage, name)) for name in TOKEN_FIELDS]
    total = usage.total_tokens
    extra = total and total - usage.prompt_tokens - usage.completion_tokens
    counters += [("usage:extra_tokens", extra), ("usage:cost_nusd", round(usage.cost_usd * NANO))]
    return [(name, n) for name, n in counters if n]


USAGE_FIELDS = (
    *(f"usage:{name}" for name in TOKEN_FIELDS),
    "usage:extra_tokens",
    "usage:cost_nusd",
)
"""The run-hash fields that hold its usage."""


def usage_of(raw: dict[str, Any]) -> Usage:
    """The run's usage from its hash counters."""
    tokens = {name: int(raw.get(f"usage:{name}") or 0) for name in TOKEN_FIELDS}
    extra = int(raw.get("usage:extra_tokens") or 0)
    return Usage(
        **tokens,
        total_tokens=tokens["prompt_tokens"] + tokens["completion_tokens"] + extra,
        cost_usd=int(raw.get("usage:cost_nusd") or 0) / NANO,
    )


@dataclass
class RunState:
    """A run as read from its hash."""

    run_id: str
    status: TaskStatus
    attempt: int
    spec: RunSpec
    result: Any = None
    error: str = ""
    code: str = ""
    reasons: list[str] = field(default_factory=list)
    last_output: Any = None
    usage: Usage = field(default_factory=Usage)
    created_at: float = 0.0
    updated_at: float = 0.0
    outputs: dict[int, Any] = field(default_factory=dict)
    failures: dict[int, FailedAttempt] = field(default_factory=dict)
    spec_json: str = ""
    """The spec as stored: what a vote's cached task prompt is keyed by (`ballot`)."""

    @classmethod
    def parse(cls, run_id: str, raw: dict[str, str], *, shared: bool = False) -> RunState:
        """Build from the fields of the run's hash; `shared`: with the process's one object
        for its spec (`shared_spec`), for a job that only reads it."""
        stored = raw["spec"]
        if shared and len(stored) <= SHARED_SPEC_CHARS:
            spec = shared_spec(stored)
        else:
            spec = RunSpec.model_validate_json(stored)
        outputs: dict[int, Any] = {}
        failures: dict[int, FailedAttempt] = {}
        for name, value in raw.items():
            kind, _, number = name.partition(":")
            if kind == "output" and number:
                outputs[int(number)] = json.loads(value)
            elif kind == "failure" and number:
                failures[int(number)] = FailedAttempt(**json.loads(value))
        for attempt, failure in failures.items():
            outputs.setdefault(attempt, failure.output)
        return cls(
            run_id=run_id,
            status=TaskStatus(raw["status"]),
            attempt=int(raw.get("attempt", 0)),
            spec=spec,
            result=json.loads(raw["result"]) if "result" in raw else None,
            error=raw.get("error", ""),
            code=raw.get("code", ""),
            reasons=json.loads(raw.get("reasons", "[]")),
            last_output=outputs[max(outputs)] if outputs else None,
            usage=usage_of(raw),
            created_at=float(raw.get("created_at", 0)),
            updated_at=float(raw.get("updated_at", 0)),
            outputs=outputs,
            failures=failures,
            spec_json=stored,
        )


def read_state(run_id: str, raw: dict[str, str]) -> RunState:
    """The run from its hash; `RunUnreadableError` if what is stored does not parse."""
    try:
        return RunState.parse(run_id, raw)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise RunUnreadableError(
            f"run {run_id!r} is stored but cannot be read back: {type(exc).__name__}: "
            f"{str(exc)[:300]}"
        ) from exc
