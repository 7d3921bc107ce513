"""The template sandbox: Jinja's immutable sandbox, bounded in what one template may cost.

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

Each refusal is a `TemplateError` that names the limit.
"""

from __future__ import annotations

import inspect
import os
import re
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
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from quorum.shared.errors import TemplateError

__all__ = [
    "MAX_INT_BITS",
    "MAX_SOURCE_CHARS",
    "Compiled",
    "Limits",
    "compile_template",
    "render",
    "unsafe_attributes",
]

MAX_INT_BITS = 4096
"""Largest integer a template may compute (about 1,233 digits)."""
MAX_SOURCE_CHARS = 300_000
"""Largest Python source a template may compile to (about 0.2 s of Python's compiler)."""
_CODE = "<template>"
_EVERY = 32  # calls between two looks at the clock (a few microseconds)
_RESUMABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
_JINJA = os.path.dirname(jinja2.__file__) + os.sep
_WIDTH = re.compile(r"%[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACED = re.compile(r"\{[^{}]*\}")
_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class Limits:
    """What one template may cost: characters it may build or render, seconds it may take."""

    max_chars: int = 2_000_000
    timeout_s: float = 1.0


@dataclass
class _Budget:
    limits: Limits
    deadline: float
    what: str

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateError(
                f"template took over {self.limits.timeout_s:g} s to {self.what} (the limit)"
            )

    def refuse(self, what: str, size: int) -> None:
        if size > self.limits.max_chars:
            raise TemplateError(
                f"template refused: {what} would make {size} characters, over the limit of "
                f"{self.limits.max_chars}"
            )


_BUDGET: ContextVar[_Budget | None] = ContextVar("quorum_template_budget", default=None)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # outside `render`/`compile_template`: refuse rather than run unbounded
        raise TemplateError("template evaluated outside its limits")
    return budget


def _weight(value: Any, limit: int) -> int:
    """Characters of strings plus items of containers in `value`, counted up to past `limit`."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3
        elif isinstance(item, Mapping):
            total += len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += len(item)
            stack.extend(item)
    return total


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_binop(budget: _Budget, operator: str, left: Any, right: Any) -> None:
    """Refuse `left operator right` when its result would be over the limits."""
    a, b, limit = _int(left), _int(right), budget.limits.max_chars
    if operator == "**" and a is not None and b is not None and b > 0 and abs(a) > 1:
        if b * a.bit_length() > MAX_INT_BITS:
            raise TemplateError(f"template refused: {a} ** {b} is over {MAX_INT_BITS} bits")
    elif operator == "*" and a is not None and b is not None:
        if a.bit_length() + b.bit_length() > MAX_INT_BITS:
            raise TemplateError(f"template refused: a product over {MAX_INT_BITS} bits")
    elif operator == "*" and (a is not None or b is not None):
        times, other = (a, right) if a is not None else (b, left)
        budget.refuse("a repetition (*)", max(times or 0, 0) * _weight(other, limit))
    elif operator == "+" and isinstance(left, str | list | tuple):
        budget.refuse("a concatenation (+)", _weight(left, limit) + _weight(right, limit))
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(budget, left)


def _check_percent_format(budget: _Budget, text: str) -> None:
    for match in _WIDTH.finditer(text):
        for number in match.groups():
            if number == "*":
                raise TemplateError("template refused: a '*' width in a % format")
            if number is not None:
                budget.refuse("a % format's width", int(number))


def _check_method(budget: _Budget, obj: Any, args: tuple[Any, ...]) -> None:
    """Refuse a call of a str method that pads, multiplies or replaces past the limits."""
    obj = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
    owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
    if not isinstance(owner, str):
        return
    if name in ("format", "format_map"):
        for field in _BRACED.findall(owner):
            for number in _NUMBER.findall(field):
                budget.refuse("a format's width", int(number))
    if not args:
        return
    first = args[0]
    if name in ("center", "ljust", "rjust", "zfill") and _int(first) is not None:
        budget.refuse(f"str.{name}", first)
    elif name == "expandtabs" and _int(first) is not None:
        budget.refuse("str.expandtabs", len(owner) * max(first, 1))
    elif name == "replace" and len(args) >= 2:
        budget.refuse("str.replace", _replaced_size(owner, first, args[1]))
    elif name == "join":
        budget.refuse("str.join", _joined_size(owner, first, budget.limits.max_chars))


def _replaced_size(text: Any, old: Any, new: Any) -> int:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return 0
    found = text.count(old)
    return len(text) + found * max(len(new) - len(old), 0)


def _joined_size(separator: Any, items: Any, limit: int) -> int:
    count = len(items) if isinstance(items, Sized) else 0
    return _weight(items, limit) + len(str(separator)) * count


class _BoundedNamespace(Namespace):
    """`namespace()`, whose values stay within the limits (its attributes outlive a loop's
    iteration: the one place a template can grow a value step by step)."""

    def __setitem__(self, name: str, value: Any) -> None:
        budget = _budget()
        budget.tick()
        budget.refuse(f"namespace value {name!r}", _weight(value, budget.limits.max_chars))
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
        _check_binop(budget, operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """A call from the template (a function, method or macro), refused past the limits."""
        budget = _budget()
        budget.tick()
        limit = budget.limits.max_chars
        for value in (*args, *kwargs.values()):
            budget.refuse("an argument", _weight(value, limit))
        _check_method(budget, obj, args)
        return super().call(context, obj, *args, **kwargs)


_CHECKED_FILTERS = frozenset(
    {"batch", "center", "format", "indent", "join", "replace", "slice", "sum", "tojson", "wordwrap"}
)
"""The filters that can make more than their input (or sum lists, quadratically); the others
cost time and space linear in their input, and run as Jinja has them."""

_PLAIN = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
"""Jinja's own filters, called by the bounded ones once their arguments are checked."""


def _check_filter(budget: _Budget, name: str, value: Any, args: tuple[Any, ...], kw: Any) -> None:
    """Refuse a filter call whose result would be over the limits, before it runs."""
    limit = budget.limits.max_chars
    first = args[0] if args else next(iter(kw.values()), None)
    number = _int(first)
    if name in ("center", "batch", "slice") and number is not None:
        budget.refuse(f"the {name} filter", number)
    elif name == "indent":
        width = first if first is not None else 4
        unit = width if _int(width) is not None else len(str(width))
        budget.refuse("the indent filter", _weight(value, limit) * (1 + max(unit, 0)))
    elif name == "wordwrap":
        wrap = str(kw.get("wrapstring", args[2] if len(args) > 2 else "\n"))
        budget.refuse("the wordwrap filter", _weight(value, limit) * (1 + len(wrap)))
    elif name == "tojson" and number is not None:
        budget.refuse("the tojson filter", _weight(value, limit) * (1 + number))
    elif name == "replace" and len(args) >= 2:
        budget.refuse("the replace filter", _replaced_size(value, args[0], args[1]))
    elif name == "join":
        budget.refuse("the join filter", _joined_size(first or "", value, limit))
    elif name == "format" and isinstance(value, str):
        _check_percent_format(budget, value)
    elif name == "sum" and any(isinstance(v, list | tuple) for v in (*args, *kw.values())):
        raise TemplateError("template refused: the sum filter adds numbers, not lists")


def _bounded_filter(name: str) -> Callable[..., Any]:
    """Jinja's filter `name`, checked against the limits. It takes the context, so that Jinja
    never calls it while compiling (its arguments could be constants)."""

    @pass_context
    def run(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        if name == "join" and not isinstance(value, Sized):
            value = list(value)
        _check_filter(budget, name, value, args, kwargs)
        result = _PLAIN.call_filter(
            name, value, args, kwargs, context=context, eval_ctx=context.eval_ctx
        )
        if isinstance(result, str | list):
            budget.refuse(f"the {name} filter", _weight(result, budget.limits.max_chars))
        return result

    return run


ENV = BoundedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def _tracer(budget: _Budget) -> Callable[[FrameType, str, Any], Any]:
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


@contextmanager
def _bounded(limits: Limits, what: str, *, traced: bool) -> Iterator[_Budget]:
    budget = _Budget(limits, time.monotonic() + limits.timeout_s, what)
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
