"""The aiohttp app serving the OpenAI-compatible API plus ``/_sim`` control endpoints."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from quorum.simulator.config import RUNTIME_FIXED, SimConfig, from_mapping, parse_args
from quorum.simulator.errors import LLAMA_CPP_JSON_SCHEMA_ERROR, error_body, fault_error
from quorum.simulator.script import DirectiveError, analyze, decide, message_text
from quorum.simulator.state import SimState

STATE_KEY = web.AppKey("simulator_state", SimState)
CLIENT_CLOSED = 499  # logged status of calls whose client went away first
MODEL_ID = "sim"


class _Rejected(Exception):
    """A request refused before scripting; carries the HTTP answer."""

    def __init__(self, status: int, body: dict[str, Any], fault: str | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.fault = status, body, fault


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def _check_auth(request: web.Request, api_key: str | None) -> None:
    if api_key is None:
        return
    if request.headers.get("Authorization", "") != f"Bearer {api_key}":
        raise _Rejected(
            401, error_body("Incorrect API key provided.", code="invalid_api_key"), fault="auth"
        )


def _response_format(response_format: Any) -> tuple[str, Any]:
    """Return ``(type, schema)`` of a request's ``response_format`` (schema may be None)."""
    if response_format is None:
        return "text", None
    if not isinstance(response_format, dict):
        raise _Rejected(400, error_body("'response_format' must be an object"))
    rf_type = response_format.get("type", "text")
    if rf_type == "text":
        return rf_type, None
    if rf_type == "json_object":
        return rf_type, response_format.get("schema")
    if rf_type == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            message = "'response_format.json_schema.schema' is required"
            raise _Rejected(400, error_body(message, param="response_format"))
        return rf_type, spec["schema"]
    message = f"Invalid response_format type {rf_type!r}"
    raise _Rejected(400, error_body(message, param="response_format"))


def _check_dialect(rf_type: str, dialect: str) -> None:
    """Refuse the response_format type the configured dialect does not speak."""
    if rf_type == "json_schema" and dialect == "json_object":
        body = error_body(LLAMA_CPP_JSON_SCHEMA_ERROR, type="internal_server_error")
        raise _Rejected(500, body, fault="dialect")
    if rf_type == "json_object" and dialect == "json_schema":
        message = (
            "Invalid parameter: 'response_format' of type 'json_object' is not supported "
            "with this model."
        )
        raise _Rejected(400, error_body(message, param="response_format"), fault="dialect")


def _parse(raw: bytes) -> tuple[dict[str, Any], list[Any]]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise _Rejected(400, error_body("Request body is not valid JSON.")) from None
    if not isinstance(body, dict):
        raise _Rejected(400, error_body("Request body must be a JSON object."))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Rejected(400, error_body("'messages' must be a non-empty list", param="messages"))
    return body, messages


def _usage(messages: list[Any], content: str) -> dict[str, Any]:
    prompt_chars = sum(len(message_text(m)) for m in messages if isinstance(m, dict))
    prompt_tokens = math.ceil(prompt_chars / 4)
    completion_tokens = math.ceil(len(content) / 4)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _capped(body: dict[str, Any], content: str) -> tuple[str, str]:
    """The content cut at the request's `max_tokens` (4 characters a token, as `_usage`
    counts them), and the finish reason: "length" if it was cut, else "stop"."""
    cap = body.get("max_tokens", body.get("max_completion_tokens"))
    if isinstance(cap, int) and not isinstance(cap, bool) and math.ceil(len(content) / 4) > cap:
        return content[: max(cap, 0) * 4], "length"
    return content, "stop"


def _completion(
    n: int, model: str, messages: list[Any], content: str, finish: str = "stop"
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-sim-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_sim",
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "logprobs": None,
                "message": {"role": "assistant", "content": content, "refusal": None},
            }
        ],
        "usage": _usage(messages, content),
    }


