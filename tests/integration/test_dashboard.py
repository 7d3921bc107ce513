"""The dashboard (`/ui` on `quorum api`) in a real headless Chromium, driven by Playwright.

The browser is the system's Chromium (Debian's `chromium` package, which `.ci/run` installs);
Playwright never downloads one. Without it these tests skip, saying why; under `CI=true` a
missing browser fails them. Screenshots are saved under pytest's temporary folder and copied
to `test-artifacts/` at the repository's root (ignored by git).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quorum import SingleShotValidationConfig, Workflow
from quorum.producer import TaskClient
from quorum.producer.stack import ManagedProcess
from quorum.shared.models import TaskStatus
from tests.integration.helpers import APPLES, PEARS, Purchase, directive
from tests.integration.services import http, start_api

pytestmark = pytest.mark.integration

TOKEN = "dashboard-token-42"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _browser_path() -> str:
    """The system Chromium, or skip (fail under CI) saying what is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    problem = "" if path else "no system Chromium (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "the playwright package is not installed (the dev extra)"
    if problem:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs a browser for the dashboard tests: {problem}")
        pytest.skip(problem)
    assert path is not None
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from the system's packages."""
    path = _browser_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=path, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def api(redis_url: str, worker: ManagedProcess) -> Iterator[str]:
    """The API's base URL, with a token set."""
    url, process = start_api({"QUORUM_REDIS_URL": redis_url, "QUORUM_API_TOKEN": TOKEN})
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def finished_run(client: TaskClient) -> str:
    """A run that failed its votes once (pears), was sent feedback, then passed (apples)."""
    sim = directive(
        "dashboard-retry",
        outputs=[PEARS, APPLES],
        votes={"*": {"pass_if": {"product": "apples"}}},
    )
    run = client.submit(
        template="Extract the purchase from: I want 5 apples {{ sim }}",
        response_model=Purchase,
        kwargs={"sim": sim},
        config={
            "mode": "threshold",
            "issues": ["names the product asked for"],
            "count": 3,
            "max_retries": 2,
        },
        metadata={"caller": "dashboard test"},
    )
    assert run.result(timeout=60) == Purchase(**APPLES)
    return run.id


def _shot(page: Any, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot, kept as a test artefact."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / name)
    return path


def _sign_in(page: Any, api: str, token: str) -> None:
    page.goto(f"{api}/ui")
    assert page.url.endswith("/ui/login")  # no session yet: the form
    page.fill("#token", token)
    page.click("button[type=submit]")


def test_the_runs_page_lists_a_finished_run_and_its_page_shows_the_votes(
    browser, api, finished_run, tmp_path
):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        _sign_in(page, api, TOKEN)
        page.wait_for_selector("#runs")
        row = page.locator(f"tr[data-run='{finished_run}']")
        assert row.count() == 1
        assert "SUCCESSFUL" in row.inner_text()
        _shot(page, tmp_path, "dashboard-runs.png")

        cookie = next(c for c in context.cookies() if c["name"] == "quorum_ui")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert TOKEN not in cookie["value"]

        page.goto(f"{api}/ui?status=FAILED")  # the filter leaves it out
        assert page.locator(f"tr[data-run='{finished_run}']").count() == 0
        page.goto(f"{api}/ui?status=SUCCESSFUL&limit=1")  # a page of one, and the next one
        assert page.locator("tr[data-run]").count() == 1
        first = page.locator("tr[data-run]").first.get_attribute("data-run")
        page.click("#more")  # a full page says how to go on; the next one goes on from it
        page.wait_for_selector("#runs")
        assert page.locator(f"tr[data-run='{first}']").count() == 0

        page.goto(f"{api}/ui")
        page.click(f"a[href='/ui/runs/{finished_run}']")
        page.wait_for_selector("#timeline")
        assert page.inner_text("#status") == TaskStatus.SUCCESSFUL.value
        attempts = page.locator("section.attempt")
        assert attempts.count() == 2
        first, second = attempts.nth(0).inner_text(), attempts.nth(1).inner_text()
        assert "names the product asked for" in first and "failed" in first
        assert "The output does not meet the criterion" in first  # a vote's reasoning
        assert "Feedback sent to attempt 2" in first and "pears" in first
        assert "The output meets the criterion" in second and "passed" in second
        assert page.locator("table.votes td.valid").count() >= 2
        assert "vote" in page.inner_text("#timeline")
        _shot(page, tmp_path, "dashboard-run.png")
    finally:
        context.close()


def test_a_live_run_page_follows_its_events_until_the_run_ends(browser, api, client, tmp_path):
    sim = directive("dashboard-live", outputs=[APPLES], votes={"*": True}, latency=1.5)
    run = client.submit(
        template="Extract the purchase from: I want 5 apples {{ sim }}",
        response_model=Purchase,
        kwargs={"sim": sim},
        config={"mode": "single_shot", "issues": ["names a product"], "max_retries": 0},
    )
    context = browser.new_context()
    page = context.new_page()
    try:
        _sign_in(page, api, TOKEN)
        page.wait_for_selector("#runs")
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(f"{api}/ui/runs/{run.id}")
        assert page.inner_text("#status") != TaskStatus.SUCCESSFUL.value  # still going
        page.wait_for_selector("main[data-live=ended] #status.SUCCESSFUL", timeout=30_000)
        assert "The output meets the criterion" in page.inner_text("section.attempt")
        # Redrawn from the run's event stream, never by reloading the page.
        assert any(f"/ui/runs/{run.id}/events?after=" in url for url in requests), requests
        loads = [url for url in requests if url == f"{api}/ui/runs/{run.id}"]
        assert len(loads) >= 2  # the page, then what each redraw fetched
        _shot(page, tmp_path, "dashboard-live.png")
    finally:
        context.close()
    assert run.result(timeout=5) == Purchase(**APPLES)
    stream = http("GET", f"{api}/ui/runs/{run.id}/events", token=TOKEN)
    assert stream.status == 200 and "event: succeeded" in stream.text  # an ended run: all of it


TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
ITEMS = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": {"type": "string"}}},
    "required": ["items"],
}


