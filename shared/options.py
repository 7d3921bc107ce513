"""Per-run LLM settings of task calls: `temperature`, `max_output_tokens` (sent to the server;
an output the cap cut off is an invalid attempt) and `system` (a system prompt prepended).
Validator calls keep their own defaults."""

from __future__ import annotations

from typing import Any

from quorum.shared.errors import InvalidRequestError
from quorum.shared.models import RunSpec

__all__ = ["cut_off", "llm_options", "task_call_options", "with_system"]

MAX_SYSTEM_CHARS = 100_000


def llm_options(
    *, temperature: Any = None, max_output_tokens: Any = None, system: Any = None
) -> dict[str, Any]:
    """The settings checked, as RunSpec fields (None where unset); an
    `InvalidRequestError` naming the bad one."""
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 2
    ):
        raise InvalidRequestError(f"temperature must be a number from 0 to 2, got {temperature!r}")
    if max_output_tokens is not None and (
        isinstance(max_output_tokens, bool)
        or not isinstance(max_output_tokens, int)
        or not 0 < max_output_tokens <= 10_000_000
    ):
        raise InvalidRequestError(
            f"max_output_tokens must be a positive integer, got {max_output_tokens!r}"
        )
    if system is not None and (not isinstance(system, str) or len(system) > MAX_SYSTEM_CHARS):
        raise InvalidRequestError(f"system must be a string of at most {MAX_SYSTEM_CHARS} chars")
    return {"temperature": temperature, "max_output_tokens": max_output_tokens, "system": system}


def task_call_options(spec: RunSpec) -> dict[str, Any]:
    """The keyword arguments of a task call for the run's settings (only those set)."""
    options: dict[str, Any] = {}
    if spec.temperature is not None:
        options["temperature"] = spec.temperature
    if spec.max_output_tokens is not None:
        options["max_output_tokens"] = spec.max_output_tokens
    return options


def with_system(system: str | None, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """`messages` with the run's system prompt prepended to the first (system) message."""
    if not system:
        return messages
    first, *rest = messages
    if first.get("role") != "system":
        return [{"role": "system", "content": system}, *messages]
    return [{**first, "content": f"{system}\n\n{first['content']}"}, *rest]


def cut_off(spec: RunSpec, truncated: bool) -> str | None:
    """The invalid-attempt error for an output the server cut off at the output cap."""
    if not truncated:
        return None
    cap = spec.max_output_tokens
    where = f"max_output_tokens ({cap})" if cap else "the server's output limit"
    return f"output was cut off at {where}: answer more briefly"
