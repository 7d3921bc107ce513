"""Pure call scripting: parse ``<<sim:{...}>>`` directives, classify calls, decide answers.

Any message may hold ``<<sim:{json}>>`` (the first one wins). Keys, all optional:
``id`` (counter scope; default the raw JSON text), ``outputs`` (task answer per attempt, the
last repeating; ``"!json"`` = truncated JSON, ``"!schema"`` = JSON violating the schema),
``task_faults`` / ``vote_faults`` (fault name for the i-th task / vote call of the scope),
``votes`` (issue or ``"*"`` -> ``true``/``false``, a pass probability, a list of booleans per
call, ``{"pass_if": {key: value}}`` or ``"error"``) and ``latency`` (seconds or a spec).
Calls whose schema has exactly ``is_valid`` and ``reasoning`` are votes; others are tasks.
A request without a schema in ``response_format`` (``json_object``) may carry it in its
messages after ``json_schema:``, as clients in instructor's JSON mode send it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from quorum.simulator.config import Latency, SimConfig, parse_latency
from quorum.simulator.errors import FAULT_NAMES, HTTP_FAULTS
from quorum.simulator.fake import fake_value, violating_value

DIRECTIVE_OPEN = "<<sim:"
DIRECTIVE_CLOSE = ">>"
FAILURE_MARKER = "## Failure Reasonings"
CRITERION_MARKER = "\n# Criterion\n"
OUTPUT_MARKER = "# Output\n"
BAD_JSON = "!json"
BAD_SCHEMA = "!schema"
EMBEDDED_SCHEMA_MARKER = "json_schema:"
VOTE_PROPERTIES = frozenset({"is_valid", "reasoning"})
_DIRECTIVE_KEYS = frozenset({"id", "outputs", "task_faults", "vote_faults", "votes", "latency"})


class DirectiveError(ValueError):
    """A ``<<sim:...>>`` directive that cannot be parsed or has invalid values."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Directive:
    """A parsed per-run script; ``scope`` names its counters."""

    scope: str
    raw: str
    outputs: tuple[Any, ...] = ()
    task_faults: tuple[str, ...] = ()
    vote_faults: tuple[str, ...] = ()
    votes: Mapping[str, Any] | None = None
    latency: Latency | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class CallInfo:
    """What a request is: its kind, scope, issue and attempt, derived from the messages."""

    kind: str  # "task" | "vote"
    key: str  # counter namespace: the scope, or a prompt hash without a directive
    scope: str | None
    issue: str | None
    attempt: int | None
    output: Any  # the judged output for votes
    schema: Any
    prompt: str  # last user message without directives, for fake values
    directive: Directive | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """The answer for one call: either ``content`` (HTTP 200) or an HTTP fault."""

    fault: str | None
    verdict: bool | None
    content: str | None  # None when the fault is an HTTP error
    delay: float


def message_text(message: Mapping[str, Any]) -> str:
    """Return a chat message's text (string content or joined text parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "")
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def find_directive_text(text: str) -> str | None:
    """Return the raw JSON text of the first ``<<sim:{...}>>`` in ``text``, if any."""
    start = text.find(DIRECTIVE_OPEN)
    if start < 0:
        return None
    begin = start + len(DIRECTIVE_OPEN)
    try:
        _, end = json.JSONDecoder().raw_decode(text, begin)
    except json.JSONDecodeError as exc:
        raise DirectiveError(f"invalid sim directive JSON: {exc.msg}") from None
    if not text.startswith(DIRECTIVE_CLOSE, end):
        raise DirectiveError("sim directive must end with '>>' right after its JSON")
    return text[begin:end]


def strip_directives(text: str) -> str:
    """Remove every well-formed ``<<sim:{...}>>`` from ``text``."""
    while True:
        start = text.find(DIRECTIVE_OPEN)
        if start < 0:
            return text
        try:
            raw = find_directive_text(text[start:])
        except DirectiveError:
            return text
        text = text[:start] + text[start + len(DIRECTIVE_OPEN) + len(raw or "") + 2 :]


def _str_list(value: Any, *, name: str, allowed: frozenset[str] | None = None) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DirectiveError(f"sim directive {name!r} must be a list of strings")
    bad = [v for v in value if allowed is not None and v not in allowed]
    if bad:
        raise DirectiveError(f"sim directive {name!r} has unknown fault(s): {', '.join(bad)}")
    return tuple(value)


def check_vote_rule(rule: Any) -> None:
    """Raise ``DirectiveError`` unless ``rule`` is a valid vote rule."""
    if isinstance(rule, bool) or rule == "error":
        return
    if isinstance(rule, (int, float)):
        if not 0 <= rule <= 1:
            raise DirectiveError(f"vote probability {rule!r} must be in [0, 1]")
        return
    if isinstance(rule, list):
        if not rule or not all(isinstance(v, bool) for v in rule):
            raise DirectiveError("vote list must be a non-empty list of booleans")
        return
    if isinstance(rule, dict) and set(rule) == {"pass_if"} and isinstance(rule["pass_if"], dict):
        return
    raise DirectiveError(
        f"invalid vote rule {rule!r}: expected true/false, a probability, "
        'a list of booleans, {"pass_if": {...}} or "error"'
    )


@lru_cache(maxsize=4096)
def parse_directive(raw: str) -> Directive:
    """Parse a directive's raw JSON text (as found by ``find_directive_text``)."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise DirectiveError("sim directive must be a JSON object")
    unknown = sorted(set(data) - _DIRECTIVE_KEYS)
    if unknown:
        raise DirectiveError(f"unknown sim directive key(s): {', '.join(unknown)}")
    scope = data.get("id", raw)
    outputs = data.get("outputs", [])
    if not isinstance(outputs, list):
        raise DirectiveError("sim directive 'outputs' must be a list")
    votes = data.get("votes")
    if votes is not None:
        if not isinstance(votes, dict):
            raise DirectiveError("sim directive 'votes' must be an object")
        for rule in votes.values():
            check_vote_rule(rule)
        votes = {str(issue).strip(): rule for issue, rule in votes.items()}
    latency = None
    if data.get("latency") is not None:
        try:
            latency = parse_latency(data["latency"])
        except (TypeError, ValueError) as exc:
            raise DirectiveError(str(exc)) from None
    return Directive(
        scope=str(scope),
        raw=raw,
        outputs=tuple(outputs),
        task_faults=_str_list(data.get("task_faults", []), name="task_faults", allowed=FAULT_NAMES),
        vote_faults=_str_list(data.get("vote_faults", []), name="vote_faults", allowed=FAULT_NAMES),
        votes=votes,
        latency=latency,
    )


