"""Security: a password- and TLS-protected Redis, secrets kept out of logs and Redis, JSON
only on the broker (a pickled job is refused), payload limits on what the model returns."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import time
from pathlib import Path

import kombu
import pytest
import redis

from quorum.producer import TaskClient
from quorum.producer.stack import free_port, start_redis, start_simulator, start_worker
from quorum.shared.models import SingleShotValidationConfig, TaskStatus
from quorum.shared.settings import Settings
from tests.integration.helpers import APPLES, FAST_WORKER_ENV, Purchase, directive, wait_until

pytestmark = pytest.mark.integration

PASSWORD = "redis-pw-4f9c1e77"
API_KEY = "sk-test-secret-8d2b6a"
CONFIG = SingleShotValidationConfig(issues=["names a product"])


def _everything_in(db: redis.Redis) -> str:
    """Every key and value in Redis, as text."""
    out = []
    for key in db.scan_iter("*"):
        kind = db.type(key)
        if kind == "string":
            value = db.get(key)
        elif kind == "hash":
            value = db.hgetall(key)
        elif kind == "list":
            value = db.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(db.smembers(key))
        elif kind == "zset":
            value = db.zrange(key, 0, -1)
        elif kind == "stream":
            value = db.xrange(key)
        else:
            value = kind
        out.append(f"{key} {value}")
    return "\n".join(out)


def _run_one(client: TaskClient, scope: str) -> None:
    run = client.submit(
        template="Extract: I want 5 apples {{ sim }}",
        response_model=Purchase,
        kwargs={"sim": directive(scope, outputs=[APPLES], votes={"*": True})},
        config=CONFIG,
    )
    assert run.result(timeout=30) == Purchase(**APPLES)


def test_password_redis_works_and_no_secret_is_logged_or_stored(tmp_path):
    port = free_port()
    _, server = start_redis(port=port, extra=["--requirepass", PASSWORD])
    base_url, sim = start_simulator("--api-key", API_KEY, "--latency", "0.01")
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    env = {"QUORUM_REDIS_URL": url, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": API_KEY}
    worker = start_worker({**env, **FAST_WORKER_ENV}, "--loglevel", "DEBUG", name="worker")
    client = TaskClient(redis_url=url)
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).set("x", 1)  # no password, no access
        _run_one(client, "secrets")
        time.sleep(0.5)
        logs = "\n".join(worker.lines)
        stored = _everything_in(redis.Redis.from_url(url, decode_responses=True))
    finally:
        client.close()
        worker.stop()
        sim.stop()
        server.stop()
    assert "succeeded" in logs
    for secret in (PASSWORD, API_KEY):
        assert secret not in logs, f"a secret is in the worker's log: {secret[:6]}…"
        assert secret not in stored, f"a secret is stored in Redis: {secret[:6]}…"


def test_a_pickled_job_is_refused_by_the_worker(client, worker, redis_url):
    run = client.submit(
        template="Extract: I want 5 apples {{ sim }}",
        response_model=Purchase,
        kwargs={
            "sim": directive("pickle-" + str(time.time()), outputs=[APPLES], votes={"*": True})
        },
        config=CONFIG,
    )
    assert run.result(timeout=30) == Purchase(**APPLES)
    before = len(run.provenance())
    seen = len(worker.lines)
    body = ([run.id, 1], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    with kombu.Connection(redis_url) as conn:
        conn.Producer().publish(
            pickle.dumps(body),
            exchange="quorum.control",
            routing_key="quorum.control",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"task": "quorum.route", "id": "pickled-job", "lang": "py", "argsrepr": ""},
        )
    refused = wait_until(
        lambda: any("pickle" in line.lower() for line in worker.lines[seen:]),
        timeout_s=10,
        what="the worker to refuse the pickled job",
    )
    assert refused
    assert not any("quorum.route[pickled-job] received" in line for line in worker.lines[seen:])
    assert len(run.provenance()) == before
    assert run.status() is TaskStatus.SUCCESSFUL


def _make_certs(folder: Path) -> dict[str, Path]:
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=quorum-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    ssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        "server.crt",
        "-extfile",
        "ext.cnf",
    )
    return {name: folder / f"{name}" for name in ("ca.crt", "server.crt", "server.key")}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")
def test_tls_redis_with_a_password(tmp_path, simulator):
    certs = _make_certs(tmp_path)
    tls_port = free_port()
    _, server = start_redis(
        extra=[
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(certs["server.crt"]),
            "--tls-key-file",
            str(certs["server.key"]),
            "--tls-ca-cert-file",
            str(certs["ca.crt"]),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
        ]
    )
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_port}/0"
    env = {
        "QUORUM_REDIS_URL": url,
        "QUORUM_REDIS_TLS_CA_FILE": str(certs["ca.crt"]),
        "OPENAI_BASE_URL": simulator.base_url,
        "OPENAI_API_KEY": "sim",
        **FAST_WORKER_ENV,
    }
    worker = start_worker(env, name="tls worker")
    settings = Settings(redis_url=url, redis_tls_ca_file=str(certs["ca.crt"]))
    client = TaskClient(settings=settings)
    try:
        _run_one(client, "tls-" + str(time.time()))
        assert client.store.redis.connection_pool.connection_class.__name__ == "SSLConnection"
    finally:
        client.close()
        worker.stop()
        server.stop()
    assert json.dumps(PASSWORD) not in "\n".join(worker.lines)