def _seconds_header(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


async def chat_completions(request: web.Request) -> web.Response:
    """``POST /v1/chat/completions``: answer per directive, config and fault script."""
    state = request.app[STATE_KEY]
    config = state.config
    try:
        body, messages = _parse(await request.read())
        rf_type, schema = _response_format(body.get("response_format"))
        call = analyze(messages, schema)
    except DirectiveError as exc:
        return _json(error_body(f"invalid sim directive: {exc}"), status=400)
    except _Rejected as exc:
        return _json(exc.body, status=exc.status)
    record = state.begin(kind=call.kind, scope=call.scope, issue=call.issue, attempt=call.attempt)
    status = CLIENT_CLOSED
    try:
        _check_auth(request, config.api_key)
        _check_dialect(rf_type, config.dialect)
        kind_index = state.take((call.key, call.kind))
        issue_index = state.take((call.key, "vote", call.issue)) if call.kind == "vote" else 0
        decision = decide(call, kind_index=kind_index, issue_index=issue_index, config=config)
        record.fault = decision.fault
        if decision.delay > 0:
            await asyncio.sleep(decision.delay)
        if decision.content is None:
            status, err = fault_error(decision.fault or "500")
            retry = _seconds_header(config.retry_after)
            return _json(
                err, status=status, headers={"Retry-After": retry} if status == 429 else None
            )
        record.verdict = decision.verdict
        status = 200
        model = body.get("model") if isinstance(body.get("model"), str) else MODEL_ID
        content, finish = _capped(body, decision.content)
        return _json(_completion(record.n, str(model), messages, content, finish))
    except _Rejected as exc:
        record.fault, status = exc.fault, exc.status
        return _json(exc.body, status=status)
    finally:
        state.end(record, status=status)


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``."""
    try:
        _check_auth(request, request.app[STATE_KEY].config.api_key)
    except _Rejected as exc:
        return _json(exc.body, status=exc.status)
    return _json(
        {
            "object": "list",
            "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "simulator"}],
        }
    )


async def v1_not_found(request: web.Request) -> web.Response:
    """Any other ``/v1`` path: an OpenAI-style 404."""
    return _json(
        error_body(f"Unknown request URL: {request.method} {request.path}", code="unknown_url"),
        status=404,
    )


async def health(request: web.Request) -> web.Response:
    """``GET /health``."""
    return web.Response(text="ok")


async def get_calls(request: web.Request) -> web.Response:
    """``GET /_sim/calls``: every completed or in-flight call."""
    return _json([record.to_dict() for record in request.app[STATE_KEY].calls])


async def clear_calls(request: web.Request) -> web.Response:
    """``DELETE /_sim/calls``: clear the log and counters."""
    request.app[STATE_KEY].clear()
    return _json({"cleared": True})


async def get_stats(request: web.Request) -> web.Response:
    """``GET /_sim/stats``."""
    return _json(request.app[STATE_KEY].stats())


async def get_config(request: web.Request) -> web.Response:
    """``GET /_sim/config``: the live config."""
    return _json(request.app[STATE_KEY].config.to_dict())


async def set_config(request: web.Request) -> web.Response:
    """``POST /_sim/config``: update config fields at runtime; returns the new config."""
    state = request.app[STATE_KEY]
    try:
        data = json.loads(await request.read())
        if not isinstance(data, dict):
            raise TypeError("config update must be a JSON object")
        new = from_mapping(data, base=state.config)
        fixed = [
            name for name in RUNTIME_FIXED if getattr(new, name) != getattr(state.config, name)
        ]
        if fixed:
            raise ValueError(f"cannot change {', '.join(fixed)} at runtime")
    except (TypeError, ValueError) as exc:
        return _json(error_body(str(exc)), status=400)
    state.config = new
    return _json(new.to_dict())


def make_app(config: SimConfig) -> web.Application:
    """Build the simulator's aiohttp application for ``config``."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = SimState(config)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_route("*", "/v1/{tail:.*}", v1_not_found)
    app.router.add_get("/health", health)
    app.router.add_get("/_sim/calls", get_calls)
    app.router.add_delete("/_sim/calls", clear_calls)
    app.router.add_get("/_sim/stats", get_stats)
    app.router.add_get("/_sim/config", get_config)
    app.router.add_post("/_sim/config", set_config)
    return app


async def _serve(config: SimConfig) -> None:
    runner = web.AppRunner(
        make_app(config), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"simulator listening on http://{host}:{port}/v1", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(config: SimConfig) -> None:
    """Run the simulator until SIGINT/SIGTERM (blocking)."""
    asyncio.run(_serve(config))


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: ``python -m quorum.simulator [options]``."""
    config = parse_args(sys.argv[1:] if argv is None else argv)
    serve(config)
