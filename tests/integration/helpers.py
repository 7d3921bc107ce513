"""Helpers of the integration tests: the simulator's control endpoints, directives, events."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from quorum.producer import TaskClient, TaskRun
from quorum.simulator.control import SimulatorControl

# Worker settings that keep fault tests quick: a short HTTP timeout, short backoff, few retries.
FAST_WORKER_ENV = {
    "QUORUM_LLM_TIMEOUT_S": "2",
    "QUORUM_LLM_BACKOFF_MAX_S": "0.5",
    "QUORUM_LLM_MAX_RETRIES": "3",
}


class Purchase(BaseModel):
    """The response model most tests ask for."""

    product: str
    quantity: int


APPLES = {"product": "apples", "quantity": 5}
PEARS = {"product": "pears", "quantity": 2}


Simulator = SimulatorControl  # the name the tests use


# The purchase most tests ask for; `sim` takes a directive that scripts the simulator.
TEMPLATE = "Extract the purchase from: I want 5 apples {{ sim }}"


def directive(scope: str, **script: Any) -> str:
    """A `<<sim:...>>` directive for the template; `scope` becomes its counter id."""
    return f"<<sim:{json.dumps({'id': scope, **script})}>>"


def submit_scripted(client: TaskClient, scope: str, config: Any, **script: Any) -> TaskRun:
    """Submit the purchase extraction, with the simulator scripted for this run."""
    return client.submit(
        template=TEMPLATE,
        response_model=Purchase,
        kwargs={"sim": directive(scope, **script)},
        config=config,
    )


def events(run: TaskRun, type_: str | None = None) -> list[dict[str, Any]]:
    """The run's provenance events, optionally of one type only."""
    return [e for e in run.provenance() if type_ is None or e["type"] == type_]


def wait_until(check: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    """Poll `check` until it returns something truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


ROOT = Path(__file__).resolve().parents[2]

# Build outputs and caches, never part of the source: left out of a copy of the tree.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    "node_modules",
)


def copy_source(destination: Path) -> Path:
    """Copy the source tree to `destination` as a fresh checkout holds it: the links of quorum/
    kept as links, build outputs and caches (a virtualenv included) left out."""
    shutil.copytree(ROOT, destination, symlinks=True, ignore=NOT_SOURCE)
    return destination
