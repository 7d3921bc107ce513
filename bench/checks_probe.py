"""What the cheap checks cost and save: `python -m quorum.bench.checks_probe [--runs N]`.

(a) On a private stack (redis-server, the simulator, one worker started with the documented
    command and `QUORUM_IMPORTS=quorum.producer.demo_tasks`): N runs of the demo's defined task
    whose first answer a cheap check rejects, against N whose first answer passes. It counts,
    from the simulator's call log and each run's provenance, the task calls and the votes per
    run, and the votes drawn on a rejected attempt (the claim: one extra task call at most,
    and zero votes for that attempt).
(b) In this process: the worker CPU (`time.process_time`) that `run_checks` — the model with
    its own field validator, a Python validator and an expression check — adds to one attempt
    of a 3-field model (its own field validator, a Python validator, two expression checks),
    over many repetitions (the claim: under 1 ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from pydantic import BaseModel, field_validator

from quorum.producer.client import TaskClient
from quorum.producer.demo_tasks import DEMO_IMPORTS, extract_purchase
from quorum.producer.stack import Stack
from quorum.shared.checks import run_checks
from quorum.shared.definitions import define
from quorum.shared.models import RunSpec
from quorum.simulator.control import SimulatorControl

__all__ = ["check_cpu_ms", "main", "rejected_first_costs"]


class Order(BaseModel):
    """A 3-field model with a validator of its own."""

    product: str
    quantity: int
    unit: str

    @field_validator("quantity")
    @classmethod
    def positive(cls, quantity: int) -> int:
        if quantity <= 0:
            raise ValueError("quantity must be positive")
        return quantity


def known_unit(order: Order) -> None:
    """A Python validator."""
    if order.unit not in ("item", "kg", "bottle"):
        raise ValueError("unit must be item, kg or bottle")


PROBE_ORDER = define(
    "probe_order",
    template="Extract the order from: {{ message }}",
    response_model=Order,
    validators=[known_unit],
    checks=[
        {"expr": "output.product | trim | length > 0", "message": "the product is empty"},
        {"expr": "output.quantity < kwargs.limit", "message": "too many"},
    ],
)
WRONG = {"product": "5 apples", "quantity": 5}
RIGHT = {"product": "apples", "quantity": 5}


def _one(
    client: TaskClient, sim: SimulatorControl, scope: str, outputs: list[Any]
) -> dict[str, int]:
    directive = json.dumps({"id": scope, "outputs": outputs, "votes": {"*": True}})
    run = extract_purchase.submit(client, message="I want 5 apples", sim=f" <<sim:{directive}>>")
    run.result(timeout=60)
    events = run.provenance()
    rejected = {e["attempt"] for e in events if e["type"] == "check_failed"}
    return {
        "task_calls": len(sim.calls(scope, kind="task")),
        "votes": len(sim.calls(scope, kind="vote")),
        "votes_on_rejected": sum(e["type"] == "vote" and e["attempt"] in rejected for e in events),
    }


def rejected_first_costs(runs: int) -> dict[str, Any]:
    """(a): mean task calls and votes per run, first answer rejected vs passed."""
    with Stack() as stack:
        redis_url = stack.redis()
        sim = SimulatorControl(stack.simulator("--latency", "0.02", "--seed", "7"))
        stack.worker(QUORUM_IMPORTS=DEMO_IMPORTS)
        client = TaskClient(redis_url=redis_url)
        try:
            stamp = time.time_ns()
            passed = [_one(client, sim, f"probe-pass-{stamp}-{n}", [RIGHT]) for n in range(runs)]
            caught = [
                _one(client, sim, f"probe-caught-{stamp}-{n}", [WRONG, RIGHT]) for n in range(runs)
            ]
        finally:
            client.close()

    def mean(rows: list[dict[str, int]], key: str) -> float:
        return statistics.fmean(row[key] for row in rows)

    return {
        "runs": runs,
        "task_calls_first_passed": mean(passed, "task_calls"),
        "task_calls_first_rejected": mean(caught, "task_calls"),
        "votes_first_passed": mean(passed, "votes"),
        "votes_first_rejected": mean(caught, "votes"),
        "votes_on_rejected_attempts": sum(row["votes_on_rejected"] for row in caught),
    }


def check_cpu_ms(repeat: int) -> dict[str, float]:
    """(b): CPU ms per attempt of the checks on a 3-field model that passes them all: its own
    field validator, a Python validator, two expression checks (the best and the median of
    five batches of `repeat`)."""
    spec = RunSpec(
        template=PROBE_ORDER.template,
        kwargs={"message": "I want 5 kg of apples", "limit": 1000},
        response_schema=PROBE_ORDER.response.schema,
        config=None,
        model="m",
        validator_model="m",
        task=PROBE_ORDER.name,
        task_hash=PROBE_ORDER.hash,
        checks=PROBE_ORDER.checks,
    )
    output = {"product": "apples", "quantity": 5, "unit": "kg"}
    assert run_checks(spec, output).failure is None
    samples = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(repeat):
            run_checks(spec, output)
        samples.append((time.process_time() - started) * 1000 / repeat)
    return {"checks_cpu_ms_per_attempt": min(samples), "median": statistics.median(samples)}


def main() -> None:
    """Print both measurements as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=20_000)
    args = parser.parse_args()
    print(json.dumps({"cpu": check_cpu_ms(args.repeat)}, indent=2), flush=True)
    print(json.dumps({"calls": rejected_first_costs(args.runs)}, indent=2))


if __name__ == "__main__":
    main()