def find_directive(texts: Sequence[str]) -> Directive | None:
    """Return the first directive found in ``texts`` (in order), or None."""
    for text in texts:
        raw = find_directive_text(text)
        if raw is not None:
            return parse_directive(raw)
    return None


def count_attempt(texts: Sequence[str]) -> int:
    """Return a task call's attempt: 1 + occurrences of the failure-reasonings heading."""
    return 1 + sum(text.count(FAILURE_MARKER) for text in texts)


def is_vote_schema(schema: Any) -> bool:
    """Return True when the schema's properties are exactly ``is_valid`` and ``reasoning``."""
    if not isinstance(schema, dict):
        return False
    props = schema.get("properties")
    if not isinstance(props, dict) or set(props) != VOTE_PROPERTIES:
        return False
    valid, reason = props["is_valid"], props["reasoning"]
    return (
        isinstance(valid, dict)
        and valid.get("type", "boolean") == "boolean"
        and isinstance(reason, dict)
        and reason.get("type", "string") == "string"
    )


def parse_vote_prompt(text: str) -> tuple[str, Any]:
    """Split a validator prompt into ``(issue, output)``; output is parsed JSON or raw text."""
    cut = text.rfind(CRITERION_MARKER)
    if cut < 0:
        return "", None
    issue = text[cut + len(CRITERION_MARKER) :].strip()
    head = text[:cut]
    start = head.rfind(OUTPUT_MARKER)
    if start < 0:
        return issue, None
    raw = head[start + len(OUTPUT_MARKER) :].strip()
    try:
        return issue, json.loads(raw)
    except ValueError:
        return issue, raw


