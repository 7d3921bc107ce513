"""Fixtures of the fault suite: bounded fault cases against a real Redis, real worker
processes and the LLM simulator.

The default (short) form runs in a few minutes, for CI; `--soak` runs the long form with the
counts the reliability figures quote (`docs/reliability.md`). Every case adds a row to the
table printed at the end of the session; `--reliability-report PATH` also writes it to a file.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Figures, table

_FIGURES: list[Figures] = []


@pytest.fixture(scope="session")
def soak(request: pytest.FixtureRequest) -> bool:
    """Whether this is the long form."""
    return bool(request.config.getoption("--soak"))


@pytest.fixture
def record() -> Iterator[list[Figures]]:
    """Where a case puts its figures for the session's table."""
    yield _FIGURES


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if not _FIGURES:
        return
    form = "long (--soak)" if config.getoption("--soak") else "short"
    text = table(_FIGURES)
    terminalreporter.write_line("")
    terminalreporter.write_line(f"Quorum fault suite, {form} form:")
    for line in text.splitlines():
        terminalreporter.write_line(line)
    path = config.getoption("--reliability-report")
    if path:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime())
        Path(path).write_text(f"Fault suite, {form} form, {stamp}\n\n{text}\n")
