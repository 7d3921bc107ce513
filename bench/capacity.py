"""What one run costs Redis, by mode and by origin: `python -m quorum.bench.capacity
[--runs N] [--cluster]` (docs/capacity.md quotes it).

For each validation mode (SingleShot, Threshold and K-ahead, 3 issues each), on a private
stack: the store, the broker and Celery's chord results each in a Redis of its own, so that
each origin is counted apart; the simulator at L = 0, every vote passing; one worker started
with the documented command. After a warm-up, `CONFIG RESETSTAT` on every Redis; then N runs
are submitted at once and waited for by polling one counter (not counted). Per Redis: commands
per run (`INFO commandstats`), its CPU per run (`INFO cpu`) and network bytes per run
(`INFO stats`). The store's memory per run: `MEMORY USAGE` of every key of 20 runs, and the
run-spanning indexes' memory per run. The worker's CPU per run and per LLM call. Then `result()`
is called for every ended run, and what that adds is counted on its own. Last, N/4 more runs
with MONITOR on the store, apart since MONITOR costs Redis CPU: the store's commands by where
they go (the run's own slot, or which run-spanning key), polls included.

With `--cluster` the store is a 3-master Redis Cluster: its commands are counted per node,
which shows how a run's load spreads over the shards. With `--amqp URL` the broker is that
RabbitMQ, on queues of the probe's own, and its CPU per run is read from its `beam.smp`
process when it runs on this machine (shared with whatever else uses it meanwhile).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from typing import Any

import psutil
import redis
from kombu import Connection

from quorum.bench.workloads import PURCHASE_SCHEMA, TEMPLATE, message, validation_config
from quorum.producer.client import TaskClient
from quorum.producer.stack import (
    ManagedProcess,
    start_redis,
    start_redis_cluster,
    start_simulator,
    start_worker,
)
from quorum.shared.keys import Keys
from quorum.shared.settings import Settings
from quorum.simulator.control import SimulatorControl

__all__ = ["MODES", "main", "measure"]

MODES: dict[str, dict[str, Any]] = {
    "single_shot (3 issues)": validation_config("single_shot", issues=3, count=1, required_ahead=1),
    "threshold (3 issues x 3 votes)": validation_config(
        "threshold", issues=3, count=3, required_ahead=1
    ),
    "k_ahead (3 issues, count 5, k 3)": validation_config(
        "k_ahead", issues=3, count=5, required_ahead=3
    ),
}
ORIGINS = ("store", "broker", "chords")
_QUEUES = ("TASK", "VOTE", "CONTROL")
_SAMPLES = 20


def _nodes(url: str) -> list[redis.Redis]:
    """A plain client per node of the Redis at `url` (every primary of a cluster)."""
    if not url.startswith("redis+cluster://"):
        return [redis.Redis.from_url(url, decode_responses=True)]
    first = url.removeprefix("redis+cluster://").split(",")[0]
    host, _, port = first.rpartition(":")
    with redis.Redis(host=host, port=int(port), decode_responses=True) as seed:
        shards = seed.cluster("shards")
    return [
        redis.Redis(host=node["ip"], port=int(node["port"]), decode_responses=True)
        for shard in shards
        for node in shard["nodes"]
        if node["role"] == "master"
    ]


def _snapshot(node: redis.Redis) -> dict[str, Any]:
    info = node.info("everything")
    commands = {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in info.items()
        if name.startswith("cmdstat_")
    }
    return {
        "commands": commands,
        "cpu_s": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        "net_in": int(info["total_net_input_bytes"]),
        "net_out": int(info["total_net_output_bytes"]),
        "memory": int(info["used_memory"]),
    }


def _snap(nodes: dict[str, list[redis.Redis]]) -> dict[str, list[dict[str, Any]]]:
    return {origin: [_snapshot(node) for node in group] for origin, group in nodes.items()}


def _reset(nodes: dict[str, list[redis.Redis]]) -> dict[str, list[dict[str, Any]]]:
    """`CONFIG RESETSTAT` on every node, then a snapshot to count from."""
    for group in nodes.values():
        for node in group:
            node.config_resetstat()
    return _snap(nodes)


def _delta(
    before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]], runs: int
) -> dict[str, Any]:
    """Per origin: commands per run (in all, per command, per node), CPU ms and bytes per
    run."""
    out: dict[str, Any] = {}
    for origin in before:
        commands: Counter[str] = Counter()
        per_node, cpu_per_node, net_in, net_out, memory = [], [], 0, 0, 0
        for b, a in zip(before[origin], after[origin], strict=True):
            calls = Counter(a["commands"])
            calls.subtract(b["commands"])
            commands.update(calls)
            per_node.append(round(sum(calls.values()) / runs, 1))
            cpu_per_node.append(round((a["cpu_s"] - b["cpu_s"]) * 1000 / runs, 3))
            net_in += a["net_in"] - b["net_in"]
            net_out += a["net_out"] - b["net_out"]
            memory += a["memory"] - b["memory"]
        commands = Counter({k: v for k, v in commands.items() if v > 0})
        out[origin] = {
            "commands_per_run": round(sum(commands.values()) / runs, 1),
            "by_command": {k: round(v / runs, 2) for k, v in commands.most_common()},
            "per_node": per_node,
            "cpu_ms_per_run": round(sum(cpu_per_node), 3),
            "cpu_ms_per_node": cpu_per_node,
            "bytes_in_per_run": round(net_in / runs),
            "bytes_out_per_run": round(net_out / runs),
            "used_memory_per_run": round(memory / runs),
        }
    return out


def _memory(client: TaskClient, run_ids: list[str]) -> dict[str, Any]:
    """Bytes a run's own keys hold (MEMORY USAGE, mean over samples), and the run-spanning
    indexes' bytes per run."""
    db, keys = client.store.redis, Keys(client.settings.namespace)
    own = []
    for run_id in run_ids[:_SAMPLES]:
        found = list(db.scan_iter(match=f"*{{{run_id}}}*", count=1000))
        own.append(sum(int(db.memory_usage(key, samples=0) or 0) for key in found))
    indexes = [keys.runs(), keys.deadlines(), keys.progress()]
    indexes += [key for key in db.scan_iter(match=f"{keys.runs()}:*", count=1000)]
    spanning = sum(int(db.memory_usage(key, samples=0) or 0) for key in indexes)
    listed = max(int(db.zcard(keys.runs())), 1)  # the warm-up's runs as well
    return {
        "run_keys_bytes": round(sum(own) / len(own)),
        "index_bytes_per_run": round(spanning / listed),
    }


