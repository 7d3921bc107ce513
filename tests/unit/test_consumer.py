"""The worker's consumer sends its buffered task events once per `EVENT_FLUSH_S`, however
many are buffered meanwhile, and never leaves one behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quorum.worker.consumer import EVENT_FLUSH_S, BatchedEventsConsumer


class Hub:
    """What the consumer asks of kombu's hub: callbacks now, and after a delay."""

    def __init__(self) -> None:
        self.soon: list[Callable[[], Any]] = []
        self.later: list[tuple[float, Callable[[], Any]]] = []

    def call_soon(self, callback: Callable[[], Any]) -> None:
        self.soon.append(callback)

    def call_later(self, delay: float, callback: Callable[[], Any]) -> None:
        self.later.append((delay, callback))

    def run_soon(self) -> None:
        callbacks, self.soon = self.soon, []
        for callback in callbacks:
            callback()

    def fire(self) -> None:
        timers, self.later = self.later, []
        for _, callback in timers:
            callback()


class Dispatcher:
    def __init__(self) -> None:
        self.buffered = 0
        self.flushes: list[int] = []

    def flush(self) -> None:
        self.flushes.append(self.buffered)
        self.buffered = 0


def consumer() -> tuple[BatchedEventsConsumer, Hub, Dispatcher]:
    made = BatchedEventsConsumer.__new__(BatchedEventsConsumer)  # no broker, no blueprint
    hub, dispatcher = Hub(), Dispatcher()
    made.hub, made.event_dispatcher = hub, dispatcher
    return made, hub, dispatcher


def buffer(made: BatchedEventsConsumer, dispatcher: Dispatcher, count: int) -> None:
    for _ in range(count):
        dispatcher.buffered += 1
        made.on_send_event_buffered()


def test_events_buffered_meanwhile_go_out_in_one_flush_after_the_delay() -> None:
    made, hub, dispatcher = consumer()

    buffer(made, dispatcher, 5)
    assert len(hub.soon) == 1 and not dispatcher.flushes
    hub.run_soon()
    buffer(made, dispatcher, 3)

    assert [delay for delay, _ in hub.later] == [EVENT_FLUSH_S] and not hub.soon
    hub.fire()
    assert dispatcher.flushes == [8]


def test_an_event_buffered_after_a_flush_schedules_the_next() -> None:
    made, hub, dispatcher = consumer()
    buffer(made, dispatcher, 2)
    hub.run_soon()
    hub.fire()

    buffer(made, dispatcher, 1)
    hub.run_soon()
    hub.fire()

    assert dispatcher.flushes == [2, 1]


def test_an_event_buffered_during_a_flush_is_not_left_behind() -> None:
    made, hub, dispatcher = consumer()
    flush = dispatcher.flush

    def flush_while_a_job_buffers() -> None:
        flush()
        buffer(made, dispatcher, 1)  # another thread, as the flush runs

    dispatcher.flush = flush_while_a_job_buffers  # type: ignore[method-assign]
    buffer(made, dispatcher, 1)
    hub.run_soon()
    hub.fire()
    dispatcher.flush = flush  # type: ignore[method-assign]
    hub.run_soon()
    hub.fire()

    assert dispatcher.flushes == [1, 1]


def test_shutting_down_sends_what_is_buffered() -> None:
    made, _, dispatcher = consumer()
    buffer(made, dispatcher, 3)
    made.blueprint = type("Steps", (), {"shutdown": lambda self, parent: None})()
    made.controller = None
    made.connection_errors = made.channel_errors = ()

    made.shutdown()

    assert dispatcher.flushes == [3]
