"""What an operation of a template or expression would cost, checked before it runs: the
sizes the sandbox (`shared.sandbox`) refuses past its `Limits`, and the clock it stops at.

An integer over `MAX_INT_BITS`; a string or list over `max_chars` made by repetition,
concatenation, padding, replacing, joining or formatting; a `*` width in a `%` format. Each
refusal is a `TemplateError` naming the limit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sized
from dataclasses import dataclass
from typing import Any, NoReturn

from quorum.shared.errors import TemplateError

__all__ = [
    "MAX_INT_BITS",
    "Budget",
    "Limits",
    "check_binop",
    "check_filter",
    "check_method",
    "weight",
]

MAX_INT_BITS = 4096
"""Largest integer a template may compute (about 1,233 digits)."""
_WIDTH = re.compile(r"%[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACED = re.compile(r"\{[^{}]*\}")
_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class Limits:
    """What one template or expression may cost: characters it may build or render, seconds
    it may take."""

    max_chars: int = 2_000_000
    timeout_s: float = 1.0


@dataclass
class Budget:
    """The limits of the template or expression being compiled or evaluated, and its clock.

    `deadline`: the monotonic time it stops at, the earlier of its own limit and, when it is
    one of several on one clock (`sandbox.one_clock`), theirs (`shared`)."""

    limits: Limits
    deadline: float
    what: str
    subject: str = "template"
    shared: bool = False

    def tick(self) -> None:
        """Raise `TemplateError` past the deadline."""
        if time.monotonic() > self.deadline:
            together = ", for all of them together" if self.shared else ""
            raise TemplateError(
                f"{self.subject} took over {self.limits.timeout_s:g} s to {self.what} "
                f"(the limit{together})"
            )

    def refuse(self, what: str, size: int) -> None:
        """Raise `TemplateError` if `what` would make `size` characters, past the limit."""
        if size > self.limits.max_chars:
            self.fail(
                f"{what} would make {size} characters, over the limit of {self.limits.max_chars}"
            )

    def fail(self, why: str) -> NoReturn:
        """Refuse an operation: a `TemplateError` naming the subject."""
        raise TemplateError(f"{self.subject} refused: {why}")


def weight(value: Any, limit: int) -> int:
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


def check_binop(budget: Budget, operator: str, left: Any, right: Any) -> None:
    """Refuse `left operator right` when its result would be over the limits."""
    a, b, limit = _int(left), _int(right), budget.limits.max_chars
    if operator == "**" and a is not None and b is not None and b > 0 and abs(a) > 1:
        if b * a.bit_length() > MAX_INT_BITS:
            budget.fail(f"{a} ** {b} is over {MAX_INT_BITS} bits")
    elif operator == "*" and a is not None and b is not None:
        if a.bit_length() + b.bit_length() > MAX_INT_BITS:
            budget.fail(f"a product over {MAX_INT_BITS} bits")
    elif operator == "*" and (a is not None or b is not None):
        times, other = (a, right) if a is not None else (b, left)
        budget.refuse("a repetition (*)", max(times or 0, 0) * weight(other, limit))
    elif operator == "+" and isinstance(left, str | list | tuple):
        budget.refuse("a concatenation (+)", weight(left, limit) + weight(right, limit))
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(budget, left)


def _check_percent_format(budget: Budget, text: str) -> None:
    for match in _WIDTH.finditer(text):
        for number in match.groups():
            if number == "*":
                budget.fail("a '*' width in a % format")
            if number is not None:
                budget.refuse("a % format's width", int(number))


def check_method(budget: Budget, obj: Any, args: tuple[Any, ...]) -> None:
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
    return weight(items, limit) + len(str(separator)) * count


def check_filter(budget: Budget, name: str, value: Any, args: tuple[Any, ...], kw: Any) -> None:
    """Refuse a filter call whose result would be over the limits, before it runs."""
    limit = budget.limits.max_chars
    first = args[0] if args else next(iter(kw.values()), None)
    number = _int(first)
    if name in ("center", "batch", "slice") and number is not None:
        budget.refuse(f"the {name} filter", number)
    elif name == "indent":
        width = first if first is not None else 4
        unit = width if _int(width) is not None else len(str(width))
        budget.refuse("the indent filter", weight(value, limit) * (1 + max(unit, 0)))
    elif name == "wordwrap":
        wrap = str(kw.get("wrapstring", args[2] if len(args) > 2 else "\n"))
        budget.refuse("the wordwrap filter", weight(value, limit) * (1 + len(wrap)))
    elif name == "tojson" and number is not None:
        budget.refuse("the tojson filter", weight(value, limit) * (1 + number))
    elif name == "replace" and len(args) >= 2:
        budget.refuse("the replace filter", _replaced_size(value, args[0], args[1]))
    elif name == "join":
        budget.refuse("the join filter", _joined_size(first or "", value, limit))
    elif name == "format" and isinstance(value, str):
        _check_percent_format(budget, value)
    elif name == "sum" and any(isinstance(v, list | tuple) for v in (*args, *kw.values())):
        budget.fail("the sum filter adds numbers, not lists")
