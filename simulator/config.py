"""Simulator configuration: the ``SimConfig`` dataclass, latency specs and the CLI parser."""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quorum.simulator.errors import FAULT_NAMES

DIALECTS = ("any", "json_object", "json_schema")
DEFAULT_FAULTS = ("429", "500", "timeout", "invalid_json")
LATENCY_FORMS = "SECONDS, uniform:A:B, exp:MEAN or normal:MEAN:SD"


@dataclass(frozen=True, slots=True)
class Latency:
    """A latency distribution in seconds; ``kind`` is fixed, uniform, exp or normal."""

    kind: str = "fixed"
    params: tuple[float, ...] = (0.0,)

    def sample(self, rng: random.Random) -> float:
        """Draw one non-negative delay from the distribution using ``rng``."""
        if self.kind == "fixed":
            return self.params[0]
        if self.kind == "uniform":
            return rng.uniform(self.params[0], self.params[1])
        if self.kind == "exp":
            mean = self.params[0]
            return rng.expovariate(1.0 / mean) if mean > 0 else 0.0
        return max(0.0, rng.gauss(self.params[0], self.params[1]))

    def __str__(self) -> str:
        if self.kind == "fixed":
            return _num(self.params[0])
        return ":".join([self.kind, *(_num(p) for p in self.params)])


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _float(text: str, *, spec: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        message = f"invalid latency spec {spec!r}: {what} {text!r} is not a number"
        raise ValueError(message) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"invalid latency spec {spec!r}: {what} must be a finite number >= 0")
    return value


def parse_latency(spec: str | float | Latency) -> Latency:
    """Parse ``0.2``, ``uniform:A:B``, ``exp:MEAN`` or ``normal:MEAN:SD`` into a ``Latency``.

    Raises ``ValueError`` (``TypeError`` for non-numbers) naming the accepted forms.
    """
    if isinstance(spec, Latency):
        return spec
    if isinstance(spec, bool) or not isinstance(spec, (str, int, float)):
        raise TypeError(f"invalid latency spec {spec!r}: expected {LATENCY_FORMS}")
    text = str(spec).strip()
    kind, _, rest = text.partition(":")
    if not rest:
        return Latency("fixed", (_float(text, spec=text, what="seconds"),))
    parts = rest.split(":")
    arity = {"uniform": ("A", "B"), "exp": ("MEAN",), "normal": ("MEAN", "SD")}
    if kind not in arity:
        raise ValueError(
            f"invalid latency spec {text!r}: unknown kind {kind!r}; expected {LATENCY_FORMS}"
        )
    names = arity[kind]
    if len(parts) != len(names):
        raise ValueError(
            f"invalid latency spec {text!r}: {kind} takes "
            f"{len(names)} value(s) ({kind}:{':'.join(names)})"
        )
    params = tuple(_float(p, spec=text, what=n) for p, n in zip(parts, names, strict=True))
    if kind == "uniform" and params[0] > params[1]:
        raise ValueError(f"invalid latency spec {text!r}: uniform needs A <= B")
    return Latency(kind, params)


def parse_probability(value: str | float) -> float:
    """Parse a probability in [0, 1]."""
    try:
        prob = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid probability {value!r}: not a number") from None
    if isinstance(value, bool) or not 0.0 <= prob <= 1.0:
        raise ValueError(f"invalid probability {value!r}: must be between 0 and 1")
    return prob


def parse_seconds(value: str | float) -> float:
    """Parse a finite, non-negative number of seconds."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid seconds {value!r}: not a number") from None
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid seconds {value!r}: must be a finite number >= 0")
    return seconds


def parse_faults(value: str | Sequence[str]) -> tuple[str, ...]:
    """Parse a comma list (or sequence) of fault names, checking each is known."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(item).strip() for item in items if str(item).strip())
    unknown = [name for name in names if name not in FAULT_NAMES]
    if unknown:
        raise ValueError(
            f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(sorted(FAULT_NAMES))}"
        )
    return names


def parse_dialect(value: str) -> str:
    """Check a response_format dialect name."""
    if value not in DIALECTS:
        raise ValueError(f"invalid dialect {value!r}; expected one of {', '.join(DIALECTS)}")
    return value


