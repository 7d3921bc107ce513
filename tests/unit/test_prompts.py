"""Prompts: the feedback section quoted from docs/architecture.md §4, validator messages, the
sandbox."""

from __future__ import annotations

import json

import pytest

from quorum.shared.errors import InvalidRequestError, TemplateError
from quorum.shared.prompts import (
    VOTE_SCHEMA,
    FailedAttempt,
    check_template,
    feedback_section,
    render_task_prompt,
    task_messages,
    validator_messages,
)

OUTPUT = {"product": "apple", "quantity": 5}
PROMPT = "Extract the purchase from: I want 5 apples"

EXPECTED_FEEDBACK = """\
# Previous Evaluations
You have attempted this task before and failed because of the following:

## Output
{"product": "apple", "quantity": 5}

## Failure Reasonings
- quantity matches: the message asks for 6
- product is singular: apple is fine

Use this information to improve your next attempt."""


def test_feedback_section_is_the_design_text() -> None:
    failure = FailedAttempt(
        OUTPUT, ["quantity matches: the message asks for 6", "product is singular: apple is fine"]
    )
    assert feedback_section([failure]) == EXPECTED_FEEDBACK


def test_feedback_shows_raw_text_of_an_output_that_did_not_parse() -> None:
    failure = FailedAttempt("{product: apple", ["output is not valid JSON: Expecting ..."])
    section = feedback_section([failure])
    assert "## Output\n{product: apple\n\n" in section
    assert "- output is not valid JSON: Expecting ...\n" in section


def test_feedback_has_one_block_per_failed_attempt() -> None:
    failures = [
        FailedAttempt({"quantity": 1}, ["first reason"]),
        FailedAttempt({"quantity": 2}, ["second reason"]),
    ]
    section = feedback_section(failures)
    assert section.count("# Previous Evaluations") == 2
    assert section.count("Use this information to improve your next attempt.") == 2
    first, second = section.split("\n\n# Previous Evaluations\n")
    assert '{"quantity": 1}' in first and "- first reason" in first
    assert '{"quantity": 2}' in second and "- second reason" in second


def test_feedback_keeps_non_ascii_readable() -> None:
    section = feedback_section([FailedAttempt({"product": "pomme é"}, ["é"])])
    assert '{"product": "pomme é"}' in section


def test_task_messages_append_feedback_only_after_a_failure() -> None:
    first = task_messages(PROMPT)
    assert first[-1] == {"role": "user", "content": PROMPT}
    retry = task_messages(PROMPT, [FailedAttempt(OUTPUT, ["quantity: wrong"])])
    assert (
        retry[-1]["content"]
        == f"{PROMPT}\n\n{feedback_section([FailedAttempt(OUTPUT, ['quantity: wrong'])])}"
    )
    assert retry[0]["role"] == "system"


def test_validator_messages_hold_prompt_output_and_one_issue() -> None:
    messages = validator_messages(PROMPT, OUTPUT, "quantity matches the message")
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[-1]["content"]
    assert PROMPT in user
    assert json.dumps(OUTPUT) in user
    assert user.count("quantity matches the message") == 1
    assert user.count("# Criterion") == 1
    assert "Previous Evaluations" not in user
    assert "Failure Reasonings" not in user


def test_validator_messages_never_carry_feedback_even_from_a_retry_prompt() -> None:
    retry_content = task_messages(PROMPT, [FailedAttempt(OUTPUT, ["x"])])[-1]["content"]
    assert "Previous Evaluations" in retry_content
    messages = validator_messages(PROMPT, OUTPUT, "issue")
    assert all("Previous Evaluations" not in m["content"] for m in messages)


def test_vote_schema_has_exactly_is_valid_and_reasoning() -> None:
    assert set(VOTE_SCHEMA["properties"]) == {"is_valid", "reasoning"}
    assert set(VOTE_SCHEMA["required"]) == {"is_valid", "reasoning"}
    assert VOTE_SCHEMA["additionalProperties"] is False


# -- templates ----------------------------------------------------------------------------


def test_check_template_returns_the_rendered_prompt() -> None:
    assert check_template("Extract from: {{ message }}", {"message": "5 apples"}) == (
        "Extract from: 5 apples"
    )


def test_check_template_allows_local_variables_and_loops() -> None:
    template = "{% set n = items|length %}{{ n }}:{% for i in items %}{{ i }}{% endfor %}"
    assert check_template(template, {"items": ["a", "b"]}) == "2:ab"


@pytest.mark.parametrize(
    ("template", "kwargs", "message"),
    [
        ("Extract {{ message", {"message": "x"}, "syntax error"),
        ("{% for x in items %}{{ x }}", {"items": []}, "syntax error"),
        ("{{ a }} and {{ b }}", {}, "missing from kwargs: a, b"),
        ("{{ a }} and {{ b }}", {"a": 1}, "missing from kwargs: b"),
        ("{{ ''.__class__.__mro__ }}", {}, "sandbox"),
        ("{{ x.__class__ }}", {"x": 1}, "sandbox"),
        ("{{ x['__globals__'] }}", {"x": {}}, "sandbox"),
        ("{{ x|attr('__class__') }}", {"x": "a"}, "sandbox"),
        ("{{ x.__init__.__globals__ }}", {"x": 1}, "sandbox"),
    ],
    ids=[
        "unclosed",
        "unclosed block",
        "two missing",
        "one missing",
        "mro",
        "dunder attr",
        "dunder item",
        "attr filter",
        "globals",
    ],
)
def test_check_template_refuses(template: str, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TemplateError, match=message) as caught:
        check_template(template, kwargs)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, InvalidRequestError)


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(TemplateError, match="line 2"):
        check_template("fine\n{{ broken", {"broken": 1})


def test_render_refuses_an_undefined_variable() -> None:
    with pytest.raises(TemplateError, match="undefined"):
        render_task_prompt("{{ x.missing }}", {"x": {}})


def test_render_wraps_a_filter_failure() -> None:
    with pytest.raises(TemplateError, match="failed to render"):
        render_task_prompt("{{ x|int // 0 }}", {"x": "3"})
