"""A run for people at a terminal: one line per event, a summary, a live view, a tree.

`describe` and `summarize` are plain text (the demo prints them). `run_view` is the live view
`quorum watch` and `quorum submit --wait` redraw as events arrive: the attempts, the votes
arriving on each issue, each issue's margin and decision, the run's decision. `run_tree` is
`quorum provenance`: the run, its attempts, their outputs, checks, issues and votes as a tree.
Both are built from the dashboard's view of a run (`producer/runview.py`), so the terminal and
the browser tell the same story. `show_live` redraws the live view as a run's events arrive.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from quorum.producer.client import TaskRun
from quorum.producer.runview import AttemptView, IssueView, RunPage, run_page
from quorum.shared.events import CallEvent, Event, OtherEvent

__all__ = ["describe", "run_tree", "run_view", "show_live", "summarize"]

_MARK = {True: "✔", False: "✘", None: "?"}
_VERDICT_MARK = {"valid": ("✔", "green"), "invalid": ("✘", "red"), "error": ("?", "yellow")}
_STATUS_STYLE = {"SUCCESSFUL": "bold green", "FAILED": "bold red", "CANCELLED": "bold yellow"}


def describe(event: Event | OtherEvent) -> str:
    """One readable line for a provenance event."""
    kind, attempt = event["type"], event.get("attempt", 0)
    head = f"[attempt {attempt}] {kind}" if attempt else kind
    if kind in ("output", "output_invalid"):
        detail = json.dumps(event.get("output"), ensure_ascii=False)
        if event.get("error"):
            detail += f" — {event['error']}"
    elif kind == "vote":
        detail = (
            f"issue {event['issue'] + 1} vote {event['index'] + 1}: "
            f"{_MARK[event.get('is_valid')]} {event.get('reasoning', '')}"
        )
    elif kind == "vote_skipped":
        detail = f"issue {event['issue'] + 1} vote {event['index'] + 1}: {event.get('reason')}"
    elif kind == "issue_decided":
        detail = f"issue {event['issue'] + 1} {event['outcome']} {event.get('reason') or ''}"
    elif kind == "check_failed":
        detail = f"{event['check']} check {event['name']!r} rejected it: {event['message']}"
    elif kind in ("validation_failed", "failed"):
        detail = "; ".join(event.get("reasons") or [event.get("error", "")])
    else:
        detail = ""
    worker = f"  ({event['worker']})" if event.get("worker") else ""
    return f"{head}: {detail}{worker}".rstrip(": ") if detail else f"{head}{worker}"


def summarize(events: Sequence[Event | OtherEvent], issues: Sequence[str]) -> str:
    """A short provenance summary: attempts, votes per issue, decisions, tokens."""
    attempts = sorted({e["attempt"] for e in events if e.get("attempt")})
    lines = []
    for attempt in attempts:
        mine = [e for e in events if e.get("attempt") == attempt]
        output = next((e for e in mine if e["type"] in ("output", "output_invalid")), None)
        shown = json.dumps(output.get("output"), ensure_ascii=False) if output else "(no output)"
        lines.append(f"  attempt {attempt}: {shown}")
        if output and output["type"] == "output_invalid":
            lines.append(f"    invalid: {output.get('error')}")
        for number, issue in enumerate(issues):
            votes = sorted(
                (e for e in mine if e["type"] == "vote" and e["issue"] == number),
                key=lambda e: e["index"],
            )
            decided = next(
                (e for e in mine if e["type"] == "issue_decided" and e["issue"] == number), None
            )
            if votes or decided:
                marks = "".join(_MARK[v.get("is_valid")] for v in votes)
                verdict = f"{decided['outcome']} {decided.get('reason') or ''}" if decided else "-"
                lines.append(f"    {issue[:60]!r}: {marks} → {verdict.strip()}")
    tokens = sum(e.usage.total_tokens for e in events if isinstance(e, CallEvent) and e.usage)
    votes = sum(e["type"] == "vote" for e in events)
    lines.insert(0, f"  {len(attempts)} attempt(s), {votes} vote(s), {tokens} tokens")
    return "\n".join(lines)


def _short(value: Any, width: int = 90) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def _marks(issue: IssueView) -> Text:
    marks = Text()
    for vote in sorted(issue.votes, key=lambda v: v.index):
        mark, style = _VERDICT_MARK[vote.verdict]
        marks.append(mark, style=style)
    return marks


def _decision(issue: IssueView, settled: bool) -> Text:
    """The issue's outcome; while its attempt is `settled` without one: not decided."""
    if issue.decision is None:
        return Text("not decided" if settled else "deciding…", style="dim")
    style = "green" if issue.decision.outcome == "passed" else "red"
    return Text(issue.decision.outcome, style=style)


