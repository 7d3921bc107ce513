"""Unit tests for the simulator's pure parts: directives, scripting, fake values, config."""

from __future__ import annotations

import json
import random

import pytest

from quorum.simulator.config import Latency, SimConfig, from_mapping, parse_args, parse_latency
from quorum.simulator.fake import fake_value, violating_value
from quorum.simulator.script import (
    CallInfo,
    DirectiveError,
    analyze,
    count_attempt,
    decide,
    find_directive_text,
    parse_directive,
    parse_vote_prompt,
)

PURCHASE = {
    "type": "object",
    "properties": {"product": {"type": "string"}, "quantity": {"type": "integer"}},
    "required": ["product", "quantity"],
    "additionalProperties": False,
}
VOTE = {
    "type": "object",
    "properties": {"is_valid": {"type": "boolean"}, "reasoning": {"type": "string"}},
    "required": ["is_valid", "reasoning"],
}
CONFIG = SimConfig()


def directive(data: dict) -> str:
    return f"<<sim:{json.dumps(data)}>>"


def task_messages(prompt: str, *, failures: int = 0) -> list[dict]:
    block = "\n\n## Failure Reasonings\n- attempt {} failed"
    blocks = "".join(block.format(i + 1) for i in range(failures))
    return [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": prompt + blocks},
    ]


def vote_messages(task_prompt: str, output: object, issue: str) -> list[dict]:
    text = f"# Task\n{task_prompt}\n\n# Output\n{json.dumps(output)}\n\n# Criterion\n{issue}\n"
    return [
        {"role": "system", "content": "You are a strict validator."},
        {"role": "user", "content": text},
    ]


def run_task(
    messages: list[dict], *, index: int = 0, config: SimConfig = CONFIG, schema: dict = PURCHASE
):
    return decide(analyze(messages, schema), kind_index=index, issue_index=0, config=config)


def run_vote(call: CallInfo, *, index: int = 0, issue_index: int = 0, config: SimConfig = CONFIG):
    return decide(call, kind_index=index, issue_index=issue_index, config=config)


# --- directives -------------------------------------------------------------------------


def test_directive_found_and_parsed_with_id_scope():
    text = "Buy stuff " + directive({"id": "run-1", "outputs": [{"a": 1}]}) + " tail"
    raw = find_directive_text(text)
    d = parse_directive(raw)
    assert d.scope == "run-1"
    assert d.outputs == ({"a": 1},)


def test_directive_scope_defaults_to_raw_json_and_first_wins():
    text = 'x <<sim:{"outputs": [1]}>> y <<sim:{"id": "second"}>>'
    raw = find_directive_text(text)
    assert raw == '{"outputs": [1]}'
    assert parse_directive(raw).scope == raw


def test_directive_json_may_contain_closing_marker():
    raw = find_directive_text(directive({"id": "a>>b"}))
    assert parse_directive(raw).scope == "a>>b"


def test_no_directive():
    assert find_directive_text("just a prompt") is None
    assert analyze(task_messages("just a prompt"), PURCHASE).scope is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<<sim:{bad json}>>", "invalid sim directive JSON"),
        ('<<sim:{"id": "x"} >>', "must end with '>>'"),
        ("<<sim:[1, 2]>>", "must be a JSON object"),
        ('<<sim:{"colour": "red"}>>', "unknown sim directive key"),
        ('<<sim:{"task_faults": ["418"]}>>', "unknown fault"),
        ('<<sim:{"votes": {"*": "maybe"}}>>', "invalid vote rule"),
        ('<<sim:{"votes": {"*": 1.5}}>>', "must be in [0, 1]"),
        ('<<sim:{"latency": "soon"}>>', "invalid latency spec"),
    ],
)
def test_bad_directives_raise(text, message):
    with pytest.raises(DirectiveError, match=message.replace("[", r"\[").replace("]", r"\]")):
        analyze([{"role": "user", "content": text}], PURCHASE)


