"""The fault suite's harness: a fleet (Redis, simulator, workers) that faults can be
injected into, a mix of runs whose right outcome is known in advance, and the checks that
turn a case into figures: terminal, correct, lost, stuck, double-counted."""

from __future__ import annotations

import json
import random
import re
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from quorum.producer import TaskClient, TaskRun
from quorum.producer.stack import (
    ManagedProcess,
    free_port,
    start_redis,
    start_simulator,
    start_worker,
)
from quorum.shared.keys import Keys
from quorum.shared.models import TaskStatus
from quorum.shared.settings import Settings
from tests.integration.helpers import APPLES, PEARS, TEMPLATE, Purchase, Simulator, directive

# Workers recover a dead worker's jobs within seconds, and stalled runs within ten.
RECOVERY_ENV = {
    "QUORUM_VISIBILITY_TIMEOUT_S": "4",
    "QUORUM_UNACKED_RESTORE_INTERVAL_S": "1",
    "QUORUM_STALL_AFTER_S": "10",
    "QUORUM_SWEEP_INTERVAL_S": "1",
    "QUORUM_LLM_TIMEOUT_S": "1",
    "QUORUM_LLM_BACKOFF_MAX_S": "0.5",
    "QUORUM_LLM_MAX_RETRIES": "8",
    "QUORUM_WORKER_CONCURRENCY": "100",
}

TERMINAL = {s.value for s in TaskStatus if s.terminal}


@dataclass(frozen=True)
class Script:
    """One kind of run in the mix: its config, the simulator's script, its right outcome."""

    name: str
    config: dict[str, Any]
    script: dict[str, Any]
    status: TaskStatus
    result: dict[str, Any] | None = None


ISSUES = ["names a product", "gives a quantity"]
MIX = [
    Script(
        "single_shot pass",
        {"mode": "single_shot", "issues": ISSUES[:1]},
        {"outputs": [APPLES], "votes": {"*": True}},
        TaskStatus.SUCCESSFUL,
        APPLES,
    ),
    Script(
        "threshold pass",
        {"mode": "threshold", "issues": ISSUES, "count": 3},
        {"outputs": [APPLES], "votes": {"*": True}},
        TaskStatus.SUCCESSFUL,
        APPLES,
    ),
    Script(
        "k_ahead pass",
        {"mode": "k_ahead", "issues": ISSUES[:1], "count": 3, "required_ahead": 2},
        {"outputs": [APPLES], "votes": {"*": True}},
        TaskStatus.SUCCESSFUL,
        APPLES,
    ),
    Script(
        "threshold fail",
        {"mode": "threshold", "issues": ISSUES, "count": 3, "max_retries": 1},
        {"outputs": [PEARS], "votes": {"names a product": False, "*": True}},
        TaskStatus.FAILED,
    ),
    Script(
        "retry then pass",
        {"mode": "single_shot", "issues": ISSUES[:1], "max_retries": 2},
        {"outputs": [PEARS, APPLES], "votes": {"*": {"pass_if": {"product": "apples"}}}},
        TaskStatus.SUCCESSFUL,
        APPLES,
    ),
    Script(
        "k_ahead retry",
        {"mode": "k_ahead", "issues": ISSUES, "count": 1, "required_ahead": 2, "max_retries": 1},
        {"outputs": [PEARS, APPLES], "votes": {"*": {"pass_if": {"product": "apples"}}}},
        TaskStatus.SUCCESSFUL,
        APPLES,
    ),
    Script(
        "invalid then pass",
        {"mode": "single_shot", "issues": ISSUES[:1], "max_retries": 1},
        {"outputs": ["!json", APPLES], "votes": {"*": True}},
        TaskStatus.SUCCESSFUL,
        APPLES,
    ),
]


@dataclass
class Submitted:
    """A run the case submitted, with its script and simulator scope."""

    run: TaskRun
    script: Script
    scope: str


@dataclass
class Figures:
    """One row of the reliability table."""

    case: str
    runs: int = 0
    terminal: int = 0
    correct: int = 0
    lost: int = 0
    stuck: int = 0
    double_counted: int = 0
    seconds: float = 0.0
    faults: str = ""
    problems: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        """Fail the case unless every run ended right, none lost, stuck or double-counted."""
        assert not self.problems, f"{self.case}: {len(self.problems)} problem(s):\n" + "\n".join(
            self.problems[:30]
        )
        assert self.terminal == self.correct == self.runs


