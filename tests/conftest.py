"""Options of the test suite: the fault suite's long form and its report (`tests/faults`)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("quorum faults")
    group.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the fault suite's long form (hundreds of runs per case)",
    )
    group.addoption(
        "--reliability-report",
        default=None,
        metavar="PATH",
        help="write the fault suite's table (Markdown) to PATH",
    )
