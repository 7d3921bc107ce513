"""The demo's defined task: a purchase extraction whose cheap checks catch a wrong answer
before any vote is spent on it. The demo's worker imports this module
(`QUORUM_IMPORTS=quorum.producer.demo_tasks`), as a service's workers import its own."""

from __future__ import annotations

import json
import time

from pydantic import BaseModel, field_validator

from quorum.producer.client import TaskClient, TaskRun
from quorum.producer.follow import Ending, follow
from quorum.shared.definitions import define
from quorum.shared.errors import TaskFailedError
from quorum.shared.models import ThresholdVotingValidationConfig

__all__ = ["DEMO_IMPORTS", "CheckedPurchase", "extract_purchase", "run_defined"]

DEMO_IMPORTS = __name__


class CheckedPurchase(BaseModel):
    """A purchase whose own validator runs on the worker."""

    product: str
    quantity: int

    @field_validator("quantity")
    @classmethod
    def positive(cls, quantity: int) -> int:
        if quantity <= 0:
            raise ValueError("quantity must be a positive number of items")
        return quantity


def product_without_quantity(purchase: CheckedPurchase) -> None:
    """A Python check: the product names the item only."""
    if any(char.isdigit() for char in purchase.product):
        raise ValueError("the product names the item only, without the quantity")


extract_purchase = define(
    "demo_extract_purchase",
    template="Extract purchase from: {{ message }}{{ sim }}",
    response_model=CheckedPurchase,
    config=ThresholdVotingValidationConfig(
        issues=[
            "The product names the item bought, without the quantity.",
            "The quantity is the number of items bought.",
        ],
        count=3,
        max_retries=2,
    ),
    validators=[product_without_quantity],
    checks=[{"expr": "output.product | trim | length > 0", "message": "the product is empty"}],
)

# With the simulator, the first answer is scripted wrong ("5 apples" as the product).
_SCRIPT = {
    "id": "demo-defined",
    "outputs": [{"product": "5 apples", "quantity": 5}, {"product": "apples", "quantity": 5}],
    "votes": {"*": True},
}


def run_defined(
    client: TaskClient, *, simulated: bool, deadline_s: float
) -> tuple[TaskRun, Ending]:
    """Submit the defined task by name, with `deadline_s` as its deadline; show which check
    caught what, and the votes it saved. Returns the run and how it ended."""
    submitted = time.monotonic()
    sim = f" <<sim:{json.dumps({**_SCRIPT, 'id': f'demo-{time.time_ns()}'})}>>" if simulated else ""
    run = client.submit(
        task=extract_purchase.name,
        kwargs={"message": "I want 5 apples", "sim": sim},
        timeout_s=deadline_s,
    )
    print(
        f"\n== defined task {extract_purchase.name!r} (submitted by name)  run {run.id}  "
        f"(deadline {deadline_s:.0f} s)"
    )
    ending = follow(run, submitted=submitted)
    if ending.timed_out:
        print(f"-> {ending.headline()}")
    else:
        try:
            print(f"-> {run.result(timeout=0)!r}  ({ending.headline()})")
        except TaskFailedError as exc:
            print(f"-> {ending.headline()}: {'; '.join(exc.reasons)}")
    events = run.provenance()
    caught = [e for e in events if e["type"] == "check_failed"]
    for event in caught:
        voted = sum(e["type"] == "vote" and e["attempt"] == event["attempt"] for e in events)
        print(
            f"  attempt {event['attempt']}: the {event['check']} check {event['name']!r} "
            f"rejected {json.dumps(event['output'])}: {event['message']} "
            f"({voted} votes spent on it)"
        )
    if not caught:
        print("  no cheap check had to reject an answer this time")
    return run, ending
