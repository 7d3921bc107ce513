"""The benchmark's pure parts: statistics, the exact vote economy, the targets table, Celery
alone's count of jobs at once, the simulator reading the schema that instructor's JSON
mode (the reference's client) puts in the prompt, and the progress it shows per workload."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from quorum.bench.commands import Counted, origin_of, parse_line, section, target
from quorum.bench.compare import _table
from quorum.bench.floor import peak_overlap
from quorum.bench.progress import Ticker, follow, workload_progress
from quorum.bench.report import HISTORY, headline, with_history
from quorum.bench.workloads import kahead_accuracy, majority_accuracy, percentile, race, spread
from quorum.simulator.script import analyze


def test_percentile_interpolates_and_spread_is_median_min_max() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5
    assert spread([3, 1, 2]) == (2, 1, 3)


def test_theory_of_kahead_and_majority() -> None:
    assert kahead_accuracy(0.8, 3) == pytest.approx(1 / (1 + 0.25**3))
    assert majority_accuracy(0.8, 3) == pytest.approx(0.8**3 + 3 * 0.8**2 * 0.2)


def test_race_with_one_vote_rounds_is_the_gamblers_ruin() -> None:
    votes, right = race(0.8, count=1, k=1, max_votes=1, full_rounds=True)
    assert (votes, right) == (1, pytest.approx(0.8))
    _, right = race(0.8, count=1, k=3, max_votes=10_000, full_rounds=False)
    assert right == pytest.approx(kahead_accuracy(0.8, 3))


def test_quorums_rule_spends_fewer_votes_than_full_rounds() -> None:
    ours = race(0.6, count=5, k=3, max_votes=20, full_rounds=False)
    full = race(0.6, count=5, k=3, max_votes=20, full_rounds=True)
    assert ours[0] < full[0]
    assert ours == (pytest.approx(8.759, abs=1e-3), pytest.approx(0.737, abs=1e-3))


def test_simulator_reads_the_schema_instructor_puts_in_the_prompt() -> None:
    schema = {
        "description": "The quantity is a number",
        "properties": {"is_valid": {"type": "boolean"}, "reasoning": {"type": "string"}},
        "required": ["is_valid", "reasoning"],
        "type": "object",
    }
    text = f"Judge it.\n\nmatch the following json_schema:\n\n\n{json.dumps(schema, indent=2)}\n"
    call = analyze([{"role": "system", "content": text}], None)
    assert call.kind == "vote"
    assert call.issue == "The quantity is a number"
    task = analyze([{"role": "system", "content": "Extract: no schema here"}], None)
    assert task.kind == "task"


def test_race_opening_with_k_votes_spends_fewer_votes_than_opening_with_count() -> None:
    opening = race(0.95, count=5, k=3, max_votes=20, full_rounds=False, first_round=3)
    default = race(0.95, count=5, k=3, max_votes=20, full_rounds=False)
    assert opening[0] < 0.7 * default[0]
    assert opening[1] == pytest.approx(default[1], abs=0.01)


def burst(engine: str, workers: int, passed: int, runs: int, wall_s: float) -> dict[str, object]:
    return {
        "engine": engine,
        "workload": "burst",
        "workers": workers,
        "latencies": [1.0] * runs,
        "passed": [True] * passed + [False] * (runs - passed),
        "wall_s": wall_s,
    }


def test_throughput_target_counts_validated_runs_and_shows_the_returned_ones() -> None:
    records = [burst("quorum", 2, 100, 100, 5.0), burst("reference", 0, 25, 100, 10.0)]
    row = headline({"records": records, "profile": "full"})[2]
    assert "20.0/s, all validated | 2.5/s validated (10.0/s returned) | – | 8.00× (2.00× its" in row
    assert row.endswith("| ✔ |")
    none = [records[0], burst("reference", 0, 0, 100, 10.0)]
    assert "| ∞ (2.00× its returned) | ✔ |" in headline({"records": none, "profile": "full"})[2]
    unvalidated = [burst("quorum", 2, 99, 100, 5.0), records[1]]
    assert headline({"records": unvalidated, "profile": "full"})[2].endswith("| ✘ |")


def sequential(
    engine: str, latency: float, seconds: list[float], workers: int = 1
) -> dict[str, object]:
    return {
        "engine": engine,
        "workload": "latency",
        "latency": latency,
        "latencies": seconds,
        "workers": workers,
    }


def inflight(engine: str, most: int, *, queued: bool = False) -> dict[str, object]:
    return {"engine": engine, "workload": "inflight", "max_in_flight": most, "queued": queued}


def test_targets_show_celery_alone_beside_the_latency_and_in_flight_targets() -> None:
    records = [
        sequential("quorum", 0.2, [0.45, 0.46, 0.47]),
        sequential("reference", 0.2, [0.47, 0.48], workers=0),
        sequential("celery", 0.2, [0.43, 0.44]),
        inflight("quorum", 260),
        inflight("reference", 700),
        inflight("celery", 610),
    ]
    latency, serial, calls = headline({"records": records, "profile": "full"})[2:]
    assert latency.startswith(
        "| latency at L = 200 ms, 1 worker process: end to end − 2L ≤ 30 ms | 60 ms | 75 ms"
    )
    assert "| 35 ms | 0.80× | ✘ |" in latency
    assert serial == (
        "| one worker, one run at a time: end to end − 2L at L = 200 ms ≤ 25 ms | 60 ms "
        "| 75 ms | 35 ms | 0.80× | ✘ |"
    )
    assert calls == (
        "| LLM calls one worker process keeps in flight ≥ 500 | 260 as the runs arrive | 700 "
        "| 610 jobs |  | ✘ |"
    )


def test_one_worker_one_run_at_a_time_cpu_target_is_a_share_of_the_references() -> None:
    def idle(engine: str, cpu_s: float, worker_cpu_s: float, workers: int) -> dict[str, object]:
        return {
            **sequential(engine, 0.0, [0.03] * 10, workers=workers),
            "passed": [True] * 10,
            "cpu_s": cpu_s,
            "worker_cpu_s": worker_cpu_s,
        }

    records = [idle("quorum", 0.05, 0.13, 1), idle("quorum", 0.05, 0.5, 2)]
    records.append(idle("reference", 0.4, 0.0, 0))
    row = headline({"records": records, "profile": "full"})[2]
    assert row == (
        "| one worker, one run at a time: CPU per run at L = 0 ≤ 0.6× the reference's "
        "| 18.0 ms | 40.0 ms | – | 0.45× | ✔ |"
    )


@pytest.mark.parametrize(("queued", "met"), [(480, "✘"), (540, "✔")])
def test_the_in_flight_target_shows_runs_queued_first_beside_runs_arriving(
    queued: int, met: str
) -> None:
    records = [
        inflight("quorum", 380),
        inflight("quorum", 410),
        inflight("quorum", queued, queued=True),
    ]
    calls = headline({"records": records, "profile": "full"})[2]
    assert calls == (
        "| LLM calls one worker process keeps in flight ≥ 500 | 410 as the runs arrive; "
        f"{queued} with every run queued first | – | – |  | {met} |"
    )


def test_peak_overlap_counts_the_jobs_running_at_one_instant() -> None:
    assert peak_overlap([]) == 0
    assert peak_overlap([(0.0, 1.0), (0.5, 1.5), (0.9, 2.0), (1.6, 2.5)]) == 3
    assert peak_overlap([(0.0, 1.0), (1.0, 2.0)]) == 1  # one ends as the next starts


def test_the_latency_target_takes_quorum_and_celery_alone_with_the_most_workers() -> None:
    records = [
        sequential("quorum", 0.2, [0.45]),
        sequential("quorum", 0.2, [0.428], workers=2),
        sequential("reference", 0.2, [0.47], workers=0),
        sequential("celery", 0.2, [0.43]),
        sequential("celery", 0.2, [0.42], workers=2),
    ]
    latency = headline({"records": records, "profile": "full"})[2]
    assert latency == (
        "| latency at L = 200 ms, 2 worker processes: end to end − 2L ≤ 30 ms | 28 ms | 70 ms "
        "| 20 ms | 0.40× | ✔ |"
    )


def test_a_new_report_keeps_the_history_of_the_page_it_replaces() -> None:
    old = f"# Benchmarks\n\nold tables\n\n{HISTORY}\n\nwhat made it faster\n"
    page = "# Benchmarks\n\nnew tables\n"
    assert with_history(page, old) == f"{page}\n{HISTORY}\n\nwhat made it faster\n"
    assert with_history(page, "") == page
    assert with_history(page, "# Benchmarks\n\nno history\n") == page


class _Driver:
    """A driver's output lines, as `ManagedProcess.wait_for` hands them out."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def wait_for(self, pattern: str, *, timeout_s: float = 30.0) -> re.Match[str]:
        while self.lines:
            if match := re.search(pattern, self.lines.pop(0)):
                return match
        raise RuntimeError("driver exited early")