def table(rows: list[Figures]) -> str:
    """The figures as a Markdown table."""
    head = (
        "| case | runs | terminal | correct | lost | stuck | double-counted "
        "| faults injected | seconds |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for f in rows:
        lines.append(
            f"| {f.case} | {f.runs} | {f.terminal} | {f.correct} | {f.lost} | {f.stuck} "
            f"| {f.double_counted} | {f.faults} | {f.seconds:.0f} |"
        )
    return "\n".join(lines)


class Fleet:
    """Redis (append-only, on a fixed port so it can be restarted), the simulator, workers.

    With `store_url` (a Redis Cluster's), runs live there and the fleet's own Redis keeps
    only Celery's chord results; the broker is then given in `env` (`QUORUM_BROKER_URL`).
    """

    def __init__(
        self,
        *sim_args: str,
        workers: int = 2,
        worker_args: tuple[str, ...] = (),
        store_url: str | None = None,
        **env: str,
    ) -> None:
        self.worker_args = worker_args
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="quorum-faults-")
        plain_url, self._redis = start_redis(port=self.port, appendonly=True, workdir=self.dir)
        self.redis_url = store_url or plain_url
        base_url, self._sim = start_simulator(*sim_args)
        self.sim = Simulator(base_url)
        self.env = {
            "QUORUM_REDIS_URL": self.redis_url,
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "sim",
            **RECOVERY_ENV,
            **({"QUORUM_RESULT_BACKEND_URL": plain_url} if store_url else {}),
            **env,
        }
        self.workers: list[ManagedProcess] = []
        self.retired: list[ManagedProcess] = []
        self._lock = threading.Lock()
        self._started = 0
        for _ in range(workers):
            self.add_worker()
        self.db: Any
        if store_url is None:
            self.client = TaskClient(redis_url=self.redis_url)
            self.db = redis.Redis.from_url(self.redis_url, decode_responses=True)
        else:
            fields = {k.removeprefix("QUORUM_").lower(): v for k, v in self.env.items()}
            self.client = TaskClient(settings=Settings(**fields))
            self.db = self.client.store.redis
        self.keys = Keys(self.client.settings.namespace)

    def add_worker(self) -> ManagedProcess:
        """Start one more worker with the documented command."""
        with self._lock:
            self._started += 1
            name = f"w{self._started}"
        process = start_worker(self.env, "-n", f"{name}@%h", *self.worker_args, name=name)
        with self._lock:
            self.workers.append(process)
        return process

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL a random worker (as a crash would) and start a replacement."""
        with self._lock:
            victim = rng.choice(self.workers)
            self.workers.remove(victim)
        victim.kill()
        self.retired.append(victim)
        self.add_worker()

    def restart_redis(self, *, down_s: float = 1.0) -> None:
        """Stop Redis (its append-only file is flushed), wait, start it again on the same
        port and folder."""
        self._redis.stop()
        time.sleep(down_s)
        _, self._redis = start_redis(port=self.port, appendonly=True, workdir=self.dir)

    def deliveries(self) -> tuple[int, int]:
        """Jobs the workers received, and how many of those were repeats of the same id."""
        received = re.findall(r"Task quorum\.\w+\[([0-9a-f-]+)\] received", self.logs())
        return len(received), len(received) - len(set(received))

    def count(self, pattern: str) -> int:
        """Worker log lines matching `pattern`."""
        return len(re.findall(pattern, self.logs()))

    def logs(self) -> str:
        """Everything every worker printed."""
        return "\n".join(line for p in [*self.retired, *self.workers] for line in p.lines)

    def stop(self) -> None:
        """Stop workers, simulator, Redis."""
        for process in self.workers:
            process.stop()
        self.client.close()
        self._sim.stop()
        self._redis.stop()


def submit_mix(
    fleet: Fleet,
    n: int,
    tag: str,
    *,
    extra_script: dict[str, Any] | None = None,
    pace_s: float = 0.0,
    retry_submit: bool = False,
) -> list[Submitted]:
    """Submit `n` runs cycling through the mix, each with a simulator scope of its own."""
    out = []
    for i in range(n):
        script = MIX[i % len(MIX)]
        scope = f"{tag}-{i}-{uuid.uuid4().hex[:6]}"
        sim = directive(scope, **script.script, **(extra_script or {}))
        run = fleet.client.submit(
            template=TEMPLATE, response_model=Purchase, kwargs={"sim": sim}, config=script.config
        )
        out.append(Submitted(run, script, scope))
        if pace_s:
            time.sleep(pace_s)
    return out


def wait_terminal(fleet: Fleet, runs: list[Submitted], *, timeout_s: float) -> None:
    """Wait until every run is terminal, or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with fleet.db.pipeline(transaction=False) as pipe:
                for item in runs:
                    pipe.hget(fleet.keys.run(item.run.id), "status")
                statuses = pipe.execute()
        except redis.ConnectionError:
            time.sleep(0.5)
            continue
        if all(s in TERMINAL for s in statuses):
            return
        time.sleep(0.5)


