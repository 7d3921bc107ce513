"""Redis commands per run, by origin: a probe that `quorum bench` and
`python -m quorum.bench.compare` run around a workload, and a command of its own:

    python -m quorum.bench.commands [--runs 200] [--workers 1] [--sequential] [--latency 0]

It counts every command Redis serves between two marks (`INFO commandstats`, which counts a
script's own calls as well as the script), and splits them by where they come from, reading
Redis's `MONITOR` feed (which shows a script's calls too, as `lua`):

- **store**: Quorum's own keys (the namespace, `quorum:` by default): runs, events, votes,
  rounds, the indexes;
- **broker**: kombu's queues, its unacknowledged-job bookkeeping (`unacked`,
  `unacked_index`), its bindings and Celery's remote control;
- **chord backend**: Celery's result backend (`celery-task-meta-*`, `celery-taskset-meta-*`),
  which joins a chord's header results for its body;
- **events**: Celery's task and worker events (a `PUBLISH` on `celeryev`), which Flower reads;
- **other**: what none of them explains (a connection's handshake before any command).

A command without a key (`MULTI`, `EXEC`, `PING`, `HELLO`) counts for the origin of the
connection that sent it: each client keeps to one origin (the store, kombu and the result
backend each have connection pools of their own). MONITOR makes Redis slower: the probe
measures commands, never time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import threading
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis

__all__ = ["ORIGINS", "CommandProbe", "Counted", "origin_of", "parse_line", "section", "target"]

ORIGINS = ("store", "broker", "chord backend", "events", "other")

_LINE = re.compile(
    r'^[\d.]+ \[\d+ ([^\]]*)\] "((?:[^"\\]|\\.)*)"'
    r'(?: "((?:[^"\\]|\\.)*)")?(?: "((?:[^"\\]|\\.)*)")?(?: "((?:[^"\\]|\\.)*)")?'
)
"""A MONITOR line: the client, then the command's first four words (the key is among them)."""

_KEYLESS = frozenset({"MULTI", "EXEC", "DISCARD", "PING", "HELLO", "CLIENT", "SELECT", "INFO"})
_PROBE = frozenset({"INFO", "ECHO", "MONITOR"})
"""The probe's own commands, never counted."""
_BACKEND = ("celery-task-meta-", "celery-taskset-meta-", "chord-unlock")


def _key(words: list[str]) -> str | None:
    """The first key a command names (for a script, its first key), if any."""
    name = words[0].upper()
    if name in _KEYLESS or len(words) < 2:
        return None
    if name in ("EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO"):
        return words[3] if len(words) > 3 and words[2] not in ("", "0") else None
    return words[1]


def parse_line(line: str) -> tuple[str, list[str]] | None:
    """A MONITOR line's client (`lua` for a script's own call) and first words."""
    found = _LINE.match(line)
    if found is None:
        return None
    client, *words = (w for w in found.groups() if w is not None)
    return client, words


def origin_of(name: str, key: str | None, namespace: str = "quorum") -> str | None:
    """Where a command with its first key comes from (one of `ORIGINS`); None without a key
    (its connection tells)."""
    if key is None:
        return None
    if name.upper() == "PUBLISH":
        return "events" if ".celeryev/" in key or key.startswith("celeryev") else "broker"
    if key.startswith(namespace + ":"):
        return "store"
    if key.startswith(_BACKEND):
        return "chord backend"
    return "broker"


@dataclass
class Counted:
    """Commands counted between a probe's two marks."""

    runs: int
    total: int = 0
    """Every command Redis served (`INFO commandstats`), the probe's own left out."""
    by_command: Counter[str] = field(default_factory=Counter)
    by_origin: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def per_run(self) -> dict[str, Any]:
        """Per run: the total, each origin's total, and each origin's commands, most first."""
        n = max(self.runs, 1)
        origins = {o: self.by_origin[o] for o in ORIGINS if self.by_origin.get(o)}
        return {
            "total": self.total / n,
            "by_origin": {o: sum(c.values()) / n for o, c in origins.items()},
            "by_command": {k: v / n for k, v in self.by_command.most_common()},
            "by_origin_command": {
                o: {k: v / n for k, v in c.most_common()} for o, c in origins.items()
            },
        }


