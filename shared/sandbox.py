"""The template sandbox: Jinja's immutable sandbox, bounded in what one template or
expression (a check's, a node's `skip_if`) may cost.

A template is code a producer sends; Jinja's sandbox keeps it from reaching outside (no
`__class__`, no globals, no mutation), but not from spending: `{{ 9**(9**8) }}` is folded to
a constant while the template compiles, `{{ 'a' * 20000000 }}` renders a 20 MB prompt, two
nested loops run for seconds. Here every template compiles and renders under a `Limits`:

- **No unbounded arithmetic or repetition.** `**`, `*`, `+` and `%` are intercepted (so none
  is folded at compile time) and refused when the result would be an integer over
  `MAX_INT_BITS` or a string or list over `max_chars`; so are the string methods and filters
  that pad or multiply (`center`, `ljust`, `zfill`, `replace`, `join`, `indent`, `format`,
  `batch`, `slice`, `tojson`, `wordwrap`; `sum` of lists). Those filters never run at
  compile time; the others cost time and space linear in their input.
- **A cap on what it renders**: output past `max_chars` characters stops the render, and so
  does a value past it handed to a macro or a namespace.
- **A time bound**: compiling (parse, variables and code on one clock) and rendering each
  stop after `timeout_s`. Rendering looks at the clock in every intercepted operation, call
  and filter, for every output chunk, and every `_EVERY` items of every `{% for %}` loop
  (their items go through a filter added when the template compiles): no loop escapes it,
  for a few microseconds a render. Compiling (Jinja's lexer, parser and code generator, in
  Python) runs under a trace function that looks every `_EVERY` calls in Jinja's own code;
  Python source generated from a template is refused over `MAX_SOURCE_CHARS` (Python's own
  compiler, in C, cannot be interrupted: about 0.7 s per MB).

An expression compiles and evaluates under the same bounds (`compile_expression`,
`evaluate`), and several can share one clock (`one_clock`: a run's checks). The sizes each
operation is checked against are `shared.costs`'. Each refusal is a `TemplateError` that
names the limit.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sized
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import FrameType
from typing import Any

import jinja2
from jinja2 import StrictUndefined, Template, meta, nodes, pass_context
from jinja2.environment import TemplateExpression
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from quorum.shared.costs import (
    MAX_INT_BITS,
    Budget,
    Limits,
    check_binop,
    check_filter,
    check_method,
    weight,
)
from quorum.shared.errors import TemplateError

__all__ = [
    "MAX_INT_BITS",
    "MAX_SOURCE_CHARS",
    "Compiled",
    "Expression",
    "Limits",
    "compile_expression",
    "compile_template",
    "evaluate",
    "one_clock",
    "render",
    "unsafe_attributes",
]

MAX_SOURCE_CHARS = 300_000
"""Largest Python source a template may compile to (about 0.2 s of Python's compiler)."""
_CODE = "<template>"
_EVERY = 32  # calls between two looks at the clock (a few microseconds)
_RESUMABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
_JINJA = os.path.dirname(jinja2.__file__) + os.sep


_BUDGET: ContextVar[Budget | None] = ContextVar("quorum_template_budget", default=None)


def _budget() -> Budget:
    budget = _BUDGET.get()
    if budget is None:  # outside `render`/`compile_template`: refuse rather than run unbounded
        raise TemplateError("template evaluated outside its limits")
    return budget


class _BoundedNamespace(Namespace):
    """`namespace()`, whose values stay within the limits (its attributes outlive a loop's
    iteration: the one place a template can grow a value step by step)."""

    def __setitem__(self, name: str, value: Any) -> None:
        budget = _budget()
        budget.tick()
        budget.refuse(f"namespace value {name!r}", weight(value, budget.limits.max_chars))
        super().__setitem__(name, value)


_LOOP = "quorum_loop_items"
"""The filter every `{% for %}` loop's items go through (a name templates may not use)."""


@pass_context
def _loop_items(context: Context, items: Any) -> Iterator[Any]:
    """`items`, looking at the clock every `_EVERY` of them."""
    budget = _budget()
    for count, item in enumerate(items):
        if not count % _EVERY:
            budget.tick()
        yield item


def _count_loop_items(tree: nodes.Template) -> None:
    """Make every `{% for %}` loop take its items through `_loop_items`, so that a loop the
    template's other operations leave alone (nested loops over a kwarg, with an empty body)
    still stops at the deadline."""
    if any(node.name == _LOOP for node in tree.find_all(nodes.Filter)):
        raise TemplateError(f"template uses the reserved name {_LOOP}")
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, _LOOP, [], [], None, None, lineno=loop.lineno)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every operator, call and filter checked against the
    current `Limits`."""

    intercepted_binops = frozenset({"**", "*", "+", "%", "//"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals.pop("lipsum", None)  # its size is an argument: nothing a prompt needs
        self.globals["namespace"] = _BoundedNamespace
        self.filters.update({name: _bounded_filter(name) for name in _CHECKED_FILTERS})
        self.filters[_LOOP] = _loop_items

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """`left operator right`, refused past the limits."""
        budget = _budget()
        budget.tick()
        check_binop(budget, operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """A call from the template (a function, method or macro), refused past the limits."""
        budget = _budget()
        budget.tick()
        limit = budget.limits.max_chars
        for value in (*args, *kwargs.values()):
            budget.refuse("an argument", weight(value, limit))
        check_method(budget, obj, args)
        return super().call(context, obj, *args, **kwargs)


_CHECKED_FILTERS = frozenset(
    {"batch", "center", "format", "indent", "join", "replace", "slice", "sum", "tojson", "wordwrap"}
)
"""The filters that can make more than their input (or sum lists, quadratically); the others
cost time and space linear in their input, and run as Jinja has them."""

_PLAIN = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
"""Jinja's own filters, called by the bounded ones once their arguments are checked."""


