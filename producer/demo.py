"""`quorum demo`: the purchase-extraction example in each voting mode, on a local stack."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from quorum.producer.client import TaskClient, TaskRun
from quorum.producer.demo_tasks import DEMO_IMPORTS, run_defined
from quorum.producer.follow import Ending, follow, nodes_out, settle, ticker
from quorum.producer.stack import Stack
from quorum.producer.terminal import summarize
from quorum.producer.workflow import Workflow
from quorum.producer.workflow_cli import describe_workflow_event
from quorum.shared.errors import RunTimeoutError, TaskFailedError, WorkflowFailedError
from quorum.shared.events import Event, OtherEvent
from quorum.shared.models import (
    KAheadVotingValidationConfig,
    SingleShotValidationConfig,
    TaskStatus,
    ThresholdVotingValidationConfig,
    ValidationConfig,
)
from quorum.shared.settings import Settings
from quorum.shared.wfevents import OtherWorkflowEvent, WorkflowEvent

__all__ = ["DEADLINE_S", "LOCAL_RUNS", "Purchase", "Shown", "Story", "run_demo", "story"]

_WORKFLOW_GRACE_S = 5.0
"""How long after its deadline the demo waits for the workflow to end by itself."""
_TICK_S = 5.0
"""How often the demo shows what a workflow waits for while its nodes' calls are out."""

TEMPLATE = "Extract purchase from: {{ message }}"
ISSUES = [
    "The product names the item bought, without the quantity.",
    "The quantity is the number of items bought.",
]


class Purchase(BaseModel):
    """What the model extracts from a customer's message."""

    product: str
    quantity: int


CONFIGS: list[ValidationConfig] = [
    SingleShotValidationConfig(issues=ISSUES, max_retries=2),
    ThresholdVotingValidationConfig(issues=ISSUES, count=3, required_ahead=1, max_retries=2),
    KAheadVotingValidationConfig(issues=ISSUES, count=3, required_ahead=2, max_retries=2),
]
# What `--llm local --all` asks a real model: each message in each voting mode.
LOCAL_MESSAGES = ["I want 5 apples", "Please send me 3 bottles of milk"]
# What `--llm local` asks by default: each mode once, on the message a small model most often
# gets wrong (it leaves the quantity in the product), with fewer retries and votes than
# CONFIGS: a rejection and a retry in a minute or two on a 2-core CPU, not ten.
LOCAL_RUNS: list[tuple[ValidationConfig, str]] = [
    (SingleShotValidationConfig(issues=ISSUES, max_retries=2), LOCAL_MESSAGES[0]),
    (
        ThresholdVotingValidationConfig(issues=ISSUES, count=3, required_ahead=1, max_retries=1),
        LOCAL_MESSAGES[0],
    ),
    (
        KAheadVotingValidationConfig(
            issues=ISSUES, count=3, required_ahead=2, max_votes=7, max_retries=1
        ),
        LOCAL_MESSAGES[0],
    ),
]
# Each run's deadline (`timeout_s` at submit) unless `--deadline` says otherwise.
DEADLINE_S = {"sim": 60.0, "local": 120.0}


# The events that carry an attempt's answer.
_ANSWERS = ("output", "output_invalid", "check_failed")


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
    caught = next((e for e in events if e["type"] == "check_failed"), None)
    if caught is not None:
        return f"the {caught['check']} check {caught['name']!r} rejected it"
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
        output = next((e.get("output") for e in mine if e["type"] in _ANSWERS), None)
        verdict = _verdict(mine, issues)
        if verdict:
            line, rejected = verdict, True
        elif verdict is None:
            line = "no verdict" if output is not None else "no answer before the run ended"
        elif not rejected:
            line = "the votes passed it"
        elif output != previous:
            line, fixed = "the retry gave a new answer and the votes passed it", True
        else:
            line = "the votes passed the same answer this time (the validators disagree)"
        lines.append(f"  attempt {attempt}: {json.dumps(output, ensure_ascii=False)}: {line}")
        previous = output
    return Story("\n".join(lines), rejected, fixed)


@dataclass(frozen=True)
class Shown:
    """One run of the demo, as it was shown."""

    ok: bool  # it validated
    story: Story
    ending: Ending
    settled: bool  # none of its jobs was still at work once it had ended