def parse_int(value: str | int) -> int:
    """Parse an integer (rejecting booleans and fractional numbers)."""
    if isinstance(value, bool) or (isinstance(value, float) and not float(value).is_integer()):
        raise ValueError(f"invalid integer {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid integer {value!r}") from None


def parse_optional_str(value: str | None) -> str | None:
    """Parse an optional string; empty means unset."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"invalid string {value!r}")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class SimConfig:
    """Everything that shapes the simulator's behaviour; reproducible from ``seed``."""

    host: str = "127.0.0.1"
    port: int = 8000
    latency: Latency = field(default_factory=Latency)
    pass_rate: float = 1.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = DEFAULT_FAULTS
    hang_s: float = 120.0
    retry_after: float = 1.0
    seed: int = 0
    api_key: str | None = None
    dialect: str = "any"

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-ready data, in the form ``from_mapping`` accepts."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["latency"] = str(self.latency)
        data["faults"] = list(self.faults)
        return data


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "host": str,
    "port": parse_int,
    "latency": parse_latency,
    "pass_rate": parse_probability,
    "fault_rate": parse_probability,
    "faults": parse_faults,
    "hang_s": parse_seconds,
    "retry_after": parse_seconds,
    "seed": parse_int,
    "api_key": parse_optional_str,
    "dialect": parse_dialect,
}
RUNTIME_FIXED = ("host", "port")


def from_mapping(data: Mapping[str, Any], *, base: SimConfig) -> SimConfig:
    """Return ``base`` updated from JSON-style ``data`` (same field names as ``SimConfig``).

    Raises ``ValueError`` on unknown keys or invalid values (including wrong types).
    """
    unknown = sorted(set(data) - set(_CONVERTERS))
    if unknown:
        raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
    changes: dict[str, Any] = {}
    for name, value in data.items():
        try:
            changes[name] = _CONVERTERS[name](value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: {exc}") from None
    return dataclasses.replace(base, **changes)


def _arg(convert: Any) -> Any:
    def wrapped(text: str) -> Any:
        try:
            return convert(text)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    wrapped.__name__ = convert.__name__
    return wrapped


def build_parser() -> argparse.ArgumentParser:
    """Build the ``python -m quorum.simulator`` argument parser."""
    d = SimConfig()
    p = argparse.ArgumentParser(
        prog="python -m quorum.simulator", description="OpenAI-compatible LLM simulator for tests."
    )
    p.add_argument("--host", default=d.host, help="bind address (default %(default)s)")
    p.add_argument(
        "--port",
        type=_arg(parse_int),
        default=d.port,
        help="port; 0 picks a free one (default %(default)s)",
    )
    p.add_argument(
        "--latency",
        type=_arg(parse_latency),
        default=d.latency,
        help=f"per-call delay in seconds: {LATENCY_FORMS} (default 0)",
    )
    p.add_argument(
        "--pass-rate",
        type=_arg(parse_probability),
        default=d.pass_rate,
        help="probability a validator vote passes (default %(default)s)",
    )
    p.add_argument(
        "--fault-rate",
        type=_arg(parse_probability),
        default=d.fault_rate,
        help="probability a call gets a random fault (default %(default)s)",
    )
    p.add_argument(
        "--faults",
        type=_arg(parse_faults),
        default=d.faults,
        help=f"comma list random faults draw from (default {','.join(d.faults)})",
    )
    p.add_argument(
        "--hang-s",
        type=_arg(parse_seconds),
        default=d.hang_s,
        help="how long a 'timeout' fault hangs (default %(default)s)",
    )
    p.add_argument(
        "--retry-after",
        type=_arg(parse_seconds),
        default=d.retry_after,
        help="Retry-After seconds on 429 faults (default %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=_arg(parse_int),
        default=d.seed,
        help="seed for all randomness (default %(default)s)",
    )
    p.add_argument("--api-key", default=d.api_key, help="if set, other bearer tokens get HTTP 401")
    p.add_argument(
        "--dialect",
        type=_arg(parse_dialect),
        default=d.dialect,
        help="response_format dialect: any, json_object (llama-cpp style) "
        "or json_schema (default %(default)s)",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> SimConfig:
    """Parse command-line arguments into a ``SimConfig``."""
    ns = build_parser().parse_args(argv)
    return SimConfig(**vars(ns))