def digest(*parts: object) -> str:
    """Stable hex digest of ``parts`` (never Python's randomized ``hash``)."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


def call_rng(seed: int, *parts: object) -> random.Random:
    """A reproducible RNG for one purpose of one call."""
    return random.Random(int(digest(seed, *parts)[:16], 16))


def embedded_schema(texts: Sequence[str]) -> dict[str, Any] | None:
    """The JSON Schema a message spells out after ``json_schema:`` (instructor's JSON mode)."""
    for text in texts:
        start = text.find(EMBEDDED_SCHEMA_MARKER)
        brace = text.find("{", start) if start >= 0 else -1
        if brace < 0:
            continue
        try:
            schema, _ = json.JSONDecoder().raw_decode(text, brace)
        except json.JSONDecodeError:
            continue
        if isinstance(schema, dict):
            return schema
    return None


def analyze(messages: Sequence[Mapping[str, Any]], schema: Any) -> CallInfo:
    """Classify a request from its messages and requested schema (pure)."""
    pairs = [(m.get("role"), message_text(m)) for m in messages if isinstance(m, Mapping)]
    texts = [text for _, text in pairs]
    if schema is None:
        schema = embedded_schema(texts)
    directive = find_directive(texts)
    user = [text for role, text in pairs if role == "user"]
    last_user = user[-1] if user else (texts[-1] if texts else "")
    key = directive.scope if directive else "prompt:" + digest(*texts)[:24]
    if is_vote_schema(schema):
        issue, output = parse_vote_prompt(last_user)
        return CallInfo(
            kind="vote",
            key=key,
            scope=directive.scope if directive else None,
            issue=issue or str(schema.get("description", "")),
            attempt=None,
            output=output,
            schema=schema,
            prompt=last_user,
            directive=directive,
        )
    return CallInfo(
        kind="task",
        key=key,
        scope=directive.scope if directive else None,
        issue=None,
        attempt=count_attempt(texts),
        output=None,
        schema=schema,
        prompt=strip_directives(last_user),
        directive=directive,
    )


def broken_json(value: Any) -> str:
    """Return JSON text of ``value`` cut off like a truncated completion; it does not parse.

    Objects lose their last value (``{"product": "apples", "quantity": ``); other values
    are cut in half.
    """
    if isinstance(value, dict) and value:
        *head, last = value
        text = json.dumps({k: value[k] for k in head})[:-1]
        return f"{text}{', ' if head else ''}{json.dumps(last)}: "
    text = json.dumps(value)
    cut = text[: max(1, len(text) // 2 + 1)]
    try:
        json.loads(cut)
    except ValueError:
        return cut
    return "{" + cut


def vote_reasoning(verdict: bool, issue: str | None) -> str:
    """Short reasoning text that mentions the criterion."""
    if verdict:
        return f"The output meets the criterion: {issue or 'unspecified'}"
    return f"The output does not meet the criterion: {issue or 'unspecified'}"


def pick_fault(call: CallInfo, *, kind_index: int, config: SimConfig) -> str | None:
    """Scripted fault for this call's slot, else a random one at ``config.fault_rate``."""
    d = call.directive
    scripted = (d.task_faults if call.kind == "task" else d.vote_faults) if d else ()
    if kind_index < len(scripted):
        fault = scripted[kind_index]
        return None if fault == "none" else fault
    if config.fault_rate > 0 and config.faults:
        rng = call_rng(config.seed, call.key, call.kind, kind_index, "fault")
        if rng.random() < config.fault_rate:
            fault = rng.choice(config.faults)
            return None if fault == "none" else fault
    return None


def vote_verdict(call: CallInfo, *, issue_index: int, config: SimConfig) -> bool | str:
    """Return the verdict for a vote, or ``"error"`` when the rule says to fail with 500."""
    votes = call.directive.votes if call.directive else None
    rule: Any = config.pass_rate
    if votes:
        issue = (call.issue or "").strip()
        rule = votes.get(issue, votes.get("*", config.pass_rate))
    if isinstance(rule, bool) or rule == "error":
        return rule
    if isinstance(rule, (int, float)):
        rng = call_rng(config.seed, call.key, "vote", call.issue, issue_index, "verdict")
        return rng.random() < rule
    if isinstance(rule, list):
        return rule[min(issue_index, len(rule) - 1)]
    wanted = rule["pass_if"]
    output = call.output
    return isinstance(output, dict) and all(
        k in output and output[k] == v for k, v in wanted.items()
    )


def task_content(call: CallInfo, *, fault: str | None) -> str:
    """Return the content text of a task answer (scripted output or fake value)."""
    outputs = call.directive.outputs if call.directive else ()
    value: Any = (
        outputs[min((call.attempt or 1) - 1, len(outputs) - 1)]
        if outputs
        else fake_value(call.schema, prompt=call.prompt)
    )
    if value == BAD_SCHEMA or fault == "schema":
        return json.dumps(violating_value(call.schema))
    good = fake_value(call.schema, prompt=call.prompt) if value == BAD_JSON else value
    if value == BAD_JSON or fault == "invalid_json":
        return broken_json(good)
    return json.dumps(good)


def decide(call: CallInfo, *, kind_index: int, issue_index: int, config: SimConfig) -> Decision:
    """Decide one call's answer from its info and per-key call counters (pure).

    ``kind_index`` counts earlier calls of the same (scope, kind); ``issue_index`` counts
    earlier votes of the same (scope, issue). Both start at 0.
    """
    fault = pick_fault(call, kind_index=kind_index, config=config)
    index = kind_index if call.kind == "task" else issue_index
    if fault == "timeout":
        delay = config.hang_s
    elif call.directive and call.directive.latency is not None:
        delay = call.directive.latency.sample(
            call_rng(config.seed, call.key, call.kind, call.issue, index, "latency")
        )
    else:
        delay = config.latency.sample(
            call_rng(config.seed, call.key, call.kind, call.issue, index, "latency")
        )
    if fault in HTTP_FAULTS:
        return Decision(fault=fault, verdict=None, content=None, delay=delay)
    if call.kind == "task":
        return Decision(
            fault=fault, verdict=None, delay=delay, content=task_content(call, fault=fault)
        )
    verdict = vote_verdict(call, issue_index=issue_index, config=config)
    if verdict == "error":
        return Decision(fault="500", verdict=None, content=None, delay=delay)
    answer = {"is_valid": verdict, "reasoning": vote_reasoning(bool(verdict), call.issue)}
    if fault == "invalid_json":
        return Decision(fault=fault, verdict=None, content=broken_json(answer), delay=delay)
    if fault == "schema":
        return Decision(
            fault=fault, verdict=None, delay=delay, content=json.dumps(violating_value(call.schema))
        )
    return Decision(fault=fault, verdict=bool(verdict), content=json.dumps(answer), delay=delay)
