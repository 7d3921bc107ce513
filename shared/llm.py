"""The LLM gateway: structured-output chat completions through the OpenAI SDK.

The SDK's own retries are off: a transient failure is raised as `TransientLLMError` and the
Celery job retries with backoff; a permanent one as `PermanentLLMError`. This is the only
module that imports `openai`, and `map_error` is the one place its exceptions are translated.

A server on plain HTTP with no proxy configured (the simulator, vLLM, Ollama, llama.cpp on the
local network) is called over one kept-alive HTTP/1.1 connection per worker thread
(`shared.http11`), with the request and headers the SDK would send; its errors are raised as
the SDK's own exceptions.
The SDK's request through httpx costs several times the CPU of the call itself, and a worker
makes hundreds of calls a second (figures: docs/benchmarks.md, History). HTTPS servers,
proxies and a given `http_client` go through the SDK as before.

Structured output is asked for in the `json_schema` dialect unless the settings say
`json_object`. A server that refuses `json_schema` the way llama-cpp-python's does ("Input
should be 'text' or 'json_object'") gets that call again once in the `json_object` dialect,
and the gateway keeps using `json_object` for that server for the rest of the process.
"""

from __future__ import annotations

import email.utils
import http.client
import itertools
import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import openai

from quorum.shared import http11
from quorum.shared.errors import LLMError, PermanentLLMError, TransientLLMError
from quorum.shared.models import Usage
from quorum.shared.settings import Dialect, Settings

__all__ = ["Completion", "LLMGateway", "map_error", "refuses_json_schema", "response_format"]

log = logging.getLogger(__name__)

# The HTTP library the installed SDK is built on (`httpx`, or `httpx2` in newer SDKs).
_http: Any = vars(openai._exceptions).get("httpx2") or vars(openai._exceptions)["httpx"]
# How a kept-alive connection that the server has since closed fails on its next request.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
# How llama-cpp-python's server (pydantic, behind FastAPI) refuses `{"type": "json_schema"}`.
_WANTS_JSON_OBJECT = "'text' or 'json_object'"


@dataclass(frozen=True)
class Completion:
    """One answer: its raw text content, the tokens billed, and how long it took."""

    content: str
    usage: Usage
    latency_s: float
    truncated: bool = False
    """The server stopped at the output-token cap (`finish_reason` "length")."""


