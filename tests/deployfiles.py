"""Reading the deployment files the way Docker Compose and Kubernetes do, for the tests.

`docker-compose.yml` is parsed with PyYAML (anchors and `<<` merges included) and its `${…}`
references are interpolated as Compose does. `localize` then turns one service into what a
plain process on this machine needs: Docker gives each service its own network namespace, DNS
name and volumes, so service names become 127.0.0.1, container ports become free local ports,
and volume paths become temporary folders. Nothing else changes: the command and the
environment are the file's.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S_DIR = ROOT / "deploy" / "k8s"

_REFERENCE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def compose() -> dict[str, Any]:
    """The compose file, parsed."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def manifests() -> list[dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s/, in file order."""
    return [
        doc
        for path in sorted(K8S_DIR.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def referenced_variables() -> set[str]:
    """The names of every `${VAR…}` the compose file interpolates."""
    return {m["name"] for m in _REFERENCE.finditer(COMPOSE_FILE.read_text()) if m["name"]}


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}` and `$$`, as Compose."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        value = variables.get(name)
        if op == ":-":
            return value or arg
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?") and not value:
            raise KeyError(f"{name}: {arg}")
        return value or ""

    return _REFERENCE.sub(one, value)


def as_list(command: str | list[str]) -> list[str]:
    """A compose command (string or list) as an argument list."""
    return shlex.split(command) if isinstance(command, str) else list(command)


def normalized(words: list[str]) -> list[str]:
    """Arguments with every variable written `$NAME` (Compose `${NAME…}`, Kubernetes `$(NAME)`)."""
    text = "\x00".join(words)
    text = re.sub(r"\$\{(\w+)[^}]*\}", r"$\1", text)
    text = re.sub(r"\$\((\w+)\)", r"$\1", text)
    return text.replace("$$", "$").split("\x00")


def healthcheck_argv(test: list[str]) -> list[str]:
    """A compose healthcheck `test` as the argument list Docker runs."""
    kind, *rest = test
    return ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest


@dataclass
class Local:
    """One service, made runnable on this machine."""

    command: list[str]
    env: dict[str, str]
    healthcheck: list[str] | None


def _executable(name: str) -> str:
    if name == "python":
        return sys.executable
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def localize(
    name: str,
    variables: Mapping[str, str],
    *,
    ports: Mapping[int, int],
    data_dir: Path,
) -> Local:
    """Service `name` of the compose file as a local process: command, environment, check."""
    service = compose()["services"][name]
    hosts = "|".join(map(re.escape, [*compose()["services"], "0.0.0.0", "127.0.0.1", "localhost"]))

    def port(number: str) -> str:
        return str(ports.get(int(number), number))

    def local(text: str) -> str:
        text = interpolate(text, variables)
        text = re.sub(rf"\b({hosts}):(\d+)", lambda m: f"127.0.0.1:{port(m[2])}", text)
        text = re.sub(r"(?<![\w/])/data\b", str(data_dir), text)
        text = re.sub(r"(--port[ =]|-p )(\d+)\b", lambda m: m[1] + port(m[2]), text)
        return "127.0.0.1" if text == "0.0.0.0" else text

    def argv(words: list[str]) -> list[str]:
        out = [local(word) for word in words]
        for i in range(1, len(out)):
            if out[i - 1] in ("--port", "-p") and out[i].isdigit():
                out[i] = port(out[i])
        out[0] = _executable(out[0])
        return out

    env = {key: local(str(value)) for key, value in (service.get("environment") or {}).items()}
    check = service.get("healthcheck", {}).get("test")
    return Local(
        command=argv(as_list(_interpolated(service["command"], variables))),
        env=env,
        healthcheck=argv(healthcheck_argv(check)) if check else None,
    )


def _interpolated(command: str | list[str], variables: Mapping[str, str]) -> str | list[str]:
    """Compose interpolates before it splits a string command into words."""
    if isinstance(command, str):
        return interpolate(command, variables)
    return [interpolate(word, variables) for word in command]