# --- attempts and outputs ---------------------------------------------------------------


def test_attempt_counts_failure_reasoning_blocks():
    assert count_attempt(["plain"]) == 1
    assert analyze(task_messages("p", failures=2), PURCHASE).attempt == 3
    assert analyze(vote_messages("p", {}, "ok"), VOTE).attempt is None


def test_outputs_follow_attempt_and_last_repeats():
    d = directive({"id": "o", "outputs": ["!json", "!schema", {"product": "pears", "quantity": 2}]})
    contents = [run_task(task_messages("buy " + d, failures=n)).content for n in range(4)]
    with pytest.raises(json.JSONDecodeError):
        json.loads(contents[0])
    assert json.loads(contents[1]) != {} and "unexpected" in json.loads(contents[1])
    assert json.loads(contents[2]) == {"product": "pears", "quantity": 2}
    assert contents[3] == contents[2]


def test_bad_json_output_is_a_truncated_object():
    prompt = "I want 5 apples " + directive({"outputs": ["!json"]})
    content = run_task(task_messages(prompt)).content
    assert content == '{"product": "apples", "quantity": '
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)


# --- faults ------------------------------------------------------------------------------


def test_task_faults_per_call_index_then_normal():
    d = directive({"id": "f", "task_faults": ["429", "none", "timeout", "500"]})
    config = SimConfig(hang_s=7.0)
    results = [run_task(task_messages(d), index=i, config=config) for i in range(5)]
    assert [r.fault for r in results] == ["429", None, "timeout", "500", None]
    assert results[0].content is None and results[3].content is None
    assert results[2].delay == 7.0 and json.loads(results[2].content)
    assert results[4].content is not None


def test_vote_faults_are_counted_separately_from_task_faults():
    d = directive({"id": "v", "task_faults": ["500"], "vote_faults": ["503", "invalid_json"]})
    call = analyze(vote_messages(d, {"a": 1}, "is fine"), VOTE)
    assert call.kind == "vote"
    assert run_vote(call, index=0).fault == "503"
    bad = run_vote(call, index=1)
    assert bad.fault == "invalid_json" and bad.verdict is None
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad.content)
    assert run_vote(call, index=2).verdict is True


def test_schema_fault_violates_schema():
    d = directive({"task_faults": ["schema"]})
    value = json.loads(run_task(task_messages("I want 5 apples" + d)).content)
    assert value["unexpected"] is True
    assert not isinstance(value["product"], str) and not isinstance(value["quantity"], int)


def test_random_faults_use_fault_rate_and_are_reproducible():
    always = SimConfig(fault_rate=1.0, faults=("503",))
    assert run_task(task_messages("p"), config=always).fault == "503"
    config = SimConfig(fault_rate=0.5, seed=3)
    faults = [run_task(task_messages("p"), index=i, config=config).fault for i in range(40)]
    again = [run_task(task_messages("p"), index=i, config=config).fault for i in range(40)]
    assert faults == again
    assert 5 < sum(f is not None for f in faults) < 35
    other = SimConfig(fault_rate=0.5, seed=4)
    assert faults != [run_task(task_messages("p"), index=i, config=other).fault for i in range(40)]


# --- votes ---------------------------------------------------------------------------------


def test_vote_prompt_parsing():
    text = vote_messages("Extract: I want 5 apples", {"product": "apples"}, " has product ")[1]
    assert parse_vote_prompt(text["content"]) == ("has product", {"product": "apples"})
    raw = "# Task\nt\n\n# Output\nnot json\n\n# Criterion\nX"
    assert parse_vote_prompt(raw) == ("X", "not json")


def test_vote_classification_needs_exactly_is_valid_and_reasoning():
    assert analyze(vote_messages("t", {}, "c"), VOTE).kind == "vote"
    extra = {"type": "object", "properties": {**VOTE["properties"], "score": {"type": "number"}}}
    assert analyze(vote_messages("t", {}, "c"), extra).kind == "task"


