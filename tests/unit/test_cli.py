"""The `quorum` command without a stack: options passed through, one-line errors, a quick
answer when Redis is down, the live view and the provenance tree (Typer's runner)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from quorum.producer import cli
from quorum.producer.runview import run_page
from quorum.producer.terminal import run_tree, run_view
from quorum.shared.models import TaskStatus
from quorum.shared.settings import get_settings
from tests.unit.test_runview import EVENTS, state

runner = CliRunner()


@pytest.fixture
def execvp(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    started: list[list[str]] = []

    def fake(file: str, args: list[str]) -> int:
        started.append(args)
        return 0

    monkeypatch.setattr(cli.os, "execvp", fake)
    return started


def test_worker_passes_every_option_to_celery(execvp: list[list[str]]) -> None:
    assert cli.main(["worker", "--loglevel", "INFO", "-Q", "quorum.votes", "--help"]) == 0
    expected = ["-A", "quorum.worker.app", "worker", "--loglevel", "INFO", "-Q", "quorum.votes"]
    assert execvp[0][1:] == [*expected, "--help"]


def test_api_passes_every_option_to_uvicorn_after_its_defaults(execvp: list[list[str]]) -> None:
    result = runner.invoke(cli.app, ["api", "--port", "9000", "--workers", "2"])
    assert result.exit_code == 0, result.output
    command = execvp[0]
    assert command[1:5] == ["-m", "uvicorn", "--factory", "quorum.producer.api:main_app"]
    assert command[-4:] == ["--port", "9000", "--workers", "2"]  # the last --port wins
    assert command[5:9] == ["--host", "127.0.0.1", "--port", "8080"]


def test_sim_passes_every_option_to_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    import quorum.simulator.server

    given: list[list[str]] = []
    monkeypatch.setattr(quorum.simulator.server, "main", lambda args: given.append(list(args)))
    assert cli.main(["sim", "--port", "18000", "--latency", "0.1"]) == 0
    assert runner.invoke(cli.app, ["sim", "--help"]).exit_code == 0
    assert given == [["--port", "18000", "--latency", "0.1"], ["--help"]]


def test_every_read_command_has_json() -> None:
    for name in ("submit", "runs", "tasks", "status", "watch", "result", "provenance", "cancel"):
        shown = runner.invoke(cli.app, [name, "--help"])
        assert shown.exit_code == 0 and "--json" in shown.output, name


def test_submit_takes_the_clients_options() -> None:
    shown = runner.invoke(cli.app, ["submit", "--help"]).output
    for option in ("--timeout-s", "--max-tokens", "--max-cost", "--metadata", "--template-file"):
        assert option in shown, option


def test_a_usage_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--llm", "gpt"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("quorum: ") and error.count("\n") == 1
    assert "'gpt' is not one of" in error
    assert cli.main(["nope"]) == 2


@pytest.fixture
def redis_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUORUM_REDIS_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("redis_down")
@pytest.mark.parametrize("argv", [["status", "r1"], ["runs"], ["tasks", "--json"]])
def test_an_unreachable_redis_is_said_within_two_seconds(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    assert cli.main(argv) == 2
    assert time.monotonic() - started < 2
    error = capsys.readouterr().err
    assert error.startswith("quorum: Redis does not answer") and error.count("\n") == 1


@pytest.mark.usefixtures("redis_down")
def test_bad_json_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["submit", "--template", "x", "--kwargs", "{nope"]) == 2
    assert "--kwargs" in capsys.readouterr().err


def render(renderable: object) -> str:
    console = Console(width=120, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_the_live_view_shows_attempts_votes_per_issue_margins_and_the_decision():
    text = render(run_view(run_page(state(), EVENTS)))
    assert "run r1  SUCCESSFUL  attempt 3" in text
    assert "1. is polite" in text and "✘?" in text  # attempt 2: an invalid vote, an error vote
    assert "+1" in text and "-1" in text  # margins
    assert "too long" in text  # attempt 1's check
    assert text.rstrip().endswith("decision: SUCCESSFUL")
    live = render(run_view(run_page(state(TaskStatus.VALIDATING), EVENTS[:5])))
    assert "deciding…" in live and "decision:" not in live


def test_provenance_is_a_tree():
    text = render(run_tree(run_page(state(), EVENTS)))
    assert text.splitlines()[0] == "run r1  SUCCESSFUL"
    assert "├── attempt 1  failed" in text
    assert "expression check 'len(x) < 3': too long" in text
    assert "✘ vote 1 <b>reason 0</b>" in text
    assert "feedback sent: be polite" in text and 'result {"text": "hi"}' in text


def documented_commands() -> set[str]:
    """The `quorum` commands the README and docs/cli.md show in their code blocks."""
    root = Path(__file__).resolve().parents[2]
    found = set()
    for page in (root / "README.md", root / "docs" / "cli.md"):
        for block in re.findall(r"```(?:bash)?\n(.*?)```", page.read_text(), flags=re.S):
            shown = re.findall(r"(?:^|[\s/:])quorum ([a-z|]+(?: serve)?)\b", block, re.M)
            found |= {name for names in shown for name in names.split("|")}  # a|b: both
    return found


def test_every_documented_command_exists_and_takes_help(execvp: list[list[str]]) -> None:
    documented = documented_commands()
    assert {"demo", "worker", "submit", "watch", "llm serve"} <= documented
    for command in sorted(documented - {"sim"}):  # sim's --help exits its own process
        shown = runner.invoke(cli.app, [*command.split(), "--help"])
        assert shown.exit_code == 0, (command, shown.output)
