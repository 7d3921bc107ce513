"""Helpers of the deployment tests: plain HTTP calls, and the API and Flower as processes."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from quorum.producer.stack import ManagedProcess, celery_command, free_port

ROOT = Path(__file__).resolve().parents[2]


class Reply:
    """An HTTP answer: status, headers, body text, and the body as JSON when it is JSON."""

    def __init__(self, status: int, headers: Mapping[str, str], text: str) -> None:
        self.status = status
        self.headers = headers
        self.text = text

    def json(self) -> Any:
        """The body, decoded."""
        return json.loads(self.text)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.text[:300]!r})"


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    basic: str | None = None,
    timeout_s: float = 60,
) -> Reply:
    """Send one request; return the answer whatever its status."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if basic is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return Reply(resp.status, dict(resp.headers), resp.read().decode())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read().decode())


def poll(check: Callable[[], Any], *, timeout_s: float, what: str, every_s: float = 0.2) -> Any:
    """Call `check` until it returns something truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def start_api(env: Mapping[str, str]) -> tuple[str, ManagedProcess]:
    """`quorum api` on a free port; return its base URL and process."""
    port = free_port()
    quorum = str(Path(celery_command()[0]).with_name("quorum"))
    process = ManagedProcess(
        "api",
        [quorum, "api", "--port", str(port)],
        env=env,
        ready=r"Uvicorn running on",
        cwd=ROOT,
    )
    return f"http://127.0.0.1:{port}", process


def start_flower(
    env: Mapping[str, str], *, db: Path, basic_auth: str
) -> tuple[str, ManagedProcess]:
    """Flower on a free port with basic auth and persistent state in `db`."""
    port = free_port()
    command = [
        *celery_command()[:3],
        "flower",
        f"--port={port}",
        "--address=127.0.0.1",
        "--persistent=True",
        f"--db={db}",
    ]
    process = ManagedProcess(
        "flower",
        command,
        env={**env, "FLOWER_BASIC_AUTH": basic_auth},
        ready=r"Visit me at",
        cwd=ROOT,
    )
    process.wait_for(r"Connected to ")  # its event consumer, which binds its queue right after
    time.sleep(1)  # events sent before the binding are not delivered to it
    return f"http://127.0.0.1:{port}", process


def flower_tasks(base_url: str, run_id: str, *, basic: str) -> list[dict[str, Any]]:
    """The jobs Flower knows of whose arguments name `run_id` (its task API's search)."""
    reply = http("GET", f"{base_url}/api/tasks?search={run_id}", basic=basic)
    assert reply.status == 200, reply
    return list(reply.json().values())