def test_the_driver_tells_finished_runs_seldom_and_always_the_last(capsys) -> None:
    ticker = Ticker(5, every_s=3600)
    for _ in range(5):
        ticker.tick()
    assert capsys.readouterr().out.split("\n") == ["DONE 1", "DONE 5", ""]


def test_bench_shows_each_workloads_runs_finished_on_a_terminal() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    driver = _Driver(["BEGIN?", "DONE 2", "DONE 40", 'RESULT {"wall_s": 1}'])
    with workload_progress(console, "[3] quorum burst L=0.5", 40) as progress:
        assert follow(driver, progress, timeout_s=5) == '{"wall_s": 1}'
        assert progress.tasks[0].completed == 40
    assert "[3] quorum burst L=0.5" in screen.getvalue() and "40/40" in screen.getvalue()

    piped = io.StringIO()  # not a terminal: nothing drawn, the summary lines say it all
    with workload_progress(Console(file=piped), "[4] quorum burst", 40) as progress:
        follow(_Driver(["DONE 40", "RESULT {}"]), progress, timeout_s=5)
    assert piped.getvalue() == ""


def test_command_probe_reads_monitor_lines_and_tells_each_origin() -> None:
    line = '1700000000.123456 [0 127.0.0.1:5000] "EVALSHA" "abc" "2" "quorum:run:{r1}" "x y"'
    client, words = parse_line(line) or ("", [])
    assert client == "127.0.0.1:5000"
    assert words[:4] == ["EVALSHA", "abc", "2", "quorum:run:{r1}"]
    scripted = parse_line('1.0 [0 lua] "HSET" "unacked" "tag" "{\\"a\\": 1}"')
    assert scripted is not None and scripted[0] == "lua" and scripted[1][1] == "unacked"
    assert origin_of("HSET", "quorum:run:{r1}") == "store"
    assert origin_of("LPUSH", "quorum.votes") == "broker"
    assert origin_of("ZADD", "unacked_index") == "broker"
    assert origin_of("GET", "celery-taskset-meta-1234.c") == "chord backend"
    assert origin_of("PUBLISH", "/0.celeryev/task.multi") == "events"
    assert origin_of("PUBLISH", "/0.celery.pidbox") == "broker"
    assert origin_of("MULTI", None) is None


