"""Compare this checkout with an earlier commit, side by side in one invocation:

    python -m quorum.bench.compare BASE_COMMIT [--rounds 2] [--out FILE] [--quick]

For each side in turn (base, head, head, base, …: a steady drift of the host falls on both
sides alike) it starts workers with that side's own code and measures, on one Redis and one
simulator:

- latency: runs one at a time at L = 200 ms, end to end − 2L (median), on 1 and 2 workers;
- throughput: a burst of runs at L = 200 ms on 2 workers, runs/s;
- CPU per run at L = 0 (the workers' and the producer's CPU time over the runs), a burst on
  2 workers, and one run at a time on one worker;
- Redis commands per run at L = 0, a burst on one worker, in all and by origin (store,
  broker, chord backend, events: `quorum.bench.commands`), the idle worker's own polling
  during the runs included;
- calls in flight: SingleShot runs at L = 1 s on one worker, the most LLM calls at once.

`--quick` measures only the one-worker, one-at-a-time figures (latency, CPU per run), so that
more rounds fit in the same time: that shape is the noisiest.

Where py-ai-toolkit is installed, each round also measures the reference (its `run_task` in
one process) one run at a time, for the ratios of the one-worker figures to it: of the
medians, and in brackets the median of each round's ratio to that round's reference.

Every run is Threshold voting, 3 issues × 3 votes, all passing, as in `quorum bench`. The base
side runs from a git worktree of BASE_COMMIT with this environment's packages; its workers
start with its own documented command, found from its layout (`quorum.worker.app`, or
`worker.app` before the single import root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from quorum.bench import reference
from quorum.bench.commands import ORIGINS, CommandProbe
from quorum.producer.stack import ManagedProcess, celery_command, start_redis, start_simulator
from quorum.simulator.control import SimulatorControl

__all__ = ["Side", "main"]

CONFIG = {"mode": "threshold", "issues": ["a", "b", "c"], "count": 3}
SCHEMA = {
    "type": "object",
    "properties": {"product": {"type": "string"}, "quantity": {"type": "integer"}},
    "required": ["product", "quantity"],
}
SINGLE = {"mode": "single_shot", "issues": ["a"]}

# The producer: this side's client, `runs` runs one at a time or all at once; prints JSON.
_DRIVER = """
import json, resource, sys, time
import psutil
spec = json.loads(sys.argv[1])
def workers_cpu_s():
    total = 0.0
    for pid in spec.get("pids", []):
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                total += sum(p.cpu_times()[:2])
        except psutil.Error:
            pass
    return total
module = __import__(spec["client"], fromlist=["TaskClient"])
client = module.TaskClient(redis_url=spec["redis_url"])
def submit(i):
    return client.submit(template="Extract purchase from: I want {{ n }} apples",
                         response_model=spec["schema"], kwargs={"n": i}, config=spec["config"])
for i in range(spec.get("warmup", 0)):
    submit(-1 - i).result(timeout=120)
cpu0, wcpu0, began, times = time.process_time(), workers_cpu_s(), time.monotonic(), []
if spec["burst"]:
    runs = [submit(i) for i in range(spec["runs"])]
    for run in runs:
        run.result(timeout=600)
else:
    for i in range(spec["runs"]):
        t0 = time.monotonic()
        submit(i).result(timeout=120)
        times.append(time.monotonic() - t0)
print(json.dumps({"wall_s": time.monotonic() - began, "cpu_s": time.process_time() - cpu0,
                  "workers_cpu_s": workers_cpu_s() - wcpu0, "times": times}))
"""


@dataclass(frozen=True)
class Side:
    """One side of the comparison: a source tree and how its code is reached."""

    name: str
    root: Path

    @property
    def flat(self) -> bool:
        """Whether the tree predates the single `quorum` import root."""
        return not (self.root / "quorum" / "__init__.py").exists()

    @property
    def app(self) -> str:
        return "worker.app" if self.flat else "quorum.worker.app"

    @property
    def client(self) -> str:
        return "producer" if self.flat else "quorum"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of this side's processes."""
        path = [str(self.root), os.environ.get("PYTHONPATH", "")]
        return {"PYTHONPATH": os.pathsep.join(p for p in path if p), **extra}


