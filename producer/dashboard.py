"""The dashboard: runs, attempts, issues and votes in the browser, on the API process.

Server-rendered HTML from the templates in `producer/templates/` (Jinja2, autoescaped), read
from the same store as the API; nothing to build, it installs with pip alone.

    GET  /ui                 the newest runs: status, task, age, attempts, tokens, cost;
                             `?status=FAILED`, `?task=` filter, `?limit=` caps (at most
                             500), `?cursor=` continues
    GET  /ui/runs/{id}       one run: each attempt's output, the checks that rejected it, each
                             issue's votes with reasonings and the decision, the feedback sent,
                             a timeline; it redraws itself as events arrive until the run ends
    GET  /ui/runs/{id}/events  the run's Server-Sent Events (`producer/sse.py`), which the run
                             page follows to redraw itself (`producer/static/live.js`)
    GET  /ui/workflows       the newest workflows: status, name, nodes ended, age, cost;
                             `?status=`, `?limit=`, `?cursor=` as for runs (`/ui` shows the
                             newest few above its runs)
    GET  /ui/workflows/{id}  one workflow: its status, progress and cost, its graph with each
                             node's status linking to its runs, its events; live until it ends
    GET  /ui/workflows/{id}/events  the workflow's Server-Sent Events, for that page
    GET  /ui/static/live.js  the script that redraws a live page
    GET  /ui/login           the login form; POST checks the token and sets the session cookie
    POST /ui/logout          drops the cookie

With `QUORUM_API_TOKEN` set, a page needs the token: as `Authorization: Bearer <token>` (a
wrong one: 401), or signed in through the form, which sets an HttpOnly, SameSite=Strict
cookie holding an HMAC of the token (not the token); without either, a page redirects to the
form. Without a token the dashboard is open, like the API.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader

from quorum.producer import sse
from quorum.producer.client import TaskClient
from quorum.producer.runview import RunRow, age, run_page, run_row
from quorum.producer.wfgraph import BOX_RUNS, NODE_H, NODE_W, shown_runs, workflow_page
from quorum.shared.errors import RunNotFoundError, RunUnreadableError
from quorum.shared.live import stream_id
from quorum.shared.models import TaskStatus
from quorum.shared.wflisting import WorkflowListing
from quorum.shared.wfstore import WorkflowStatus, WorkflowStore

__all__ = ["COOKIE", "TEMPLATES", "dashboard", "session_value"]

COOKIE = "quorum_ui"
MAX_LIST = 500
RECENT_WORKFLOWS = 10
REFRESH_S = 2
_LOGIN_BODY_LIMIT = 8192
HEADERS = {
    "Cache-Control": "no-store",
    # Our one script, its stream, inline styles; never framed.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
    "style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

TEMPLATES = Environment(
    loader=PackageLoader("quorum.producer", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
TEMPLATES.filters["age"] = age
TEMPLATES.globals.update(NODE_W=NODE_W, NODE_H=NODE_H, BOX_RUNS=BOX_RUNS)

dashboard = APIRouter(prefix="/ui", include_in_schema=False)


def session_value(token: str) -> str:
    """The cookie's value for `token`: an HMAC of it, so the cookie never holds the token."""
    return hmac.new(token.encode(), b"quorum dashboard session", hashlib.sha256).hexdigest()


def _access(request: Request) -> Response | None:
    """None when the request may see the dashboard; else the answer that refuses it."""
    token: str | None = request.app.state.token
    if token is None:
        return None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given:
        if secrets.compare_digest(given.strip().encode(), token.encode()):
            return None
        return _page("login.html", code=401, error="wrong token", signed_in=False)
    cookie = request.cookies.get(COOKIE, "")
    if cookie and secrets.compare_digest(cookie.encode(), session_value(token).encode()):
        return None
    return RedirectResponse("/ui/login", status_code=303)


