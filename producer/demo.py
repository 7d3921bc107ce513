"""`quorum demo`: the purchase-extraction example in each voting mode, on a local stack."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from quorum.producer.cli import describe, summarize
from quorum.producer.client import TaskClient
from quorum.producer.demo_tasks import DEMO_IMPORTS, run_defined
from quorum.producer.stack import Stack
from quorum.shared.errors import TaskFailedError
from quorum.shared.events import Event, OtherEvent
from quorum.shared.models import (
    KAheadVotingValidationConfig,
    SingleShotValidationConfig,
    ThresholdVotingValidationConfig,
)
from quorum.shared.settings import Settings

__all__ = ["Purchase", "Story", "run_demo", "story"]

TEMPLATE = "Extract purchase from: {{ message }}"
ISSUES = [
    "The product names the item bought, without the quantity.",
    "The quantity is the number of items bought.",
]


class Purchase(BaseModel):
    """What the model extracts from a customer's message."""

    product: str
    quantity: int


# What the demo asks a real model (`--llm local`): each message in each voting mode.
LOCAL_MESSAGES = ["I want 5 apples", "Please send me 3 bottles of milk"]

CONFIGS = [
    SingleShotValidationConfig(issues=ISSUES, max_retries=2),
    ThresholdVotingValidationConfig(issues=ISSUES, count=3, required_ahead=1, max_retries=2),
    KAheadVotingValidationConfig(issues=ISSUES, count=3, required_ahead=2, max_retries=2),
]


@dataclass(frozen=True)
class Story:
    """What happened in a run, attempt by attempt, told from its provenance."""

    text: str
    rejected: bool  # the votes (or the schema) rejected at least one answer
    fixed: bool  # after a rejection, a retry gave a different answer that passed


def _verdict(events: Sequence[Event | OtherEvent], issues: Sequence[str]) -> str | None:
    """Why the attempt was rejected, "" if it passed, None if it has no verdict."""
    kinds = {e["type"] for e in events}
    if "output_invalid" in kinds:
        return "the output did not parse or fit the schema"
    failed = sorted(
        {e["issue"] for e in events if e["type"] == "issue_decided" and e["outcome"] != "passed"}
    )
    if failed:
        named = "; ".join(f"issue {n + 1} ({issues[n]!r})" for n in failed)
        return f"the votes rejected it: {named}"
    return "" if kinds & {"validation_passed", "succeeded"} else None


def story(events: Sequence[Event | OtherEvent], issues: Sequence[str]) -> Story:
    """One line per attempt: its answer, what the votes decided, and what the retry changed."""
    lines, rejected, fixed, previous = [], False, False, None
    for attempt in sorted({e["attempt"] for e in events if e.get("attempt")}):
        mine = [e for e in events if e.get("attempt") == attempt]
        output = next(
            (e.get("output") for e in mine if e["type"] in ("output", "output_invalid")), None
        )
        verdict = _verdict(mine, issues)
        if verdict:
            line, rejected = verdict, True
        elif verdict is None:
            line = "no verdict"
        elif not rejected:
            line = "the votes passed it"
        elif output != previous:
            line, fixed = "the retry gave a new answer and the votes passed it", True
        else:
            line = "the votes passed the same answer this time (the validators disagree)"
        lines.append(f"  attempt {attempt}: {json.dumps(output, ensure_ascii=False)}: {line}")
        previous = output
    return Story("\n".join(lines), rejected, fixed)


def _run_one(client: TaskClient, config: object, message: str) -> tuple[bool, Story, float]:
    """Run one extraction; return whether it validated, its story, and its seconds."""
    started = time.perf_counter()
    run = client.submit(
        template=TEMPLATE,
        response_model=Purchase,
        kwargs={"message": message},
        config=config,
    )
    print(f"\n== {type(config).__name__}  {message!r}  run {run.id}")
    for event in run.watch(timeout=300):
        print("   " + describe(event), flush=True)
    elapsed = time.perf_counter() - started
    try:
        purchase = run.result(timeout=1)
        print(f"-> {purchase!r}  ({run.status().value} in {elapsed:.2f}s)")
        ok = True
    except TaskFailedError as exc:
        print(f"-> {exc.status.value} in {elapsed:.2f}s: {'; '.join(exc.reasons)}")
        ok = False
    events = run.provenance()
    print("provenance summary:")
    print(summarize(events, ISSUES))
    told = story(events, ISSUES)
    print("what happened:\n" + told.text)
    return ok, told, elapsed


def run_demo(settings: Settings, *, seed: int = 7, llm: str = "sim") -> int:
    """Start what is missing (Redis, an LLM, a worker), run the three modes, stop it all.

    `llm="sim"` uses the simulator unless `OPENAI_API_KEY` or `OPENAI_BASE_URL` names a real
    server; `llm="local"` serves a real small model on this machine (the `local` extra) and
    uses it as task model and validator alike.
    """
    use_simulator = llm == "sim" and not (settings.openai_api_key or settings.openai_base_url)
    messages = LOCAL_MESSAGES if llm == "local" else ["I want 5 apples"]
    with Stack(redis_url=settings.redis_url) as stack:
        redis_url = stack.redis()
        print(f"Redis: {redis_url}")
        env: dict[str, str] = {}
        if llm == "local":
            env = stack.local_llm()
            settings = settings.model_copy(
                update={"model": env["QUORUM_MODEL"], "validator_model": env["QUORUM_MODEL"]}
            )
            print(
                f"LLM: {env['QUORUM_MODEL']} served by llama-cpp-python at {env['OPENAI_BASE_URL']}"
            )
        elif use_simulator:
            llm_url = stack.simulator(
                "--latency", "uniform:0.05:0.2", "--pass-rate", "0.8", "--seed", str(seed)
            )
            print(f"LLM: simulator at {llm_url} (set OPENAI_API_KEY to use a real model)")
        else:
            print(f"LLM: {settings.openai_base_url or 'OpenAI'}, model {settings.model}")
        worker = stack.worker(QUORUM_IMPORTS=DEMO_IMPORTS, **env)
        print(f"Worker: started (pid {worker.pid}) with `celery -A quorum.worker.app worker`")
        client = TaskClient(settings=settings.model_copy(update={"redis_url": redis_url}))
        try:
            runs = [_run_one(client, c, m) for m in messages for c in CONFIGS]
            run_defined(client, simulated=use_simulator)
        finally:
            client.close()
        validated = sum(ok for ok, _, _ in runs)
        rejected = sum(told.rejected for _, told, _ in runs)
        fixed = sum(told.fixed for _, told, _ in runs)
        mean = sum(seconds for _, _, seconds in runs) / len(runs)
        print(
            f"\n{validated} of {len(runs)} runs validated, {mean:.2f}s per run on average. "
            f"The votes rejected an answer in {rejected} run(s); in {fixed} a retry gave a new "
            "answer that passed. Stopping the local stack."
        )
    return 0
