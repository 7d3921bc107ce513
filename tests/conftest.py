"""Options of the test suite (the fault suite's long form and its report), and a check that the
finished suite leaves no thread that would keep it from exiting."""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

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


# -- a suite that ends must exit ---------------------------------------------------------------
# Python joins every non-daemon thread before it exits. A test that leaves one blocked (a publish
# retried for ever to a broker its fixture stopped) would keep the finished suite from exiting,
# and CI from ending. Such a thread is named with its stack and fails the suite instead.

_LINGER_S = 10.0
_LEFT = pytest.StashKey[bool]()


def _blocks_exit(thread: threading.Thread) -> bool:
    # An idle executor's threads are woken and ended by the executor's own exit hook.
    target = getattr(thread, "_target", None)
    pooled = getattr(target, "__module__", "") == "concurrent.futures.thread"
    return thread is not threading.main_thread() and not thread.daemon and not pooled


def _lingering() -> list[threading.Thread]:
    deadline = time.monotonic() + _LINGER_S
    for thread in filter(_blocks_exit, threading.enumerate()):
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    return [
        thread for thread in threading.enumerate() if _blocks_exit(thread) and thread.is_alive()
    ]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = _lingering()
    if not left:
        return
    frames = sys._current_frames()
    for thread in left:
        stack = "".join(traceback.format_stack(frames[thread.ident])) if thread.ident else ""
        sys.stderr.write(f"\nthread {thread.name!r} outlived the tests:\n{stack}")
    sys.stderr.write(f"\n{len(left)} non-daemon thread(s) outlived the tests: failing the run\n")
    sys.stderr.flush()
    session.config.stash[_LEFT] = True
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if config.stash.get(_LEFT, False):  # the threads would block the interpreter's exit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(pytest.ExitCode.TESTS_FAILED))