def _bounded_filter(name: str) -> Callable[..., Any]:
    """Jinja's filter `name`, checked against the limits. It takes the context, so that Jinja
    never calls it while compiling (its arguments could be constants)."""

    @pass_context
    def run(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        if name == "join" and not isinstance(value, Sized):
            value = list(value)
        check_filter(budget, name, value, args, kwargs)
        result = _PLAIN.call_filter(
            name, value, args, kwargs, context=context, eval_ctx=context.eval_ctx
        )
        if isinstance(result, str | list):
            budget.refuse(f"the {name} filter", weight(result, budget.limits.max_chars))
        return result

    return run


ENV = BoundedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def _tracer(budget: Budget) -> Callable[[FrameType, str, Any], Any]:
    """A trace function that looks at the budget's clock at the first call into a plain
    function of Jinja's after every `_EVERY` calls. Only there: the garbage collector runs
    other code mid-compile (finalizers, generators it closes), where Python drops an error
    raised, and the trace function with it (a socket's finalizer once did: the compile ran on
    unbounded)."""
    calls = 0

    def call(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        calls += 1
        code = frame.f_code
        plain = not code.co_flags & _RESUMABLE
        if calls >= _EVERY and plain and code.co_filename.startswith(_JINJA):
            calls = 0
            budget.tick()

    return call


_CLOCK: ContextVar[tuple[float, float] | None] = ContextVar("quorum_one_clock", default=None)
"""The deadline of the clock in use (`one_clock`) and its length in seconds."""


@contextmanager
def one_clock(limits: Limits) -> Iterator[None]:
    """Compile or evaluate everything inside on one clock of `limits.timeout_s` (nested: the
    outer clock's, if it ends first), besides each one's own limit: a run's hundred checks
    then cost at most one limit, not a hundred."""
    clock = (time.monotonic() + limits.timeout_s, limits.timeout_s)
    outer = _CLOCK.get()
    token = _CLOCK.set(clock if outer is None else min(outer, clock))
    try:
        yield
    finally:
        _CLOCK.reset(token)


@contextmanager
def _bounded(
    limits: Limits, what: str, *, traced: bool, subject: str = "template"
) -> Iterator[Budget]:
    own, clock = time.monotonic() + limits.timeout_s, _CLOCK.get()
    if clock is not None and clock[0] < own:
        shared = Limits(max_chars=limits.max_chars, timeout_s=clock[1])
        budget = Budget(shared, clock[0], what, subject, shared=True)
    else:
        budget = Budget(limits, own, what, subject)
    token = _BUDGET.set(budget)
    previous = sys.gettrace()
    if traced:
        sys.settrace(_tracer(budget))
    try:
        yield budget
        if traced:  # finished, perhaps untraced since: past the deadline is refused all the same
            budget.tick()
    finally:
        if traced:
            sys.settrace(previous)
        _BUDGET.reset(token)


@dataclass(frozen=True)
class Compiled:
    """A template compiled in the sandbox, with what its parse showed: the variables it needs
    and the attribute names it reaches for that start with `_` (the sandbox refuses them)."""

    template: Template
    variables: frozenset[str]
    unsafe: tuple[str, ...]


def unsafe_attributes(tree: nodes.Node) -> tuple[str, ...]:
    """The attribute and item names starting with `_` that a parsed template reaches for."""
    names = [n.attr for n in tree.find_all(nodes.Getattr)]
    names += [
        n.arg.value
        for n in tree.find_all(nodes.Getitem)
        if isinstance(n.arg, nodes.Const) and isinstance(n.arg.value, str)
    ]
    return tuple(sorted({name for name in names if name.startswith("_")}))


def compile_template(source: str, limits: Limits) -> Compiled:
    """Compile `source` in the bounded sandbox within `limits`' time. Raises `TemplateError`
    (its Jinja errors are the caller's to map, as they come)."""
    with _bounded(limits, "compile", traced=True):
        tree = ENV.parse(source)
        variables = frozenset(meta.find_undeclared_variables(tree))
        unsafe = unsafe_attributes(tree)
        _count_loop_items(tree)
        code = ENV.compile(tree, filename=_CODE, raw=True)
    if len(code) > MAX_SOURCE_CHARS:
        raise TemplateError(
            f"template is too complex: it compiles to {len(code)} characters of code, over "
            f"the limit of {MAX_SOURCE_CHARS}"
        )
    template = ENV.template_class.from_code(
        ENV, compile(code, _CODE, "exec"), ENV.make_globals(None), None
    )
    return Compiled(template, variables, unsafe)


def render(template: Template, kwargs: Mapping[str, Any], limits: Limits) -> str:
    """Render a template from `compile_template` with `kwargs` within `limits`: its output
    stops past `max_chars` characters, and its work past `timeout_s`."""
    parts: list[str] = []
    size = 0
    with _bounded(limits, "render", traced=False) as budget:
        for chunk in template.generate(**kwargs):
            size += len(chunk)
            budget.refuse("the rendered prompt", size)
            parts.append(chunk)
        budget.tick()
    return "".join(parts)


@dataclass(frozen=True)
class Expression:
    """A Jinja expression compiled in the sandbox (a check's `expr`, a node's `skip_if`), with
    the attribute names starting with `_` it reaches for (the sandbox refuses them)."""

    compiled: TemplateExpression
    unsafe: tuple[str, ...]


def compile_expression(source: str, limits: Limits) -> Expression:
    """Compile an expression as `compile_template` compiles a template: in the bounded
    sandbox, on one clock of `limits`. Raises `TemplateError` (its Jinja errors, and a
    `RecursionError` for one nested too deeply, are the caller's to map, as they come)."""
    with _bounded(limits, "compile", traced=True, subject="expression"):
        tree = ENV.parse(f"{{{{ {source} }}}}")
        compiled = ENV.compile_expression(source, undefined_to_none=False)
    return Expression(compiled, unsafe_attributes(tree))


def evaluate(expression: Expression, values: Mapping[str, Any], limits: Limits) -> Any:
    """The value of an expression from `compile_expression` over `values`, within `limits`
    as a render is: an operation that would build past `max_chars` is refused, and so is
    its work past `timeout_s` (`TemplateError`)."""
    with _bounded(limits, "evaluate", traced=False, subject="expression") as budget:
        value = expression.compiled(**values)
        budget.tick()
    return value
