"""The cheap checks: what a task node runs on an output before any vote is spent on it.

In order, after the JSON parse and the JSON Schema (`flow.parse_output`, whose failures are
`output_invalid` events):

1. `model`: the defined task's response type — its Pydantic model with its own field and
   model validators, or its `TypeAdapter` — validates the (unwrapped) output;
2. `validator`: the definition's Python functions, in order; one that raises `ValueError` or
   `AssertionError` rejects the output, one that returns a value replaces it;
3. `expression`: the run's checks, sandboxed Jinja expressions over `output` (the unwrapped,
   validated output as JSON) and `kwargs`, each of which must be true.

The first that fails makes a failed attempt whose only reasoning is its message (the next
attempt's feedback), recorded as a `check_failed` event naming the check; no vote is drawn.
A run without a config (`config=None`) ends `SUCCESSFUL` once its checks pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateSyntaxError
from pydantic import ValidationError

from quorum.shared.definitions import TaskDefinition, defined
from quorum.shared.errors import InvalidRequestError, TemplateError, UnknownTaskError
from quorum.shared.events import CheckFailed, Output, Succeeded
from quorum.shared.models import RunSpec, TaskStatus, Usage
from quorum.shared.prompts import FailedAttempt
from quorum.shared.responses import result_field, unwrap
from quorum.shared.sandbox import Expression, Limits, compile_expression, evaluate, one_clock

if TYPE_CHECKING:
    from quorum.shared.context import Context
    from quorum.shared.state import RunState

__all__ = [
    "CHECK_LIMITS",
    "CheckFailure",
    "Checked",
    "check_value",
    "compile_check",
    "conclude",
    "reject",
    "run_checks",
    "succeed",
]

log = logging.getLogger(__name__)

CHECK_LIMITS = Limits(max_chars=100_000, timeout_s=1.0)
"""What expressions (checks, a node's `skip_if`) may cost: strings and lists of at most
100,000 characters or items; a second to compile, and a second to evaluate all of a run's
checks on one output (`sandbox.one_clock`)."""
_MISMATCHES: set[tuple[str, str, str]] = set()


@lru_cache(maxsize=512)
def compile_check(expr: str) -> Expression:
    """A check's expression compiled in the bounded sandbox (`sandbox.compile_expression`);
    `InvalidRequestError` if it does not compile or reaches for an attribute the sandbox
    refuses (a name starting with `_`)."""
    try:
        compiled = compile_expression(expr, CHECK_LIMITS)
    except TemplateSyntaxError as exc:
        raise InvalidRequestError(f"check {expr!r} does not compile: {exc.message}") from exc
    except RecursionError:
        raise InvalidRequestError(f"check {expr[:40]!r}… is nested too deeply") from None
    except TemplateError as exc:
        raise InvalidRequestError(f"check {expr[:40]!r}…: {exc}") from None
    if compiled.unsafe:
        raise InvalidRequestError(f"check {expr!r} accesses unsafe attributes (sandbox)")
    return compiled


def check_value(expr: str, values: Mapping[str, Any]) -> Any:
    """The value of an expression over `values`, within `CHECK_LIMITS` (raises what the
    expression raises on them: a `TemplateError` past the limits)."""
    return evaluate(compile_check(expr), values, CHECK_LIMITS)


@dataclass(frozen=True)
class CheckFailure:
    """Which check rejected an output (`model`, `validator`, `expression`), its name, and
    the message that is the next attempt's feedback."""

    check: str
    name: str
    message: str


@dataclass(frozen=True)
class Checked:
    """The outcome of the checks: the output to keep (in the LLM's form, `{"value": ...}`
    for a wrapped type; a validator may have replaced it), or the check that failed."""

    output: Any
    failure: CheckFailure | None = None
    definition_hash: str | None = None


def _definition(spec: RunSpec) -> TaskDefinition | None:
    """This worker's code for the run's defined task; `UnknownTaskError` if it has none."""
    if spec.task is None:
        return None
    definition = defined(spec.task)
    if definition is None:
        raise UnknownTaskError(
            f"task {spec.task!r} is not defined on this worker: add the module that "
            "defines it to QUORUM_IMPORTS"
        )
    mismatch = (spec.task, spec.task_hash or "", definition.hash)
    if spec.task_hash != definition.hash and mismatch not in _MISMATCHES:
        _MISMATCHES.add(mismatch)
        log.warning(
            "task %r: submitted with definition %s, this worker has %s: its checks run with "
            "this worker's code (deploy one version of a definition at a time)",
            *mismatch,
        )
    return definition


def _validation_message(name: str, exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(map(str, error["loc"])) or "(root)"
        parts.append(f"{where}: {error['msg']}")
    return f"output does not pass {name}: " + "; ".join(parts)


def _python_checks(definition: TaskDefinition, value: Any) -> tuple[Any, CheckFailure | None]:
    """The model (or type) and the validator functions; the value as JSON, or a failure."""
    response = definition.response
    try:
        parsed = response.validate(value)
    except ValidationError as exc:
        return value, CheckFailure("model", response.name, _validation_message(response.name, exc))
    for validator in definition.validators:
        name = getattr(validator, "__name__", repr(validator))
        try:
            replaced = validator(parsed)
        except (ValueError, AssertionError) as exc:
            message = str(exc) or f"{name} rejected the output"
            if isinstance(exc, ValidationError):
                message = _validation_message(name, exc)
            return value, CheckFailure("validator", name, message)
        if replaced is not None:
            parsed = replaced
    return response.dump(parsed), None


def _expression_checks(spec: RunSpec, value: Any) -> CheckFailure | None:
    values = {"output": value, "kwargs": spec.kwargs}
    with one_clock(CHECK_LIMITS):
        for check in spec.checks:
            try:
                passed = check_value(check.expr, values)
            except Exception as exc:  # an expression that cannot be evaluated on this output
                message = f"{check.message} (the check could not be evaluated: {exc})"
                return CheckFailure("expression", check.expr, message)
            if not passed:
                return CheckFailure("expression", check.expr, check.message)
    return None


def run_checks(spec: RunSpec, output: Any) -> Checked:
    """Run the model, validator and expression checks on an output that fits the schema."""
    definition = _definition(spec)
    value = unwrap(spec.wrapped, output)
    failure = None
    if definition is not None:
        value, failure = _python_checks(definition, value)
    failure = failure or _expression_checks(spec, value)
    used = definition.hash if definition is not None else None
    if failure is not None:
        return Checked(output, failure, used)
    return Checked({"value": value} if spec.wrapped else value, None, used)


def conclude(
    ctx: Context,
    state: RunState,
    attempt: int,
    checked: Checked,
    usage: Usage,
    call: dict[str, Any],
) -> str:
    """End an attempt on its checks alone: rejected (`reject`), or, for a vote-free run,
    passed (`succeed`)."""
    step = reject if checked.failure is not None else succeed
    return step(ctx, state, attempt, checked, usage, call)


def reject(
    ctx: Context,
    state: RunState,
    attempt: int,
    checked: Checked,
    usage: Usage,
    call: dict[str, Any],
) -> str:
    """Record an attempt that a check rejected (`check_failed`) and send it to the router."""
    assert checked.failure is not None
    run_id, failure = state.run_id, checked.failure
    ctx.store.bill(run_id, usage)
    log.info("run %s attempt %d: %s check %s failed: %s", run_id, attempt, *vars(failure).values())
    failed = CheckFailed(
        attempt=attempt,
        worker=ctx.worker,
        check=failure.check,
        name=failure.name,
        message=failure.message,
        output=checked.output,
        task=state.spec.task,
        definition_hash=checked.definition_hash,
        **call,
    )
    ctx.store.record_failure(
        run_id, attempt, FailedAttempt(checked.output, [failure.message]), failed
    )
    if not ctx.over_budget(state):
        ctx.enqueue.route(run_id, attempt)
    return "invalid"


def succeed(
    ctx: Context,
    state: RunState,
    attempt: int,
    checked: Checked,
    usage: Usage,
    call: dict[str, Any],
) -> str:
    """End a vote-free run (`config=None`) whose checks passed: `SUCCESSFUL`."""
    run_id, spec = state.run_id, state.spec
    ended = ctx.store.transition(
        run_id,
        TaskStatus.SUCCESSFUL,
        attempt=attempt,
        fields={
            f"output:{attempt}": checked.output,
            "result": result_field(spec.wrapped, checked.output),
        },
        events=[
            Output(attempt=attempt, worker=ctx.worker, output=checked.output, **call),
            Succeeded(attempt=attempt, worker=ctx.worker),
        ],
        usage=usage,
    )
    log.info("run %s attempt %d: checks passed, run succeeded (no votes)", run_id, attempt)
    if ended:
        ctx.run_ended(run_id)
    return "succeeded"