def _family(command: str, namespace: str) -> str | None:
    """Where a command (as MONITOR shows it) goes: its run's (or workflow's) slot, or the
    run-spanning key it names; None for a command on no key."""
    words = command.split(" ")
    name = words[0].upper()
    at = 3 if name in ("EVALSHA", "EVAL") else 1
    if len(words) <= at or name in ("INFO", "CONFIG", "PING", "CLIENT", "SCRIPT", "HELLO"):
        return None
    key = words[at]
    if "{" in key:
        return "the run's slot"
    return key.removeprefix(f"{namespace}:").split(":")[0] + " (run-spanning)"


class _Monitor:
    """The store's commands by where they go (MONITOR), while the measured runs are made."""

    def __init__(self, url: str, namespace: str) -> None:
        self.counts: Counter[str] = Counter()
        self._node = redis.Redis.from_url(url, decode_responses=True)
        self._stop = threading.Event()
        self._namespace = namespace
        ready = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _read(self, ready: threading.Event) -> None:
        with self._node.monitor() as monitor:
            ready.set()
            while not self._stop.is_set():
                family = _family(monitor.next_command()["command"], self._namespace)
                if family is not None:
                    self.counts[family] += 1

    def stop(self, runs: int) -> dict[str, float]:
        """Stop; the commands per run by where they went."""
        self._stop.set()
        self._node.ping()  # one more command, so that the reader sees the stop
        self._thread.join(10)
        return {k: round(v / runs, 2) for k, v in self.counts.most_common()}


def _wait(client: TaskClient, runs: int, timeout_s: float) -> int:
    """Poll the count of ended runs until all `runs` have; return the polls made."""
    keys, polls = Keys(client.settings.namespace), 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        polls += 1
        if int(client.store.redis.zcard(keys.runs_by_status("SUCCESSFUL"))) >= runs:
            return polls
        time.sleep(0.5)
    raise TimeoutError(f"{runs} runs did not all succeed within {timeout_s}s")


def _rabbitmq_cpu_s() -> float | None:
    """CPU seconds a RabbitMQ on this machine (its `beam.smp` process) has used, if one runs
    here and can be read."""
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "beam.smp":
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                return float(times.user + times.system)
    return None


