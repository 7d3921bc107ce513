"""Guards on the private parts of other libraries that Quorum overrides or calls.

Quorum overrides private methods of kombu's Redis channel (`quorum.shared.broker`, and the
worker's intake in `quorum.worker.transport`) and of Celery's Redis result backend
(`quorum.worker.app`), reads Celery's record of running jobs (`quorum.worker.jobs`), and calls
the OpenAI SDK's private helpers on its plain-HTTP path (`quorum.shared.llm`). None of that is
covered by the libraries' compatibility promises, so pyproject.toml pins kombu, celery and
openai to the minor release these tests pass on (`~=X.Y.0`), and these tests say precisely
what changed when a new release is let in: each failure names the library and version, what
moved, and the code of ours to re-check.

Three kinds of guard:
- an override must still override a method of that name, with the same parameters;
- a private method we call must still accept the arguments we pass (`Signature.bind`);
- a method whose body ours copies in part (`_brpop_read`, `_put`, `QoS.append`) must be the
  very one we copied: a fingerprint of its code (comments and docstring left out) is kept
  here, and changes with any change to what it does.

To let a new release in: install it, run this module, re-check each piece of our code a
failure names, then update the expected values here and the pin in pyproject.toml.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
import tomllib
from collections.abc import Callable, Sized
from importlib.metadata import version
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from celery import result as celery_result
from celery.app import base as celery_base
from celery.app.backends import by_url
from celery.backends import base as celery_backends_base
from celery.backends.asynchronous import AsyncBackendMixin
from celery.backends.redis import RedisBackend
from celery.events.dispatcher import EventDispatcher
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.events import Events as EventsStep
from kombu.asynchronous import Hub
from kombu.transport import redis as kombu_redis
from kombu.transport import resolve_transport, virtual
from kombu.utils.scheduling import cycle_by_name
from packaging.requirements import Requirement
from redis.commands.core import Script

from quorum.shared import broker, llm
from quorum.shared.settings import Settings
from quorum.worker import app as worker_app
from quorum.worker import consumer, transport

BROKER = "quorum/shared/broker.py"
TRANSPORT = "quorum/worker/transport.py"
LLM = "quorum/shared/llm.py"
APP = "quorum/worker/app.py"
JOBS = "quorum/worker/jobs.py"
CONSUMER = "quorum/worker/consumer.py"
STORE = "quorum/shared/scripts.py"
ROOT = Path(__file__).resolve().parents[2]


def _broken(library: str, what: str, recheck: str) -> str:
    """The message a guard fails with."""
    return (
        f"{library} {version(library)}: {what}. Quorum relies on it in {recheck}; re-check that "
        f"code against {library} {version(library)}, then update this guard and the {library} "
        "pin in pyproject.toml."
    )


def _shape(func: Callable[..., Any]) -> str:
    """A function's parameters as written, without annotations: `(self, a, b=1, **kw)`."""
    sig = inspect.signature(func)
    bare = [p.replace(annotation=p.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=bare, return_annotation=sig.empty))


def _tree(func: Any) -> ast.Module:
    """The syntax tree of a function's source (of a class's or a module's)."""
    return ast.parse(textwrap.dedent(inspect.getsource(func)))


def _attributes(func: Any) -> set[str]:
    """Every `x.name` the code of `func` mentions."""
    return {node.attr for node in ast.walk(_tree(func)) if isinstance(node, ast.Attribute)}


