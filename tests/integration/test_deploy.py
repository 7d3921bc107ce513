"""docker-compose.yml, proven without Docker: every service's command and healthcheck is
started here with the environment the file gives it (see `tests.deployfiles.localize`), and
the services work together: a run submitted to the API is executed by the worker against the
simulator, Flower lists its jobs, and /metrics counts it. `docker-compose config` checks the
file's syntax where Debian's docker-compose is installed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from quorum.producer.stack import ManagedProcess, free_port
from tests.deployfiles import COMPOSE_FILE, ROOT, Local, localize
from tests.integration.helpers import APPLES, Purchase, directive
from tests.integration.services import flower_tasks, http, poll

pytestmark = pytest.mark.integration

VARIABLES = {
    "REDIS_PASSWORD": "compose-redis-pass",
    "FLOWER_BASIC_AUTH": "admin:compose-flower-pass",
    "QUORUM_API_TOKEN": "compose-api-token",
}
READY = {
    "redis": r"[Rr]eady to accept connections",
    "llm-sim": r"simulator listening on",
    "worker": r"celery@\S+ ready\.",
    "flower": r"Connected to ",
    "api": r"Uvicorn running on",
}


class ComposeStack:
    """The compose file's services as local processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = {6379: free_port(), 8000: free_port(), 5555: free_port(), 8080: free_port()}
        self.services: dict[str, Local] = {}
        self.processes: dict[str, ManagedProcess] = {}

    def up(self, name: str) -> ManagedProcess:
        data = self.root / name
        data.mkdir()
        service = localize(name, VARIABLES, ports=self.ports, data_dir=data)
        self.services[name] = service
        self.processes[name] = ManagedProcess(
            name, service.command, env=service.env, ready=READY[name], timeout_s=60, cwd=data
        )
        return self.processes[name]

    def healthcheck(self, name: str) -> subprocess.CompletedProcess[str]:
        check = self.services[name].healthcheck
        assert check is not None, f"{name} has no healthcheck"
        env = {
            **os.environ,
            **self.services[name].env,
            "HOSTNAME": socket.gethostname(),  # Docker sets it; shells other than bash do not
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
        }
        return subprocess.run(
            check, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
        )

    def url(self, container_port: int) -> str:
        return f"http://127.0.0.1:{self.ports[container_port]}"

    def down(self) -> None:
        for process in reversed(self.processes.values()):
            process.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    """redis, llm-sim, worker, flower and api, started in the compose file's order."""
    services = ComposeStack(tmp_path_factory.mktemp("compose"))
    try:
        for name in ("redis", "llm-sim", "worker", "flower", "api"):
            services.up(name)
        yield services
    finally:
        services.down()


def test_redis_runs_with_aof_and_a_password(stack: ComposeStack):
    port = stack.ports[6379]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, retry=None).ping()  # no retries: the answer will not change
    db = redis.Redis(port=port, password=VARIABLES["REDIS_PASSWORD"], decode_responses=True)
    assert db.config_get("appendonly") == {"appendonly": "yes"}
    assert db.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert any((stack.root / "redis").rglob("*.aof")), "no append-only file in its data dir"


@pytest.mark.parametrize("name", ["redis", "llm-sim", "worker", "flower", "api"])
def test_every_healthcheck_passes(stack: ComposeStack, name: str):
    result = stack.healthcheck(name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_run_through_the_api_is_executed_shown_in_flower_and_counted(stack: ComposeStack):
    token, basic = VARIABLES["QUORUM_API_TOKEN"], VARIABLES["FLOWER_BASIC_AUTH"]
    body = {
        "template": "Extract the purchase from: I want 5 apples {{ sim }}",
        "kwargs": {"sim": directive("compose", outputs=[APPLES], votes={"*": True})},
        "response_schema": Purchase.model_json_schema(),
        "config": {"mode": "threshold", "issues": ["names a product"], "count": 3},
    }
    api = stack.url(8080)
    assert http("POST", f"{api}/v1/runs", body).status == 401
    run_id = http("POST", f"{api}/v1/runs", body, token=token).json()["id"]
    done = http("GET", f"{api}/v1/runs/{run_id}/result?timeout=30", token=token)
    assert done.status == 200 and done.json()["result"] == APPLES, done

    flower = stack.url(5555)
    assert http("GET", f"{flower}/api/tasks").status == 401
    names = poll(
        lambda: (
            sorted(t["name"] for t in flower_tasks(flower, run_id, basic=basic))
            if len(flower_tasks(flower, run_id, basic=basic)) == 4
            else None
        ),
        timeout_s=20,
        what="Flower to list the run's four jobs",
    )
    assert names == ["quorum.task_node", *["quorum.vote"] * 3]

    metrics = http("GET", f"{api}/metrics", token=token).text
    assert 'quorum_runs{status="SUCCESSFUL"} 1.0' in metrics


def test_docker_compose_config_accepts_the_file():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    command = [binary, "-f", str(COMPOSE_FILE), "config", "-q"]
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    ok = subprocess.run(command, env={**env, **VARIABLES}, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(command, env=env, capture_output=True, text=True, cwd="/")
    assert missing.returncode != 0 and "REDIS_PASSWORD" in missing.stderr
