"""Deterministic fake values for JSON Schemas, seeded with words and numbers from the prompt."""

from __future__ import annotations

import re
from typing import Any

_WORD = re.compile(r"[A-Za-z]{3,}")
_INT = re.compile(r"-?\d+")
_MAX_DEPTH = 12
_FORMATS = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def prompt_word(prompt: str) -> str:
    """Return the last alphabetic word (3+ letters) of the prompt's last non-empty line."""
    lines = [line for line in prompt.splitlines() if line.strip()]
    words = _WORD.findall(lines[-1]) if lines else []
    return words[-1] if words else "example"


def prompt_int(prompt: str) -> int:
    """Return the first integer in the prompt, or 1."""
    match = _INT.search(prompt)
    return int(match.group()) if match else 1


def resolve(schema: Any, root: Any) -> Any:
    """Follow local ``$ref`` pointers (``#/$defs/X``, ``#/definitions/X``) against ``root``."""
    for _ in range(_MAX_DEPTH):
        if not isinstance(schema, dict) or "$ref" not in schema:
            return schema
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            return {}
        target: Any = root
        for part in ref[1:].split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                return {}
            target = target[part]
        schema = target
    return {}


def _types(schema: dict[str, Any]) -> list[str]:
    declared = schema.get("type")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list):
        return [t for t in declared if isinstance(t, str)]
    if "properties" in schema or "additionalProperties" in schema:
        return ["object"]
    if "items" in schema:
        return ["array"]
    return []


def _branch(options: list[Any], root: Any) -> Any:
    """Pick the first alternative that is not just ``null`` (or the first one)."""
    for option in options:
        if _types(resolve(option, root) or {}) != ["null"]:
            return option
    return options[0]


def fake_value(schema: Any, *, prompt: str = "", root: Any = None, _depth: int = 0) -> Any:
    """Return a value that fits ``schema``, using the prompt for plausible strings/numbers.

    Strings take the last 3+ letter word of the prompt's last line, integers and numbers the
    first integer in the prompt (else 1), booleans are true. ``anyOf``/``oneOf`` take the first
    non-null alternative; nullable types take their first non-null type.
    """
    root = schema if root is None else root
    schema = resolve(schema, root)
    if not isinstance(schema, dict) or _depth > _MAX_DEPTH:
        return {} if _depth == 0 else None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return fake_value(_branch(options, root), prompt=prompt, root=root, _depth=_depth + 1)
    types = [t for t in _types(schema) if t != "null"]
    if not types:
        return None if "null" in _types(schema) else {}
    return _fake_typed(types[0], schema, prompt=prompt, root=root, depth=_depth + 1)


def _fake_typed(kind: str, schema: dict[str, Any], *, prompt: str, root: Any, depth: int) -> Any:
    if kind == "object":
        props = schema.get("properties") or {}
        return {
            name: fake_value(sub, prompt=prompt, root=root, _depth=depth)
            for name, sub in props.items()
        }
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        max_items = schema.get("maxItems")
        if isinstance(max_items, int):
            count = min(count, max_items)
        return [fake_value(schema.get("items", {}), prompt=prompt, root=root, _depth=depth)] * count
    if kind == "string":
        return _fit_string(schema, prompt)
    if kind in ("integer", "number"):
        return _fit_number(schema, prompt_int(prompt))
    return True if kind == "boolean" else None


def _fit_string(schema: dict[str, Any], prompt: str) -> str:
    text = _FORMATS.get(schema.get("format", "")) or prompt_word(prompt)
    min_len = schema.get("minLength")
    max_len = schema.get("maxLength")
    if isinstance(min_len, int) and len(text) < min_len:
        text = text + "x" * (min_len - len(text))
    if isinstance(max_len, int):
        text = text[:max_len]
    return text


def _fit_number(schema: dict[str, Any], value: int) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if isinstance(low, (int, float)) and value < low:
        value = int(low) + (1 if "exclusiveMinimum" in schema and "minimum" not in schema else 0)
    if isinstance(high, (int, float)) and value > high:
        value = int(high) - (1 if "exclusiveMaximum" in schema and "maximum" not in schema else 0)
    return value


def violating_value(schema: Any, *, root: Any = None) -> Any:
    """Return valid JSON that does not fit ``schema`` (wrong types plus an unexpected key)."""
    root = schema if root is None else root
    schema = resolve(schema, root)
    types = _types(schema) if isinstance(schema, dict) else []
    if types and "object" not in types:
        return {"unexpected": True}
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not props:
        return {"unexpected": True} if schema else ["unexpected"]
    wrong = {name: _wrong_type(resolve(sub, root)) for name, sub in props.items()}
    wrong["unexpected"] = True
    return wrong


def _wrong_type(schema: Any) -> Any:
    types = _types(schema) if isinstance(schema, dict) else []
    if "string" not in types:
        return "wrong type"
    return [] if "array" not in types else 12345
