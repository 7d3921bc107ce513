"""The `quorum` command's argument handling."""

from __future__ import annotations

import pytest

from quorum.producer import cli


def test_worker_passes_every_option_to_celery(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    def execvp(file: str, args: list[str]) -> int:
        started.append(args)
        return 0

    monkeypatch.setattr(cli.os, "execvp", execvp)
    cli.main(["worker", "--loglevel", "INFO", "-Q", "quorum.votes"])
    expected = ["-A", "quorum.worker.app", "worker", "--loglevel", "INFO", "-Q", "quorum.votes"]
    assert started[0][1:] == expected


def test_sim_passes_every_option_to_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    import quorum.simulator.server

    given: list[list[str]] = []
    monkeypatch.setattr(quorum.simulator.server, "main", lambda args: given.append(list(args)))
    assert cli.main(["sim", "--port", "18000", "--latency", "0.1"]) == 0
    assert given == [["--port", "18000", "--latency", "0.1"]]
