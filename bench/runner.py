"""`quorum bench`: start Redis, the simulator and workers, run every workload through Quorum
and through the reference side by side, measure Celery alone under the same shapes of jobs
(`quorum.bench.floor`), and write the report.

Each workload runs in a driver process of its own (`quorum.bench.driver`); the runner samples the
CPU time of the worker processes when the driver starts and ends its measured part, so that
CPU per run counts exactly the Quorum processes (workers and producer) while they work.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from celery import Celery
from rich.console import Console

from quorum.bench import reference
from quorum.bench.commands import CommandProbe
from quorum.bench.progress import follow, workload_progress
from quorum.bench.workflows import measure as measure_workflows
from quorum.bench.workloads import Profile, profile, validation_config
from quorum.producer.stack import ManagedProcess, Stack, celery_command

__all__ = ["Bench", "run_bench"]


def _wait_ready(
    broker_url: str, names: list[str], workers: list[ManagedProcess], *, timeout_s: float
) -> None:
    """Wait until every named worker answers a remote-control ping (it consumes by then)."""
    deadline = time.monotonic() + timeout_s
    with contextlib.closing(Celery(broker=broker_url)) as app:
        while True:
            for worker in workers:
                if worker.process.poll() is not None:
                    raise RuntimeError(f"{worker.name} exited:\n{worker.output()}")
            answered = {name for reply in app.control.ping(names, timeout=0.5) for name in reply}
            if answered >= set(names):
                return
            if time.monotonic() > deadline:
                missing = sorted(set(names) - answered)
                raise TimeoutError(f"workers {missing} never answered a ping")


def _peak_rss_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM), or its current one where /proc has none."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return int(psutil.Process(pid).memory_info().rss // 1024)


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


class Bench:
    """One benchmark invocation: the stack, the workers, and every measurement taken."""

    def __init__(self, prof: Profile, stack: Stack, *, with_reference: bool) -> None:
        self.profile = prof
        self.stack = stack
        self.with_reference = with_reference
        self.records: list[dict[str, Any]] = []
        self.workers: list[ManagedProcess] = []
        self.concurrency = "default"
        self.started = time.monotonic()
        # Progress: a line per workload while it runs, counting its finished runs (on a
        # terminal only, `quorum.bench.progress`), then its summary line, numbered, with the
        # benchmark's time so far.
        self.console = Console(highlight=False, soft_wrap=True)

    # -- the stack -----------------------------------------------------------------------

    def sim(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call one of the simulator's control endpoints."""
        root = (self.stack.llm_base_url or "").removesuffix("/v1")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(root + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    @contextlib.contextmanager
    def running(
        self, count: int, *, app: str = "quorum.worker.app", **env: str
    ) -> Iterator[list[ManagedProcess]]:
        """`count` fresh worker processes, started with the documented command (`app`:
        `quorum.bench.floor` for Celery alone)."""
        env = self.stack.env(**env)
        self.concurrency = env.get("QUORUM_WORKER_CONCURRENCY", "default")
        # The documented command at its default log level: at INFO, Celery's two lines per
        # job cost worker CPU (docs/benchmarks.md, History). Without the "ready." line, a ping
        # tells.
        names = [f"bench{n}@{socket.gethostname()}" for n in range(count)]
        workers = [
            ManagedProcess(f"worker-{n}", [*celery_command(app), "-n", name], env=env)
            for n, name in enumerate(names)
        ]
        try:
            _wait_ready(self.stack.redis_url or "", names, workers, timeout_s=90)
            self.workers = workers
            yield workers
        finally:
            self.workers = []
            for worker in workers:
                worker.stop()

    # -- one measurement -----------------------------------------------------------------

    def measure(
        self,
        engine: str,
        workload: str,
        *,
        latency: float,
        pass_rate: float = 1.0,
        queued: bool = False,
        commands: bool = False,
        **spec: Any,
    ) -> dict[str, Any]:
        """Run one workload through one engine in a driver process; record what it measured.

        `queued`: the driver submits every run first, and one worker starts (threads:
        `inflight_concurrency`) only once they all wait in the queue. `commands`: count the
        Redis commands of the measured part by origin (`quorum.bench.commands`; Redis's
        MONITOR feed slows it, so such a workload measures nothing else worth keeping).
        """
        self.sim("POST", "/_sim/config", {"latency": str(latency), "pass_rate": pass_rate})
        self.sim("DELETE", "/_sim/calls")
        spec = {
            "engine": engine,
            "redis_url": self.stack.redis_url,
            "base_url": self.stack.llm_base_url,
            "tag": uuid.uuid4().hex[:8],
            "timeout_s": self.profile.timeout_s,
            "latency": latency,
            **spec,
        }
        if queued:
            spec["shape"] = "queued"
        number = len(self.records) + 1
        doing = f"[{number}] {engine} {workload} L={latency}"
        counted: dict[str, Any] = {}
        with contextlib.ExitStack() as started:
            probe = started.enter_context(CommandProbe(spec["redis_url"])) if commands else None
            driver = ManagedProcess(
                f"{engine}-{workload}",
                [sys.executable, "-m", "quorum.bench.driver", json.dumps(spec)],
            )
            shown = started.enter_context(workload_progress(self.console, doing, spec["runs"]))
            started.callback(driver.stop)
            driver.wait_for(r"^BEGIN$", timeout_s=120)
            if probe is not None:
                probe.mark()
            if queued:
                driver.wait_for(r"^QUEUED$", timeout_s=self.profile.timeout_s)
                threads = str(self.profile.inflight_concurrency)
                started.enter_context(self.running(1, QUORUM_WORKER_CONCURRENCY=threads))
            pids = [w.pid for w in self.workers] if engine != "reference" else []
            cpu = _cpu_s(pids)
            result = follow(driver, shown, timeout_s=self.profile.timeout_s + 300)
            cpu = _cpu_s(pids) - cpu
            if probe is not None:
                counted = {"redis_commands": probe.count(spec["runs"]).per_run()}
            peak_rss_kb = [_peak_rss_kb(pid) for pid in pids]
            concurrency = self.concurrency if pids else ""
        calls = self.sim("GET", "/_sim/calls")
        measured = json.loads(result)
        # Celery alone counts its own jobs in flight: they sleep instead of calling the LLM.
        if "max_in_flight" not in measured:
            measured["max_in_flight"] = self.sim("GET", "/_sim/stats")["max_in_flight"]
        record = {
            "engine": engine,
            "workload": workload,
            "latency": latency,
            "pass_rate": pass_rate,
            "workers": len(pids),
            "concurrency": concurrency,
            "queued": queued,
            "shape": spec.get("shape"),
            "config": spec["config"],
            **measured,
            "worker_cpu_s": cpu,
            "worker_peak_rss_kb": peak_rss_kb,
            "llm_calls": sum(c["status"] == 200 for c in calls),
            "votes": sum(c["status"] == 200 and c["kind"] == "vote" for c in calls),
            **counted,
        }
        self.records.append(record)
        elapsed = time.monotonic() - self.started
        self.console.print(
            f"[{number}] {_summary(record).strip()}  ({elapsed:.0f} s in)", markup=False
        )
        return record

    def both(self, workload: str, **spec: Any) -> None:
        """The same workload through Quorum, then through the reference."""
        self.measure("quorum", workload, **spec)
        if self.with_reference:
            self.measure("reference", workload, **spec)

    # -- the workloads -------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Every workload of the profile, in an order that keeps each pair side by side."""
        p = self.profile
        standard = validation_config("threshold", issues=p.issues, count=p.count, required_ahead=1)
        with self.running(1):
            for latency in p.latency_levels:
                self.both("latency", **self.one_at_a_time(latency), config=standard)
            # The Redis commands of a run, by origin: the same runs as the CPU workload's.
            for shape in ("burst", "sequential"):
                self.measure(
                    "quorum",
                    "commands",
                    latency=0.0,
                    commands=True,
                    shape=shape,
                    runs=p.cpu_runs,
                    warmup=2,
                    config=standard,
                )
            for _ in range(p.cpu_repeat):
                self.both("cpu", latency=0.0, shape="burst", runs=p.cpu_runs, config=standard)
            self.economy()
            single = validation_config("single_shot", issues=1, count=1, required_ahead=1)
            self.both("inflight", **self.inflight, config=single)
        # One worker process per core, as a deployment runs them: a round's votes spread over
        # both (each takes at most half of the jobs waiting).
        with self.running(2):
            for latency in p.latency_levels:
                self.measure("quorum", "latency", **self.one_at_a_time(latency), config=standard)
        # Threads are cheap: the same with a pool big enough for more calls than the default.
        with self.running(1, QUORUM_WORKER_CONCURRENCY=str(p.inflight_concurrency)):
            self.measure("quorum", "inflight", **self.inflight, config=single)
        # And with every run queued before that worker starts: the producer's CPU, on this
        # same small machine while the runs arrive, then no longer competes with the worker's.
        self.measure("quorum", "inflight", **self.inflight, config=single, queued=True)
        self.celery_alone()
        for _ in range(p.burst_repeat):
            for count in p.burst_workers:
                with self.running(count):
                    self.measure(
                        "quorum",
                        "burst",
                        latency=p.burst_latency,
                        shape="burst",
                        runs=p.burst_runs,
                        config=standard,
                    )
            if self.with_reference:
                self.measure(
                    "reference",
                    "burst",
                    latency=p.burst_latency,
                    shape="burst",
                    runs=p.burst_runs,
                    config=standard,
                )
        return self.records

    def one_at_a_time(self, latency: float) -> dict[str, Any]:
        """The latency workload: runs one at a time after a warm-up, at `latency`."""
        p = self.profile
        return {
            "latency": latency,
            "shape": "sequential",
            "runs": p.latency_runs,
            "warmup": p.latency_warmup,
        }

    @property
    def inflight(self) -> dict[str, Any]:
        """The in-flight workload: all runs at once, at the profile's latency."""
        p = self.profile
        return {"latency": p.inflight_latency, "shape": "burst", "runs": p.inflight_runs}

    def celery_alone(self) -> None:
        """Celery's own floor under the latency and in-flight targets: the same shapes of
        jobs on a worker configured like Quorum's, sleeping where Quorum calls the LLM."""
        p = self.profile
        concurrency = str(p.inflight_concurrency)
        shaped = {"mode": "celery", "votes": p.issues * p.count}
        for count in (1, 2):
            with self.running(
                count, app="quorum.bench.floor", QUORUM_WORKER_CONCURRENCY=concurrency
            ):
                for latency in p.latency_levels:
                    self.measure("celery", "latency", **self.one_at_a_time(latency), config=shaped)
                if count == 1:
                    single = {"mode": "celery", "votes": 1}
                    self.measure("celery", "inflight", **self.inflight, config=single)

    def economy(self) -> None:
        """K-ahead and Threshold against simulated validators of each accuracy, one issue."""
        p = self.profile
        for mode, (count, ahead) in (("k_ahead", p.kahead), ("threshold", p.threshold)):
            config = validation_config(mode, issues=1, count=count, required_ahead=ahead)
            for accuracy in p.accuracies:
                spec: dict[str, Any] = {
                    "latency": p.economy_latency,
                    "pass_rate": accuracy,
                    "shape": "burst",
                    "runs": p.economy_runs,
                    "config": config,
                }
                self.measure("quorum", "economy", **spec)
                if mode == "k_ahead":  # the same race, opening with k votes instead of count
                    opening = {**config, "first_round": ahead}
                    self.measure("quorum", "economy", **{**spec, "config": opening})
                # The reference's K-ahead never draws a second round: an undecided issue hangs
                # until its 60 s node timeout. Once, at the middle accuracy, shows it.
                middle = p.accuracies[len(p.accuracies) // 2]
                shown = p.reference_kahead and accuracy == middle
                if self.with_reference and (mode != "k_ahead" or shown):
                    self.measure("reference", "economy", **spec)


def _summary(record: dict[str, Any]) -> str:
    runs = len(record["latencies"])
    passed = sum(record["passed"])
    cpu = record["cpu_s"] + record["worker_cpu_s"]
    return (
        f"  {record['workload']:<9} {record['engine']:<9} L={record['latency']:<5} "
        f"p={record['pass_rate']:<5} workers={record['workers']} runs={runs} "
        f"passed={passed} wall={record['wall_s']:.2f}s cpu={cpu:.2f}s "
        f"in-flight={record['max_in_flight']} votes={record['votes']}"
    )


def _machine() -> dict[str, Any]:
    import platform

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model or platform.processor(),
        "cores": psutil.cpu_count(logical=True),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    names = ["celery", "kombu", "redis", "openai", "pydantic", "py-ai-toolkit"]
    found = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def run_bench(*, quick: bool, out: Path, command: str) -> int:
    """Run the benchmark and write `benchmarks.md`, its plots and the raw results to `out`."""
    from quorum.bench.report import write_report

    prof = profile("quick" if quick else "full")
    with_reference = reference.available()
    if not with_reference:
        print("py-ai-toolkit is not installed (pip install 'quorum-celery[bench]'): Quorum only")
    started = time.time()
    with Stack() as stack:
        stack.redis()
        stack.simulator("--seed", "1")
        records = Bench(prof, stack, with_reference=with_reference).run()
    workflows = measure_workflows(
        items=20 if quick else 1000, latency=0.2, workers=2, chains=1 if quick else 3
    )
    results = {
        "profile": prof.name,
        "command": command,
        "started": started,
        "duration_s": time.time() - started,
        "machine": _machine(),
        "versions": _versions(),
        "records": records,
        "workflows": workflows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(results, indent=1))
    report = write_report(results, out)
    print(f"wrote {report} in {results['duration_s']:.0f} s")
    return 0
