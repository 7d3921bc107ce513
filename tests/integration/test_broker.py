"""The Redis transport's batches, on a real redis-server: the message loop takes the jobs
waiting in a queue in one round trip, each recorded as unacked so that none is lost if the
worker dies; a voting round's jobs are sent in one round trip, all but the first copied from
it; acks leave Redis in batches."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import kombu
import pytest
import redis
from celery import Celery, Signature, signals

from quorum.producer.stack import start_redis
from quorum.shared.broker import HeldBack, celery_config
from quorum.shared.errors import StoreError
from quorum.shared.settings import Settings
from quorum.worker import copies
from quorum.worker.copies import send_copies
from quorum.worker.transport import INTAKE_TRANSPORT
from quorum.worker.transport import IntakeRedisTransport as RedisTransport
from tests.integration.conftest import redis_server

pytestmark = pytest.mark.integration


class Broker:
    """A queue and unacked index of the test's own, on this module's Redis."""

    def __init__(self, url: str) -> None:
        self.url = url
        tag = uuid.uuid4().hex[:8]
        self.queue = kombu.Queue(f"batch-{tag}", routing_key=f"batch-{tag}")
        self.options = {"unacked_key": f"unacked-{tag}", "unacked_index_key": f"index-{tag}"}
        self.redis = redis.Redis.from_url(url, decode_responses=True)

    def connection(self, **options: Any) -> kombu.Connection:
        """A connection through Quorum's transport."""
        return kombu.Connection(
            self.url, transport=RedisTransport, transport_options={**self.options, **options}
        )

    def publish(self, conn: kombu.Connection, *numbers: int) -> None:
        producer = conn.Producer(serializer="json")
        for n in numbers:
            producer.publish({"n": n}, routing_key=self.queue.name)

    def waiting(self) -> int:
        return int(self.redis.llen(self.queue.name))

    def unacked(self) -> tuple[int, int]:
        """Entries in the unacked hash and in its index."""
        hash_key, index_key = self.options["unacked_key"], self.options["unacked_index_key"]
        return int(self.redis.hlen(hash_key)), int(self.redis.zcard(index_key))

    def unacked_soon(self, expected: tuple[int, int], within_s: float = 2.0) -> tuple[int, int]:
        """`unacked()` once it equals `expected`, or as it is after `within_s` (acks leave
        Redis in batches, a few milliseconds after they are made)."""
        deadline = time.monotonic() + within_s
        while self.unacked() != expected and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.unacked()


@pytest.fixture(scope="module")
def private_redis() -> Iterator[str]:
    """A redis-server of this module's own, whose command counts no worker adds to."""
    yield from redis_server()


@pytest.fixture
def broker(private_redis: str) -> Iterator[Broker]:
    made = Broker(private_redis)
    yield made
    made.redis.delete(made.queue.name, *made.options.values())


def drain_once(conn: kombu.Connection, queue: kombu.Queue, prefetch: int) -> list[kombu.Message]:
    """The messages one wake-up of the message loop delivers."""
    got: list[kombu.Message] = []
    consumer = conn.Consumer(queue, callbacks=[lambda _body, message: got.append(message)])
    consumer.qos(prefetch_count=prefetch)
    with consumer:
        conn.drain_events(timeout=2)
    return got


def drain(conn: kombu.Connection, queue: kombu.Queue) -> list[kombu.Message]:
    """Every message waiting, over as many wake-ups as it takes."""
    got: list[kombu.Message] = []
    while len(got) < 100:
        try:
            got += drain_once(conn, queue, prefetch=100)
        except TimeoutError:
            return got
    raise AssertionError("the queue never emptied")


def test_one_read_takes_in_messages_recorded_as_unacked(broker: Broker) -> None:
    with broker.connection(intake_batch=8) as conn:
        broker.publish(conn, *range(3))

        got = drain_once(conn, broker.queue, prefetch=100)

        assert [m.payload["n"] for m in got] == [0, 1]
        assert broker.waiting() == 1
        assert broker.unacked() == (2, 2)
        for message in got:
            message.ack()
        assert broker.unacked_soon((0, 0)) == (0, 0)


def test_one_read_leaves_half_of_the_waiting_messages_to_other_workers(broker: Broker) -> None:
    with broker.connection(intake_batch=64) as conn, broker.connection(intake_batch=64) as other:
        broker.publish(conn, *range(9))

        first = drain_once(conn, broker.queue, prefetch=100)  # BRPOP's one, then 4 of 8
        second = drain_once(other, broker.queue, prefetch=100)  # 1, then 2 of 3

        assert (len(first), len(second), broker.waiting()) == (5, 3, 1)
        assert broker.unacked() == (8, 8)
        for message in first + second + drain(conn, broker.queue):
            message.ack()
        assert broker.unacked_soon((0, 0)) == (0, 0)


