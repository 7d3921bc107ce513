"""What a request's JSON may hold: how deep it nests, and text that encodes as UTF-8.

Python's `json` reads a lone surrogate (`"\\ud800"`) into a `str` that no encoder can write
back, and Pydantic's parser stops at 200 levels of nesting: a stored run must read back as it
was written, so both are refused at submit, naming where they are (`payload_problem`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["depth_over", "payload_problem"]


def _text_problem(text: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        return f"holds a lone surrogate (U+{code:04X}) at character {exc.start}"
    return None


def _child(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"


def payload_problem(value: Any, *, what: str, max_depth: int) -> str | None:
    """Where `value` (JSON, as Python reads it) nests deeper than `max_depth` containers or
    holds text that cannot be encoded, as a message that names the place; None if nowhere."""
    stack: list[tuple[Any, str, int]] = [(value, what, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem is not None:
                return f"{path} {problem}"
            continue
        if isinstance(item, dict):
            children: Any = item.items()
        elif isinstance(item, list | tuple):
            children = enumerate(item)
        else:
            continue
        if depth + 1 > max_depth:
            return f"{path} is nested deeper than {max_depth} levels (the limit)"
        for key, child in children:
            if isinstance(key, str) and (problem := _text_problem(key)) is not None:
                return f"{path}: a key {problem}"
            stack.append((child, _child(path, key), depth + 1))
    return None


def depth_over(value: Any, max_depth: int) -> bool:
    """Whether `value` nests deeper than `max_depth` containers."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            if depth + 1 > max_depth:
                return True
            stack.extend((child, depth + 1) for child in children)
    return False