class CommandProbe:
    """Reads Redis's MONITOR feed in a thread; `mark()` starts a count, `count(runs)` ends it.

    Each mark is an `ECHO` of a fresh token, so that the feed is read exactly up to it: the
    commands counted are those Redis served between the two marks, in the order it served
    them.
    """

    def __init__(self, redis_url: str, *, namespace: str = "quorum") -> None:
        self.namespace = namespace
        self._client = redis.Redis.from_url(redis_url, decode_responses=True)
        self._lines: list[tuple[str, str, str | None]] = []
        self._seen = threading.Condition()
        self._marks: dict[str, int] = {}
        self._stats: dict[str, dict[str, int]] = {}
        self._monitor: Any = None
        self._thread = threading.Thread(target=self._read, name="command-probe", daemon=True)

    def __enter__(self) -> CommandProbe:
        self._monitor = self._client.monitor()
        self._monitor.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(redis.RedisError):
            self._echo("stop")
        self._thread.join(timeout=10)
        with contextlib.suppress(redis.RedisError, OSError):
            self._monitor.__exit__()
        self._client.close()

    def _read(self) -> None:
        connection = self._monitor.connection
        while True:
            try:
                raw = connection.read_response()
            except (redis.RedisError, OSError):
                return
            parsed = parse_line(raw if isinstance(raw, str) else raw.decode(errors="replace"))
            if parsed is None:
                continue
            client, words = parsed
            name = words[0].upper()
            with self._seen:
                if name == "ECHO" and len(words) > 1 and words[1].startswith("probe:"):
                    self._marks[words[1]] = len(self._lines)
                    self._seen.notify_all()
                    if words[1] == "probe:stop":
                        return
                    continue
                self._lines.append((client, name, _key(words)))

    def _echo(self, what: str) -> str:
        token = f"probe:{what}"
        self._client.echo(token)
        with self._seen:
            if not self._seen.wait_for(lambda: token in self._marks, timeout=30):
                raise TimeoutError("the MONITOR feed never showed the probe's mark")
        return token

    def _commandstats(self) -> dict[str, int]:
        stats = self._client.info("commandstats")
        return {name.removeprefix("cmdstat_").upper(): int(v["calls"]) for name, v in stats.items()}

    def mark(self) -> None:
        """Start counting here."""
        self._stats["begin"] = self._commandstats()
        self._begin = self._echo(f"begin:{uuid.uuid4().hex}")

    def count(self, runs: int) -> Counted:
        """The commands since `mark()`, for `runs` runs."""
        end = self._echo(f"end:{uuid.uuid4().hex}")
        after, before = self._commandstats(), self._stats["begin"]
        counted = Counted(runs=runs)
        for name, calls in after.items():
            if name not in _PROBE and calls > before.get(name, 0):
                counted.by_command[name] = calls - before.get(name, 0)
        counted.total = sum(counted.by_command.values())
        with self._seen:
            lines = self._lines[self._marks[self._begin] : self._marks[end]]
        per_connection: dict[str, Counter[str]] = defaultdict(Counter)
        found: list[tuple[str, str, str | None]] = []
        for client, name, key in lines:
            where = origin_of(name, key, self.namespace)
            if where is not None and client != "lua":
                per_connection[client][where] += 1
            found.append((client, name, where))
        for client, name, where in found:
            if name in _PROBE:
                continue
            if where is None:
                usual = per_connection.get(client)
                where = usual.most_common(1)[0][0] if usual else "other"
            counted.by_origin[where][name] += 1
        return counted


TARGET = 150
"""Redis commands per validated 3 × 3 run that one Redis should serve at most."""


def _shape(record: dict[str, Any]) -> str:
    runs = len(record["latencies"])
    return f"{runs} at once" if record.get("shape") == "burst" else f"{runs} one at a time"


def target(records: list[dict[str, Any]]) -> tuple[str, str, bool] | None:
    """The commands target's row (what, Quorum's figure, met), from the burst's count."""
    burst = [r for r in records if r.get("redis_commands") and r.get("shape") == "burst"]
    if not burst:
        return None
    total = burst[-1]["redis_commands"]["total"]
    what = f"Redis commands per validated 3 × 3 run, one worker, L = 0: ≤ {TARGET}"
    return what, f"{total:.0f}", total <= TARGET


def section(records: list[dict[str, Any]]) -> list[str]:
    """The report's section on Redis commands per run, by origin (empty if none counted)."""
    found = [r for r in records if r.get("redis_commands")]
    if not found:
        return []
    head = ["origin", *(_shape(r) for r in found), "its commands (first column), per run"]
    rows = []
    for origin in ("total", *ORIGINS):
        cells = [
            r["redis_commands"]["total"]
            if origin == "total"
            else r["redis_commands"]["by_origin"].get(origin, 0.0)
            for r in found
        ]
        mix = found[0]["redis_commands"]["by_origin_command"].get(origin, {})
        if origin == "total":
            mix = found[0]["redis_commands"]["by_command"]
        shown = ", ".join(f"{name} {n:.1f}" for name, n in list(mix.items())[:8])
        rows.append([origin, *(f"{c:.1f}" for c in cells), shown])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [
        "## 7. Redis commands per run, by origin",
        "",
        "Threshold voting, 3 issues × 3 votes, all passing, L = 0, one worker process: every "
        "command Redis served while the runs went through (`INFO commandstats`, a script's own "
        "calls included, the idle worker's polling too), per run, split by origin from Redis's "
        "MONITOR feed (`quorum.bench.commands`): *store* is Quorum's keys, *broker* kombu's "
        "queues and unacked bookkeeping, *chord backend* Celery's result backend, *events* "
        "Celery's task events for Flower.",
        "",
        *lines,
        "",
    ]


def _main(argv: list[str] | None = None) -> int:
    """Run a Threshold 3 × 3 workload on a private stack and print the count, as JSON."""
    from quorum.bench.compare import CONFIG, SCHEMA
    from quorum.producer import TaskClient
    from quorum.producer.stack import Stack

    parser = argparse.ArgumentParser(prog="python -m quorum.bench.commands")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--sequential", action="store_true", help="one run at a time")
    args = parser.parse_args(argv)
    with Stack() as stack:
        url = stack.redis()
        stack.simulator("--latency", str(args.latency), "--pass-rate", "1.0")
        for n in range(args.workers):
            stack.worker("-n", f"probe{n}@%h", name=f"worker{n}")
        with TaskClient(redis_url=url) as client, CommandProbe(url) as probe:

            def submit(i: int) -> Any:
                return client.submit(
                    template="Extract purchase from: I want {{ n }} apples",
                    response_model=SCHEMA,
                    kwargs={"n": i},
                    config=CONFIG,
                )

            for run in [submit(-1 - i) for i in range(5)]:  # warm up
                run.result(timeout=120)
            probe.mark()
            if args.sequential:
                for i in range(args.runs):
                    submit(i).result(timeout=120)
            else:
                for run in [submit(i) for i in range(args.runs)]:
                    run.result(timeout=600)
            counted = probe.count(args.runs)
    print(json.dumps(counted.per_run(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
