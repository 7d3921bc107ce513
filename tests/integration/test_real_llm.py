"""A validated extraction in each voting mode against a real model: SmolLM2-135M-Instruct
served by llama-cpp-python's OpenAI-compatible server (the `local` extra), with a real Redis
and a real worker started with the documented command.

A 135M model is often wrong, so these tests never assert on its answer. They assert on the
run's provenance: real token usage recorded per call and in total, every vote recorded with
its reasoning, every issue's decision following from its votes by the mode's rule, and the
run's outcome following from the decisions. Without the extra they skip, except in CI
(`CI=true`), where they fail: CI installs the extra and must run them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quorum.producer import TaskClient
from quorum.producer.demo import LOCAL_RUNS
from quorum.producer.localllm import (
    INSTALL_HINT,
    MODEL_ALIAS,
    missing_packages,
    served_model,
    start_local_llm,
    worker_env,
)
from quorum.producer.stack import ManagedProcess, free_port, start_redis, start_worker
from quorum.shared.events import CallEvent
from quorum.shared.models import (
    KAheadVotingValidationConfig,
    SingleShotValidationConfig,
    TaskStatus,
    ThresholdVotingValidationConfig,
    ValidationConfig,
)
from quorum.shared.settings import Settings
from quorum.shared.store import RunStore
from quorum.shared.voting import Tally, decide_after_round, decide_early
from quorum.shared.wfstore import RUNNING, WorkflowStore
from tests.integration.helpers import Purchase

pytestmark = [pytest.mark.integration, pytest.mark.real_llm]

TEMPLATE = "Extract purchase from: {{ message }}"
ISSUES = [
    "The product names the item bought, without the quantity.",
    "The quantity is the number of items bought.",
]
CONFIGS = {
    "single-shot": SingleShotValidationConfig(issues=ISSUES, max_retries=2),
    "threshold": ThresholdVotingValidationConfig(
        issues=ISSUES, count=3, required_ahead=1, max_retries=1
    ),
    "k-ahead": KAheadVotingValidationConfig(
        issues=ISSUES, count=3, required_ahead=2, max_votes=7, max_retries=1
    ),
}

# The demo's runs take 5-10 s each on a busy 2-core CPU: with this deadline some end in time
# and some reach it, so both endings are checked, and the test takes under a minute.
DEMO_DEADLINE_S = 8.0


def require_local_extra() -> None:
    """Skip without the `local` extra, or fail in CI, which installs it."""
    absent = missing_packages()
    if not absent:
        return
    reason = f"real_llm needs the local extra ({', '.join(absent)} missing): {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason}; CI installs it and must run these tests", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def local_llm() -> Iterator[str]:
    """The model server, started once for the module; yields its base URL (…/v1)."""
    require_local_extra()
    base_url, server = start_local_llm()
    try:
        yield base_url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def real_client(local_llm: str) -> Iterator[TaskClient]:
    """A client on a private Redis, with a worker whose task model and validator are real."""
    redis_url, redis_server = start_redis()
    env = {
        "QUORUM_REDIS_URL": redis_url,
        **worker_env(local_llm),
        "QUORUM_MODEL": served_model(local_llm),
        "QUORUM_VALIDATOR_MODEL": served_model(local_llm),
        "QUORUM_LLM_BACKOFF_MAX_S": "2",
    }
    worker = start_worker(env, name="worker (real model)")
    settings = Settings(redis_url=redis_url, model=env["QUORUM_MODEL"])
    client = TaskClient(settings=settings)
    try:
        yield client
    finally:
        client.close()
        worker.stop()
        redis_server.stop()


def test_the_server_serves_the_local_model(local_llm: str) -> None:
    assert served_model(local_llm) == MODEL_ALIAS


def expected_decision(config: ValidationConfig, decided: dict[str, Any]) -> tuple[str, str]:
    """The outcome (and reason) the mode's rule gives for the tally an issue was decided on."""
    tally = Tally(passing=decided["passing"], failing=decided["failing"], errors=decided["errors"])
    decision = decide_early(config, tally, planned=config.count) or decide_after_round(
        config, tally
    )
    assert decision is not None, f"undecidable tally {tally} was decided: {decided}"
    return decision.outcome.value, decision.reason


def check_usage(call: CallEvent) -> int:
    """A model call's usage, as the server counted it; return its total."""
    usage = call.usage
    assert usage is not None, call
    assert usage.prompt_tokens > 0, call
    assert usage.completion_tokens > 0, call
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    return usage.total_tokens


