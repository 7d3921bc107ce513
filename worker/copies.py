"""A voting round's vote messages for a Redis broker, all but the first copied from the first,
which Celery builds.

The votes of a round differ only in their arguments and ids: building each through Celery and
kombu (routing, headers, body, the producer pool, retry policy) cost about 0.13 ms of CPU a
job, copying one about 0.03 ms (docs/benchmarks.md, History). A copy takes the first message
and gives it its own task id (and root id, where the first is its own root), delivery tag,
arguments and their `repr`. Before copying, the copy of the first message with its own
arguments and ids must be the first message itself: a Celery or kombu release that builds a
message any other way fails that check, and every job of the round then goes through Celery.
So do they all while anything listens to Celery's publish signals or task-sent events are on.
"""

from __future__ import annotations

import base64
from typing import Any, NamedTuple

from celery import Signature, signals
from kombu.utils.json import dumps, loads
from kombu.utils.uuid import uuid

from quorum.shared.broker import Held, HeldBack

__all__ = ["send_copies"]


class _Template(NamedTuple):
    """The first message of a round, and the positional arguments and Celery's embedded
    options its body carries beside the keyword arguments (the same for every vote)."""

    message: dict[str, Any]
    args: list[Any]
    embed: dict[str, Any]


def send_copies(jobs: list[Signature]) -> None:
    """Publish `jobs` (a round's votes, inside a `HeldBack` block): the first through Celery,
    the others as its copies where they can be, else each through Celery."""
    if not jobs:
        return
    first, *rest = jobs
    sent = first.apply_async()
    held = HeldBack.last()
    if held is not None and held[2].get("headers", {}).get("id") != sent.id:
        held = None  # not held: it went out at once
    template = _template(held, first) if held is not None and _copyable(first) else None
    if held is None or template is None:
        for job in rest:
            job.apply_async()
        return
    channel, key, _ = held
    for job in rest:
        HeldBack.hold((channel, key, _copy(template, job.kwargs, uuid(), uuid())))


def _copyable(job: Signature) -> bool:
    """Whether nothing but the message itself comes of a publish: no receiver of Celery's
    publish signals, no task-sent event."""
    listened = signals.before_task_publish.receivers or signals.after_task_publish.receivers
    return not listened and not job.app.conf.task_send_sent_event


def _template(held: Held, first: Signature) -> _Template | None:
    """The first message, as a template for its copies; None unless its copy with its own
    arguments and ids is the message itself (and its body is base64, as on Redis)."""
    _, _, message = held
    properties = message.get("properties", {})
    if properties.get("body_encoding") != "base64":
        return None
    try:
        args, _, embed = loads(base64.b64decode(message["body"]))
        template = _Template(message, args, embed)
        own = _copy(template, first.kwargs, message["headers"]["id"], properties["delivery_tag"])
    except (KeyError, TypeError, ValueError):
        return None
    return template if own == message else None


def _copy(template: _Template, kwargs: dict[str, Any], task_id: str, tag: str) -> dict[str, Any]:
    """The template's message for a job with `kwargs`, with `task_id` and delivery tag `tag`."""
    first = template.message
    headers = first["headers"]
    shown = repr(kwargs)
    own = {"id": task_id, "kwargsrepr": shown}
    if headers.get("root_id") == headers.get("id"):  # its own root: no parent job
        own["root_id"] = task_id
    properties = {**first["properties"], "correlation_id": task_id, "delivery_tag": tag}
    if "kwargsrepr" in properties:
        properties["kwargsrepr"] = shown
    body = dumps([template.args, kwargs, template.embed]).encode()
    return {
        **first,
        "headers": {**headers, **own},
        "properties": properties,
        "body": base64.b64encode(body).decode(),
    }
