"""The chord a voting round sends, built without a broker."""

from __future__ import annotations

from celery.utils.saferepr import saferepr

from worker.jobs import round_chord


def test_a_round_chord_has_a_vote_per_planned_vote_and_the_tally_as_its_body() -> None:
    sent = round_chord("r1", 2, 3, {0: [3, 4], 2: [0]})

    votes = [(job.task, job.kwargs) for job in sent.tasks]
    assert votes == [
        ("quorum.vote", {"run_id": "r1", "attempt": 2, "issue": 0, "index": 3}),
        ("quorum.vote", {"run_id": "r1", "attempt": 2, "issue": 0, "index": 4}),
        ("quorum.vote", {"run_id": "r1", "attempt": 2, "issue": 2, "index": 0}),
    ]
    assert all(job.immutable for job in sent.tasks)
    assert (sent.body.task, sent.body.kwargs) == (
        "quorum.tally",
        {"run_id": "r1", "attempt": 2, "round_": 3},
    )


def test_a_round_chord_shows_its_arguments_as_celery_would_without_its_saferepr() -> None:
    sent = round_chord("r1", 1, 1, {0: [0, 1]})

    for job in sent.tasks:
        assert job.options["argsrepr"] == saferepr(())
        assert job.options["kwargsrepr"] == saferepr(job.kwargs)
    assert sent.body.options["kwargsrepr"] == saferepr(sent.body.kwargs)
    assert sent.body.options["argsrepr"] == "([the 2 votes of round 1],)"
