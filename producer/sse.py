"""Server-Sent Events for `GET /v1/runs/{id}/events` with `Accept: text/event-stream`.

Each event goes out as it is appended to the run's stream::

    id: 1733550000000-0
    event: vote
    data: {"type": "vote", "attempt": 1, "issue": 0, ...}

`id` is the Redis stream id: a client that reconnects with `Last-Event-ID: <id>` gets what
came after it. A comment line (`: keep-alive`) goes out whenever the run has been quiet for
`QUORUM_SSE_HEARTBEAT_S`. The response ends after the terminal event (`succeeded`, `failed`,
`cancelled`). A workflow's events stream the same way from `GET /v1/workflows/{id}/events`,
until `workflow_finished`. Every stream of the process is read by one `shared.live.EventHub`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from quorum.shared.live import EventHub, Heartbeat, Stream

__all__ = ["MEDIA_TYPE", "event_stream", "wants_events"]

MEDIA_TYPE = "text/event-stream"


def wants_events(accept: str | None) -> bool:
    """Whether an `Accept` header asks for Server-Sent Events."""
    return MEDIA_TYPE in (accept or "")


async def _frames(
    hub: EventHub, stream: Stream, after: str, heartbeat_s: float
) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    async for item in hub.follow_stream(stream, after=after, heartbeat_s=heartbeat_s):
        if isinstance(item, Heartbeat):
            yield ": keep-alive\n\n"
            continue
        entry_id, event = item
        data = json.dumps(event.model_dump(mode="json"), ensure_ascii=False)
        yield f"id: {entry_id}\nevent: {event.type}\ndata: {data}\n\n"


def event_stream(
    hub: EventHub, stream: Stream, *, after: str, heartbeat_s: float
) -> StreamingResponse:
    """The stream's events (a run's, `hub.run_stream`, or a workflow's) after the stream id
    `after`, as Server-Sent Events."""
    return StreamingResponse(
        _frames(hub, stream, after, heartbeat_s),
        media_type=MEDIA_TYPE,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