def response_format(dialect: Dialect, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The `response_format` a server of that dialect understands."""
    if dialect == "json_object":
        return {"type": "json_object", "schema": schema}
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": schema, "strict": _strict_ready(schema)},
    }


def _strict_ready(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts the schema (closed objects, every field required)."""
    if isinstance(schema, list):
        return all(_strict_ready(item) for item in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is not False or set(
            schema.get("required", [])
        ) != set(props):
            return False
    return all(_strict_ready(value) for key, value in schema.items() if key != "required")


def refuses_json_schema(exc: openai.OpenAIError) -> bool:
    """Whether the server refused a request because it takes only the `json_object` dialect."""
    return (
        isinstance(exc, openai.APIStatusError)
        and exc.status_code in (400, 422, 500)
        and _WANTS_JSON_OBJECT in f"{exc.message} {exc.response.text}"
    )


def _retry_after(response: Any) -> float | None:
    header = response.headers.get("retry-after-ms")
    if header:
        try:
            return float(header) / 1000
        except ValueError:
            pass
    header = response.headers.get("retry-after")
    if not header:
        return None
    try:
        return float(header)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(header)
        return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


def map_error(exc: openai.OpenAIError) -> LLMError:
    """Translate an SDK exception into our transient or permanent class."""
    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return TransientLLMError(f"LLM unreachable: {type(exc).__name__}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"LLM answered HTTP {status}: {exc.message}"
        if status in _TRANSIENT_STATUS or status >= 500:
            return TransientLLMError(message, retry_after=_retry_after(exc.response))
        return PermanentLLMError(message)
    if isinstance(exc, openai.APIResponseValidationError):
        return TransientLLMError(f"LLM answered malformed JSON: {exc.message}")
    return PermanentLLMError(f"LLM call refused: {type(exc).__name__}: {exc}")


def _count(data: Any, *path: str) -> int:
    """The whole number at `path` in a JSON object; 0 where there is none."""
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, int) else 0


def _usage(reply: Any) -> Usage:
    """The tokens a chat completion, as the server sent it, says it used (0 where unsaid)."""
    return Usage(
        prompt_tokens=_count(reply, "usage", "prompt_tokens"),
        completion_tokens=_count(reply, "usage", "completion_tokens"),
        total_tokens=_count(reply, "usage", "total_tokens"),
        cached_tokens=_count(reply, "usage", "prompt_tokens_details", "cached_tokens"),
        reasoning_tokens=_count(reply, "usage", "completion_tokens_details", "reasoning_tokens"),
    )


def _content(reply: Any) -> str:
    """The first choice's text in a chat completion as the server sent it ("" for none);
    `TransientLLMError` when the reply is no chat completion at all."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list):
        raise TransientLLMError(f"LLM answered no chat completion: {reply!r:.200}")
    message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


def _truncated(reply: Any) -> bool:
    """Whether the first choice stopped at the output-token cap."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    return isinstance(first, dict) and first.get("finish_reason") == "length"


def _plain_http(base_url: str | None) -> bool:
    """Whether the server is reached over plain HTTP without a proxy from the environment."""
    proxies = urllib.request.getproxies()
    proxied = proxies.get("http") or proxies.get("all")
    return bool(base_url and base_url.startswith("http://") and not proxied)


class _PlainHTTP:
    """POST /chat/completions as the SDK would, over one kept-alive HTTP/1.1 connection
    (`shared.http11`, one per thread: a connection is not thread-safe).

    It costs a fraction of the CPU of the SDK's `client.post` through httpx, which showed in a
    burst's worker CPU per run and runs per second (docs/benchmarks.md, History)."""

    def __init__(self, client: openai.OpenAI, timeout_s: float) -> None:
        self._client = client
        self._url = f"{client.base_url}chat/completions"
        url = urllib.parse.urlsplit(self._url)
        self._target = url.path + (f"?{url.query}" if url.query else "")
        self._connection = http11.Connection(
            url.hostname or "localhost", url.port or 80, timeout_s=timeout_s
        )
        headers = {**client.default_headers, **client.auth_headers}
        # What the SDK adds to each request: its retries are off, so each is a first try.
        read = getattr(client.timeout, "read", client.timeout)
        headers |= {
            "Content-Type": "application/json",
            "x-stainless-retry-count": "0",
            **({"x-stainless-read-timeout": str(read)} if read is not None else {}),
        }
        self._head = http11.header_lines({k: v for k, v in headers.items() if isinstance(v, str)})

    def post(self, body: dict[str, Any]) -> Any:
        """The server's JSON reply (its text if it is not JSON); the SDK's exception if the
        server cannot be reached or answers with an error status."""
        try:
            status, headers, content = self._exchange(json.dumps(body).encode())
        except TimeoutError as exc:
            raise openai.APITimeoutError(self._request()) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise openai.APIConnectionError(request=self._request()) from exc
        if not 200 <= status < 300:
            response = _http.Response(
                status, headers=headers, content=content, request=self._request()
            )
            raise self._client._make_status_error_from_response(response)
        try:
            return json.loads(content)
        except ValueError:
            return content.decode(errors="replace")

    def _exchange(self, data: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request and its whole reply; once more on a fresh connection if a kept-alive
        one turns out to be closed by the server."""
        while True:
            reused = self._connection.sock is not None
            try:
                return self._connection.post(self._target, self._head, data)
            except Exception as exc:
                self._connection.close()
                if not (reused and isinstance(exc, _STALE)):
                    raise

    def _request(self) -> Any:
        return _http.Request("POST", self._url)


_THREADS_PER_CLIENT = 64
"""Worker threads per OpenAI client. A client's HTTP connection pool walks all of its
connections on every request and every response, so with one client per worker the CPU
per call grows with the number of calls in flight (docs/benchmarks.md, History)."""


class LLMGateway:
    """The OpenAI clients of a worker process, one per `_THREADS_PER_CLIENT` threads of its
    pool (`QUORUM_WORKER_CONCURRENCY`): each thread keeps to one of them, taken in turns. A
    plain-HTTP server needs one client (for its settings and errors): each thread calls it over
    its own connection."""

    def __init__(self, settings: Settings, *, http_client: Any | None = None) -> None:
        self._settings = settings
        self._http_client = http_client
        self._plain = http_client is None and _plain_http(settings.openai_base_url)
        shared = http_client is not None or self._plain
        count = 1 if shared else -(-settings.worker_concurrency // _THREADS_PER_CLIENT)
        self._clients: list[openai.OpenAI | None] = [None] * count
        self._turns = itertools.count()
        self._mine = threading.local()
        self._lock = threading.Lock()
        self.dialect: Dialect = settings.structured_output

    @property
    def client(self) -> openai.OpenAI:
        """This thread's OpenAI client, made on first use."""
        index = getattr(self._mine, "index", None)
        if index is None:
            index = self._mine.index = next(self._turns) % len(self._clients)
        return self._clients[index] or self._make(index)

    def warm_up(self) -> None:
        """Make every client now (TLS context, connection pool), before a job needs one."""
        for index in range(len(self._clients)):
            self._make(index)

    def _make(self, index: int) -> openai.OpenAI:
        """Client `index`, made unless another thread made it first."""
        with self._lock:
            client = self._clients[index]
            if client is None:
                key = self._settings.openai_api_key
                client = self._clients[index] = openai.OpenAI(
                    api_key=key.get_secret_value() if key else "unset",
                    base_url=self._settings.openai_base_url,
                    timeout=self._settings.llm_timeout_s,
                    max_retries=0,
                    http_client=self._http_client,
                )
            return client

    def complete_json(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        schema: dict[str, Any],
        name: str,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
    ) -> Completion:
        """Ask `model` for JSON fitting `schema`; return its raw text for the caller to parse.

        `temperature` and `max_output_tokens` (sent as `max_tokens`, which OpenAI-compatible
        servers all read) go to the server when set."""
        options: dict[str, Any] = {}
        if temperature is not None:
            options["temperature"] = temperature
        if max_output_tokens is not None:
            options["max_tokens"] = max_output_tokens
        started = time.perf_counter()
        try:
            reply = self._create(
                model=model, messages=messages, schema=schema, name=name, options=options
            )
        except openai.OpenAIError as exc:
            raise map_error(exc) from exc
        return Completion(
            content=_content(reply),
            usage=_usage(reply),
            latency_s=time.perf_counter() - started,
            truncated=_truncated(reply),
        )

    def _create(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        schema: dict[str, Any],
        name: str,
        options: dict[str, Any] | None = None,
    ) -> Any:
        """One chat completion; on a `json_schema` refusal, switch dialect and ask once more."""
        dialect = self.dialect
        try:
            return self._post(model, messages, response_format(dialect, name, schema), options)
        except openai.OpenAIError as exc:
            if dialect != "json_schema" or not refuses_json_schema(exc):
                raise
        self.dialect = "json_object"
        log.info(
            "%s refuses json_schema structured output; using json_object from now on",
            self._settings.openai_base_url or "the LLM server",
        )
        return self._post(model, messages, response_format("json_object", name, schema), options)

    def _post(
        self,
        model: str,
        messages: list[dict[str, str]],
        response_format: dict[str, Any],
        options: dict[str, Any] | None = None,
    ) -> Any:
        """POST /chat/completions through the SDK's client, as `chat.completions.create` does,
        minus its walk of the request through the parameter types and its build of a
        `ChatCompletion` from the reply, both a sizeable share of the SDK's CPU per call
        (docs/benchmarks.md, History). The reply comes back as the server's JSON, which
        `_content` and `_usage` read. A plain-HTTP server gets the same request over this
        thread's own connection (`_PlainHTTP`)."""
        body = {"model": model, "messages": messages, "response_format": response_format}
        body.update(options or {})
        if self._plain:
            return self._wire().post(body)
        return self.client.post("/chat/completions", body=body, cast_to=object)

    def _wire(self) -> _PlainHTTP:
        """This thread's connection to a plain-HTTP server, made on first use."""
        wire: _PlainHTTP | None = getattr(self._mine, "wire", None)
        if wire is None:
            wire = self._mine.wire = _PlainHTTP(self.client, self._settings.llm_timeout_s)
        return wire
