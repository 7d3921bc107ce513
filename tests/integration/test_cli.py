"""The `quorum` command against the session's Redis, worker and simulator: each read command
through Typer's runner, and one real `quorum submit --wait` process."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quorum.producer import TaskClient
from quorum.producer.cli import app
from quorum.producer.stack import celery_command
from quorum.shared.settings import get_settings
from tests.integration.helpers import APPLES, PEARS, Purchase, directive

pytestmark = pytest.mark.integration

CONFIG = {"mode": "threshold", "issues": ["names the product asked for"], "count": 3}
runner = CliRunner()


@pytest.fixture
def quorum_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("QUORUM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def retried(client: TaskClient) -> str:
    """A run that failed its votes once (pears), then passed (apples)."""
    sim = directive(
        "cli-retried", outputs=[PEARS, APPLES], votes={"*": {"pass_if": {"product": "apples"}}}
    )
    run = client.submit(
        template="Extract the purchase from: I want 5 apples {{ sim }}",
        response_model=Purchase,
        kwargs={"sim": sim},
        config={**CONFIG, "max_retries": 1},
    )
    run.result(timeout=60)
    return run.id


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


@pytest.mark.usefixtures("quorum_env")
def test_the_read_commands_in_text_and_json(retried: str) -> None:
    assert retried in invoke("runs")
    listed = json.loads(invoke("runs", "--json", "--limit", "100"))["runs"]
    mine = next(row for row in listed if row["id"] == retried)
    assert (mine["status"], mine["attempt"], mine["task"]) == ("SUCCESSFUL", 2, None)
    assert retried not in invoke("runs", "--status", "failed")

    assert invoke("status", retried).strip() == "SUCCESSFUL"
    assert json.loads(invoke("status", retried, "--json"))["attempt"] == 2
    assert json.loads(invoke("result", retried)) == APPLES
    assert json.loads(invoke("result", retried, "--json"))["result"] == APPLES

    tree = invoke("provenance", retried)
    assert tree.startswith(f"run {retried}  SUCCESSFUL")
    assert "attempt 1  failed" in tree and "attempt 2  passed" in tree
    assert "The output does not meet the criterion" in tree and "feedback sent" in tree
    events = json.loads(invoke("provenance", retried, "--json"))
    assert events[0]["type"] == "submitted" and events[-1]["type"] == "succeeded"

    view = invoke("watch", retried)  # an ended run: its last view at once
    assert "✘✘✘" in view and "✔✔" in view and "decision: SUCCESSFUL" in view
    lines = invoke("watch", retried, "--json").splitlines()
    assert json.loads(lines[-1])["type"] == "succeeded"

    assert invoke("cancel", retried).strip() == "already ended"
    assert json.loads(invoke("cancel", retried, "--json"))["cancelled"] is False
    assert isinstance(json.loads(invoke("tasks", "--json")), dict)


@pytest.mark.usefixtures("quorum_env")
def test_an_unknown_run_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from quorum.producer.cli import main

    assert main(["status", "no-such-run"]) == 2
    assert capsys.readouterr().err == "quorum: no run 'no-such-run' (unknown id, or expired)\n"


def test_submit_wait_shows_the_run_live_and_prints_the_result(redis_url: str, tmp_path: Path):
    quorum = str(Path(celery_command()[0]).with_name("quorum"))
    template = tmp_path / "prompt.j2"
    template.write_text("Extract the purchase from: I want 5 apples {{ sim }}")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(Purchase.model_json_schema()))
    sim = directive("cli-wait", outputs=[APPLES], votes={"*": True}, latency=0.3)
    command = [
        quorum, "submit", "--template-file", str(template), "--schema", str(schema),
        "--kwargs", json.dumps({"sim": sim}), "--config", json.dumps(CONFIG),
        "--metadata", '{"from": "cli"}', "--timeout-s", "60", "--max-tokens", "100000",
        "--wait", "--timeout", "60",
    ]  # fmt: skip
    env = {"QUORUM_REDIS_URL": redis_url, "PATH": str(Path(quorum).parent), "COLUMNS": "120"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    run_id, result = done.stdout.split("\n", 1)
    assert json.loads(result) == APPLES
    # The live view went to stderr: the issue, its three votes, the margin, the decision.
    assert f"run {run_id}" in done.stderr and "names the product asked for" in done.stderr
    assert "✔✔✔" in done.stderr and "+3" in done.stderr
    assert "decision: SUCCESSFUL" in done.stderr
