"""Prompts: the sandboxed task template, the retry feedback, and the validator's prompt."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SecurityError

from quorum.shared.errors import TemplateError
from quorum.shared.sandbox import Compiled, Limits, compile_template, render

__all__ = [
    "VOTE_SCHEMA",
    "FailedAttempt",
    "Limits",
    "check_template",
    "feedback_section",
    "render_task_prompt",
    "task_messages",
    "template_variables",
    "validator_messages",
]

_LIMITS = Limits()

VOTE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"is_valid": {"type": "boolean"}, "reasoning": {"type": "string"}},
    "required": ["is_valid", "reasoning"],
    "additionalProperties": False,
}

_TASK_SYSTEM = "Answer with one JSON object that fits the requested schema, and nothing else."
_VALIDATOR_SYSTEM = (
    "You are a strict, independent validator. Judge only whether the output meets the "
    "criterion given. Answer with JSON: is_valid (boolean) and reasoning (one or two sentences)."
)


def check_template(template: str, kwargs: Mapping[str, Any], limits: Limits = _LIMITS) -> str:
    """Refuse a template that will not render safely with `kwargs`; return the rendered text.

    Raises `TemplateError` naming the problem: a syntax error, variables missing from kwargs,
    an attempt to reach outside the sandbox, or a template over its `limits` (time to compile
    or render, size of what it builds or renders).
    """
    compiled = _compiled(template, limits)
    if compiled.unsafe:
        unsafe = ", ".join(compiled.unsafe)
        raise TemplateError(f"template accesses unsafe attributes (sandbox): {unsafe}")
    missing = sorted(compiled.variables - set(kwargs))
    if missing:
        raise TemplateError(f"template variables missing from kwargs: {', '.join(missing)}")
    return render_task_prompt(template, kwargs, limits)


def template_variables(template: str, limits: Limits = _LIMITS) -> frozenset[str]:
    """The variables a template needs; `TemplateError` if it does not compile in the
    sandbox within `limits`."""
    return _compiled(template, limits).variables


@contextmanager
def _as_template_errors() -> Iterator[None]:
    """Whatever compiling or rendering a template raises, as a `TemplateError` naming it."""
    try:
        yield
    except TemplateError:
        raise
    except SecurityError as exc:
        raise TemplateError(f"template refused by the sandbox: {exc}") from exc
    except UndefinedError as exc:
        raise TemplateError(f"template variable undefined: {exc.message}") from exc
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
    except RecursionError as exc:
        raise TemplateError("template is nested or recurses too deeply") from exc
    except MemoryError as exc:
        raise TemplateError("template needs more memory than there is") from exc
    except Exception as exc:  # a filter or test raising on the given values
        raise TemplateError(f"template failed to render: {exc}") from exc


@lru_cache(maxsize=512)
def _compiled(template: str, limits: Limits) -> Compiled:
    with _as_template_errors():
        return compile_template(template, limits)


def render_task_prompt(template: str, kwargs: Mapping[str, Any], limits: Limits = _LIMITS) -> str:
    """Render the task template in the bounded sandbox with strict undefined variables.

    Raises `TemplateError` when it fails, or goes over `limits`.
    """
    with _as_template_errors():
        return render(_compiled(template, limits).template, kwargs, limits)


@dataclass(frozen=True)
class FailedAttempt:
    """What the model is shown of one failed attempt: its output and why it failed."""

    output: Any
    reasonings: Sequence[str]


def _as_text(output: Any) -> str:
    return output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)


def feedback_section(failures: Sequence[FailedAttempt]) -> str:
    """The "Previous Evaluations" section appended to the prompt, one block per failure."""
    blocks = []
    for failure in failures:
        reasons = "\n".join(f"- {reason}" for reason in failure.reasonings)
        blocks.append(
            "# Previous Evaluations\n"
            "You have attempted this task before and failed because of the following:\n\n"
            f"## Output\n{_as_text(failure.output)}\n\n"
            f"## Failure Reasonings\n{reasons}\n\n"
            "Use this information to improve your next attempt."
        )
    return "\n\n".join(blocks)


def task_messages(prompt: str, failures: Sequence[FailedAttempt] = ()) -> list[dict[str, str]]:
    """Chat messages for a task call: the rendered prompt plus the feedback of failures."""
    content = prompt if not failures else f"{prompt}\n\n{feedback_section(failures)}"
    return [{"role": "system", "content": _TASK_SYSTEM}, {"role": "user", "content": content}]


def validator_messages(prompt: str, output: Any, issue: str) -> list[dict[str, str]]:
    """Chat messages for one vote: the task prompt (no feedback), the output, one issue."""
    content = f"# Task\n{prompt}\n\n# Output\n{_as_text(output)}\n\n# Criterion\n{issue}"
    return [
        {"role": "system", "content": _VALIDATOR_SYSTEM},
        {"role": "user", "content": content},
    ]
