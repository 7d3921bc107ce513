"""`quorum bench --quick`: the benchmark command runs end to end in seconds and writes its
report and plots, Celery alone included (the reference part is skipped where py-ai-toolkit is
not installed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_quick_bench_writes_the_report_and_its_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the bench extra is not installed")
    pytest.importorskip("psutil", reason="the bench extra is not installed")
    done = subprocess.run(
        [sys.executable, "-m", "quorum.producer.cli", "bench", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (tmp_path / "benchmarks.md").read_text()
    assert "## Targets" in report
    assert "| latency at L = 50 ms" in report
    # Celery alone ran on workers of its own: its runs one at a time (on one worker process
    # and on two), and all at once.
    assert "| 50 | celery | 1 | 100 |" in report
    assert "| 50 | celery | 2 | 100 |" in report
    # Quorum ran the runs one at a time on one worker process and on two.
    assert "| 50 | quorum | 2 | 100 |" in report
    # Its 40 runs at once recorded their sleeps: the most at once is its in-flight figure.
    held = re.search(r"\| celery \| 100 \| 40 \| 0\.3 \| (\d+) \| [\d.]+ \|", report)
    assert held is not None and 0 < int(held.group(1)) <= 40
    assert "| most calls in flight | worker CPU per run (ms) |" in report
    # The same runs queued before a worker started: its calls were counted in flight too.
    queued = re.search(r"\| quorum \| 100 \| 40 queued first \| 0\.3 \| (\d+) \|", report)
    assert queued is not None and 0 < int(queued.group(1)) <= 40
    assert (tmp_path / "bench-latency.png").stat().st_size > 1000
    assert (tmp_path / "benchmarks.json").exists()
