"""The LLM misbehaves on 20% of calls: 429 with Retry-After, 500, hangs past the timeout,
invalid JSON, JSON that violates the schema. Every run ends; transient faults never reach a
prompt; invalid output goes through the semantic lane (retried with feedback)."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import pytest

from tests.faults.harness import Fleet, Submitted, evaluate, submit_mix, wait_terminal

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

FAULTS = "429,500,timeout,invalid_json,schema"
# What a transient fault looks like in an error message; none may reach a prompt.
TRANSIENT_MARKS = ("HTTP 429", "HTTP 500", "Rate limit", "unreachable", "Timeout", "timed out")
SEMANTIC_MARKS = ("not valid JSON", "does not fit the schema")
VALIDATOR_DOWN = "validator unavailable"


def _task_calls(fleet: Fleet) -> dict[str, list[dict[str, Any]]]:
    calls: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for call in fleet.sim.request("GET", "/_sim/calls"):
        if call["kind"] == "task":
            calls[call["scope"]].append(call)
    return calls


def _explainer(tasks: dict[str, list[dict[str, Any]]]) -> Any:
    def explained(item: Submitted, state: Any) -> str | None:
        """A run that failed where its script would pass is right when the simulator spent
        one of its attempts on an injected invalid output (so the retries ran out), or
        kept its validators or model unreachable past the transient retries."""
        reasons = state.reasons or [state.error]
        injected = any(c["fault"] in ("invalid_json", "schema") for c in tasks[item.scope])
        if injected and any(m in r for r in reasons for m in SEMANTIC_MARKS[:2]):
            return None
        if all(VALIDATOR_DOWN in r for r in reasons):
            return None
        if state.code == "llm_error" and "after" in state.error:  # transient retries ran out
            return None
        return f"ended {state.status.value} ({state.code}): {reasons}"

    return explained


def test_llm_faults_end_every_run_through_the_right_lane(soak, record):
    runs_n = 500 if soak else 70
    fleet = Fleet(
        "--latency",
        "uniform:0.02:0.1",
        "--fault-rate",
        "0.2",
        "--faults",
        FAULTS,
        "--hang-s",
        "3",
        "--retry-after",
        "0.2",
        "--seed",
        "19",
    )
    try:
        started = time.monotonic()
        runs = submit_mix(fleet, runs_n, "llm", pace_s=0.02)
        wait_terminal(fleet, runs, timeout_s=180)
        tasks = _task_calls(fleet)
        figures = evaluate(
            fleet,
            "LLM faults (20%)",
            runs,
            started=started,
            faults=f"20% of calls: {FAULTS}",
            accept=_explainer(tasks),
        )
        injected = sum(1 for calls in tasks.values() for c in calls if c["fault"])
        lanes = {"invalid": 0, "semantic": 0}
        for item in runs:
            events = item.run.provenance()
            prompts = [e.get("feedback", "") for e in events if e["type"] == "retry_scheduled"]
            for text in prompts:
                leaked = [m for m in TRANSIENT_MARKS if m in text]
                if leaked:
                    figures.problems.append(f"run {item.run.id}: {leaked} in a prompt: {text}")
            invalid = {e["attempt"] for e in events if e["type"] == "output_invalid"}
            for call in tasks[item.scope]:
                if call["status"] == 200 and call["fault"] in ("invalid_json", "schema"):
                    lanes["invalid"] += 1
                    if call["attempt"] in invalid:
                        lanes["semantic"] += 1
                    else:
                        figures.problems.append(
                            f"run {item.run.id}: {call['fault']} output of attempt "
                            f"{call['attempt']} not handled as an invalid attempt"
                        )
        figures.faults += f" ({injected} task-call faults; {lanes['semantic']} invalid outputs"
        figures.faults += " retried with feedback)"
        record.append(figures)
        figures.assert_clean()
        assert lanes["invalid"] > 0
    finally:
        fleet.stop()
