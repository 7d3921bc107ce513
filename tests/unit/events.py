"""Events for the store's tests, written as the old dicts were: typed where the type is known
and the fields fit, else kept as they are (`OtherEvent`)."""

from __future__ import annotations

import json
from typing import Any

from quorum.shared.events import Event, OtherEvent, parse_event


def event(type_: str, attempt: int, worker: str, **data: Any) -> Event | OtherEvent:
    """A provenance event of `type_` with `data`."""
    return parse_event(json.dumps({"type": type_, "attempt": attempt, "worker": worker, **data}))
