"""Config validation, defaults (docs/architecture.md §3), the status machine (§2.6), and JSON
round trips."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from quorum.shared.models import (
    KAheadVotingValidationConfig,
    RunSpec,
    SingleShotValidationConfig,
    TaskStatus,
    ThresholdVotingValidationConfig,
    ValidationConfig,
    can_transition,
)

ISSUES = ["the quantity is a positive integer"]
CONFIGS = TypeAdapter(ValidationConfig)
TERMINAL = [TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.CANCELLED]


@pytest.mark.parametrize(
    ("cls", "fields"),
    [
        (SingleShotValidationConfig, {}),
        (SingleShotValidationConfig, {"max_retries": 0}),
        (ThresholdVotingValidationConfig, {"count": 1}),
        (ThresholdVotingValidationConfig, {"count": 5, "required_ahead": 5}),
        (KAheadVotingValidationConfig, {"count": 3, "required_ahead": 5}),
        (KAheadVotingValidationConfig, {"count": 5, "required_ahead": 3, "max_votes": 5}),
    ],
)
def test_valid_configs_are_accepted(cls: type, fields: dict[str, Any]) -> None:
    config = cls(issues=ISSUES, **fields)
    assert list(config.issues) == ISSUES


@pytest.mark.parametrize(
    ("cls", "fields", "field_named"),
    [
        (ThresholdVotingValidationConfig, {"count": 4}, "count"),
        (KAheadVotingValidationConfig, {"count": 4}, "count"),
        (ThresholdVotingValidationConfig, {"count": 0}, "count"),
        (ThresholdVotingValidationConfig, {"required_ahead": 0}, "required_ahead"),
        (ThresholdVotingValidationConfig, {"count": 3, "required_ahead": 4}, "required_ahead"),
        (KAheadVotingValidationConfig, {"required_ahead": 0}, "required_ahead"),
        (KAheadVotingValidationConfig, {"count": 5, "max_votes": 4}, "max_votes"),
        (
            KAheadVotingValidationConfig,
            {"count": 3, "required_ahead": 7, "max_votes": 6},
            "max_votes",
        ),
        (SingleShotValidationConfig, {"max_retries": -1}, "max_retries"),
        (ThresholdVotingValidationConfig, {"max_retries": -1}, "max_retries"),
        (KAheadVotingValidationConfig, {"max_retries": -1}, "max_retries"),
        (KAheadVotingValidationConfig, {"first_round": 0}, "first_round"),
        (KAheadVotingValidationConfig, {"count": 3, "first_round": 13}, "first_round"),
        (SingleShotValidationConfig, {"issues": []}, "issues"),
        (ThresholdVotingValidationConfig, {"issues": ["ok", "   "]}, "issues"),
        (KAheadVotingValidationConfig, {"issues": [""]}, "issues"),
    ],
)
def test_invalid_configs_are_refused_naming_the_field(
    cls: type, fields: dict[str, Any], field_named: str
) -> None:
    with pytest.raises(ValueError, match=field_named) as caught:
        cls(**{"issues": ISSUES, **fields})
    assert isinstance(caught.value, ValidationError)


def test_missing_issues_are_refused() -> None:
    with pytest.raises(ValueError, match="issues"):
        ThresholdVotingValidationConfig()  # type: ignore[call-arg]


def test_issues_are_stripped() -> None:
    assert SingleShotValidationConfig(issues=["  short  "]).issues == ["short"]


def test_single_shot_defaults() -> None:
    config = SingleShotValidationConfig(issues=ISSUES)
    assert (config.mode, config.count, config.required_ahead) == ("single_shot", 1, 1)
    assert (config.max_retries, config.max_votes) == (3, 1)


def test_threshold_defaults() -> None:
    config = ThresholdVotingValidationConfig(issues=ISSUES)
    assert (config.mode, config.count, config.required_ahead) == ("threshold", 3, 1)
    assert (config.max_retries, config.max_votes) == (0, 3)


def test_k_ahead_defaults() -> None:
    config = KAheadVotingValidationConfig(issues=ISSUES)
    assert (config.mode, config.count, config.required_ahead) == ("k_ahead", 5, 3)
    assert (config.max_retries, config.max_votes) == (0, 20)


@pytest.mark.parametrize("count", [1, 3, 7, 11])
def test_k_ahead_cap_defaults_to_four_times_count(count: int) -> None:
    config = KAheadVotingValidationConfig(issues=ISSUES, count=count, required_ahead=1)
    assert config.max_votes == 4 * count


def test_configs_are_frozen() -> None:
    config = ThresholdVotingValidationConfig(issues=ISSUES)
    with pytest.raises(ValidationError):
        config.count = 5  # type: ignore[misc]


# -- status machine -----------------------------------------------------------------------


@pytest.mark.parametrize(("current", "new"), list(itertools.product(TERMINAL, TaskStatus)), ids=str)
def test_no_transition_out_of_a_terminal_state(current: TaskStatus, new: TaskStatus) -> None:
    assert current.terminal
    assert not can_transition(current, new)


def test_terminal_statuses() -> None:
    assert {s for s in TaskStatus if s.terminal} == set(TERMINAL)


def test_the_retry_path_is_allowed() -> None:
    path = [
        TaskStatus.PENDING,
        TaskStatus.RUNNING,
        TaskStatus.VALIDATING,
        TaskStatus.RETRYING,
        TaskStatus.RUNNING,
        TaskStatus.SUCCESSFUL,
    ]
    for current, new in itertools.pairwise(path):
        assert can_transition(current, new), f"{current} → {new}"


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (TaskStatus.PENDING, TaskStatus.VALIDATING),
        (TaskStatus.PENDING, TaskStatus.SUCCESSFUL),
        (TaskStatus.VALIDATING, TaskStatus.RUNNING),
        (TaskStatus.RETRYING, TaskStatus.VALIDATING),
        (TaskStatus.RETRYING, TaskStatus.SUCCESSFUL),
        (TaskStatus.RUNNING, TaskStatus.PENDING),
    ],
    ids=str,
)
def test_no_skipping_or_going_backwards(current: TaskStatus, new: TaskStatus) -> None:
    assert not can_transition(current, new)


@pytest.mark.parametrize("current", [s for s in TaskStatus if not s.terminal], ids=str)
def test_every_live_run_can_fail_or_be_cancelled(current: TaskStatus) -> None:
    assert can_transition(current, TaskStatus.FAILED)
    assert can_transition(current, TaskStatus.CANCELLED)


def test_status_is_a_str_enum() -> None:
    assert TaskStatus("RUNNING") is TaskStatus.RUNNING
    assert TaskStatus.RUNNING == "RUNNING"


# -- JSON round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "mode"),
    [
        (SingleShotValidationConfig(issues=ISSUES, max_retries=2), "single_shot"),
        (ThresholdVotingValidationConfig(issues=ISSUES, count=5, required_ahead=3), "threshold"),
        (KAheadVotingValidationConfig(issues=ISSUES, count=3, max_votes=9), "k_ahead"),
    ],
)
def test_configs_round_trip_through_json(config: Any, mode: str) -> None:
    text = config.model_dump_json()
    assert f'"mode":"{mode}"' in text
    back = CONFIGS.validate_json(text)
    assert type(back) is type(config)
    assert back == config


def test_the_mode_discriminator_picks_the_class() -> None:
    config = CONFIGS.validate_python({"mode": "k_ahead", "issues": ISSUES, "count": 3})
    assert isinstance(config, KAheadVotingValidationConfig)
    assert config.max_votes == 12


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValidationError, match="mode"):
        CONFIGS.validate_python({"mode": "majority", "issues": ISSUES})


def test_run_spec_round_trips_through_json() -> None:
    spec = RunSpec(
        template="Extract: {{ message }}",
        kwargs={"message": "5 apples"},
        response_schema={"type": "object"},
        config=KAheadVotingValidationConfig(issues=ISSUES),
        model="m",
        validator_model="v",
    )
    back = RunSpec.model_validate_json(spec.model_dump_json())
    assert back == spec
    assert isinstance(back.config, KAheadVotingValidationConfig)


# -- properties ---------------------------------------------------------------------------


@given(st.lists(st.sampled_from(list(TaskStatus)), min_size=1, max_size=30))
def test_the_status_machine_never_leaves_a_terminal_state(walk: list[TaskStatus]) -> None:
    """Follow any sequence of requested moves, taking only the allowed ones (as the store's
    compare-and-set does): once terminal, the status never changes again."""
    status = TaskStatus.PENDING
    for wanted in walk:
        if can_transition(status, wanted):
            assert not status.terminal
            status = wanted


def _valid(
    mode: str, count: int, ahead: int, cap: int | None, retries: int, issues: list[str]
) -> bool:
    """The documented rules (docs/architecture.md §3), written independently of the models."""
    if not issues or any(not i.strip() for i in issues) or not 0 <= retries <= 50:
        return False
    if mode == "single_shot":
        return True
    if count < 1 or count % 2 == 0 or count > 99 or ahead < 1:
        return False
    if mode == "threshold":
        return ahead <= count
    cap = 4 * count if cap is None else cap
    return max(count, ahead) <= cap <= 999


@given(
    mode=st.sampled_from(["single_shot", "threshold", "k_ahead"]),
    count=st.integers(-2, 12),
    ahead=st.integers(-1, 14),
    cap=st.one_of(st.none(), st.integers(-1, 40)),
    retries=st.integers(-2, 52),
    issues=st.lists(st.sampled_from(["ok", "  ", "", "is polite"]), max_size=3),
)
def test_config_validation_accepts_exactly_the_valid_configs(
    mode: str, count: int, ahead: int, cap: int | None, retries: int, issues: list[str]
) -> None:
    fields: dict[str, Any] = {"mode": mode, "issues": issues, "max_retries": retries}
    if mode != "single_shot":
        fields |= {"count": count, "required_ahead": ahead}
    if mode == "k_ahead" and cap is not None:
        fields["max_votes"] = cap
    try:
        CONFIGS.validate_python(fields)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == _valid(mode, count, ahead, cap, retries, issues)
