"""Run-level Prometheus metrics, computed from the Redis store when scraped.

Flower sees Celery jobs; it does not know what a run is. These metrics describe runs: how many
are in each status, how many attempts and retries they took, how many votes decided each
issue, the tokens spent per model, and how long runs took end to end.

They are read from the store at scrape time, over the runs created in the last
`QUORUM_METRICS_WINDOW_S` (at most `QUORUM_METRICS_MAX_RUNS` of the newest), so every API
replica reports the same numbers and no replica has to see a run's jobs to count it. They are
therefore *gauges over a window*, not counters: aggregate replicas with `max`, not `sum`, and do
not take their `rate()`. Histograms are Prometheus gauge histograms for the same reason. A run's
facts are cached once it has ended (an ended run never changes), so a scrape reads only the
runs that are new or still going.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quorum.shared.errors import RunNotFoundError, RunUnreadableError
from quorum.shared.events import (
    CallEvent,
    Event,
    IssueDecided,
    OtherEvent,
    RetryScheduled,
    VoteCast,
)
from quorum.shared.models import TaskStatus
from quorum.shared.registry import Registry
from quorum.shared.state import RunState
from quorum.shared.store import RunStore

__all__ = ["RunFacts", "RunMetrics", "TaskMetrics", "facts_of"]

ATTEMPT_BUCKETS = (1, 2, 3, 4, 6, 11)
VOTE_BUCKETS = (1, 3, 5, 7, 9, 15, 25, 50, 100)
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True)
class RunFacts:
    """What the metrics need to know about one run."""

    status: TaskStatus
    attempts: int
    retries: int
    duration_s: float | None  # end-to-end, for ended runs
    issue_votes: tuple[tuple[str, int], ...]  # (outcome, votes cast) per issue decision
    tokens: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, kind) → tokens


def facts_of(state: RunState, events: Sequence[Event | OtherEvent]) -> RunFacts:
    """The metrics' view of a run, from its state and provenance (a pure function)."""
    tokens: Counter[tuple[str, str]] = Counter()
    votes: Counter[tuple[int, int]] = Counter()
    decisions: list[tuple[str, int, int]] = []
    for event in events:
        if isinstance(event, CallEvent) and event.usage:
            model = state.spec.validator_model if event.type == "vote" else state.spec.model
            tokens[(model, "prompt")] += event.usage.prompt_tokens
            tokens[(model, "completion")] += event.usage.completion_tokens
        if isinstance(event, VoteCast):
            votes[(event.attempt, event.issue)] += 1
        elif isinstance(event, IssueDecided):
            decisions.append((event.outcome, event.attempt, event.issue))
    ended = state.status.terminal
    return RunFacts(
        status=state.status,
        attempts=state.attempt,
        retries=sum(isinstance(e, RetryScheduled) for e in events),
        duration_s=max(state.updated_at - state.created_at, 0.0) if ended else None,
        issue_votes=tuple((outcome, votes[(a, i)]) for outcome, a, i in decisions),
        tokens={key: n for key, n in tokens.items() if n},
    )


def _buckets(values: Iterable[float], bounds: Sequence[float]) -> list[tuple[str, float]]:
    """Cumulative `le` buckets of `values`, ending with +Inf."""
    values = list(values)
    cumulative = [(str(float(b)), float(sum(v <= b for v in values))) for b in bounds]
    return [*cumulative, ("+Inf", float(len(values)))]


