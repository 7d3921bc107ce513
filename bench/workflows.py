"""Workflows against the same runs submitted directly, side by side in one invocation:

    python -m quorum.bench.workflows [--items 1000] [--latency 0.2] [--workers 2] [--out FILE]

On one Redis, one simulator (every call takes `--latency` s) and the same workers:

- **map**: `items` SingleShot runs submitted directly in a burst (first submit → last end),
  then a workflow whose map node runs the same `items` runs (`max_parallel` = `items`; the
  map's start → the workflow's end). Reported: both times and their ratio, the workers' CPU
  and the Redis commands per run of each, and the difference per node: the scheduling
  overhead of a workflow node (worker CPU, Redis commands).
- **chain**: a 10-node chain (each node takes its upstream's output) from submit to result
  (median of 3), against one run's end to end (median of 5) × 10 + 50 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis

from quorum.producer.client import TaskClient
from quorum.producer.stack import Stack
from quorum.producer.workflow import Workflow
from quorum.simulator.control import SimulatorControl

__all__ = ["main", "measure", "section"]

CONFIG = {"mode": "single_shot", "issues": ["The answer is right"], "max_retries": 0}
TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
LIST = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": {"type": "string"}}},
    "required": ["items"],
}
TEMPLATE = "Check {{ claim }}"
CHAIN = 10


def _sim(scope: str, **script: Any) -> str:
    return f"<<sim:{json.dumps({'id': scope, **script})}>>"


class _Meter:
    """Worker CPU seconds and Redis commands over a measured span."""

    def __init__(self, pids: list[int], db: redis.Redis) -> None:
        self.pids, self.db = pids, db

    def _cpu(self) -> float:
        total = 0.0
        for pid in self.pids:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        return total

    def _commands(self) -> int:
        stats: dict[str, Any] = self.db.info("commandstats")
        return sum(int(v["calls"]) for v in stats.values())

    def span(self, work: Callable[[], float]) -> dict[str, float]:
        """Run `work` (it returns the seconds it measured itself); its CPU and commands."""
        cpu, commands = self._cpu(), self._commands()
        seconds = work()
        return {
            "seconds": seconds,
            "worker_cpu_s": self._cpu() - cpu,
            "redis_commands": self._commands() - commands,
        }


def _direct(client: TaskClient, items: int) -> float:
    started = time.monotonic()
    runs = [
        client.submit(
            template=TEMPLATE,
            response_model=TEXT,
            kwargs={"claim": f"item {i} " + _sim("bench-direct")},
            config=CONFIG,
        )
        for i in range(items)
    ]
    for run in runs:
        run.result(timeout=600)
    return time.monotonic() - started


def _map(client: TaskClient, items: int) -> float:
    wf = Workflow("bench-map", timeout_s=900)
    claims = [f"item {i} " + _sim("bench-map") for i in range(items)]
    root = wf.task(
        "extract",
        task={"template": "List {{ sim }}", "response_model": LIST, "config": CONFIG},
        kwargs={"sim": _sim("bench-root", outputs=[{"items": claims}])},
    )
    wf.map(
        "check",
        over=root["items"],
        item="claim",
        task={"template": TEMPLATE, "response_model": TEXT, "config": CONFIG},
        max_parallel=items,
    )
    run = client.submit_workflow(wf)
    run.result(timeout=900)
    events = run.provenance()
    start = next(e.ts for e in events if e.type == "node_started" and e["node"] == "check")
    end = next(e.ts for e in events if e.type == "workflow_finished")
    return end - start


def _one(client: TaskClient) -> float:
    started = time.monotonic()
    client.submit(
        template="Answer {{ sim }}",
        response_model=TEXT,
        kwargs={"sim": _sim("bench-one")},
        config=CONFIG,
    ).result(timeout=60)
    return time.monotonic() - started


def _chain(client: TaskClient) -> float:
    wf = Workflow("bench-chain", timeout_s=300)
    spec = {"template": "Go on from {{ x }} {{ sim }}", "response_model": TEXT, "config": CONFIG}
    previous: Any = "start"
    for n in range(CHAIN):
        previous = wf.task(f"n{n}", task=spec, kwargs={"x": previous, "sim": _sim("bench-chain")})
        previous = previous["text"]
    started = time.monotonic()
    client.submit_workflow(wf).result(timeout=300)
    return time.monotonic() - started


def measure(*, items: int, latency: float, workers: int, chains: int = 3) -> dict[str, Any]:
    """Start a stack, measure both comparisons (the chain's median of `chains`), return the
    figures."""
    with Stack() as stack:
        stack.redis()
        base_url = stack.simulator("--latency", str(latency), "--seed", "7")
        procs = [stack.worker("-n", f"bench{i}@%h", name=f"bench{i}") for i in range(workers)]
        pids = [p.process.pid for p in procs]
        pids += [c.pid for p in procs for c in psutil.Process(p.process.pid).children(True)]
        db = redis.Redis.from_url(stack.redis_url or "", decode_responses=True)
        sim = SimulatorControl(base_url)
        meter = _Meter(pids, db)
        with TaskClient(redis_url=stack.redis_url) as client:
            _direct(client, 20)  # warm up the workers and connections
            direct = meter.span(lambda: _direct(client, items))
            mapped = meter.span(lambda: _map(client, items))
            one = statistics.median(_one(client) for _ in range(5))
            chain = statistics.median(_chain(client) for _ in range(chains))
        sim.clear()
    per = {key: (mapped[key] - direct[key]) / items for key in ("worker_cpu_s", "redis_commands")}
    return {
        "items": items,
        "latency_s": latency,
        "workers": workers,
        "direct": direct,
        "map": mapped,
        "map_over_direct": mapped["seconds"] / direct["seconds"],
        "overhead_per_node": {"worker_cpu_ms": per["worker_cpu_s"] * 1000, **per},
        "one_run_s": one,
        "chain_s": chain,
        "chain_bound_s": CHAIN * one + 0.05,
        "chain_overhead_per_node_ms": (chain - CHAIN * one) / CHAIN * 1000,
    }


def section(figures: dict[str, Any] | None) -> list[str]:
    """The report's section on workflows (`quorum bench`), from `measure`'s figures."""
    if not figures:
        return []
    d, m, per = figures["direct"], figures["map"], figures["overhead_per_node"]
    n = figures["items"]
    return [
        "## 6. Workflows: a map and a chain against the same runs submitted directly",
        "",
        f"SingleShot runs, L = {figures['latency_s'] * 1000:.0f} ms, "
        f"{figures['workers']} worker processes. *Direct*: {n} runs submitted at once, first "
        f"submit to last end. *Map*: a workflow's map node over {n} items "
        f"(`max_parallel` = {n}), from its start to the workflow's end. The chain's target is "
        "10 × one run's end to end + 50 ms ([workflows.md](workflows.md)).",
        "",
        "| | seconds | worker CPU per run | Redis commands per run |",
        "|---|---:|---:|---:|",
        f"| direct | {d['seconds']:.2f} | {d['worker_cpu_s'] / n * 1000:.1f} ms "
        f"| {d['redis_commands'] / n:.0f} |",
        f"| map | {m['seconds']:.2f} | {m['worker_cpu_s'] / n * 1000:.1f} ms "
        f"| {m['redis_commands'] / n:.0f} |",
        "",
        f"Map / direct: **{figures['map_over_direct']:.2f}×** (target ≤ 1.15×). Scheduling "
        f"overhead per node: {per['worker_cpu_ms']:.1f} ms of worker CPU, "
        f"{per['redis_commands']:.1f} Redis commands. 10-node chain: "
        f"**{figures['chain_s']:.2f} s** against one run's {figures['one_run_s'] * 1000:.0f} ms "
        f"(target ≤ {figures['chain_bound_s']:.2f} s; "
        f"{figures['chain_overhead_per_node_ms']:.1f} ms per node beyond the run itself).",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point: measure and print (and write) the figures."""
    parser = argparse.ArgumentParser(prog="python -m quorum.bench.workflows")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    figures = measure(items=args.items, latency=args.latency, workers=args.workers)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