def _attempt_outcome(attempt: AttemptView) -> Text:
    if attempt.passed is True:
        return Text("passed", style="green")
    if attempt.passed is False or attempt.checks or attempt.output_error:
        return Text("failed", style="red")
    return Text("voting…" if attempt.issues else "running…", style="dim")


def _status(page: RunPage) -> Text:
    status = page.state.status.value
    return Text(status, style=_STATUS_STYLE.get(status, "bold blue"))


def run_view(page: RunPage) -> RenderableType:
    """The live view of a run: one row per issue of each attempt, with its votes so far."""
    state = page.state
    head = Text.assemble(
        ("run ", "dim"),
        state.run_id,
        "  ",
        _status(page),
        (f"  attempt {state.attempt}  {page.duration_s:.1f} s  ", "dim"),
        (f"{state.usage.total_tokens} tokens", "dim"),
    )
    table = Table(box=None, pad_edge=False, show_edge=False, expand=False)
    for column in ("attempt", "issue", "votes", "margin", "decision"):
        table.add_column(column, justify="right" if column == "margin" else "left")
    for attempt in page.attempts:
        label = Text(f"{attempt.number} ") + _attempt_outcome(attempt)
        if not attempt.issues:
            why = attempt.checks[0].message if attempt.checks else attempt.output_error
            table.add_row(label, Text(why or "", style="red"), "", "", "")
        for number, issue in sorted(attempt.issues.items()):
            name = f"{number + 1}. {issue.text[:48]}" if issue.text else f"{number + 1}"
            decision = _decision(issue, page.terminal or attempt.passed is not None)
            table.add_row(label, name, _marks(issue), f"{issue.margin:+d}", decision)
            label = Text("")
    parts: list[RenderableType] = [head, table]
    if page.terminal:
        if state.error:
            parts.append(Text(f"decision: {state.status.value}: {state.error}", style="red"))
        else:
            parts.append(Text.assemble("decision: ", _status(page)))
    return Group(*parts)


def _issue_branch(tree: Tree, issue: IssueView, settled: bool) -> None:
    title = Text(f"issue {issue.number + 1}: {issue.text}  ") + _decision(issue, settled)
    if issue.decision is not None:
        d = issue.decision
        title.append(f"  ({d.passing} valid, {d.failing} invalid, {d.errors} errors)", "dim")
    branch = tree.add(title)
    for vote in sorted(issue.votes, key=lambda v: v.index):
        mark, style = _VERDICT_MARK[vote.verdict]
        line = Text.assemble((f"{mark} vote {vote.index + 1} ", style), vote.reasoning)
        branch.add(line)
    for skipped in issue.skipped:
        branch.add(Text(f"· vote {skipped.index + 1} skipped: {skipped.reason}", style="dim"))


def run_tree(page: RunPage) -> Tree:
    """The run's provenance as a tree: attempts, outputs, checks, issues, votes, feedback."""
    state = page.state
    tree = Tree(Text.assemble(f"run {state.run_id}  ", _status(page)))
    for attempt in page.attempts:
        node = tree.add(Text(f"attempt {attempt.number}  ") + _attempt_outcome(attempt))
        if attempt.has_output:
            node.add(f"output {_short(attempt.output)}")
        if attempt.output_error:
            node.add(Text(f"invalid: {attempt.output_error}", style="red"))
        for check in attempt.checks:
            node.add(Text(f"{check.check} check {check.name!r}: {check.message}", style="red"))
        for _, issue in sorted(attempt.issues.items()):
            _issue_branch(node, issue, page.terminal or attempt.passed is not None)
        if attempt.feedback:
            node.add(Text(f"feedback sent: {attempt.feedback[:200]}", style="yellow"))
    usage = state.usage
    tree.add(Text(f"{usage.total_tokens} tokens, {usage.cost_usd:.6f} USD", style="dim"))
    if state.error:
        tree.add(Text(f"{state.status.value}: {state.error}", style="red"))
    elif state.status.value == "SUCCESSFUL":
        tree.add(f"result {_short(state.result)}")
    return tree


def show_live(run: TaskRun, console: Console, timeout: float | None) -> None:
    """Redraw the run's live view on `console` as its events arrive, until it ends (or
    `timeout` seconds). On a console that is no terminal, only the last view is printed."""
    store = run.store
    events = store.events(run.id)
    with Live(run_view(run_page(store.load(run.id), events)), console=console) as live:
        if not store.load(run.id).status.terminal:
            for index, _ in enumerate(run.watch(timeout=timeout)):
                if index >= len(events):  # the watch replays from the first event
                    live.update(run_view(run_page(store.load(run.id), store.events(run.id))))