def _run_one(
    client: TaskClient, config: ValidationConfig, message: str, *, deadline_s: float
) -> Shown:
    """Run one extraction within its deadline and tell its story. A run still live at its
    deadline is cancelled; the next one starts once its jobs have ended."""
    submitted = time.monotonic()
    run = client.submit(
        template=TEMPLATE,
        response_model=Purchase,
        kwargs={"message": message},
        config=config,
        timeout_s=deadline_s,
    )
    print(f"\n== {type(config).__name__}  {message!r}  run {run.id}  (deadline {deadline_s:.0f} s)")
    ending = follow(run, submitted=submitted)
    ok = False
    if ending.timed_out:
        print(f"-> {ending.headline()}; its provenance so far:")
    else:
        try:
            purchase = run.result(timeout=0)
            print(f"-> {purchase!r}  ({ending.headline()})")
            ok = True
        except TaskFailedError as exc:
            print(f"-> {ending.headline()}: {'; '.join(exc.reasons)}")
    settled = _settled(client, run, ending)
    events = run.provenance()
    print("provenance summary:")
    print(summarize(events, ISSUES))
    told = story(events, ISSUES)
    print("what happened:\n" + told.text)
    return Shown(ok, told, ending, settled)


class Basket(BaseModel):
    """The items a message asks for, one phrase each."""

    items: list[str]


class Summary(BaseModel):
    """One sentence over every checked purchase."""

    text: str


def _run_workflow(client: TaskClient, message: str, *, deadline_s: float) -> None:
    """A small workflow: extract the items, check each one (a map), summarise them. Its
    deadline, which bounds all its runs together, is twice a run's: past it, it is ended
    and reported like a run that timed out."""
    check = SingleShotValidationConfig(issues=ISSUES[:1], max_retries=2)
    wf = Workflow("demo-basket", timeout_s=2 * deadline_s)
    basket = wf.task(
        "extract",
        template="List each item bought, one phrase each, in: {{ message }}",
        response_model=Basket,
        config=check,
        kwargs={"message": message},
    )
    each = wf.map(
        "check",
        over=basket["items"],
        item="item",
        template="Extract purchase from: {{ item }}",
        response_model=Purchase,
        config=SingleShotValidationConfig(issues=ISSUES, max_retries=2),
        max_parallel=10,
    )
    wf.task(
        "summary",
        template="Summarise these purchases in one sentence: {{ purchases }}",
        response_model=Summary,
        config=check,
        kwargs={"purchases": each},
        skip_if="purchases | length == 0",
    )
    submitted = time.monotonic()
    run = client.submit_workflow(wf)
    print(f"\n== Workflow extract → check each item → summary  workflow {run.id}")
    seen: list[WorkflowEvent | OtherWorkflowEvent] = []
    stop = ticker(lambda: nodes_out(seen), submitted, _TICK_S, print)
    try:
        for event in run.watch(timeout=2 * deadline_s + _WORKFLOW_GRACE_S):
            seen.append(event)
            print("   " + describe_workflow_event(event), flush=True)
    finally:
        stop.set()
    try:
        outputs = run.result(timeout=_WORKFLOW_GRACE_S)
        print(f"-> {outputs['summary']!r}")
    except WorkflowFailedError as exc:
        print(f"-> {exc.status}: " + "; ".join(f"{n}: {r}" for n, r in exc.failures.items()))
    except RunTimeoutError:
        run.cancel()
        print(f"-> workflow {run.id} timed out after {2 * deadline_s:g} s; cancelled")


def _run_defined(client: TaskClient, *, simulated: bool, deadline_s: float) -> Shown:
    """The defined task's run (`demo_tasks`), as the demo's last."""
    run, ending = run_defined(client, simulated=simulated, deadline_s=deadline_s)
    settled = _settled(client, run, ending)
    ok = ending.state.status is TaskStatus.SUCCESSFUL
    return Shown(ok, story(run.provenance(), ISSUES), ending, settled)


def _settled(client: TaskClient, run: TaskRun, ending: Ending) -> bool:
    """Whether none of the run's jobs is at work now that it has ended. A run its deadline
    ended may still have a model call out: wait for it, so that the next run's calls do not
    queue behind it at a model server that answers one at a time."""
    return not ending.timed_out or settle(client, run, timeout_s=client.settings.llm_timeout_s + 5)


