"""The HTTP API's gate: the bearer token and the body's size, checked before a body is read.

FastAPI reads and parses a request's whole body before any dependency runs, so a check there
comes too late: a 200 MB body sent without a token was read and parsed (the API's memory
211 → 820 MB) before its 401. `Guard` is an ASGI middleware in front of everything: a request
without the token is answered 401 from its headers alone, one whose `Content-Length` is over
the limit 413 at once, and a body that streams past the limit (chunked, or lying about its
length) 413 as soon as it does, without reading the rest.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

__all__ = ["Guard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/docs"})
"""Paths answered without the token: the health check, and the docs page (which says it is
off while a token is set)."""

DASHBOARD = "/ui"
"""The dashboard's prefix: its pages check the token themselves, as a bearer header or as the
session cookie its login form sets (`quorum.producer.dashboard`); the size limit still holds."""


def _dashboard(path: str) -> bool:
    return path == DASHBOARD or path.startswith(DASHBOARD + "/")


class _TooLarge(HTTPException):
    """The body streamed past the limit: an `HTTPException`, which FastAPI passes on from
    its body reading as it is (any other error there becomes a 400)."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


async def _answer(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": head + headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Refuse, before the body is read, a request without the token (401) or with a body
    over `max_bytes` (413)."""

    def __init__(self, app: App, *, token: str | None, max_bytes: int) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None
        self.max_bytes = max_bytes

    def _authorized(self, scope: Scope) -> bool:
        if self.token is None or scope["path"] in OPEN_PATHS or _dashboard(scope["path"]):
            return True
        given = b""
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                given = credentials.strip() if scheme.lower() == b"bearer" else b""
        return secrets.compare_digest(given, self.token)

    def _declared_size(self, scope: Scope) -> int | None:
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            bearer = [(b"www-authenticate", b"Bearer")]
            await _answer(send, 401, "missing or wrong bearer token", bearer)
            return
        declared = self._declared_size(scope)
        if declared is not None and declared > self.max_bytes:
            await _answer(send, 413, self._too_large(declared), [(b"connection", b"close")])
            return
        await self._limited(scope, receive, send)

    def _too_large(self, size: int | None) -> str:
        what = f"{size} bytes" if size is not None else "larger"
        return f"request body is {what}, over the limit of {self.max_bytes} bytes"

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, cutting the body off (413) once more than the limit has arrived."""
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self._too_large(None))
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge as exc:  # raised where nothing turned it into an answer
            if not started:
                await _answer(send, 413, exc.detail, [(b"connection", b"close")])