def _node(template: str, schema: dict[str, Any] = TEXT) -> dict[str, Any]:
    config = SingleShotValidationConfig(issues=["The answer is right"], max_retries=0)
    return {"template": template + " {{ sim }}", "response_model": schema, "config": config}


def _workflow(scope: str) -> Workflow:
    """extract (slow) → check (a map over its two items) → summary; maybe, beside check,
    skipped by its `skip_if`."""
    wf = Workflow("dashboard-diamond", timeout_s=60)
    items = [
        f"claim {i} " + directive(f"{scope}-i{i}", outputs=[{"text": f"v{i}"}]) for i in (0, 1)
    ]
    sim = directive(f"{scope}-ex", outputs=[{"items": items}], latency=1.5)
    ex = wf.task("extract", task=_node("Extract.", ITEMS), kwargs={"sim": sim})
    check = wf.map(
        "check", over=ex["items"], item="claim", task=_node("Check {{ claim }}"), kwargs={"sim": ""}
    )
    maybe = directive(f"{scope}-maybe")
    wf.task(
        "maybe",
        task=_node("Maybe {{ x }}"),
        kwargs={"x": ex["items"], "sim": maybe},
        skip_if="x | length == 2",
    )
    summary = directive(f"{scope}-sum", outputs=[{"text": "two verdicts"}])
    wf.task("summary", task=_node("Sum {{ v }}"), kwargs={"v": check, "sim": summary})
    return wf


def test_a_workflow_page_shows_its_nodes(browser, api, client, tmp_path):
    run = client.submit_workflow(_workflow("dashboard-wf"))
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        _sign_in(page, api, TOKEN)
        row = page.locator(f"#workflows tr[data-workflow='{run.id}']")  # beside the runs
        assert "dashboard-diamond" in row.inner_text()
        row.locator("a").click()
        page.wait_for_selector("#graph")
        assert page.inner_text("#status") == "RUNNING"  # still going: the page follows it
        page.wait_for_selector("main[data-live=ended] #status.SUCCESSFUL", timeout=30_000)
        nodes = {
            name: page.locator(f"#graph .node[data-node='{name}']")
            for name in ("extract", "check", "maybe", "summary")
        }
        statuses = {name: box.get_attribute("data-status") for name, box in nodes.items()}
        assert statuses == {
            "extract": "SUCCESSFUL",
            "check": "SUCCESSFUL",
            "maybe": "SKIPPED",
            "summary": "SUCCESSFUL",
        }
        assert "2/2 items" in nodes["check"].inner_text()
        assert nodes["check"].locator("a[href^='/ui/runs/']").count() == 2
        assert page.locator("#graph path.edge").count() == 3
        assert "4 of 4 nodes ended" in page.inner_text("#progress")
        _shot(page, tmp_path, "dashboard-workflow.png")

        nodes["summary"].locator("a.run").click()  # a node's run, and back to its workflow
        page.wait_for_selector("#timeline")
        assert page.url.endswith(f"/ui/runs/{run.id}.3.0")
        page.click("#workflow")
        page.wait_for_selector("#graph")
        assert page.url.endswith(f"/ui/workflows/{run.id}")

        page.goto(f"{api}/ui/workflows?status=SUCCESSFUL")
        assert page.locator(f"tr[data-workflow='{run.id}']").count() == 1
        page.goto(f"{api}/ui/workflows?status=FAILED")
        assert page.locator(f"tr[data-workflow='{run.id}']").count() == 0
    finally:
        context.close()
    assert run.status() == "SUCCESSFUL"
    assert http("GET", f"{api}/ui/workflows/{run.id}", token="not-the-token").status == 401
    missing = http("GET", f"{api}/ui/workflows/nope", token=TOKEN)
    assert missing.status == 404 and "No such workflow" in missing.text
    stream = http("GET", f"{api}/ui/workflows/{run.id}/events", token=TOKEN)
    assert stream.status == 200 and "event: workflow_finished" in stream.text


def test_a_wrong_token_is_refused(browser, api, finished_run, tmp_path):
    context = browser.new_context()
    page = context.new_page()
    try:
        _sign_in(page, api, "not-the-token")
        page.wait_for_selector("#error")
        assert page.inner_text("#error") == "wrong token"
        assert not [c for c in context.cookies() if c["name"] == "quorum_ui"]
        _shot(page, tmp_path, "dashboard-refused.png")
        page.goto(f"{api}/ui/runs/{finished_run}")
        assert page.url.endswith("/ui/login")  # still no way in
    finally:
        context.close()
    # The bearer header: a wrong token is 401, the right one shows the page.
    assert http("GET", f"{api}/ui", token="not-the-token").status == 401
    shown = http("GET", f"{api}/ui/runs/{finished_run}", token=TOKEN)
    assert finished_run in shown.text
    assert "frame-ancestors 'none'" in shown.headers["content-security-policy"]
    assert http("GET", f"{api}/ui/runs/nope", token=TOKEN).status == 404