def test_acks_leave_redis_in_one_batch_and_those_left_when_the_channel_closes(
    broker: Broker,
) -> None:
    with broker.connection(intake_batch=8) as conn:
        broker.publish(conn, *range(6))
        got = drain(conn, broker.queue)
        assert broker.unacked() == (6, 6)
        before = broker.redis.info("commandstats")
        for message in got[:4]:
            message.ack()
        assert broker.unacked_soon((2, 2)) == (2, 2)
        after = broker.redis.info("commandstats")
        for command in ("zrem", "hdel"):  # one each for the four acks
            calls = after[f"cmdstat_{command}"]["calls"]
            assert calls - before.get(f"cmdstat_{command}", {}).get("calls", 0) == 1
        assert "cmdstat_multi" not in after or after["cmdstat_multi"] == before["cmdstat_multi"]
        qos = conn.default_channel.qos
        qos.ACK_DELAY_S = 60.0  # the acker waits: what the channel's close removes is left
        for message in got[4:]:
            message.ack()
    assert broker.unacked() == (0, 0)


def test_the_batch_stays_within_the_prefetch_limit_and_the_batch_size(broker: Broker) -> None:
    with broker.connection(intake_batch=3) as conn:
        broker.publish(conn, *range(10))

        assert len(drain_once(conn, broker.queue, prefetch=2)) == 2
        assert len(drain_once(conn, broker.queue, prefetch=100)) == 3
        assert broker.waiting() == 5


def test_a_worker_lost_after_the_read_loses_no_message(broker: Broker) -> None:
    with broker.connection(intake_batch=8) as conn:
        broker.publish(conn, *range(5))
        got = drain_once(conn, broker.queue, prefetch=100)
        assert len(got) == 3
        # The worker dies: nothing is acknowledged, nothing restored at shutdown.
        conn.default_channel.qos._delivered.clear()
    assert broker.waiting() == 2

    with broker.connection(intake_batch=8, visibility_timeout=0) as later:
        later.default_channel.qos.restore_visible(num=10)
        assert broker.unacked() == (0, 0)
        assert broker.waiting() == 5
        again = drain(later, broker.queue)
        assert sorted(m.payload["n"] for m in again) == [0, 1, 2, 3, 4]
        for message in again:
            message.ack()