@pytest.mark.parametrize(
    ("rule", "expected"), [(True, True), (False, False), (1, True), (0.0, False)]
)
def test_vote_constant_rules(rule, expected):
    d = directive({"votes": {"has product": rule}})
    decision = run_vote(analyze(vote_messages(d, {}, "has product"), VOTE))
    assert decision.verdict is expected
    answer = json.loads(decision.content)
    assert answer["is_valid"] is expected and "has product" in answer["reasoning"]


def test_vote_probability_is_reproducible_per_seed():
    d = directive({"id": "p", "votes": {"*": 0.5}})
    call = analyze(vote_messages(d, {}, "c"), VOTE)
    verdicts = [run_vote(call, issue_index=i).verdict for i in range(40)]
    assert verdicts == [run_vote(call, issue_index=i).verdict for i in range(40)]
    assert 5 < sum(verdicts) < 35
    seeded = SimConfig(seed=99)
    assert verdicts != [run_vote(call, issue_index=i, config=seeded).verdict for i in range(40)]


def test_vote_list_rule_counts_per_issue_and_repeats_last():
    d = directive({"votes": {"a": [False, True], "*": True}})
    call = analyze(vote_messages(d, {}, "a"), VOTE)
    assert [run_vote(call, issue_index=i).verdict for i in range(4)] == [False, True, True, True]
    other = analyze(vote_messages(d, {}, "b"), VOTE)
    assert run_vote(other).verdict is True


def test_vote_pass_if_rule():
    d = directive({"votes": {"*": {"pass_if": {"quantity": 5}}}})
    good = analyze(vote_messages(d, {"product": "x", "quantity": 5}, "qty"), VOTE)
    bad = analyze(vote_messages(d, {"product": "x", "quantity": 4}, "qty"), VOTE)
    text = analyze(vote_messages(d, "5", "qty"), VOTE)
    assert run_vote(good).verdict is True
    assert run_vote(bad).verdict is False
    assert run_vote(text).verdict is False


def test_vote_error_rule_and_default_pass_rate():
    d = directive({"votes": {"broken": "error"}})
    decision = run_vote(analyze(vote_messages(d, {}, "broken"), VOTE))
    assert decision.fault == "500" and decision.content is None
    plain = analyze(vote_messages("no directive", {}, "c"), VOTE)
    assert run_vote(plain, config=SimConfig(pass_rate=0.0)).verdict is False
    assert run_vote(plain, config=SimConfig(pass_rate=1.0)).verdict is True


# --- fake values ---------------------------------------------------------------------------


def test_fake_purchase_from_prompt():
    assert fake_value(PURCHASE, prompt="Extract purchase from: I want 5 apples") == {
        "product": "apples",
        "quantity": 5,
    }
    content = run_task(task_messages("Extract purchase from: I want 5 apples")).content
    assert json.loads(content) == {"product": "apples", "quantity": 5}


def test_fake_refs_nullable_anyof_enum_const_arrays():
    schema = {
        "type": "object",
        "$defs": {"Item": {"type": "object", "properties": {"name": {"type": "string"}}}},
        "definitions": {"Colour": {"enum": ["red", "blue"]}},
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
            "colour": {"$ref": "#/definitions/Colour"},
            "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
            "count": {"type": ["null", "integer"]},
            "price": {"type": "number"},
            "ok": {"type": "boolean"},
            "kind": {"const": "purchase"},
        },
    }
    value = fake_value(schema, prompt="Order 3 red mugs\nfor Alice please")
    assert value == {
        "items": [{"name": "please"}],
        "colour": "red",
        "note": "please",
        "count": 3,
        "price": 3,
        "ok": True,
        "kind": "purchase",
    }
    assert fake_value(schema, prompt="Order 3 red mugs\nfor Alice please") == value


