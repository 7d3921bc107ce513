"""Webhooks: when a run or a workflow with a `callback_url` ends, its final view is POSTed
there, signed.

- **At submit** `check_callback_url` accepts only `http`/`https` URLs whose host is listed in
  `QUORUM_WEBHOOK_ALLOWED_HOSTS`, so that a producer cannot make the workers call arbitrary
  internal addresses (checked again before each delivery).
- **Durable:** the step that ends the run (`lua/transition.lua`) or the workflow
  (`lua/wf_finish.lua`) marks its delivery `pending` in its own hash, atomically with the
  end. The store then schedules it (`Keys.webhooks`) and sends `quorum.webhook` on the
  control queue; the end never waits for the receiver. A delivery is named by its target: a
  run's id, or `wf:<id>` for a workflow's (`shared.deliveries`).
- **Delivery** (`deliver`, the job's body): POST the final view as JSON (a run's as
  `final_view`, a workflow's as `GET /v1/workflows/{id}` shows it, `shared.wfview`) with the
  header `Quorum-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">` keyed by
  `QUORUM_WEBHOOK_SECRET`, within `QUORUM_WEBHOOK_TIMEOUT_S`, following no redirect. A 2xx
  answer settles it `delivered` (compare-and-set from `pending`). Anything else is retried
  with jittered exponential backoff until `QUORUM_WEBHOOK_RETRY_FOR_S` after the end, then
  settled `failed` and logged.
- **At least once:** before each attempt the delivery is leased in the schedule for the
  length of an attempt and a margin; the sweep re-sends `quorum.webhook` for any delivery
  whose lease ran out (a worker killed mid-delivery, a lost message). A run the step after
  its end never scheduled is scheduled by the sweep when it meets it; a workflow, by the
  next scheduling step it gets (the sweep gives one to every workflow still indexed). A
  receiver may thus get a delivery twice: the body's `id` de-duplicates (docs/http-api.md,
  Webhooks).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any

from quorum.shared.deliveries import delivered_workflow, lease_s
from quorum.shared.errors import InvalidRequestError
from quorum.shared.retry import backoff_s
from quorum.shared.settings import Settings
from quorum.shared.state import RunState
from quorum.shared.wfstore import WorkflowStore
from quorum.shared.wfview import workflow_view

__all__ = [
    "SIGNATURE_HEADER",
    "Delivery",
    "Poster",
    "check_callback_url",
    "deliver",
    "final_view",
    "post",
    "signature",
    "verify",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Quorum-Signature"
_MAX_URL = 2048


Poster = Callable[[str, bytes, dict[str, str], float], int]
"""POSTs a body (url, body, headers, timeout in seconds) and returns the HTTP status; raises
`OSError` or `HTTPException` when no answer comes."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follows no redirect, so that an allowed host cannot send a delivery on to another."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """The `Poster` deliveries use: urllib, no redirects (a 3xx is the answer)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout_s) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def check_callback_url(url: Any, allowed_hosts: list[str]) -> str:
    """`url` if it may be called back: an http(s) URL without credentials whose host is in
    `allowed_hosts` (case-insensitive); else an `InvalidRequestError` naming the problem."""
    if not isinstance(url, str) or not 0 < len(url) <= _MAX_URL:
        raise InvalidRequestError(f"callback_url must be a URL of 1 to {_MAX_URL} characters")
    if not allowed_hosts:
        raise InvalidRequestError(
            "callback_url is refused: no callback host is allowed (QUORUM_WEBHOOK_ALLOWED_HOSTS)"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018  # raises ValueError for a port that is no number
    except ValueError as exc:
        raise InvalidRequestError(f"callback_url is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidRequestError("callback_url must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequestError("callback_url must not hold credentials")
    if host not in {h.lower() for h in allowed_hosts}:
        raise InvalidRequestError(
            f"callback_url host {host!r} is not allowed (QUORUM_WEBHOOK_ALLOWED_HOSTS)"
        )
    return url


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `Quorum-Signature` header value for `body` sent at `timestamp` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(
    header: str, body: bytes, secret: str, *, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """Whether `header` (a `Quorum-Signature` value) signs `body` with `secret`, sent within
    `tolerance_s` of `now` (replays of old deliveries fail)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body).rpartition("v1=")[2]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def final_view(state: RunState) -> dict[str, Any]:
    """What a webhook POSTs: the run as `GET /v1/runs/{id}` shows it, with its metadata."""
    return {
        "id": state.run_id,
        "status": state.status.value,
        "attempt": state.attempt,
        "result": state.result,
        "error": state.error,
        "code": state.code,
        "reasons": state.reasons,
        "last_output": state.last_output,
        "usage": state.usage.model_dump(mode="json"),
        "metadata": state.spec.metadata,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
    }


@dataclass(frozen=True)
class Delivery:
    """What one delivery attempt came to: `delivered`, `failed` (given up), `none` (nothing
    pending), or `retry` in `retry_in` seconds."""

    outcome: str
    retry_in: float | None = None
    detail: str = ""


def deliver(
    store: Any, settings: Settings, target: str, *, retries: int, http: Poster = post
) -> Delivery:
    """Try once to deliver the pending webhook of `target`, a run's id or `wf:<id>` (see the
    module's docstring)."""
    pending = store.pending_webhook(target)
    if pending is None:
        store.unschedule_webhook(target)
        return Delivery("none")
    url, ended_at = pending
    what = _named(target)
    problem = _attempt(store, settings, target, url, http)
    if problem is None:
        store.settle_webhook(target, "delivered")
        log.info("%s: webhook delivered to %s", what, url)
        return Delivery("delivered")
    now = time.time()
    if now - ended_at >= settings.webhook_retry_for_s:
        store.settle_webhook(target, "failed")
        tries = retries + 1
        log.warning("%s: webhook to %s given up after %d tries: %s", what, url, tries, problem)
        return Delivery("failed", detail=problem)
    delay = backoff_s(retries, cap=settings.webhook_backoff_max_s)
    store.schedule_webhook(target, now + delay + lease_s(settings))
    log.info("%s: webhook to %s failed (%s), retry in %.1f s", what, url, problem, delay)
    return Delivery("retry", retry_in=delay, detail=problem)


def _named(target: str) -> str:
    workflow_id = delivered_workflow(target)
    return f"run {target}" if workflow_id is None else f"workflow {workflow_id}"


def _view(store: Any, target: str) -> dict[str, Any]:
    """What the target's webhook POSTs: a run's `final_view`, a workflow's `workflow_view`."""
    workflow_id = delivered_workflow(target)
    if workflow_id is None:
        return final_view(store.load(target))
    ws = WorkflowStore.of(store)
    return workflow_view(ws, ws.load(workflow_id))


def _attempt(store: Any, settings: Settings, target: str, url: str, http: Poster) -> str | None:
    """POST the signed final view once; None if the receiver took it, else what went wrong."""
    try:
        check_callback_url(url, settings.webhook_allowed_hosts)
    except InvalidRequestError as exc:
        return str(exc)
    if settings.webhook_secret is None:
        return "no QUORUM_WEBHOOK_SECRET is set on this worker"
    store.schedule_webhook(target, time.time() + lease_s(settings))
    body = json.dumps(_view(store, target), separators=(",", ":")).encode()
    secret = settings.webhook_secret.get_secret_value()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "quorum-webhook",
        SIGNATURE_HEADER: signature(secret, int(time.time()), body),
    }
    try:
        status = http(url, body, headers, settings.webhook_timeout_s)
    except (OSError, HTTPException, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if 200 <= status < 300 else f"HTTP {status}"
