"""The jobs a voting round sends, built without a broker, and when a task job builds them."""

from __future__ import annotations

import threading

import pytest
from celery.utils.saferepr import saferepr

from quorum.shared.settings import Settings
from quorum.worker import jobs
from quorum.worker.jobs import round_jobs


def test_a_round_is_a_vote_job_per_planned_vote_and_no_chord() -> None:
    sent = round_jobs("r1", 2, 3, {0: [3, 4], 2: [0]})

    votes = [(job.task, job.kwargs) for job in sent]
    assert votes == [
        ("quorum.vote", {"run_id": "r1", "attempt": 2, "issue": 0, "index": 3}),
        ("quorum.vote", {"run_id": "r1", "attempt": 2, "issue": 0, "index": 4}),
        ("quorum.vote", {"run_id": "r1", "attempt": 2, "issue": 2, "index": 0}),
    ]
    assert all(job.immutable and not job.options.get("chord") for job in sent)


def test_a_rounds_jobs_show_their_arguments_as_celery_would_without_its_saferepr() -> None:
    for job in round_jobs("r1", 1, 1, {0: [0, 1]}):
        assert job.options["argsrepr"] == saferepr(())
        assert job.options["kwargsrepr"] == saferepr(job.kwargs)


class _Held:
    def __init__(self, built: list[str]) -> None:
        self.built = built

    def send(self) -> None:
        self.built.append("sent")


@pytest.mark.parametrize(("running", "ahead"), [(1, True), (jobs._BUILD_AHEAD_BELOW + 1, False)])
def test_a_first_round_is_built_during_the_call_unless_the_worker_is_busy(
    monkeypatch: pytest.MonkeyPatch, running: int, ahead: bool
) -> None:
    built: list[str] = []

    def held_round(*args: object) -> _Held:
        built.append(threading.current_thread().name)
        return _Held(built)

    settings = Settings(broker_url="redis://localhost:6379/0")
    monkeypatch.setattr(jobs, "get_settings", lambda: settings)
    monkeypatch.setattr(jobs, "_held_round", held_round)
    monkeypatch.setattr(jobs, "active_requests", [object()] * running)

    send = jobs.CeleryEnqueuer().prepare_round("r1", 1, 1, {0: [0, 1]})
    jobs._builder().submit(lambda: None).result()  # any build submitted has run by now

    assert len(built) == int(ahead)
    send()
    assert built[0].startswith("quorum-round") == ahead
    assert built[1:] == ["sent"]


def test_an_unexpected_error_ends_the_run_with_code_internal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failed: list[tuple[str, str]] = []
    monkeypatch.setattr(jobs, "_context", lambda job: None)

    class Job:
        name = "quorum.task_node"
        request = type("Request", (), {"retries": 0, "kwargs": {"run_id": "r1"}, "args": ()})()

    def boom(ctx: object) -> str:
        raise RuntimeError("a bug")

    def permanent(ctx: object, error: str, code: str) -> str:
        failed.append((error, code))
        return "failed"

    result = jobs._guarded(Job(), boom, exhausted=lambda ctx, e: "x", permanent=permanent)  # type: ignore[arg-type]
    assert result == "failed"
    assert failed == [("internal error: RuntimeError: a bug", "internal")]