def test_a_message_that_is_not_kombus_is_dropped_and_the_rest_delivered(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    with broker.connection(intake_batch=8) as conn:
        broker.publish(conn, 0)
        broker.redis.lpush(broker.queue.name, "not json", '{"properties": 1}')
        broker.publish(conn, 3)

        got = drain(conn, broker.queue)

        assert [m.payload["n"] for m in got] == [0, 3]
        assert broker.waiting() == 0
        assert broker.unacked() == (2, 2)
        assert caplog.text.count("dropped a message that is not kombu's") == 2
        for message in got:
            message.ack()


def _calls(broker: Broker, *commands: str) -> list[int]:
    stats = broker.redis.info("commandstats")
    return [stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in commands]


def test_held_jobs_are_sent_when_asked_in_one_lpush(broker: Broker) -> None:
    with broker.connection() as conn:
        before = _calls(broker, "lpush", "exec")
        with HeldBack() as held:
            broker.publish(conn, *range(3))
        assert broker.waiting() == 0
        held.send()
        assert broker.waiting() == 3
        assert _calls(broker, "lpush", "exec") == [before[0] + 1, before[1]]
        assert [m.payload["n"] for m in drain_once(conn, broker.queue, prefetch=1)] == [0]


def test_held_jobs_not_sent_are_lost_and_a_nested_block_holds_for_the_outer(
    broker: Broker,
) -> None:
    with broker.connection() as conn:
        with HeldBack() as outer:
            broker.publish(conn, 1)
            with HeldBack() as inner:
                broker.publish(conn, 2)
            inner.send()
        assert broker.waiting() == 0
        broker.publish(conn, 3)  # after the block: sent at once again
        assert broker.waiting() == 1
        outer.send()
        assert broker.waiting() == 3


def test_a_send_past_the_channels_connections_waits_for_a_free_one(broker: Broker) -> None:
    # kombu's own pool fails at once ("Too many connections"); its recovery then closes the
    # pool under the threads using it. A worker's threads outnumber its connections in a burst.
    with broker.connection(max_connections=2) as conn:
        with HeldBack() as held:
            broker.publish(conn, 1)
        pool = conn.default_channel.pool
        taken = [pool.get_connection() for _ in range(2)]
        failed: list[BaseException] = []

        def send() -> None:
            try:
                held.send()
            except BaseException as exc:
                failed.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        sender.join(0.3)
        assert sender.is_alive() and not failed and broker.waiting() == 0  # it waits
        pool.release(taken.pop())
        sender.join(5)
        assert not failed and broker.waiting() == 1
        pool.release(taken.pop())


def test_a_broker_lost_before_held_jobs_are_sent_is_a_store_error() -> None:
    url, server = start_redis()
    try:
        with kombu.Connection(url, transport=RedisTransport) as conn:
            producer = conn.Producer(serializer="json")
            producer.publish({"n": 0}, routing_key="lost")
            with HeldBack() as held:
                producer.publish({"n": 1}, routing_key="lost")
            server.stop()
            with pytest.raises(StoreError, match="broker is unavailable"):
                held.send()
    finally:
        server.stop()


# -- a round's copies (`worker/copies.py`) ----------------------------------------------------


def _round_app(url: str) -> tuple[Celery, list[Signature]]:
    """A Celery app configured as Quorum's, on this module's Redis, and a round of 9 jobs."""
    app = Celery("copies")
    app.conf.update(celery_config(Settings(redis_url=url), transport=INTAKE_TRANSPORT))

    @app.task(name="quorum.vote", bind=True)
    def vote(self: Any, **kwargs: Any) -> None:
        """Never run."""

    jobs = []
    for issue in range(3):
        for index in range(3):
            kwargs = {"run_id": "r", "attempt": 1, "issue": issue, "index": index}
            jobs.append(vote.si(**kwargs).set(argsrepr="()", kwargsrepr=repr(kwargs)))
    return app, jobs


def _sent(jobs: list[Signature], count_through_celery: list[int]) -> list[dict[str, Any]]:
    """The messages `send_copies` holds for `jobs`, their ids blanked out; counts in
    `count_through_celery` how many Celery built."""
    built = Signature.apply_async

    def counted(self: Signature, *args: Any, **kwargs: Any) -> Any:
        count_through_celery.append(1)
        return built(self, *args, **kwargs)

    with mock.patch.object(Signature, "apply_async", counted), HeldBack() as held:
        send_copies(jobs)
    messages = []
    for _, _, message in held._messages:
        ids = {message["headers"]["id"]}
        assert message["properties"]["correlation_id"] in ids
        assert message["headers"]["root_id"] in ids
        message = json.loads(json.dumps(message))
        message["headers"].update(id="-", root_id="-")
        message["properties"].update(correlation_id="-", delivery_tag="-")
        messages.append(message)
    return messages


def test_a_rounds_copies_are_the_messages_celery_builds_but_for_their_ids(
    private_redis: str,
) -> None:
    app, jobs = _round_app(private_redis)
    fast: list[int] = []
    slow: list[int] = []

    # Whatever else listens to Celery's publishes in this process (the fault suite's
    # duplicator does, once imported), one side copies and the other builds each.
    with mock.patch.object(copies, "_copyable", lambda job: True):
        copied = _sent(jobs, fast)
    with mock.patch.object(copies, "_copyable", lambda job: False):
        built = _sent(jobs, slow)

    assert (len(fast), len(slow)) == (1, 9)
    assert copied == built
    bodies = {m["body"] for m in copied}
    assert len(bodies) == 9  # each its own arguments
    app.close()


def test_every_job_goes_through_celery_while_anything_listens_to_its_publishes(
    private_redis: str,
) -> None:
    app, jobs = _round_app(private_redis)
    heard: list[str] = []

    def listen(sender: str, headers: dict[str, Any], **_: Any) -> None:
        heard.append(headers["id"])

    signals.before_task_publish.connect(listen)
    try:
        through: list[int] = []
        _sent(jobs, through)
    finally:
        signals.before_task_publish.disconnect(listen)

    assert len(through) == len(heard) == 9
    app.close()


def test_a_message_the_copy_would_get_wrong_sends_every_job_through_celery(
    private_redis: str,
) -> None:
    app, jobs = _round_app(private_redis)
    copy = copies._copy

    def drifted(*args: Any) -> dict[str, Any]:  # as if Celery added a field of its own
        return {**copy(*args), "new": 1}

    through: list[int] = []
    with (
        mock.patch.object(copies, "_copy", drifted),
        mock.patch.object(copies, "_copyable", lambda job: True),
    ):
        sent = _sent(jobs, through)

    assert len(through) == 9 and all("new" not in m for m in sent)
    app.close()


def test_jobs_are_copied_only_while_nothing_but_the_message_comes_of_a_publish(
    private_redis: str,
) -> None:
    app, jobs = _round_app(private_redis)
    with (
        mock.patch.object(signals.before_task_publish, "receivers", []),
        mock.patch.object(signals.after_task_publish, "receivers", []),
    ):
        assert copies._copyable(jobs[0])
        app.conf.task_send_sent_event = True
        assert not copies._copyable(jobs[0])
    app.close()