def _strings(func: Any) -> set[str]:
    """Every string literal in the code of `func`."""
    tree = ast.walk(_tree(func))
    return {n.value for n in tree if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _fingerprint(func: Callable[..., Any]) -> str:
    """A digest of what a function's code does: its syntax tree minus its docstring (comments
    and layout are not in the tree)."""
    node = _tree(func).body[0]
    assert isinstance(node, ast.FunctionDef)
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        node.body = node.body[1:]
    return hashlib.sha256(ast.dump(node).encode()).hexdigest()[:16]


# -- pins -----------------------------------------------------------------------------------


def test_the_pins_are_tested_ranges_and_the_image_installs_within_them() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    for name in ("celery", "kombu", "openai"):
        specifier = wanted[name].specifier
        # openai spans the two releases the tests run on: 2.54 where the bench extra's
        # instructor holds jiter below 0.15 (CI), 3.3 in the image (constraints.txt).
        bounded = any(s.operator in ("~=", "==", "<") for s in specifier)
        assert bounded, f"{name} has no upper bound: {wanted[name]}"
        assert version(name) in wanted[name].specifier, (
            f"{name} {version(name)} is installed, outside the pin {wanted[name]}"
        )
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pinned = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    pinned = {name.lower().replace("_", "-"): pin for name, pin in pinned.items()}
    for name, requirement in wanted.items():
        assert pinned[name] in requirement.specifier, (
            f"constraints.txt installs {name} {pinned[name]}, outside {requirement}"
        )


# -- overrides ------------------------------------------------------------------------------

# fmt: off
OVERRIDES = [
    # (library, ours, theirs, method, its parameters, where ours lives)
    ("kombu", broker.RedisChannel, kombu_redis.Channel, "_connparams",
     "(self, asynchronous=False)", BROKER),
    ("kombu", broker.RedisChannel, kombu_redis.Channel, "_create_client",
     "(self, asynchronous=False)", BROKER),
    ("kombu", broker.RedisChannel, kombu_redis.Channel, "_get_pool",
     "(self, asynchronous=False)", BROKER),
    ("kombu", broker.RedisChannel, kombu_redis.Channel, "_put",
     "(self, queue, message, **kwargs)", BROKER),
    ("kombu", transport._Channel, kombu_redis.Channel, "_brpop_read",
     "(self, **options)", TRANSPORT),
    ("kombu", transport._QoS, kombu_redis.QoS, "append",
     "(self, message, delivery_tag)", TRANSPORT),
    ("kombu", transport._QoS, kombu_redis.QoS, "ack", "(self, delivery_tag)", TRANSPORT),
    ("kombu", transport._Channel, kombu_redis.Channel, "close", "(self)", TRANSPORT),
    ("celery", consumer.BatchedEventsConsumer, CeleryConsumer, "on_send_event_buffered",
     "(self)", CONSUMER),
    ("celery", consumer.BatchedEventsConsumer, CeleryConsumer, "shutdown", "(self)", CONSUMER),
    ("celery", worker_app.ChordResultBackend, RedisBackend, "add_pending_result",
     "(self, result, weak=False, start_drainer=True)", APP),
    ("celery", worker_app.ChordResultBackend, RedisBackend, "on_task_call",
     "(self, producer, task_id)", APP),
]
# fmt: on


@pytest.mark.parametrize(
    ("library", "ours", "theirs", "name", "params", "where"),
    OVERRIDES,
    ids=[f"{row[2].__name__}.{row[3]}" for row in OVERRIDES],
)
def test_overridden_methods_keep_their_parameters(
    library: str, ours: type, theirs: type, name: str, params: str, where: str
) -> None:
    what = f"{theirs.__module__}.{theirs.__qualname__}.{name}"
    theirs_fn = getattr(theirs, name, None)
    assert callable(theirs_fn), _broken(
        library, f"{what} is gone", f"{ours.__qualname__}.{name} ({where})"
    )
    assert _shape(theirs_fn) == params, _broken(
        library,
        f"{what} now takes {_shape(theirs_fn)}, not {params}",
        f"{ours.__qualname__}.{name} ({where})",
    )
    assert name in vars(ours), f"{ours.__qualname__} no longer overrides {name} ({where})"
    assert _shape(getattr(ours, name)) == params, (
        f"{ours.__qualname__}.{name} takes {_shape(getattr(ours, name))}; {what} takes {params}"
    )


COPIED = [
    # (theirs, its fingerprint, ours)
    # kombu's own, of which ours keeps the behaviour and adds the batched intake.
    (kombu_redis.Channel, "_brpop_read", "e72b790a1afa840f", "_Channel._brpop_read"),
    # The queue key of a message (priority) our held-back publish computes as kombu's does.
    (kombu_redis.Channel, "_put", "ad0db7f9f8ebf9bd", "RedisChannel._put (its HeldBack branch)"),
    # The pool's parameters, which our waiting pool takes as kombu's own pool does.
    (kombu_redis.Channel, "_get_pool", "ed1b8382841394d5", "RedisChannel._get_pool"),
    # The unacked hash and index entries that lua/take.lua writes in kombu's own format.
    (kombu_redis.QoS, "append", "c62a2a1a66a1db31", "_QoS.append and lua/take.lua"),
    # What an ack removes from Redis, which _QoS.flush_acks removes for a batch of acks.
    (kombu_redis.QoS, "ack", "d5d80167379ce654", "_QoS.ack"),
    (kombu_redis.QoS, "_remove_from_indices", "98a5dc128dfd45bc", "_QoS.flush_acks"),
]


@pytest.mark.parametrize(
    ("owner", "name", "expected", "ours"), COPIED, ids=[f"{c[0].__name__}.{c[1]}" for c in COPIED]
)
def test_methods_we_copy_from_are_unchanged(
    owner: type, name: str, expected: str, ours: str
) -> None:
    theirs = getattr(owner, name)
    assert _fingerprint(theirs) == expected, _broken(
        "kombu",
        f"{owner.__name__}.{name} changed (fingerprint {_fingerprint(theirs)}, not {expected})",
        f"{ours} ({BROKER} or {TRANSPORT}), which repeats part of its code: carry the change over",
    )


def test_our_transport_channel_and_qos_are_the_ones_kombu_uses() -> None:
    settings = Settings(broker="redis://127.0.0.1:6379/0")
    producers = resolve_transport(broker.celery_config(settings)["broker_transport"])
    assert producers is broker.RedisTransport
    assert broker.RedisTransport.Channel is broker.RedisChannel
    workers = resolve_transport(worker_app.create_app(settings).conf.broker_transport)
    assert workers is transport.IntakeRedisTransport
    assert transport.IntakeRedisTransport.Channel is transport._Channel
    assert issubclass(transport._Channel, broker.RedisChannel)
    assert transport._Channel.QoS is transport._QoS
    where = f"RedisTransport.Channel ({BROKER}), IntakeRedisTransport ({TRANSPORT})"
    assert "Channel" in _attributes(virtual.Transport.create_channel), _broken(
        "kombu", "Transport.create_channel no longer makes its channels from self.Channel", where
    )
    qos = inspect.getattr_static(virtual.Channel, "qos")
    assert "QoS" in _attributes(qos.fget), _broken(
        "kombu", "Channel.qos no longer makes its QoS from self.QoS", where
    )


def test_the_message_loop_still_reads_brpop_through_brpop_read() -> None:
    where = f"_Channel._brpop_read ({TRANSPORT})"
    init = _attributes(kombu_redis.Channel.__init__)
    assert {"handlers", "_brpop_read"} <= init, _broken(
        "kombu", "Channel.__init__ no longer maps BRPOP to self._brpop_read in its handlers", where
    )
    assert {"_expires", "_queue_cycle"} <= init, _broken(
        "kombu", "Channel.__init__ no longer sets _expires and _queue_cycle", where
    )
    assert "_in_poll" in vars(kombu_redis.Channel), _broken(
        "kombu", "Channel has no _in_poll (which _brpop_read resets to None)", where
    )
    assert "_in_poll" in _attributes(kombu_redis.Channel._brpop_start), _broken(
        "kombu", "Channel._brpop_start no longer marks the poll with _in_poll", where
    )
    assert "_in_poll" in _attributes(kombu_redis.MultiChannelPoller), _broken(
        "kombu", "MultiChannelPoller no longer looks at a channel's _in_poll", where
    )


def test_the_channel_state_we_read_is_there() -> None:
    where = f"_Channel ({TRANSPORT}) and RedisChannel ({BROKER})"
    channel = kombu_redis.Channel
    assert isinstance(channel.from_transport_options, tuple), _broken(
        "kombu", "Channel.from_transport_options is no tuple", f"_Channel ({TRANSPORT})"
    )
    for name in ("unacked_key", "unacked_index_key", "global_keyprefix", "sep"):
        assert isinstance(getattr(channel, name, None), str), _broken(
            "kombu", f"Channel.{name} is no string", where
        )
    assert isinstance(inspect.getattr_static(channel, "pool"), property), _broken(
        "kombu", "Channel.pool is no property", f"RedisChannel._create_client ({BROKER})"
    )
    assert "_create_client" in _attributes(channel.conn_or_acquire), _broken(
        "kombu",
        "Channel.conn_or_acquire no longer calls _create_client",
        f"RedisChannel._create_client ({BROKER}), whose client cache it would bypass",
    )
    assert "client" in _attributes(channel._connparams), _broken(
        "kombu",
        "Channel._connparams no longer reads self.connection.client",
        f"RedisChannel._connparams ({BROKER})",
    )


# -- calls ----------------------------------------------------------------------------------

_ANY = object()
"""Stands for `self` and any argument whose type does not matter to `Signature.bind`."""

# fmt: off
CALLS: list[tuple[str, Any, str, tuple[Any, ...], dict[str, Any], str]] = [
    # (library, owner, name, args, kwargs, where we call owner.name)
    ("kombu", kombu_redis.Channel, "_get_message_priority", (_ANY, {}), {"reverse": False},
     "_Channel._put"),
    ("kombu", kombu_redis.Channel, "_q_for_pri", (_ANY, "q", 0), {}, "_Channel._put"),
    ("kombu", kombu_redis.Channel, "_flush_brpop_reauth", (_ANY,), {}, "_Channel._brpop_read"),
    ("kombu", kombu_redis.Channel, "conn_or_acquire", (_ANY,), {}, "_Channel.push"),
    ("kombu", virtual.Transport, "_deliver", (_ANY, {}, "q"), {}, "_Channel._brpop_read"),
    ("kombu", virtual.QoS, "append", (_ANY, _ANY, "tag"), {}, "_QoS.append"),
    ("kombu", kombu_redis.QoS, "can_consume_max_estimate", (_ANY,), {}, "_Channel._take"),
    ("kombu", cycle_by_name("round_robin"), "rotate", (_ANY, "q"), {}, "_Channel._brpop_read"),
    ("redis", redis.Redis, "parse_response", (_ANY, _ANY, "BRPOP"), {}, "_Channel._brpop_read"),
    ("kombu", Hub, "call_soon", (_ANY, _ANY), {}, "BatchedEventsConsumer"),
    ("kombu", Hub, "call_later", (_ANY, 0.05, _ANY), {}, "BatchedEventsConsumer"),
    ("celery", CeleryConsumer, "_flush_events", (_ANY,), {}, "BatchedEventsConsumer"),
    ("openai", openai.OpenAI, "post", (_ANY, "/chat/completions"),
     {"body": {}, "cast_to": object}, "LLMGateway._post"),
    ("openai", openai.OpenAI, "_make_status_error_from_response", (_ANY, _ANY), {},
     "_PlainHTTP.post"),
    ("openai", openai, "APITimeoutError", (_ANY,), {}, "_PlainHTTP.post"),
    ("openai", openai, "APIConnectionError", (), {"request": _ANY}, "_PlainHTTP.post"),
    ("openai", llm._http, "Response", (500,), {"headers": [], "content": b"", "request": _ANY},
     "_PlainHTTP.post"),
    ("openai", llm._http, "Request", ("POST", "http://h/v1"), {}, "_PlainHTTP._request"),
]
# fmt: on


@pytest.mark.parametrize(
    ("library", "owner", "name", "args", "kwargs", "caller"),
    CALLS,
    ids=[f"{c[1].__name__}.{c[2]}" for c in CALLS],
)
def test_what_we_call_takes_our_arguments(
    library: str,
    owner: Any,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    caller: str,
) -> None:
    where = f"{caller} ({ {'openai': LLM, 'celery': CONSUMER}.get(library, TRANSPORT) })"
    what = f"{owner.__name__}.{name}"
    func = getattr(owner, name, None)
    assert callable(func), _broken(library, f"{what} is gone", where)
    try:
        inspect.signature(func).bind(*args, **kwargs)
    except TypeError as exc:
        pytest.fail(
            _broken(library, f"{what}{_shape(func)} no longer takes our call ({exc})", where)
        )


# -- Celery ---------------------------------------------------------------------------------


def test_the_event_dispatcher_still_asks_the_consumer_to_flush_its_buffer() -> None:
    where = f"BatchedEventsConsumer ({CONSUMER})"
    assert "on_send_event_buffered" in _attributes(EventsStep.start), _broken(
        "celery", "the Events step no longer hands the dispatcher on_send_event_buffered", where
    )
    assert worker_app.app.conf.worker_consumer == consumer.CONSUMER, f"{APP} no longer sets it"


def test_the_workers_event_buffer_still_holds_our_limit() -> None:
    where = f"BatchedDispatcher ({CONSUMER})"
    limit = inspect.signature(EventDispatcher.__init__).parameters.get("buffer_limit")
    assert limit is not None, _broken("celery", "EventDispatcher takes no buffer_limit", where)
    passed = {n.arg for n in ast.walk(_tree(EventsStep.start)) if isinstance(n, ast.keyword)}
    assert "buffer_group" in passed, _broken("celery", "the Events step changed", where)
    assert "buffer_limit" not in passed, _broken(
        "celery", "the Events step now sets the buffer limit itself", where
    )
    dispatcher = worker_app.app.events.Dispatcher(enabled=False)
    assert dispatcher.buffer_limit == consumer.EVENT_BUFFER_LIMIT, f"{APP} no longer sets it"


def test_a_round_sent_without_declaring_still_goes_to_its_queue() -> None:
    where = f"celery_config's routes, with declare=[] on Redis ({BROKER})"
    sender = worker_app.app.amqp.send_task_message
    assert "declare" in inspect.signature(sender).parameters, _broken(
        "celery", "send_task_message no longer takes declare", where
    )
    anonymous = inspect.getsource(virtual.Channel.basic_publish)
    assert "return self._put(routing_key, message, **kwargs)" in anonymous, _broken(
        "kombu", "a publish to the anonymous exchange no longer goes to its queue's list", where
    )


def test_celery_still_counts_running_jobs_in_active_requests() -> None:
    where = f"CeleryEnqueuer.prepare_round's busy test ({JOBS})"
    assert isinstance(worker_state.active_requests, Sized), _broken(
        "celery", "celery.worker.state.active_requests is gone or has no len()", where
    )
    accepted = inspect.signature(worker_state.task_accepted).parameters.get("add_active_request")
    assert accepted is not None and accepted.default == worker_state.active_requests.add, _broken(
        "celery", "task_accepted no longer adds a starting job to active_requests", where
    )


def test_the_chord_backend_still_hooks_into_celery() -> None:
    where = f"ChordResultBackend ({APP})"
    pool = inspect.getattr_static(RedisBackend, "ConnectionPool", None)
    assert isinstance(pool, property), _broken(
        "celery", "RedisBackend.ConnectionPool is no property", where
    )
    assert "ConnectionPool" in _attributes(RedisBackend._get_pool), _broken(
        "celery", "RedisBackend._get_pool no longer makes its pool from self.ConnectionPool", where
    )
    assert isinstance(
        inspect.getattr_static(worker_app.ChordResultBackend, "ConnectionPool"), property
    )
    assert issubclass(RedisBackend, AsyncBackendMixin), _broken(
        "celery", "RedisBackend is no AsyncBackendMixin (add_pending_result)", where
    )
    assert "on_task_call" in _attributes(celery_base), _broken(
        "celery", "Celery.send_task no longer calls backend.on_task_call", where
    )
    assert "add_pending_result" in _attributes(celery_result), _broken(
        "celery", "AsyncResult no longer calls backend.add_pending_result", where
    )
    assert "result_backend_thread_safe" in _strings(celery_backends_base), _broken(
        "celery", "the result_backend_thread_safe setting is gone", f"chord_backend ({APP})"
    )
    assert "thread_safe" in _attributes(celery_base), _broken(
        "celery", "Celery no longer shares a thread-safe backend", f"chord_backend ({APP})"
    )
    url = worker_app.chord_backend("redis://127.0.0.1:6379/0")["result_backend"]
    assert by_url(url)[0] is worker_app.ChordResultBackend, _broken(
        "celery", f"the backend URL {url!r} no longer names our class", f"chord_backend ({APP})"
    )


# -- OpenAI SDK -----------------------------------------------------------------------------


def test_the_sdks_http_library_is_where_we_look_for_it() -> None:
    exceptions = vars(openai._exceptions)
    found = exceptions.get("httpx2") or exceptions.get("httpx")
    assert found is llm._http, _broken(
        "openai", "openai._exceptions imports neither httpx2 nor httpx", f"_http ({LLM})"
    )


def test_the_sdk_client_gives_what_the_plain_http_path_reads() -> None:
    where = f"_PlainHTTP.__init__ ({LLM})"
    for name in ("auth_headers", "default_headers"):
        assert isinstance(inspect.getattr_static(openai.OpenAI, name, None), property), _broken(
            "openai", f"OpenAI.{name} is no property", where
        )
    client = openai.OpenAI(api_key="sk-guard", base_url="http://127.0.0.1:9/v1", timeout=7.5)
    assert client.auth_headers == {"Authorization": "Bearer sk-guard"}, _broken(
        "openai", f"OpenAI.auth_headers is {client.auth_headers!r}", where
    )
    assert str(client.base_url) == "http://127.0.0.1:9/v1/", _broken(
        "openai", f"OpenAI.base_url is {client.base_url!r}, with no trailing slash", where
    )
    assert client.default_headers.get("User-Agent", "").startswith("OpenAI/Python"), _broken(
        "openai", "OpenAI.default_headers has no User-Agent", where
    )


# -- redis-py -------------------------------------------------------------------------------


def test_a_script_object_still_has_its_sha_and_source() -> None:
    script = Script(redis.Redis(), "return 1")
    assert isinstance(script.sha, str) and script.script == "return 1", _broken(
        "redis", "Script.sha or Script.script is gone", f"RedisScripts._script_then ({STORE})"
    )
