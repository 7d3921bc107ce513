"""The report of a benchmark invocation: `benchmarks.md` (tables of medians and spreads) and
its plots (`bench-*.png`), from the records `quorum.bench.runner` collected."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from quorum.bench import commands
from quorum.bench.workflows import section as workflow_section
from quorum.bench.workloads import kahead_accuracy, majority_accuracy, percentile, race, spread

__all__ = ["HISTORY", "headline", "with_history", "write_report"]

Record = dict[str, Any]

_ENGINES = ("quorum", "reference", "celery")
"""Quorum, py-ai-toolkit, and Celery alone (sleeping jobs shaped like Quorum's)."""


def _select(records: Iterable[Record], **match: Any) -> list[Record]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def _runs(record: Record) -> int:
    return len(record["latencies"])


def _cpu_ms(record: Record) -> float:
    """CPU ms per validated run: the engine's processes (driver + workers) over passed runs."""
    passed = sum(record["passed"]) or math.nan
    return 1000 * (record["cpu_s"] + record["worker_cpu_s"]) / passed


def _rate(record: Record) -> float:
    return sum(record["passed"]) / record["wall_s"]


def _returned(record: Record) -> float:
    """Runs/s that came back at all, validated or not."""
    return _runs(record) / record["wall_s"]


def _fmt(value: float, digits: int = 0) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _workers(count: int) -> str:
    return f"{count} worker process{'es' if count > 1 else ''}"


def _med(records: list[Record], metric: Callable[[Record], float], digits: int = 0) -> str:
    """`median (min–max)` of a metric over repetitions."""
    mid, low, high = spread([metric(r) for r in records])
    if len(records) < 2 or math.isnan(mid):
        return _fmt(mid, digits)
    return f"{_fmt(mid, digits)} ({_fmt(low, digits)}–{_fmt(high, digits)})"


def _value(records: list[Record], metric: Callable[[Record], float]) -> float:
    return spread([metric(r) for r in records])[0]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


# -- the targets -------------------------------------------------------------------------


Target = tuple[str, str, str, str, str, bool | None]
"""(target, Quorum, reference, Celery alone, ratio to the reference, met)"""


def _targets(records: list[Record], prof: str) -> list[Target]:
    """Each target that was measured, with Celery's own floor where it bounds the target."""
    out: list[Target] = []
    lat = [r for r in _select(records, workload="latency") if r["latency"] > 0]
    top = max((r["latency"] for r in lat), default=None)
    if top is not None:
        # Quorum with the most worker processes it ran with (one per core), and Celery alone
        # with as many where it ran so too.
        most = max((r["workers"] for r in _select(lat, engine="quorum")), default=1)
        q = _value(_select(lat, engine="quorum", latency=top, workers=most), _overhead_ms)
        ref = _value(_select(lat, engine="reference", latency=top), _overhead_ms)
        floors = _select(lat, engine="celery", latency=top)
        floor = _value(_select(floors, workers=most) or floors, _overhead_ms)
        out.append(
            (
                f"latency at L = {top * 1000:.0f} ms, {_workers(most)}: end to end − 2L ≤ 30 ms",
                f"{q:.0f} ms",
                _fmt(ref) + " ms",
                _fmt(floor) + " ms",
                f"{q / ref:.2f}×" if ref else "–",
                q <= 30,
            )
        )
    out += _serial(records, lat)
    burst = _select(records, workload="burst")
    if burst:
        most = max(r["workers"] for r in burst)
        q_runs = _select(burst, engine="quorum", workers=most)
        ref_runs = _select(burst, engine="reference")
        q, ref = _value(q_runs, _rate), _value(ref_runs, _rate)
        every = all(all(r["passed"]) for r in q_runs)
        # Under load the reference returns runs whose validation its timeouts cut short: its
        # returned rate shows how fast it went, the validated one what the target counts.
        ref_shown, ratio = "–", "–"
        if ref_runs:
            returned = _value(ref_runs, _returned)
            ref_shown = f"{ref:.1f}/s validated ({returned:.1f}/s returned)"
            ratio = (f"{q / ref:.2f}×" if ref else "∞") + f" ({q / returned:.2f}× its returned)"
        out.append(
            (
                f"throughput, {_runs(burst[0])} runs at once, {most} worker(s): ≥ 2× the "
                "reference's validated runs/s, every run validated",
                f"{q:.1f}/s, {'all' if every else 'not all'} validated",
                ref_shown,
                "–",
                ratio,
                every and (not ref_runs or q >= 2 * ref),
            )
        )
    cpu = _select(records, workload="cpu")
    if cpu:
        q = _value(_select(cpu, engine="quorum"), _cpu_ms)
        ref_runs = _select(cpu, engine="reference")
        ref = _value(ref_runs, _cpu_ms) if ref_runs else math.nan
        out.append(
            (
                "CPU per validated run at L = 0 ≤ the reference's",
                f"{q:.1f} ms",
                _fmt(ref, 1) + " ms",
                "–",
                f"{q / ref:.2f}×" if ref_runs else "–",
                None if not ref_runs else q <= ref,
            )
        )
    inflight = _select(records, workload="inflight", engine="quorum")
    if inflight:
        arriving = max(r["max_in_flight"] for r in inflight if not r.get("queued"))
        queued = [r["max_in_flight"] for r in inflight if r.get("queued")]
        held = f"{arriving} as the runs arrive"
        if queued:
            held += f"; {max(queued)} with every run queued first"
        ref_runs = _select(records, workload="inflight", engine="reference")
        floor_runs = _select(records, workload="inflight", engine="celery")
        out.append(
            (
                "LLM calls one worker process keeps in flight ≥ 500",
                held,
                str(max(r["max_in_flight"] for r in ref_runs)) if ref_runs else "–",
                f"{max(r['max_in_flight'] for r in floor_runs)} jobs" if floor_runs else "–",
                "",
                max([arriving, *queued]) >= 500 if prof == "full" else None,
            )
        )
    economy = _select(records, workload="economy", engine="quorum")
    kahead = [r for r in economy if r["config"]["mode"] == "k_ahead"]
    if kahead:
        ratios = {
            opening: [_votes(r) / _full_rounds(r)[0] for r in kahead if _opening(r) == opening]
            for opening in sorted({_opening(r) for r in kahead}, key=str)
        }
        best = min(ratios.items(), key=lambda item: max(item[1]))
        shown = [
            f"{', '.join(f'{x:.2f}×' for x in values)} ({_opening_label(opening)})"
            for opening, values in ratios.items()
        ]
        out.append(
            (
                "K-ahead votes ≤ 0.75× full rounds of `count`, same accuracy",
                "; ".join(shown),
                "",
                "",
                f"max {max(best[1]):.2f}× ({_opening_label(best[0])})",
                max(best[1]) <= 0.75,
            )
        )
    return out


def _serial(records: list[Record], lat: list[Record]) -> list[Target]:
    """One worker, one run at a time: CPU per run at L = 0 against the reference's, and end
    to end − 2L at the highest latency; and the Redis commands of a run."""
    out: list[Target] = []
    idle = [r for r in _select(records, workload="latency", latency=0.0) if r["workers"] < 2]
    q, ref = _select(idle, engine="quorum"), _select(idle, engine="reference")
    if q and ref:
        mine, theirs = _value(q, _cpu_ms), _value(ref, _cpu_ms)
        what = "one worker, one run at a time: CPU per run at L = 0 ≤ 0.6× the reference's"
        share = mine / theirs
        out.append((what, f"{mine:.1f} ms", f"{theirs:.1f} ms", "–", f"{share:.2f}×", share <= 0.6))
    top = max((r["latency"] for r in lat), default=None)
    one = [r for r in _select(lat, engine="quorum", latency=top) if r["workers"] == 1]
    if top is not None and one:
        mine = _value(one, _overhead_ms)
        theirs = _value(_select(lat, engine="reference", latency=top), _overhead_ms)
        floor = _value(_select(lat, engine="celery", latency=top, workers=1), _overhead_ms)
        what = f"one worker, one run at a time: end to end − 2L at L = {top * 1000:.0f} ms ≤ 25 ms"
        ratio = f"{mine / theirs:.2f}×" if theirs else "–"
        shown = f"{mine:.0f} ms", _fmt(theirs) + " ms", _fmt(floor) + " ms"
        out.append((what, *shown, ratio, mine <= 25))
    counted = commands.target(records)
    if counted is not None:
        out.append((counted[0], counted[1], "–", "–", "", counted[2]))
    return out


def _opening(record: Record) -> int | None:
    """A K-ahead record's `first_round` (None: the default, `count`)."""
    return record["config"].get("first_round")


def _opening_label(opening: int | None) -> str:
    return "first round of count" if opening is None else f"first_round = {opening}"


def _variant(record: Record) -> str:
    """The mode, and a K-ahead's first round when it is not `count`."""
    opening = _opening(record)
    mode = record["config"]["mode"]
    return mode if opening is None else f"{mode}, {_opening_label(opening)}"


def _overhead_ms(record: Record) -> float:
    return 1000 * (statistics.median(record["latencies"]) - 2 * record["latency"])


def _votes(record: Record) -> float:
    """Votes spent per decision (one issue per run: per run)."""
    return float(record["votes"]) / _runs(record)


def _full_rounds(record: Record) -> tuple[float, float]:
    config = record["config"]
    count, ahead = config["count"], config["required_ahead"]
    return race(record["pass_rate"], count=count, k=ahead, max_votes=4 * count, full_rounds=True)


def headline(results: dict[str, Any]) -> list[str]:
    """The table of targets, for the top of the report and the README."""
    rows = [
        [target, q, ref, floor, ratio, {True: "✔", False: "✘", None: "–"}[met]]
        for target, q, ref, floor, ratio, met in _targets(results["records"], results["profile"])
    ]
    return _table(["target", "Quorum", "reference", "Celery alone", "ratio", "met"], rows)


# -- the sections ------------------------------------------------------------------------


def _latency(records: list[Record]) -> list[str]:
    rows = []
    for latency in sorted({r["latency"] for r in _select(records, workload="latency")}):
        for engine in _ENGINES:
            found = _select(records, workload="latency", latency=latency, engine=engine)
            for r in sorted(found, key=lambda r: r["workers"]):
                lat = [x * 1000 for x in r["latencies"]]
                rows.append(
                    [
                        f"{latency * 1000:.0f}",
                        engine,
                        str(r["workers"]) if r["workers"] else "1 (in-process)",
                        f"{2 * latency * 1000:.0f}",
                        f"{statistics.median(lat):.0f}",
                        f"{percentile(lat, 5):.0f}–{percentile(lat, 95):.0f}",
                        f"{_overhead_ms(r):+.0f}",
                        f"{_cpu_ms(r):.1f}",
                    ]
                )
    head = [
        "L (ms)",
        "engine",
        "workers",
        "ideal 2L",
        "median",
        "p5–p95",
        "median − 2L",
        "CPU ms/run",
    ]
    return _table(head, rows)


def _burst(records: list[Record]) -> list[str]:
    rows = []
    groups = sorted({(r["engine"], r["workers"]) for r in _select(records, workload="burst")})
    for engine, workers in groups:
        rs = _select(records, workload="burst", engine=engine, workers=workers)
        rows.append(
            [
                engine,
                str(workers) if engine == "quorum" else "1 (in-process)",
                _med(rs, _rate, 1),
                _med(rs, _returned, 1),
                _med(rs, lambda r: 1000 * percentile(r["latencies"], 50)),
                _med(rs, lambda r: 1000 * percentile(r["latencies"], 95)),
                _med(rs, lambda r: sum(r["passed"])) + f" / {_runs(rs[0])}",
                _med(rs, _cpu_ms, 1),
                _med(rs, lambda r: max(r["worker_peak_rss_kb"] or [0]) / 1024),
                _med(rs, lambda r: r["max_rss_kb"] / 1024),
            ]
        )
    head = [
        "engine",
        "processes",
        "validated runs/s",
        "returned runs/s",
        "p50 ms",
        "p95 ms",
        "validated",
        "CPU ms/run",
        "worker peak RSS MiB",
        "producer / reference peak RSS MiB",
    ]
    return _table(head, rows)


def _cpu(records: list[Record]) -> list[str]:
    rows = []
    for engine in ("quorum", "reference"):
        rs = _select(records, workload="cpu", engine=engine)
        if rs:
            rows.append(
                [
                    engine,
                    str(_runs(rs[0])),
                    _med(rs, _cpu_ms, 1),
                    _med(rs, lambda r: 1000 * r["worker_cpu_s"] / max(sum(r["passed"]), 1), 1),
                    _med(rs, lambda r: 1000 * r["cpu_s"] / max(sum(r["passed"]), 1), 1),
                    _med(rs, lambda r: r["llm_calls"] / _runs(r), 1),
                ]
            )
    head = ["engine", "runs", "CPU ms/run", "workers", "producer/process", "LLM calls/run"]
    return _table(head, rows)


def _inflight(records: list[Record]) -> list[str]:
    rows = [
        [
            r["engine"],
            str(r.get("concurrency") or "–"),
            f"{_runs(r)} queued first" if r.get("queued") else str(_runs(r)),
            f"{r['latency']:.1f}",
            str(r["max_in_flight"]),
            _fmt(1000 * (r["worker_cpu_s"] if r["workers"] else r["cpu_s"]) / _runs(r), 1),
            _fmt(max(r["worker_peak_rss_kb"] or [r["max_rss_kb"]]) / 1024),
        ]
        for r in _select(records, workload="inflight")
    ]
    head = [
        "engine",
        "worker threads",
        "runs at once",
        "L (s)",
        "most calls in flight",
        "worker CPU per run (ms)",
        "peak RSS MiB",
    ]
    return _table(head, rows)


def _economy(records: list[Record]) -> list[str]:
    rows = []
    for r in _select(records, workload="economy"):
        config, p = r["config"], r["pass_rate"]
        count, ahead = config["count"], config["required_ahead"]
        if config["mode"] == "k_ahead":
            theory = kahead_accuracy(p, ahead)
            full_votes, full_acc = _full_rounds(r)
            ours = race(
                p,
                count=count,
                k=ahead,
                max_votes=4 * count,
                full_rounds=False,
                first_round=_opening(r),
            )
            expect = f"{ours[0]:.2f} / {full_votes:.2f}"
            exact = f"{ours[1]:.3f} / {full_acc:.3f}"
        else:
            theory = majority_accuracy(p, count, ahead)
            expect, exact = f"{count}", f"{theory:.3f}"
        rows.append(
            [
                f"{_variant(r)} ({count}, {ahead})",
                f"{p:.2f}",
                r["engine"],
                f"{_votes(r):.2f}",
                f"{sum(r['passed']) / _runs(r):.3f}",
                f"{sum(r['validated'])}/{_runs(r)}",
                expect,
                exact,
                f"{theory:.3f}",
            ]
        )
    head = [
        "mode (count, k)",
        "validator accuracy p",
        "engine",
        "votes/decision",
        "accuracy",
        "decided",
        "exact votes: Quorum / full rounds",
        "exact accuracy: Quorum / full rounds",
        "theory",
    ]
    return _table(head, rows)


# -- plots -------------------------------------------------------------------------------


def _plots(records: list[Record], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    drawn = [draw(records, out) for draw in (_plot_latency, _plot_throughput, _plot_votes)]
    return [name for name in drawn if name]


_COLORS = {"quorum": "#2b6cb0", "reference": "#dd6b20", "celery": "#718096"}
_DARKER = {"quorum": "#1a365d", "reference": "#9c4221", "celery": "#2d3748"}
"""The same engines with more worker processes."""


def _plot_latency(records: list[Record], out: Path) -> str | None:
    import matplotlib.pyplot as plt

    lat = _select(records, workload="latency")
    if not lat:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    levels = sorted({r["latency"] for r in lat})
    groups = sorted(
        {(r["engine"], r["workers"]) for r in lat}, key=lambda g: (_ENGINES.index(g[0]), g[1])
    )
    width = 0.8 / len(groups)
    for n, (engine, workers) in enumerate(groups):
        shift = (n - (len(groups) - 1) / 2) * width
        xs, ys, errs = [], [], []
        for i, level in enumerate(levels):
            for r in _select(lat, engine=engine, latency=level, workers=workers):
                ms = [x * 1000 for x in r["latencies"]]
                mid = statistics.median(ms)
                xs.append(i + shift)
                ys.append(mid)
                errs.append((mid - percentile(ms, 5), percentile(ms, 95) - mid))
        if xs:
            yerr = [[e[0] for e in errs], [e[1] for e in errs]]
            label = "Celery alone" if engine == "celery" else engine
            if workers:
                label += f", {_workers(workers)}"
            shade = _COLORS[engine] if workers < 2 else _DARKER[engine]
            ax.bar(xs, ys, width, yerr=yerr, label=label, color=shade)
    ideal = [2000 * x for x in levels]
    ax.plot(range(len(levels)), ideal, "k_", markersize=40, label="ideal 2L")
    ax.set_xticks(range(len(levels)), [f"L = {x * 1000:.0f} ms" for x in levels])
    ax.set_ylabel("end-to-end ms (median, p5–p95)")
    ax.set_title("One run at a time, 3 issues × 3 votes")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1, 0.5))
    return _save(fig, out / "bench-latency.png")


