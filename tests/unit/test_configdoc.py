"""docs/configuration.md is generated from `Settings` (`quorum.producer.configdoc`), so it
cannot drift from the code."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from quorum.producer.configdoc import env_names, markdown, type_text
from quorum.shared.settings import Price, Settings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_committed_page_is_the_generated_one() -> None:
    assert PAGE.read_text() == markdown(), (
        "docs/configuration.md is stale: run "
        "`python -m quorum.producer.configdoc > docs/configuration.md`"
    )


def test_every_setting_has_a_row_with_its_variable_and_a_description() -> None:
    page = markdown()
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"| `{env_names(name, field)[0]}`" in page


def test_variables_are_the_prefixed_names_or_the_aliases() -> None:
    fields = Settings.model_fields
    assert env_names("redis_url", fields["redis_url"]) == ["QUORUM_REDIS_URL"]
    assert env_names("openai_api_key", fields["openai_api_key"]) == [
        "OPENAI_API_KEY",
        "QUORUM_OPENAI_API_KEY",
    ]
    assert "| `OPENAI_BASE_URL` (or `QUORUM_OPENAI_BASE_URL`) |" in markdown()


def test_types_defaults_and_bounds_read_plainly() -> None:
    assert type_text(Literal["json_schema", "json_object"]) == "one of `json_schema`, `json_object`"
    assert type_text(SecretStr | None) == "secret"
    assert type_text(dict[str, Price]) == "JSON object"
    page = markdown()
    assert "| `QUORUM_RESULT_TTL_S` | integer, > 0 | `604800` |" in page
    assert "| `QUORUM_TASK_SENT_EVENTS` | boolean | `false` |" in page
    assert "| `QUORUM_BROKER_URL` | string | unset |" in page
    assert "| `QUORUM_PRICES` | JSON object | `{}` |" in page
