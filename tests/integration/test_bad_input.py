"""Bad requests are refused at submit with a ValueError naming the problem, before anything is
written to Redis or enqueued (docs/architecture.md §2.1, §7)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
import redis
from pydantic import ValidationError

from quorum.producer import TaskClient
from quorum.shared.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    SchemaError,
    TemplateError,
)
from quorum.shared.models import (
    KAheadVotingValidationConfig,
    SingleShotValidationConfig,
    ThresholdVotingValidationConfig,
)
from quorum.shared.settings import Settings
from tests.integration.helpers import Purchase

pytestmark = pytest.mark.integration

QUEUES = ("quorum.tasks", "quorum.votes", "quorum.control")
GOOD = {
    "template": "Extract the purchase from: {{ message }}",
    "response_model": Purchase,
    "kwargs": {"message": "I want 5 apples"},
    "config": SingleShotValidationConfig(issues=["names a product"]),
}


@pytest.fixture
def quiet_db(redis_url: str) -> Iterator[str]:
    """An empty database of the session's Redis that no worker uses, emptied afterwards."""
    url = redis_url.rsplit("/", 1)[0] + "/9"
    db = redis.Redis.from_url(url)
    db.flushdb()
    yield url
    db.flushdb()
    db.close()


@pytest.fixture
def refuses(quiet_db: str) -> Iterator:
    """`refuses(error, match, client=None, **request)`: submit, expect the error, and check
    that nothing was written or enqueued."""
    db = redis.Redis.from_url(quiet_db, decode_responses=True)
    clients: list[TaskClient] = []

    def check(error, match, *, settings=None, **changes):
        client = TaskClient(redis_url=quiet_db, settings=settings)
        clients.append(client)
        before = db.dbsize(), [db.llen(q) for q in QUEUES]
        with pytest.raises(error, match=match) as refused:
            client.submit(**{**GOOD, **changes})
        assert isinstance(refused.value, ValueError)
        assert (db.dbsize(), [db.llen(q) for q in QUEUES]) == before
        assert db.keys("quorum:*") == []
        return refused.value

    yield check
    for client in clients:
        client.close()
    db.close()


def test_a_good_request_is_written_and_enqueued(quiet_db):
    # The control for the refusals below: the same kind of client does write and enqueue.
    db = redis.Redis.from_url(quiet_db)
    client = TaskClient(redis_url=quiet_db)
    try:
        client.submit(**GOOD)
        assert db.llen("quorum.tasks") == 1
        assert db.keys("quorum:run:*")
    finally:
        client.close()
        db.close()


def test_template_syntax_error(refuses):
    refuses(TemplateError, "template syntax error", template="Hello {{ name ")


def test_template_variable_missing_from_kwargs(refuses):
    error = refuses(TemplateError, "missing from kwargs: name", template="Hello {{ name }}")
    assert "name" in str(error)


def test_template_sandbox_escape(refuses):
    refuses(TemplateError, "sandbox", template="{{ ''.__class__.__mro__ }}", kwargs={})


def test_template_sandbox_escape_by_subscript(refuses):
    refuses(TemplateError, "__globals__", template="{{ cycler['__init__']['__globals__'] }}")


def test_kwargs_not_json_serializable(refuses):
    refuses(
        InvalidRequestError, "kwargs must be JSON-serializable", kwargs={"message": datetime.now()}
    )


# A type a TypeAdapter takes (`dict`, `int`) and a non-object JSON Schema are response types
# (docs/defined-tasks.md); a value that is none of these is refused.
@pytest.mark.parametrize("model", [42, "Purchase", {"type": 7}, {"type": "strng"}])
def test_response_model_neither_pydantic_nor_json_schema(refuses, model):
    refuses(SchemaError, "response_model", response_model=model)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"mode": "threshold", "issues": ["x"], "count": 4}, "count must be odd"),
        ({"mode": "k_ahead", "issues": ["x"], "count": 2}, "count must be odd"),
        ({"mode": "threshold", "issues": ["x"], "count": 3, "required_ahead": 4}, "required_ahead"),
        ({"mode": "threshold", "issues": ["x"], "required_ahead": 0}, "required_ahead"),
        ({"mode": "k_ahead", "issues": ["x"], "count": 5, "max_votes": 3}, "max_votes"),
        ({"mode": "single_shot", "issues": ["x"], "max_retries": -1}, "max_retries"),
        ({"mode": "single_shot", "issues": []}, "issues"),
        ({"mode": "threshold", "issues": ["x", "  "]}, "issues"),
        ({"mode": "majority", "issues": ["x"]}, "mode"),
        ({"issues": ["x"]}, "mode"),
        ("threshold", "config"),
    ],
)
def test_invalid_config(refuses, config, match):
    error = refuses(InvalidRequestError, "invalid validation config", config=config)
    assert match in str(error)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ThresholdVotingValidationConfig(issues=["x"], count=2), "count must be odd"),
        (lambda: ThresholdVotingValidationConfig(issues=["x"], required_ahead=5), "required_ahead"),
        (lambda: KAheadVotingValidationConfig(issues=["x"], max_votes=2), "max_votes"),
        (lambda: SingleShotValidationConfig(issues=["x"], max_retries=-1), "max_retries"),
        (lambda: SingleShotValidationConfig(issues=[]), "issues"),
        (lambda: SingleShotValidationConfig(issues=[""]), "issues"),
    ],
)
def test_invalid_config_object_cannot_be_constructed(make, match):
    with pytest.raises(ValidationError, match=match) as refused:
        make()
    assert isinstance(refused.value, ValueError)


def test_payload_over_the_limit(refuses):
    settings = Settings(max_payload_bytes=200)
    refuses(
        PayloadTooLargeError,
        "kwargs is .* bytes, over the limit of 200 bytes",
        settings=settings,
        kwargs={"message": "x" * 500},
    )
    refuses(
        PayloadTooLargeError,
        "template is .* over the limit",
        settings=settings,
        template="{{ message }}" + "y" * 300,
    )


def test_bad_idempotency_key(refuses):
    refuses(InvalidRequestError, "idempotency_key", idempotency_key="")