def _sim_votes(fleet: Fleet) -> dict[str, int]:
    """Per scope: validator calls the simulator answered with a well-formed verdict."""
    answered: Counter[str] = Counter()
    for call in fleet.sim.request("GET", "/_sim/calls"):
        if call["kind"] == "vote" and call["status"] == 200 and call["fault"] is None:
            answered[call["scope"]] += 1
    return answered


def _double_counts(
    fleet: Fleet, item: Submitted, events: list[dict[str, Any]], answered: int
) -> list[str]:
    """Why the run's provenance shows something counted twice, if it does."""
    problems = []
    votes = Counter((e["attempt"], e["issue"], e["index"]) for e in events if e["type"] == "vote")
    twice = [slot for slot, n in votes.items() if n > 1]
    if twice:
        problems.append(f"vote slots counted twice: {twice}")
    decided = Counter((e["attempt"], e["issue"]) for e in events if e["type"] == "issue_decided")
    if any(n > 1 for n in decided.values()):
        problems.append(f"issues decided twice: {decided}")
    for kind in (
        "attempt_started",
        "output",
        "validation_passed",
        "validation_failed",
        "retry_scheduled",
    ):
        per_attempt = Counter(e["attempt"] for e in events if e["type"] == kind)
        if any(n > 1 for n in per_attempt.values()):
            problems.append(f"{kind} twice in one attempt: {per_attempt}")
    ends = [e["type"] for e in events if e["type"] in ("succeeded", "failed", "cancelled")]
    if len(ends) > 1:
        problems.append(f"ended {len(ends)} times: {ends}")
    counted = sum(1 for e in events if e["type"] == "vote" and e["is_valid"] is not None)
    if counted > answered:
        problems.append(f"{counted} votes counted, the simulator answered only {answered}")
    stored = sum(
        1
        for a in {a for a, _, _ in votes}
        for name, value in fleet.db.hgetall(fleet.keys.rounds(item.run.id, a)).items()
        if name.startswith("vote/") and value != "-"
    )
    if stored != sum(votes.values()):
        problems.append(f"{stored} votes stored, {sum(votes.values())} vote events")
    return [f"run {item.run.id} ({item.script.name}): {p}" for p in problems]


def evaluate(
    fleet: Fleet,
    case: str,
    runs: list[Submitted],
    *,
    started: float,
    faults: str = "",
    accept: Callable[[Submitted, Any], str | None] | None = None,
) -> Figures:
    """Check every run: terminal, right outcome, not lost, not stuck, nothing counted twice.

    `accept` may excuse a wrong outcome that the injected faults explain (return None), or
    say why not (return a reason).
    """
    figures = Figures(case, runs=len(runs), seconds=time.monotonic() - started, faults=faults)
    resumed, waited = fleet.count(r"sent again"), fleet.count(r"still waits for votes")
    figures.faults += (
        f"; recovered: {resumed} stalled run(s) resumed, {waited} early tally(ies) waited"
    )
    answered = _sim_votes(fleet)
    for item in runs:
        try:
            state = item.run.state()
        except KeyError:
            figures.lost += 1
            figures.problems.append(f"run {item.run.id} ({item.script.name}): lost")
            continue
        if not state.status.terminal:
            figures.stuck += 1
            figures.problems.append(
                f"run {item.run.id} ({item.script.name}): stuck in {state.status.value} "
                f"attempt {state.attempt}"
            )
            continue
        figures.terminal += 1
        events = item.run.provenance()
        doubles = _double_counts(fleet, item, events, answered[item.scope])
        if doubles:
            figures.double_counted += 1
            figures.problems.extend(doubles)
        right = state.status is item.script.status and (
            item.script.result is None or state.result == item.script.result
        )
        if right:
            figures.correct += 1
            continue
        why = f"ended {state.status.value} {state.error!r} result {state.result}"
        excuse = accept(item, state) if accept else why
        if excuse is None:
            figures.correct += 1
        else:
            figures.problems.append(f"run {item.run.id} ({item.script.name}): {excuse}")
    return figures


def killer(
    fleet: Fleet,
    stop: threading.Event,
    *,
    every_s: tuple[float, float],
    seed: int,
    kills: list[float],
) -> threading.Thread:
    """A thread that SIGKILLs a random worker every few seconds and starts a replacement."""
    rng = random.Random(seed)

    def loop() -> None:
        while not stop.wait(rng.uniform(*every_s)):
            fleet.kill_one(rng)
            kills.append(time.monotonic())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def dump(value: Any) -> str:
    """Compact JSON for messages."""
    return json.dumps(value, default=str)[:300]


def in_flight(fleet: Fleet) -> dict[str, int]:
    """Statuses of the fleet's live runs (for progress messages)."""
    counts: dict[str, int] = defaultdict(int)
    for run_id in fleet.db.zrange(fleet.keys.runs(), 0, -1):
        counts[fleet.db.hget(fleet.keys.run(run_id), "status") or "?"] += 1
    return dict(counts)