class RunMetrics(Collector):
    """A Prometheus collector of run-level metrics, read from the store on each scrape."""

    def __init__(self, store: RunStore, *, window_s: float, max_runs: int) -> None:
        self.store = store
        self.window_s = window_s
        self.max_runs = max_runs
        self._ended: OrderedDict[str, RunFacts] = OrderedDict()
        self.unreadable = 0
        """Runs of the last scrape that could not be read back (skipped)."""

    def _facts(self, run_id: str) -> RunFacts | None:
        if run_id in self._ended:
            return self._ended[run_id]
        try:
            state = self.store.load(run_id)
            facts = facts_of(state, self.store.events(run_id))
        except RunNotFoundError:  # expired since it was listed
            return None
        except RunUnreadableError:  # one bad run never fails a scrape: skipped, counted
            self.unreadable += 1
            return None
        if facts.status.terminal:
            self._ended[run_id] = facts
            while len(self._ended) > self.max_runs:
                self._ended.popitem(last=False)
        return facts

    def runs(self) -> list[RunFacts]:
        """The facts of every run in the window."""
        ids = self.store.recent(since=time.time() - self.window_s, limit=self.max_runs)
        self.unreadable = 0
        return [facts for run_id in ids if (facts := self._facts(run_id)) is not None]

    def collect(self) -> Iterator[Metric]:
        """The metric families, computed now."""
        runs = self.runs()
        return iter(families(runs, window_s=self.window_s, unreadable=self.unreadable))


def families(runs: Sequence[RunFacts], *, window_s: float, unreadable: int = 0) -> list[Metric]:
    """Prometheus metric families describing `runs` (and `unreadable`, the runs skipped
    because they could not be read back)."""
    scope = f" (runs created in the last {window_s:g} s)"
    by_status = GaugeMetricFamily(
        "quorum_runs", "Runs by current status" + scope, labels=["status"]
    )
    counts = Counter(run.status for run in runs)
    for status in TaskStatus:
        by_status.add_metric([status.value], counts[status])

    ended = [run for run in runs if run.status.terminal]
    attempts = GaugeHistogramMetricFamily(
        "quorum_run_attempts", "Task-node attempts per ended run" + scope, labels=["status"]
    )
    duration = GaugeHistogramMetricFamily(
        "quorum_run_duration_seconds",
        "End-to-end time from submit to the run's end" + scope,
        labels=["status"],
    )
    for status in (TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.CANCELLED):
        mine = [run for run in ended if run.status is status]
        tries = [float(run.attempts) for run in mine]
        attempts.add_metric([status.value], _buckets(tries, ATTEMPT_BUCKETS), sum(tries))
        times = [run.duration_s or 0.0 for run in mine]
        duration.add_metric([status.value], _buckets(times, DURATION_BUCKETS), sum(times))

    retries = GaugeMetricFamily(
        "quorum_retries", "Semantic retries scheduled (retry_scheduled events)" + scope
    )
    retries.add_metric([], sum(run.retries for run in runs))

    votes = GaugeHistogramMetricFamily(
        "quorum_issue_votes",
        "Votes cast per issue decision, by outcome" + scope,
        labels=["outcome"],
    )
    for outcome in ("passed", "failed"):
        cast = [float(n) for run in runs for o, n in run.issue_votes if o == outcome]
        votes.add_metric([outcome], _buckets(cast, VOTE_BUCKETS), sum(cast))

    tokens = GaugeMetricFamily(
        "quorum_tokens", "Tokens billed, by model and kind" + scope, labels=["model", "kind"]
    )
    spent: Counter[tuple[str, str]] = Counter()
    for run in runs:
        spent.update(run.tokens)
    for (model, kind), amount in sorted(spent.items()):
        tokens.add_metric([model, kind], amount)
    skipped = GaugeMetricFamily(
        "quorum_unreadable_runs",
        "Runs stored in a form that cannot be read back, left out of the others" + scope,
    )
    skipped.add_metric([], unreadable)
    return [by_status, attempts, duration, retries, votes, tokens, skipped]


class TaskMetrics(Collector):
    """Defined tasks in the registry, and the names two workers published with different
    content (`quorum.shared.registry`), read on each scrape."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        """The metric families, computed now."""
        defined = GaugeMetricFamily("quorum_defined_tasks", "Defined tasks the workers published")
        defined.add_metric([], len(self.registry.all()))
        conflicts = GaugeMetricFamily(
            "quorum_task_definition_conflicts",
            "Defined tasks two workers published with different content (within the "
            "registry's TTL), by name",
            labels=["task"],
        )
        for name in self.registry.conflicts():
            conflicts.add_metric([name], 1)
        return iter([defined, conflicts])
