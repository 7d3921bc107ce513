"""Fault names and OpenAI-style error bodies (shape ``{"error": {message, type, code}}``)."""

from __future__ import annotations

from typing import Any

# name -> (HTTP status, error type, error code, message); None for faults answered with 200.
HTTP_FAULTS: dict[str, tuple[int, str, str | None, str]] = {
    "429": (
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached (simulated). Please try again later.",
    ),
    "500": (
        500,
        "server_error",
        None,
        "The server had an error while processing your request (simulated).",
    ),
    "503": (
        503,
        "server_error",
        "service_unavailable",
        "The server is overloaded or not ready yet (simulated).",
    ),
    "401": (
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided (simulated).",
    ),
    "400": (400, "invalid_request_error", None, "Bad request (simulated)."),
    "404": (
        404,
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it (simulated).",
    ),
}
BODY_FAULTS = ("timeout", "invalid_json", "schema", "none")
FAULT_NAMES = frozenset(HTTP_FAULTS) | frozenset(BODY_FAULTS)

LLAMA_CPP_JSON_SCHEMA_ERROR = (
    "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', "
    "'ctx': {'expected': \"'text' or 'json_object'\"}}]"
)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """Build an OpenAI error body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def fault_error(fault: str) -> tuple[int, dict[str, Any]]:
    """Return ``(status, body)`` for an HTTP fault name (one of ``HTTP_FAULTS``)."""
    status, err_type, code, message = HTTP_FAULTS[fault]
    return status, error_body(message, type=err_type, code=code)
