"""Prompts: the sandboxed task template, the retry feedback, and the validator's prompt."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from quorum.shared.errors import TemplateError

__all__ = [
    "VOTE_SCHEMA",
    "FailedAttempt",
    "check_template",
    "feedback_section",
    "render_task_prompt",
    "task_messages",
    "validator_messages",
]

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)

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


def _parse(template: str) -> nodes.Template:
    try:
        return _ENV.parse(template)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc


def _unsafe_attributes(tree: nodes.Template) -> list[str]:
    names = [n.attr for n in tree.find_all(nodes.Getattr)]
    names += [
        n.arg.value
        for n in tree.find_all(nodes.Getitem)
        if isinstance(n.arg, nodes.Const) and isinstance(n.arg.value, str)
    ]
    return sorted({name for name in names if name.startswith("_")})


def check_template(template: str, kwargs: Mapping[str, Any]) -> str:
    """Refuse a template that will not render safely with `kwargs`; return the rendered text.

    Raises `TemplateError` naming the problem: a syntax error, variables missing from kwargs,
    or an attempt to reach outside the sandbox.
    """
    unsafe, variables = _template_facts(template)
    if unsafe:
        raise TemplateError(f"template accesses unsafe attributes (sandbox): {', '.join(unsafe)}")
    missing = sorted(variables - set(kwargs))
    if missing:
        raise TemplateError(f"template variables missing from kwargs: {', '.join(missing)}")
    return render_task_prompt(template, kwargs)


@lru_cache(maxsize=512)
def _template_facts(template: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """A template's unsafe attribute names and the variables it needs, parsed once."""
    tree = _parse(template)
    return tuple(_unsafe_attributes(tree)), frozenset(meta.find_undeclared_variables(tree))


@lru_cache(maxsize=512)
def _compiled(template: str) -> Template:
    return _ENV.from_string(template)


def render_task_prompt(template: str, kwargs: Mapping[str, Any]) -> str:
    """Render the task template in the sandbox with strict undefined variables."""
    try:
        return _compiled(template).render(**kwargs)
    except SecurityError as exc:
        raise TemplateError(f"template refused by the sandbox: {exc}") from exc
    except UndefinedError as exc:
        raise TemplateError(f"template variable undefined: {exc.message}") from exc
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
    except Exception as exc:  # a filter or test raising on the given values
        raise TemplateError(f"template failed to render: {exc}") from exc


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