@contextlib.contextmanager
def _workers(side: Side, count: int, env: dict[str, str]) -> Iterator[list[ManagedProcess]]:
    workers = [
        ManagedProcess(
            f"{side.name}-worker{n}",
            [*celery_command(side.app), "-n", f"{side.name}{n}@%h", "--loglevel", "WARNING"],
            env=side.env(**env),
            cwd=side.root,
        )
        for n in range(count)
    ]
    try:
        time.sleep(1.0)  # the worker logs nothing at WARNING: give it a moment to consume
        for worker in workers:
            if worker.process.poll() is not None:
                raise RuntimeError(f"{worker.name} exited:\n{worker.output()}")
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def _drive(side: Side, redis_url: str, **spec: Any) -> dict[str, Any]:
    spec = {"client": side.client, "redis_url": redis_url, "schema": SCHEMA, **spec}
    out = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(spec)],
        env={**os.environ, **side.env()},
        cwd=side.root,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{side.name} driver failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _origin_figure(origin: str) -> str:
    return "redis_commands_" + origin.replace(" ", "_")


def measure(
    side: Side, redis_url: str, sim: SimulatorControl, env: dict[str, str], *, quick: bool = False
) -> tuple[dict[str, float], dict[str, Any]]:
    """Every figure for one side (one round), and the commands per run in detail; `quick`:
    only the one-worker, one-at-a-time figures (latency and CPU per run)."""
    db = redis.Redis.from_url(redis_url)
    figures: dict[str, float] = {}

    def fresh(latency: float) -> None:
        db.flushall()
        sim.configure(latency=str(latency), pass_rate=1.0)
        sim.clear()

    for workers in (1,) if quick else (1, 2):
        fresh(0.2)
        with _workers(side, workers, env):
            _drive(side, redis_url, config=CONFIG, runs=3, burst=False)  # warm up
            seq = _drive(side, redis_url, config=CONFIG, runs=20, burst=False)
        figures[f"latency_ms_{workers}w"] = (statistics.median(seq["times"]) - 0.4) * 1000
    # The workers' CPU is read by the driver around the runs it times: not over its own
    # start-up, its warm-up runs and its exit, when the workers only poll.
    if not quick:
        fresh(0.2)
        with _workers(side, 2, env):
            burst = _drive(side, redis_url, config=CONFIG, runs=300, burst=True)
        figures["runs_per_s"] = 300 / burst["wall_s"]
        fresh(0.0)
        with _workers(side, 2, env) as procs:
            _drive(side, redis_url, config=CONFIG, runs=10, burst=True)
            pids = [w.pid for w in procs]
            cpu = _drive(side, redis_url, config=CONFIG, runs=200, burst=True, pids=pids)
        figures["cpu_ms_per_run"] = (cpu["workers_cpu_s"] + cpu["cpu_s"]) / 200 * 1000
    fresh(0.0)
    with _workers(side, 1, env) as procs:
        pids = [w.pid for w in procs]
        serial = _drive(side, redis_url, config=CONFIG, runs=40, burst=False, warmup=5, pids=pids)
        figures["cpu_ms_per_run_serial_1w"] = (
            (serial["workers_cpu_s"] + serial["cpu_s"]) / 40 * 1000
        )
        if quick:
            db.close()
            return figures, {}
        with CommandProbe(redis_url) as probe:
            probe.mark()
            _drive(side, redis_url, config=CONFIG, runs=200, burst=True)
            counted = probe.count(200).per_run()
    figures["redis_commands_per_run"] = counted["total"]
    for origin in ORIGINS:
        figures[_origin_figure(origin)] = counted["by_origin"].get(origin, 0.0)
    fresh(1.0)
    with _workers(side, 1, env):
        _drive(side, redis_url, config=SINGLE, runs=700, burst=True)
    figures["calls_in_flight"] = sim.stats()["max_in_flight"]
    db.close()
    return figures, counted