def _plot_throughput(records: list[Record], out: Path) -> str | None:
    import matplotlib.pyplot as plt

    burst = _select(records, workload="burst")
    cpu = _select(records, workload="cpu")
    if not burst and not cpu:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.5))
    groups = sorted({(r["engine"], r["workers"]) for r in burst})
    labels = [f"Quorum ×{w}" if e == "quorum" else "reference" for e, w in groups]
    rates = [_value(_select(burst, engine=e, workers=w), _rate) for e, w in groups]
    left.bar(labels, rates, color=[_COLORS[e] for e, _ in groups])
    left.set_ylabel("validated runs/s")
    left.set_title(f"{_runs(burst[0]) if burst else 0} runs at once")
    engines = [e for e in ("quorum", "reference") if _select(cpu, engine=e)]
    values = [_value(_select(cpu, engine=e), _cpu_ms) for e in engines]
    right.bar(engines, values, color=[_COLORS[e] for e in engines])
    right.set_ylabel("CPU ms per validated run (L = 0)")
    right.set_title("CPU per run")
    return _save(fig, out / "bench-throughput.png")


def _plot_votes(records: list[Record], out: Path) -> str | None:
    import matplotlib.pyplot as plt

    economy = _select(records, workload="economy")
    if not economy:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    variants = sorted({_variant(r) for r in economy})
    markers = dict(zip(variants, "osD^v", strict=False))
    for variant in variants:
        style = ":" if variant == "threshold" else "-"
        for engine in ("quorum", "reference"):
            rs = [r for r in _select(economy, engine=engine) if _variant(r) == variant]
            if not rs:
                continue
            ps = [r["pass_rate"] for r in rs]
            style_of = {"marker": markers[variant], "color": _COLORS[engine], "linestyle": style}
            left.plot(ps, [_votes(r) for r in rs], label=f"{engine} {variant}", **style_of)
            accuracy = [sum(r["passed"]) / _runs(r) for r in rs]
            right.plot(ps, accuracy, label=f"{engine} {variant}", **style_of)
    kahead = [r for r in economy if r["config"]["mode"] == "k_ahead"]
    if kahead:
        grid = [0.55 + i * 0.01 for i in range(45)]
        k = kahead[0]["config"]["required_ahead"]
        theory = [kahead_accuracy(p, k) for p in grid]
        right.plot(grid, theory, "k--", lw=1, label=f"theory 1/(1+((1−p)/p)^{k})")
        ps = sorted({r["pass_rate"] for r in kahead})
        full = [_full_rounds(_select(kahead, pass_rate=p)[0])[0] for p in ps]
        left.plot(ps, full, "k--", lw=1, label="exact: full rounds of count")
    for ax, what in ((left, "votes per decision"), (right, "decision accuracy")):
        ax.set_xlabel("validator accuracy p")
        ax.set_ylabel(what)
        ax.legend(fontsize=7)
    return _save(fig, out / "bench-votes.png")


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


