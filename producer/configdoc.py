"""`docs/configuration.md`, generated from `Settings` so that the page cannot drift from the code.

    python -m quorum.producer.configdoc > docs/configuration.md

A unit test compares the committed page with `markdown()`: a setting added, renamed or
redescribed in `shared/settings.py` without regenerating the page fails it.
"""

from __future__ import annotations

import json
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from quorum.shared.settings import Settings

__all__ = ["env_names", "markdown", "type_text"]

_HEAD = """\
# Configuration

Every setting Quorum reads, read once from the environment by `quorum.shared.settings.Settings`
(nothing else in the project reads the environment) and passed down from there. Workers,
producers, the HTTP API and the CLI read the same variables; a `.env` file is not read, so
export them or set them in your compose file or Kubernetes manifests (`.env.example` lists the
ones the compose file uses).

This page is generated from the code: after changing a setting, run
`python -m quorum.producer.configdoc > docs/configuration.md` (a test fails until you do).

| variable | type | default | meaning |
|---|---|---|---|
"""

_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", SecretStr: "secret"}


def env_names(name: str, field: FieldInfo) -> list[str]:
    """The environment variables a field is read from, the preferred one first."""
    alias = field.validation_alias
    if alias is None:
        return [f"{Settings.model_config.get('env_prefix', '')}{name}".upper()]
    choices = getattr(alias, "choices", [alias])
    return [str(choice).upper() for choice in choices]


def _bounds(field: FieldInfo) -> str:
    """A field's numeric bounds (`gt=0` → `> 0`), as pydantic keeps them in its metadata."""
    signs = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    found = [
        f"{sign} {getattr(item, bound)}"
        for item in field.metadata
        for bound, sign in signs.items()
        if getattr(item, bound, None) is not None
    ]
    return f", {', '.join(found)}" if found else ""


def type_text(annotation: Any) -> str:
    """How a setting's type reads in the table: `integer`, `one of a, b`, `JSON object`, …"""
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        kinds = [type_text(arg) for arg in get_args(annotation) if arg is not type(None)]
        return " or ".join(kinds)
    if origin is dict:
        return "JSON object"
    if origin is list:
        return "JSON list"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_text(field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=True)
    if default is None:
        return "unset"
    if isinstance(default, str):
        return f"`{default}`"
    return f"`{json.dumps(default)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown() -> str:
    """The whole page: a row per setting, in the order `Settings` declares them."""
    rows = []
    for name, field in Settings.model_fields.items():
        names = env_names(name, field)
        variable = f"`{names[0]}`" + "".join(f" (or `{other}`)" for other in names[1:])
        kind = type_text(field.annotation) + _bounds(field)
        rows.append(
            f"| {variable} | {kind} | {_default_text(field)} | {_cell(field.description or '')} |"
        )
    return _HEAD + "\n".join(rows) + "\n"


def main() -> None:
    """Print the page."""
    print(markdown(), end="")


if __name__ == "__main__":
    main()