def measure_reference(base_url: str, sim: SimulatorControl) -> dict[str, float]:
    """The reference (py-ai-toolkit's `run_task`, in one process) one run at a time: its
    CPU per run at L = 0 and its end to end − 2L at L = 200 ms."""
    from quorum.bench.workloads import validation_config

    config = validation_config("threshold", issues=3, count=3, required_ahead=1)
    figures: dict[str, float] = {}
    for latency, runs in ((0.0, 40), (0.2, 20)):
        sim.configure(latency=str(latency), pass_rate=1.0)
        spec = {
            "engine": "reference",
            "base_url": base_url,
            "tag": uuid.uuid4().hex[:8],
            "timeout_s": 120,
            "latency": latency,
            "shape": "sequential",
            "runs": runs,
            "warmup": 3,
            "config": config,
        }
        out = subprocess.run(
            [sys.executable, "-m", "quorum.bench.driver", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        )
        line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
        result = json.loads(line.removeprefix("RESULT "))
        if latency:
            overhead = statistics.median(result["latencies"]) - 2 * latency
            figures["latency_ms_1w"] = overhead * 1000
        else:
            figures["cpu_ms_per_run_serial_1w"] = result["cpu_s"] / runs * 1000
    return figures


def _by_round(side: list[dict[str, float]], ref: list[dict[str, float]], key: str) -> float:
    """The median over rounds of a side's figure divided by the reference's of the same
    round: the host's drift between rounds falls on both."""
    return statistics.median(s[key] / r[key] for s, r in zip(side, ref, strict=True) if r[key])


def _table(results: dict[str, list[dict[str, float]]]) -> str:
    """Base and head side by side (every round, and the ratio of medians); the reference's
    figures, where measured, and each side's ratio to them: of the medians, and in brackets
    the median of each round's ratio."""
    names = [n for n in results if n != "reference"]
    ref = results.get("reference") or []
    keys = list(results[names[0]][0])
    head = "| figure | " + " | ".join(names) + " | ratio (head ÷ base, medians) |"
    rows = [head, "|---" * (len(names) + 2) + "|"]
    refs = []
    for key in keys:
        medians = [statistics.median(r[key] for r in results[name]) for name in names]
        cells = [", ".join(f"{r[key]:.1f}" for r in results[name]) for name in names]
        ratio = f"{medians[1] / medians[0]:.2f}×" if medians[0] else "–"
        rows.append(f"| {key} | " + " | ".join(cells) + f" | {ratio} |")
        if ref and key in ref[0]:
            mine = statistics.median(r[key] for r in ref)
            shown = ", ".join(f"{r[key]:.1f}" for r in ref)
            each = " | ".join(
                f"{m / mine:.2f}× ({_by_round(results[name], ref, key):.2f}×)" if mine else "–"
                for name, m in zip(names, medians, strict=True)
            )
            refs.append(f"| {key} | {shown} | {each} |")
    if refs:
        rows += ["", "| figure | reference | " + " | ".join(f"{n} ÷ reference" for n in names)]
        rows[-1] += " |"
        rows += ["|---" * (len(names) + 2) + "|", *refs]
    return "\n".join(rows)


def _worktree(stack: contextlib.ExitStack, repo: Path, commit: str, where: Path) -> Path:
    """A detached worktree of `commit` at `where`, removed when `stack` closes."""
    subprocess.run(
        ["git", "-C", str(repo), "worktree", "add", "--detach", str(where), commit],
        check=True,
        capture_output=True,
    )
    stack.callback(
        subprocess.run,
        ["git", "-C", str(repo), "worktree", "remove", "--force", str(where)],
        check=False,
    )
    return where


def main(argv: list[str] | None = None) -> int:
    """Measure BASE against this checkout (or `--head`), alternately; print a table."""
    parser = argparse.ArgumentParser(prog="python -m quorum.bench.compare")
    parser.add_argument("base", help="the commit to compare this checkout with")
    parser.add_argument("--head", help="a commit to measure instead of this checkout")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per side (default 2)")
    parser.add_argument("--out", type=Path, help="also write the table (and JSON) here")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only one worker, one run at a time: latency and CPU per run (more rounds fit)",
    )
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="quorum-base-") as tmp, contextlib.ExitStack() as stack:
        base_root = _worktree(stack, repo, args.base, Path(tmp) / "base")
        head_root = _worktree(stack, repo, args.head, Path(tmp) / "head") if args.head else repo
        redis_url, server = start_redis()
        stack.callback(server.stop)
        base_url, simulator = start_simulator("--latency", "0.2", "--pass-rate", "1.0")
        stack.callback(simulator.stop)
        env = {"QUORUM_REDIS_URL": redis_url, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "sim"}
        sides = [Side("base", base_root), Side("head", head_root)]
        results: dict[str, list[dict[str, float]]] = {side.name: [] for side in sides}
        details: dict[str, list[dict[str, Any]]] = {side.name: [] for side in sides}
        control = SimulatorControl(base_url)
        with_reference = reference.available()
        if with_reference:
            results["reference"] = []
        for round_ in range(args.rounds):
            # base, head, head, base, …: a steady drift of the host falls on both sides alike
            for side in sides if round_ % 2 == 0 else sides[::-1]:
                figures, counted = measure(side, redis_url, control, env, quick=args.quick)
                results[side.name].append(figures)
                details[side.name].append(counted)
                print(f"round {round_ + 1} {side.name}: {json.dumps(figures)}", flush=True)
            if with_reference:
                figures = measure_reference(base_url, control)
                results["reference"].append(figures)
                print(f"round {round_ + 1} reference: {json.dumps(figures)}", flush=True)
    table = _table(results)
    print(table)
    if args.out:
        raw = {"figures": results, "redis_commands": details}
        args.out.write_text(table + "\n\n" + json.dumps(raw, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
