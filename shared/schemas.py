"""JSON Schemas from producers: checked at submit, and what workers validate outputs with.

A response schema is code a producer sends to the workers, so it is held to two rules:

- **Self-contained.** Every `$ref` (and `$dynamicRef`, `$recursiveRef`) is local (`#…`); one
  that points anywhere else is refused at submit, and a local JSON Pointer must resolve. The
  validator the workers build resolves references in a `referencing.Registry` that never
  retrieves anything, so no output check can reach the network, whatever the schema says.
- **Regular expressions run in linear time.** `pattern` and `patternProperties` (and
  `additionalProperties` beside them) are matched with RE2, which has no backtracking: a
  pattern it cannot run (backreferences, lookarounds), longer than `MAX_PATTERN_CHARS` or
  compiling to more than `MAX_PROGRAM_SIZE` instructions is refused at submit, and one
  output's checks stop past `MAX_MATCH_COST`. `unevaluatedProperties` next to
  `patternProperties` is refused too (jsonschema would match those patterns with Python's
  backtracking `re`). No format is checked on outputs (`format` stays an annotation), so no
  other producer regex runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextvars import ContextVar
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import jsonschema
import re2
import referencing
import referencing.exceptions
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

__all__ = [
    "MAX_MATCH_COST",
    "MAX_PATTERN_CHARS",
    "MAX_PROGRAM_SIZE",
    "output_error",
    "schema_problem",
]

MAX_PATTERN_CHARS = 1000
"""Longest regular expression a schema may hold."""
MAX_PROGRAM_SIZE = 200
"""Most instructions a pattern may compile to in RE2. Ordinary patterns are 7 to 85."""
MAX_MATCH_COST = MAX_PROGRAM_SIZE * 1_000_000
"""Most matching one output check may cost, in program instructions × characters matched.
RE2 runs in time linear in the text, times the program's size when its DFA gives up
(counted repetitions such as `a[ab]{190}c`): 2.9 s for one 1 MB string at the largest
program, in the matching thread alone (RE2 releases the GIL). An output whose check would
cost more, however many patterns and strings it takes, is an invalid attempt."""
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    """`pattern` compiled by RE2 (`re2.error` if RE2 cannot run it)."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise re2.error(f"longer than {MAX_PATTERN_CHARS} characters")
    regex = re2.compile(pattern, options=_OPTIONS)
    size = max(regex.programsize, regex.reverseprogramsize)
    if size > MAX_PROGRAM_SIZE:
        raise re2.error(f"it compiles to {size} instructions, over {MAX_PROGRAM_SIZE}")
    return regex


class _TooCostly(Exception):
    """An output's pattern checks went over `MAX_MATCH_COST`."""


_COST: ContextVar[list[int]] = ContextVar("quorum_match_cost")


def _matches(pattern: str, text: str) -> bool:
    """Whether RE2's `pattern` is found in `text`, charged to the check's cost budget."""
    regex = _regex(pattern)
    left = _COST.get()
    left[0] -= max(regex.programsize, regex.reverseprogramsize) * len(text)
    if left[0] < 0:
        raise _TooCostly
    return regex.search(text) is not None


def _re2_regex(instance: object) -> bool:
    """The `regex` format, as RE2 reads it (checked on schemas at submit)."""
    if isinstance(instance, str):
        try:
            _regex(instance)
        except re2.error as exc:
            raise ValueError(f"RE2 cannot run {instance[:80]!r}: {_message(exc)}") from exc
    return True


def _message(exc: Exception) -> str:
    text = exc.args[0] if exc.args else exc
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)


_FORMATS = jsonschema.FormatChecker(formats=())
_FORMATS.checks("regex", raises=ValueError)(_re2_regex)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _matches(pattern, instance):
        shown = instance if len(instance) <= 80 else instance[:80] + "…"
        yield ValidationError(f"{shown!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            if _matches(pattern, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(validator: Any, extra: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    known = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [
        name
        for name in instance
        if name not in known and not any(_matches(pattern, name) for pattern in patterns)
    ]
    if validator.is_type(extra, "object"):
        for name in extras:
            yield from validator.descend(instance[name], extra, path=name)
    elif extra is False and extras:
        listed = ", ".join(repr(name) for name in sorted(extras))
        yield ValidationError(f"Additional properties are not allowed ({listed} unexpected)")


_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}


def _retrieve(uri: str) -> Any:
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]  # attrs


_REGISTRY: referencing.Registry[Any] = referencing.Registry(retrieve=_retrieve)  # type: ignore[call-arg]


def _objects(schema: Any) -> Iterator[dict[str, Any]]:
    """Every object in `schema`, iteratively (depth is bounded at submit, not here)."""
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _pointer_resolves(schema: Any, ref: str) -> bool:
    """Whether a local `#/…` JSON Pointer points at something in `schema`."""
    target = schema
    for part in unquote(ref[2:]).split("/") if ref != "#/" else [""]:
        token = part.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and token in target:
            target = target[token]
        elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
            target = target[int(token)]
        else:
            return False
    return True


def _reference_problem(schema: dict[str, Any]) -> str | None:
    patterned = unevaluated = False
    for item in _objects(schema):
        patterned = patterned or isinstance(item.get("patternProperties"), dict)
        unevaluated = unevaluated or "unevaluatedProperties" in item
        for keyword in _REF_KEYWORDS:
            ref = item.get(keyword)
            if not isinstance(ref, str):
                continue
            if not ref.startswith("#"):
                return (
                    f"{keyword} {ref[:200]!r} is not local: a schema must be self-contained "
                    "(only '#…' references)"
                )
            if ref.startswith("#/") and not _pointer_resolves(schema, ref):
                return f"{keyword} {ref[:200]!r} points at nothing in the schema"
    if patterned and unevaluated:
        return "unevaluatedProperties beside patternProperties is not supported"
    return None


@lru_cache(maxsize=256)
def schema_problem(schema_json: str) -> str | None:
    """What makes a schema (as canonical JSON) unusable, or None: not a valid JSON Schema, a
    reference that is not local, a pattern RE2 cannot run. Cached: a producer sends the same
    few schemas again and again, and checking one costs a third of a submit's CPU."""
    schema = json.loads(schema_json)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema, format_checker=_FORMATS)
    except jsonschema.SchemaError as exc:  # a format's own message says more (RE2's)
        return str(exc.cause if exc.cause is not None else exc.message)
    except RecursionError:
        return "the schema is nested too deeply"
    return _reference_problem(schema) if isinstance(schema, dict) else None


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Validator:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    bounded = jsonschema.validators.extend(cls, _KEYWORDS)
    return bounded(schema, registry=_REGISTRY)


def output_error(output: Any, schema: dict[str, Any]) -> str | None:
    """Why `output` does not fit `schema`, or None. Never raises on what a producer's
    schema holds: an unresolvable reference or a pattern RE2 refuses is a misfit."""
    token = _COST.set([MAX_MATCH_COST])
    try:
        validator = _validator(json.dumps(schema, sort_keys=True))
        error = jsonschema.exceptions.best_match(validator.iter_errors(output))
    except _TooCostly:
        return "the schema's patterns would cost too much to check on this output"
    except referencing.exceptions.Unresolvable as exc:
        return f"the schema's reference cannot be resolved: {exc}"
    except re2.error as exc:
        return f"the schema's pattern cannot be run: {_message(exc)}"
    except RecursionError:
        return "output is nested too deeply to check against the schema"
    finally:
        _COST.reset(token)
    if error is None:
        return None
    where = "/".join(map(str, error.absolute_path)) or "(root)"
    return f"output does not fit the schema at {where}: {error.message}"