def test_command_count_per_run_and_its_row_in_the_targets() -> None:
    counted = Counted(runs=2, total=300)
    counted.by_command.update({"HSET": 200, "LPUSH": 100})
    counted.by_origin["store"].update({"HSET": 200})
    counted.by_origin["broker"].update({"LPUSH": 100})
    per_run = counted.per_run()
    assert per_run["total"] == 150
    assert per_run["by_origin"] == {"store": 100, "broker": 50}
    record = {"redis_commands": per_run, "shape": "burst", "latencies": [0.1, 0.1]}
    what, shown, met = target([record]) or ("", "", False)
    assert "≤ 150" in what and shown == "150" and met
    assert "| store | 100.0 |" in "\n".join(section([record]))


def test_a_comparison_gives_each_sides_ratio_to_the_reference_also_round_by_round() -> None:
    """The ratio of the medians, and in brackets the median of each round's ratio to that
    round's reference (a drift of the host between rounds falls on both)."""
    results = {
        "base": [{"cpu": 10.0}, {"cpu": 30.0}, {"cpu": 12.0}],
        "head": [{"cpu": 5.0}, {"cpu": 15.0}, {"cpu": 6.0}],
        "reference": [{"cpu": 20.0}, {"cpu": 30.0}, {"cpu": 40.0}],
    }
    table = _table(results)
    assert "| cpu | 10.0, 30.0, 12.0 | 5.0, 15.0, 6.0 | 0.50× |" in table
    assert "| cpu | 20.0, 30.0, 40.0 | 0.40× (0.50×) | 0.20× (0.25×) |" in table