def check_attempt(config: ValidationConfig, events: list[dict[str, Any]]) -> bool | None:
    """Check one attempt's votes and decisions; return whether it passed (None: no output)."""
    output = next(e for e in events if e["type"] in ("output", "output_invalid"))
    if output["type"] == "output_invalid":
        assert output["error"], output
        return False
    votes = [e for e in events if e["type"] == "vote"]
    for vote in votes:
        assert vote["is_valid"] in (True, False), vote  # no error votes: the model answered
        assert isinstance(vote["reasoning"], str), vote  # the model's words; it may say none
    decisions = {e["issue"]: e for e in events if e["type"] == "issue_decided"}
    for issue, decided in decisions.items():
        mine = [v["is_valid"] for v in votes if v["issue"] == issue]
        assert mine.count(True) >= decided["passing"], (mine, decided)
        assert mine.count(False) >= decided["failing"], (mine, decided)
        outcome, reason = expected_decision(config, decided)
        assert (decided["outcome"], decided.get("reason") or "") == (outcome, reason)
    passed = bool(decisions) and all(d["outcome"] == "passed" for d in decisions.values())
    if passed:
        assert sorted(decisions) == list(range(len(config.issues)))
        assert any(e["type"] == "validation_passed" for e in events)
    else:
        assert any(d["outcome"] == "failed" for d in decisions.values()), decisions
        failed = next(e for e in events if e["type"] == "validation_failed")
        assert failed["reasons"], failed
    return passed


@pytest.mark.parametrize("mode", list(CONFIGS))
def test_validated_extraction_provenance(real_client: TaskClient, mode: str) -> None:
    config = CONFIGS[mode]
    run = real_client.submit(
        template=TEMPLATE,
        response_model=Purchase,
        kwargs={"message": "I want 5 apples"},
        config=config,
    )
    list(run.watch(timeout=100))
    state = run.state()
    assert state.status in (TaskStatus.SUCCESSFUL, TaskStatus.FAILED), state.error
    events = run.provenance()

    calls = [e for e in events if e["type"] in ("output", "output_invalid", "vote")]
    recorded = sum(check_usage(call) for call in calls)
    # The run is billed for every answer, also a validator's unusable one (no JSON verdict),
    # which is asked again and leaves no vote event: the total is at least the calls' sum.
    assert 0 < recorded <= state.usage.total_tokens

    attempts = sorted({e["attempt"] for e in events if e.get("attempt")})
    assert attempts == list(range(1, len(attempts) + 1))
    assert len(attempts) <= 1 + config.max_retries
    verdicts = [
        check_attempt(config, [e for e in events if e.get("attempt") == n]) for n in attempts
    ]
    assert all(v is False for v in verdicts[:-1]), "a passed attempt was retried"
    retries = [e for e in events if e["type"] == "retry_scheduled"]
    assert len(retries) == len(attempts) - 1
    if state.status is TaskStatus.SUCCESSFUL:
        assert verdicts[-1] is True
        assert state.result == state.outputs[attempts[-1]]
        Purchase.model_validate(state.result)
    else:
        assert verdicts[-1] is False
        assert len(attempts) == 1 + config.max_retries
        assert state.reasons


def test_the_compose_llm_service_command_serves_the_model():
    """`quorum llm serve`, the command of docker-compose's `llm` service, answers and stops."""
    require_local_extra()
    port = free_port()
    served = ManagedProcess(
        "quorum llm serve",
        [str(Path(sys.executable).with_name("quorum")), "llm", "serve", "--port", str(port)],
        ready=r"local model serving at (http://\S+/v1)",
        timeout_s=120,
    )
    try:
        assert served.match is not None
        assert served_model(served.match.group(1)) == MODEL_ALIAS
    finally:
        served.stop()
    assert served.process.returncode == 128 + signal.SIGTERM


def test_the_local_demo_ends_every_run_it_starts_within_a_short_deadline() -> None:
    """`quorum demo --llm local` with a deadline short enough that a run may reach it: the
    demo exits 0, every run it submitted has ended in Redis, and so has its workflow, and each
    run that its deadline ended is named in the output as timed out, with its attempt."""
    require_local_extra()
    redis_url, redis_server = start_redis()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "QUORUM_"))}
    quorum = str(Path(sys.executable).with_name("quorum"))
    try:
        demo = subprocess.run(
            [quorum, "demo", "--llm", "local", "--deadline", str(DEMO_DEADLINE_S)],
            env={**env, "QUORUM_REDIS_URL": redis_url},
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
        store = RunStore.from_settings(Settings(redis_url=redis_url))
        states = [store.load(run_id) for run_id in store.recent(since=0, limit=100)]
        shown = re.search(r"^== Workflow .* workflow ([0-9a-f]{32})$", demo.stdout, re.M)
        assert shown is not None, demo.stdout[-4000:]
        workflow = WorkflowStore.of(store).load(shown.group(1))
        store.redis.close()
    finally:
        redis_server.stop()
    assert all(state.status.terminal for state in states), demo.stdout[-4000:]
    runs = [state for state in states if "." not in state.run_id]  # not the workflow's nodes
    assert len(runs) == len(LOCAL_RUNS) + 1, demo.stdout[-4000:]  # and the defined task
    for state in runs:
        assert state.spec.timeout_s == DEMO_DEADLINE_S
        timed_out = state.code == "timeout" or state.status is TaskStatus.CANCELLED
        named = re.search(rf"run {state.run_id} timed out after \d+ s on attempt \d", demo.stdout)
        assert bool(named) == timed_out, (
            state.run_id,
            state.status,
            state.code,
            demo.stdout[-4000:],
        )
    assert workflow.status != RUNNING, demo.stdout[-4000:]