def _page(name: str, *, code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("signed_in", True)
    html = TEMPLATES.get_template(name).render(now=time.time(), **context)
    return HTMLResponse(html, status_code=code, headers=HEADERS)


def _client(request: Request) -> TaskClient:
    client: TaskClient = request.app.state.client
    return client


def _listing(request: Request) -> WorkflowListing:
    store = _client(request).store
    return WorkflowListing(store.redis, keys=store.keys, ttl_s=store.ttl_s)


@dashboard.get("")
def runs_page(
    request: Request,
    status: TaskStatus | None = None,
    task: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
    cursor: str | None = None,
) -> Response:
    """The newest runs (the listing's indexes), optionally in one status or of one task."""
    if (refused := _access(request)) is not None:
        return refused
    client = _client(request)
    listed = client.list(status=status, task=task or None, limit=limit, cursor=cursor)
    rows: list[RunRow] = []
    for summary in listed:
        try:
            rows.append(run_row(client.store.load(summary.id)))  # usage and cost too
        except (RunNotFoundError, RunUnreadableError):  # expired since listed, or damaged
            continue
    # The newest workflows above the first page of runs (in the status asked for, if a
    # workflow can have it).
    wanted = WorkflowStatus(status.value) if status in list(WorkflowStatus) else None
    recent = []
    if cursor is None and not task and (status is None or wanted is not None):
        recent = _listing(request).page(status=wanted, limit=RECENT_WORKFLOWS).workflows
    return _page(
        "runs.html",
        workflows=recent,
        rows=rows,
        status=status,
        task=task or "",
        statuses=list(TaskStatus),
        limit=limit,
        next_cursor=listed.next_cursor,
    )


@dashboard.get("/runs/{run_id}")
def run_detail(request: Request, run_id: str) -> Response:
    """One run, attempt by attempt, and its timeline."""
    if (refused := _access(request)) is not None:
        return refused
    store = _client(request).store
    try:
        state = store.load(run_id)
        entries = store.event_entries(run_id)
    except RunNotFoundError as exc:
        return _page("missing.html", code=404, detail=str(exc))
    except RunUnreadableError as exc:
        return _page("missing.html", code=422, detail=str(exc), heading="Unreadable run")
    page = run_page(state, [event for _, event in entries])
    after = entries[-1][0] if entries else "0-0"
    return _page("run.html", page=page, refresh_s=REFRESH_S, after=after)


@dashboard.get("/runs/{run_id}/events")
def run_events(
    request: Request,
    run_id: str,
    after: str | None = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """The run's events as they happen, after `Last-Event-ID` (a reconnection) or `after`
    (the last event the page shows), until its terminal event."""
    if (refused := _access(request)) is not None:
        return refused
    client = _client(request)
    client.store.status(run_id)  # 404 for an unknown run
    return sse.event_stream(
        request.app.state.hub,
        request.app.state.hub.run_stream(run_id),
        after=stream_id(last_event_id or after),
        heartbeat_s=client.settings.sse_heartbeat_s,
    )


@dashboard.get("/workflows")
def workflows_page(
    request: Request,
    status: WorkflowStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
    cursor: str | None = None,
) -> Response:
    """The newest workflows, optionally in one status."""
    if (refused := _access(request)) is not None:
        return refused
    listed = _listing(request).page(status=status, limit=limit, cursor=cursor)
    return _page(
        "workflows.html",
        workflows=listed.workflows,
        status=status,
        statuses=list(WorkflowStatus),
        limit=limit,
        next_cursor=listed.next_cursor,
    )


@dashboard.get("/workflows/{workflow_id}")
def workflow_detail(request: Request, workflow_id: str) -> Response:
    """One workflow: its graph with each node's status and runs, and its events."""
    if (refused := _access(request)) is not None:
        return refused
    ws = WorkflowStore.of(_client(request).store)
    try:
        state = ws.load(workflow_id)
    except RunNotFoundError as exc:
        return _page("missing.html", code=404, detail=str(exc), heading="No such workflow")
    entries = ws.event_entries(workflow_id)
    statuses = _listing(request).statuses(shown_runs(state))
    page = workflow_page(state, statuses, [e for _, e in entries], now=time.time())
    after = entries[-1][0] if entries else "0-0"
    return _page("workflow.html", page=page, refresh_s=REFRESH_S, after=after)


@dashboard.get("/workflows/{workflow_id}/events")
def workflow_events(
    request: Request,
    workflow_id: str,
    after: str | None = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """The workflow's events as they happen, after `Last-Event-ID` or `after`, until
    `workflow_finished`."""
    if (refused := _access(request)) is not None:
        return refused
    client = _client(request)
    WorkflowStore.of(client.store).load(workflow_id)  # 404 for an unknown workflow
    hub = request.app.state.hub
    return sse.event_stream(
        hub,
        hub.workflow_stream(workflow_id),
        after=stream_id(last_event_id or after),
        heartbeat_s=client.settings.sse_heartbeat_s,
    )


@dashboard.get("/static/live.js")
def live_script() -> Response:
    """The script that redraws a live run page (no build step: a package file)."""
    script = files("quorum.producer").joinpath("static/live.js").read_text()
    return Response(script, media_type="text/javascript", headers=HEADERS)


@dashboard.get("/login")
def login_form(request: Request) -> Response:
    """The login form."""
    return _page("login.html", error="", signed_in=False)


@dashboard.post("/login")
async def login(request: Request) -> Response:
    """Check the token from the form; on success set the session cookie and go to the list."""
    token: str | None = request.app.state.token
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _LOGIN_BODY_LIMIT:
            return _page("login.html", code=413, error="form too large", signed_in=False)
    given = parse_qs(body.decode(errors="replace")).get("token", [""])[0]
    if token is None:
        return RedirectResponse("/ui", status_code=303)
    if not given or not secrets.compare_digest(given.encode(), token.encode()):
        return _page("login.html", code=401, error="wrong token", signed_in=False)
    answer = RedirectResponse("/ui", status_code=303)
    answer.set_cookie(
        COOKIE,
        session_value(token),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
    )
    return answer


@dashboard.post("/logout")
def logout() -> Response:
    """Drop the session cookie."""
    answer = RedirectResponse("/ui/login", status_code=303)
    answer.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    return answer