def test_fake_defaults_without_prompt_or_schema():
    assert fake_value({"type": "integer"}, prompt="") == 1
    assert fake_value({"type": "string"}, prompt="") == "example"
    assert fake_value(None) == {}
    assert json.loads(run_task(task_messages("hello"), schema=None).content) == {}


def test_violating_value_breaks_types():
    value = violating_value(PURCHASE)
    assert value["unexpected"] is True and not isinstance(value["product"], str)


# --- latency and config --------------------------------------------------------------------


def test_latency_specs():
    rng = random.Random(0)
    assert parse_latency("0.2") == Latency("fixed", (0.2,))
    assert parse_latency(0.5).sample(rng) == 0.5
    uniform = parse_latency("uniform:0.1:0.3")
    assert all(0.1 <= uniform.sample(rng) <= 0.3 for _ in range(50))
    assert parse_latency("exp:0.5").kind == "exp"
    assert all(parse_latency("normal:0:1").sample(rng) >= 0 for _ in range(50))
    assert str(parse_latency("uniform:0.1:2")) == "uniform:0.1:2"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fast", "'fast' is not a number"),
        ("-1", "must be a finite number >= 0"),
        ("uniform:1", r"uniform takes 2 value\(s\) \(uniform:A:B\)"),
        ("uniform:3:1", "uniform needs A <= B"),
        ("exp:x", "MEAN 'x' is not a number"),
        ("gamma:1:2", "unknown kind 'gamma'"),
    ],
)
def test_bad_latency_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_latency(spec)


def test_directive_latency_overrides_global():
    config = SimConfig(latency=parse_latency("5"))
    assert run_task(task_messages("p"), config=config).delay == 5
    assert run_task(task_messages("p" + directive({"latency": 0.25})), config=config).delay == 0.25


def test_latency_samples_reproducible_from_seed():
    def delays(seed: int) -> list[float]:
        config = SimConfig(latency=parse_latency("uniform:0:1"), seed=seed)
        return [run_task(task_messages("p"), index=i, config=config).delay for i in range(10)]

    assert delays(1) == delays(1)
    assert delays(1) != delays(2)


def test_parse_args_flags():
    config = parse_args(
        [
            "--port",
            "0",
            "--latency",
            "exp:0.2",
            "--pass-rate",
            "0.7",
            "--fault-rate",
            "0.1",
            "--faults",
            "429,503",
            "--hang-s",
            "3",
            "--retry-after",
            "2",
            "--seed",
            "7",
            "--api-key",
            "k",
            "--dialect",
            "json_object",
            "--host",
            "0.0.0.0",
        ]
    )
    assert config == SimConfig(
        host="0.0.0.0",
        port=0,
        latency=Latency("exp", (0.2,)),
        pass_rate=0.7,
        fault_rate=0.1,
        faults=("429", "503"),
        hang_s=3.0,
        retry_after=2.0,
        seed=7,
        api_key="k",
        dialect="json_object",
    )
    assert parse_args([]) == SimConfig()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--latency", "uniform:2:1"], "uniform needs A <= B"),
        (["--pass-rate", "2"], "must be between 0 and 1"),
        (["--faults", "429,teapot"], "unknown fault"),
        (["--dialect", "xml"], "invalid dialect"),
    ],
)
def test_parse_args_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_runtime_config_mapping():
    new = from_mapping({"latency": 0.3, "faults": ["500"], "pass_rate": 0.5}, base=CONFIG)
    assert new.latency == Latency("fixed", (0.3,)) and new.faults == ("500",)
    assert from_mapping(new.to_dict(), base=CONFIG) == new
    with pytest.raises(ValueError, match="unknown config field"):
        from_mapping({"speed": 1}, base=CONFIG)
    with pytest.raises(ValueError, match="pass_rate"):
        from_mapping({"pass_rate": "high"}, base=CONFIG)
