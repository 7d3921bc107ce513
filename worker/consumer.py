"""The worker's consumer: Celery's own, with its task events sent in batches a few ms apart.

Workers send task events (received, started, succeeded) for Flower. Celery buffers them, but
asks its message loop to flush the buffer after every event: one run of ten jobs made about
twenty publishes of an event or two each, in the one thread that also takes the jobs in.
Here the first event buffered schedules one flush `EVENT_FLUSH_S` later, which sends every
event buffered by then in one publish. Flower sees an event that much later. The buffer is
flushed at once only when it holds `EVENT_BUFFER_LIMIT` events: Celery's own limit, 24, made
two or three publishes of a run of ten jobs (three events each), each about as costly as a
job's store round trip.

`celery -A quorum.worker.app worker` uses it (`batch_events`: Celery's `worker_consumer`
setting and the app's `events` class, `worker.app`). It overrides Celery's
`Consumer.on_send_event_buffered` and `shutdown`, and the default of `EventDispatcher`'s
`buffer_limit` (the version range is pinned in pyproject.toml, and
`tests/unit/test_library_guards.py` fails when they change).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.common import ignore_errors

__all__ = [
    "CONSUMER",
    "EVENTS",
    "EVENT_BUFFER_LIMIT",
    "EVENT_FLUSH_S",
    "BatchedDispatcher",
    "BatchedEvents",
    "BatchedEventsConsumer",
    "batch_events",
]

EVENT_FLUSH_S = 0.05
"""How long a task event waits in the buffer for others to be sent with it."""

EVENT_BUFFER_LIMIT = 500
"""Task events buffered at most: past it they are sent at once, without waiting for the flush
(a message loop too busy to flush on time)."""


class BatchedDispatcher(EventDispatcher):
    """Celery's event dispatcher, whose buffer holds up to `EVENT_BUFFER_LIMIT` events."""

    def __init__(self, *args: Any, buffer_limit: int = EVENT_BUFFER_LIMIT, **kwargs: Any) -> None:
        super().__init__(*args, buffer_limit=buffer_limit, **kwargs)


class BatchedEvents(Events):
    """The app's events, whose dispatcher is `BatchedDispatcher`."""

    dispatcher_cls = f"{__name__}:{BatchedDispatcher.__qualname__}"


class BatchedEventsConsumer(CeleryConsumer):
    """Celery's consumer, which flushes its buffered task events once per `EVENT_FLUSH_S`."""

    _flush_due = False

    def on_send_event_buffered(self) -> None:
        """Schedule a flush unless one is due (called from any job's thread)."""
        if self.hub is not None and not self._flush_due:
            self._flush_due = True
            self.hub.call_soon(self._schedule_flush)

    def shutdown(self) -> None:
        """Send the events still buffered, then shut down as Celery does (which would drop
        them)."""
        ignore_errors(self, self._flush_events)
        super().shutdown()

    def _schedule_flush(self) -> None:
        # In the message loop's thread, which alone touches the hub's timer.
        self.hub.call_later(EVENT_FLUSH_S, self._flush_due_events)

    def _flush_due_events(self) -> None:
        # Cleared first: an event buffered during the flush schedules the next one.
        self._flush_due = False
        self._flush_events()


CONSUMER = f"{__name__}:{BatchedEventsConsumer.__qualname__}"
"""The consumer's path, as Celery's `worker_consumer` setting takes it."""

EVENTS = f"{__name__}:{BatchedEvents.__qualname__}"
"""The events class's path, as `Celery(events=…)` takes it."""


def batch_events(app: Celery) -> None:
    """Make `app`'s workers send their task events in batches: its consumer and its events
    class (set before anything reads `app.events`)."""
    app.events_cls = EVENTS
    app.conf.worker_consumer = CONSUMER