def measure(
    config: dict[str, Any], *, runs: int, cluster: bool, amqp: str | None = None
) -> dict[str, Any]:
    """One mode's figures on a fresh stack (see the module's docstring); with `amqp`, the
    broker is that RabbitMQ (queues of this probe's own), whose CPU is read from its process
    when it runs on this machine."""
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        queues: dict[str, str] = {}
        for origin in ORIGINS:
            if origin == "broker" and amqp:
                urls[origin], suffix = amqp, uuid.uuid4().hex[:8]
                queues = {f"QUORUM_{q}_QUEUE": f"capacity.{q.lower()}.{suffix}" for q in _QUEUES}
                stack.callback(_drop_queues, amqp, list(queues.values()))
                continue
            if origin == "store" and cluster:
                urls[origin], nodes = start_redis_cluster(masters=3)
            else:
                urls[origin], nodes = start_redis()
            stack.callback(nodes.stop)
        base_url, sim = start_simulator("--latency", "0")
        stack.callback(sim.stop)
        env = {
            "QUORUM_REDIS_URL": urls["store"],
            "QUORUM_BROKER_URL": urls["broker"],
            "QUORUM_RESULT_BACKEND_URL": urls["chords"],
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "sim",
            **queues,
        }
        worker: ManagedProcess = start_worker(env, name="worker")
        stack.callback(worker.stop)
        fields: dict[str, Any] = {k.removeprefix("QUORUM_").lower(): v for k, v in env.items()}
        settings = Settings(**fields)  # the worker's, from its environment's QUORUM_* names
        client = TaskClient(settings=settings)
        stack.callback(client.close)
        submit: dict[str, Any] = {"template": TEMPLATE, "response_model": PURCHASE_SCHEMA}
        submit["config"] = config
        for i in range(10):  # warm-up: connections, scripts loaded, imports
            client.submit(**submit, kwargs={"message": message("warm", i)}).result(timeout=60)
        sim_control = SimulatorControl(base_url)
        nodes_of = {o: _nodes(u) for o, u in urls.items() if not (o == "broker" and amqp)}
        time.sleep(1)  # the warm-up's last steps after its runs' ends
        sim_control.clear()
        before, cpu_before = _reset(nodes_of), psutil.Process(worker.pid).cpu_times()
        rabbit_before = _rabbitmq_cpu_s() if amqp else None
        started = time.monotonic()
        handles = [
            client.submit(**submit, kwargs={"message": message("m", i)}) for i in range(runs)
        ]
        polls = _wait(client, runs + 10, timeout_s=600)
        seconds = time.monotonic() - started
        time.sleep(1)  # the steps after each run's end (indexes, chord clean-up)
        after, cpu_after = _snap(nodes_of), psutil.Process(worker.pid).cpu_times()
        rabbit_after = _rabbitmq_cpu_s() if amqp else None
        rabbit = None
        if rabbit_before is not None and rabbit_after is not None:
            rabbit = round((rabbit_after - rabbit_before) * 1000 / runs, 3)
        figures = _delta(before, after, runs)
        figures["store"]["commands_per_run"] = round(
            figures["store"]["commands_per_run"] - polls / runs, 1
        )
        worker_cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        calls = len(sim_control.calls())
        memory = _memory(client, [h.id for h in handles])
        before_waits = _reset(nodes_of)
        for handle in handles:
            handle.result(timeout=60)
        waits = _delta(before_waits, _snap(nodes_of), runs)["store"]
        where: dict[str, float] = {}
        if not cluster:  # apart: MONITOR costs Redis CPU, which would count above
            monitor, more = _Monitor(urls["store"], settings.namespace), max(runs // 4, 1)
            for i in range(more):
                client.submit(**submit, kwargs={"message": message("mon", i)})
            _wait(client, runs + 10 + more, timeout_s=600)
            time.sleep(1)
            where = monitor.stop(more)
        return {
            "runs": runs,
            "cluster": cluster,
            "broker": "rabbitmq" if amqp else "redis",
            "rabbitmq_cpu_ms_per_run": rabbit,
            "seconds": round(seconds, 1),
            "llm_calls_per_run": round(calls / runs, 2),
            "worker_cpu_ms_per_run": round(worker_cpu * 1000 / runs, 1),
            "worker_cpu_ms_per_call": round(worker_cpu * 1000 / max(calls, 1), 2),
            "origins": figures,
            "memory": memory,
            "store_commands_by_slot": where,
            "result_wait": {
                "commands_per_run": waits["commands_per_run"],
                "by_command": waits["by_command"],
            },
        }


def _drop_queues(url: str, names: list[str]) -> None:
    with Connection(url) as conn:
        channel = conn.channel()
        for name in names:
            channel.queue_delete(name)
            channel.exchange_delete(name)


def _table(results: dict[str, dict[str, Any]]) -> str:
    head = (
        "| mode | LLM calls/run | store cmds/run | broker cmds/run | chords cmds/run "
        "| store CPU µs/run | store bytes/run (keys + indexes) | worker CPU ms/call |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, r in results.items():
        o, m = r["origins"], r["memory"]
        lines.append(
            f"| {mode} | {r['llm_calls_per_run']} | {o['store']['commands_per_run']} "
            f"| {o.get('broker', {}).get('commands_per_run', '–')} "
            f"| {o['chords']['commands_per_run']} "
            f"| {o['store']['cpu_ms_per_run'] * 1000:.0f} "
            f"| {m['run_keys_bytes']:,} + {m['index_bytes_per_run']:,} "
            f"| {r['worker_cpu_ms_per_call']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure every mode; print the table and the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m quorum.bench.capacity")
    parser.add_argument("--runs", type=int, default=200, help="runs per mode (default 200)")
    parser.add_argument("--cluster", action="store_true", help="the store on a 3-master cluster")
    parser.add_argument("--amqp", default=None, help="the broker on this RabbitMQ (amqp://...)")
    parser.add_argument("--out", default=None, help="write the figures as JSON to this path")
    args = parser.parse_args(argv)
    results = {
        mode: measure(config, runs=args.runs, cluster=args.cluster, amqp=args.amqp)
        for mode, config in MODES.items()
    }
    print(_table(results))
    text = json.dumps(results, indent=2)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