# -- the page ----------------------------------------------------------------------------


def write_report(results: dict[str, Any], out: Path) -> Path:
    """Write `benchmarks.md` and the plots into `out`; return the report's path."""
    records = results["records"]
    machine, versions = results["machine"], results["versions"]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(results["started"]))
    plots = _plots(records, out)
    lines = [
        "# Benchmarks: Quorum against the reference, side by side",
        "",
        f"Produced by `{results['command']}` on {when} ({results['profile']} profile, "
        f"{results['duration_s'] / 60:.1f} min). Every figure below, up to the History section, "
        "was measured in this one invocation, Quorum and the reference (py-ai-toolkit "
        f"{versions.get('py-ai-toolkit', 'not installed')}, its `run_task` in one asyncio "
        "process) taking turns against the same LLM simulator.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} logical cores, "
        f"{machine['memory_gb']} GiB, {machine['os']}, Python {machine['python']}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + ". Redis, the simulator, the workers and the driver share the machine.",
        "",
        "## Targets",
        "",
        *headline(results),
        "",
        "*Celery alone* is Celery's own floor on this machine, measured in the same invocation: "
        "the same shapes of jobs on a worker with Quorum's Celery config, pool and result "
        "backend (`celery -A quorum.bench.floor worker`), each job sleeping where Quorum's "
        "would call the LLM. Quorum cannot do better than the Celery it runs on.",
        "",
        "## 1. Latency: one run at a time",
        "",
        "Threshold voting, 3 issues × 3 votes, `max_retries=0`; the ideal critical path is the "
        "task call plus one vote round, 2L. CPU counts the engine's processes (Quorum: the "
        "worker and the producer). *celery* is Celery alone: a job that sleeps L, then a chord "
        "of 9 jobs that each sleep L, joined by a callback (no LLM call, no store). Both "
        "run on one worker process, then on two, one per core: a worker takes at most half of "
        "the jobs waiting, so that a round's votes spread over both. The target counts the "
        "run with the most worker processes.",
        "",
        *_latency(records),
        "",
        *([f"![latency]({plots[0]})", ""] if "bench-latency.png" in plots else []),
        "## 2. Throughput: all runs submitted at once",
        "",
        "Same task and config, L = the simulator's latency per call. A run counts when its "
        "output was validated and passed: for Quorum, status `SUCCESSFUL`; for the reference, "
        "its `after_validation` hook fired and said valid (its `run_task` returns the output "
        "even when a node's internal 60 s timeout cut validation short). *Returned* counts "
        "every run that came back, validated or not. Medians over repetitions, (min–max) in "
        "brackets.",
        "",
        *_burst(records),
        "",
        "## 3. CPU per validated run at L = 0",
        "",
        *_cpu(records),
        "",
        "Quorum skips a vote that cannot change its issue's outcome any more; at L = 0 the "
        "early decision often lands before the third vote starts, hence fewer LLM calls.",
        "",
        *(
            ["![throughput and CPU](bench-throughput.png)", ""]
            if "bench-throughput.png" in plots
            else []
        ),
        "## 4. Concurrency: LLM calls in flight",
        "",
        "SingleShot runs (1 issue) submitted at once to one worker process, with its default "
        "threads pool and with a larger one (`QUORUM_WORKER_CONCURRENCY`); the simulator "
        "counts the calls it holds at the same time. *Queued first*: every run was submitted "
        "before the worker (the larger pool) started, so that the producer's CPU, which on "
        "this small machine competes with the worker's while the runs arrive, is spent before. "
        "*celery* is Celery alone: as many runs of the "
        "same jobs (a job that sleeps L, then a chord of one job that sleeps L, joined by a "
        "callback), sent at once to a worker with the larger pool; its figure is the most jobs "
        "that slept at the same time. CPU per run is the worker process's over the whole "
        "workload (the reference's: its one process's).",
        "",
        *_inflight(records),
        "",
        "## 5. Vote economy",
        "",
        "One issue per run, so a run is a decision; the simulator's pass rate is the "
        "validators' accuracy p (the right decision is *pass*). Votes are counted by the "
        "simulator. K-ahead runs twice: with the design's first round of `count` votes, and "
        "with `first_round = k`, which opens with the fewest votes that could decide. *Exact* "
        "columns compute the expected votes and accuracy of Quorum's rule (that first round, "
        "then `k − |margin|`) and of always drawing full rounds of `count` (both capped at "
        "`max_votes = 4 × count`, undecided = fail); *theory* is 1/(1+((1−p)/p)^k) for K-ahead "
        "and the binomial majority for Threshold.",
        "",
        *_economy(records),
        "",
        *(["![votes](bench-votes.png)", ""] if "bench-votes.png" in plots else []),
        *workflow_section(results.get("workflows")),
        *commands.section(records),
        "Raw measurements: `benchmarks.json` beside this page.",
        "",
    ]
    path = out / "benchmarks.md"
    path.write_text(with_history("\n".join(lines), path.read_text() if path.exists() else ""))
    return path


HISTORY = "## History"
"""The heading of the page's hand-kept section, which a new report keeps."""


def with_history(page: str, old: str) -> str:
    """`page`, then the History section of `old`, the page it replaces (from its heading on):
    the figures behind the code's choices outlive each benchmark run."""
    at = old.find(f"\n{HISTORY}\n")
    return page if at < 0 else f"{page}\n{old[at + 1 :]}"