def run_demo(
    settings: Settings,
    *,
    seed: int = 7,
    llm: str = "sim",
    deadline_s: float | None = None,
    every: bool = False,
) -> int:
    """Start what is missing (Redis, an LLM, a worker), run the demo's runs, stop it all.

    `llm="sim"` uses the simulator unless `OPENAI_API_KEY` or `OPENAI_BASE_URL` names a real
    server: the purchase extraction in each voting mode. `llm="local"` serves a real small
    model on this machine (the `local` extra) as task model and validator alike, and runs
    `LOCAL_RUNS` (with `every`, each message in each mode). Each run gets `deadline_s` as its
    deadline (`timeout_s`; default `DEADLINE_S`); one that reaches it is reported as timed
    out and cancelled, and the demo goes on. Returns 0 once every run has ended, 1 if a
    run's job was still at work after the run ended.
    """
    if llm == "local":
        runs = [(c, m) for m in LOCAL_MESSAGES for c in CONFIGS] if every else LOCAL_RUNS
    else:
        runs = [(c, "I want 5 apples") for c in CONFIGS]
    deadline_s = deadline_s or DEADLINE_S[llm]
    with Stack(redis_url=settings.redis_url) as stack:
        redis_url = stack.redis()
        print(f"Redis: {redis_url}")
        simulated = llm == "sim" and not (settings.openai_api_key or settings.openai_base_url)
        settings, env = _serve_llm(stack, settings, llm=llm, seed=seed)
        # A short sweep interval: a run past its deadline ends within a second of it.
        worker = stack.worker(QUORUM_IMPORTS=DEMO_IMPORTS, QUORUM_SWEEP_INTERVAL_S="1", **env)
        print(f"Worker: started (pid {worker.pid}) with `celery -A quorum.worker.app worker`")
        client = TaskClient(settings=settings.model_copy(update={"redis_url": redis_url}))
        done: list[Shown] = []
        try:
            for config, message in runs:
                done.append(_run_one(client, config, message, deadline_s=deadline_s))
                if not done[-1].settled:
                    run_id = done[-1].ending.state.run_id
                    print(f"\nquorum: a job of run {run_id} is still at work after it ended")
                    break
            else:
                done.append(_run_defined(client, simulated=simulated, deadline_s=deadline_s))
                _run_workflow(client, "I want 5 apples and 2 pears", deadline_s=deadline_s)
        finally:
            client.close()
        _conclude(done)
    return 0 if all(shown.settled for shown in done) else 1


def _serve_llm(
    stack: Stack, settings: Settings, *, llm: str, seed: int
) -> tuple[Settings, dict[str, str]]:
    """Start the demo's LLM; return the producer's settings and the worker's environment."""
    if llm == "local":
        env = stack.local_llm()
        model = env["QUORUM_MODEL"]
        print(f"LLM: {model} served by llama-cpp-python at {env['OPENAI_BASE_URL']}")
        return settings.model_copy(update={"model": model, "validator_model": model}), env
    if llm == "sim" and not (settings.openai_api_key or settings.openai_base_url):
        url = stack.simulator(
            "--latency", "uniform:0.05:0.2", "--pass-rate", "0.8", "--seed", str(seed)
        )
        print(f"LLM: simulator at {url} (set OPENAI_API_KEY to use a real model)")
    else:
        print(f"LLM: {settings.openai_base_url or 'OpenAI'}, model {settings.model}")
    return settings, {}


def _conclude(done: Sequence[Shown]) -> None:
    """The demo's last lines: what validated, what timed out, what the retries changed."""
    validated = sum(shown.ok for shown in done)
    timed_out = [shown.ending.state.run_id for shown in done if shown.ending.timed_out]
    rejected = sum(shown.story.rejected for shown in done)
    fixed = sum(shown.story.fixed for shown in done)
    seconds = sum(shown.ending.seconds for shown in done)
    print(
        f"\n{validated} of {len(done)} runs validated, {len(timed_out)} timed out; "
        f"{seconds:.1f}s in all, {seconds / len(done):.2f}s per run on average. "
        f"The votes rejected an answer in {rejected} run(s); in {fixed} a retry gave a new "
        "answer that passed."
    )
    if timed_out:
        print("Timed out: " + ", ".join(f"run {run_id}" for run_id in timed_out))
    print("Stopping the local stack.")
