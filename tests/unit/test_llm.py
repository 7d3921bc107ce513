"""The LLM gateway's error boundary (docs/architecture.md §5) and its structured-output
dialects."""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections import Counter
from typing import Any

import openai
import pytest

from quorum.shared.errors import LLMError, PermanentLLMError, TransientLLMError
from quorum.shared.llm import Completion, LLMGateway, map_error, response_format
from quorum.shared.models import Usage
from quorum.shared.prompts import VOTE_SCHEMA
from quorum.shared.settings import Settings
from tests.openai_http import http

REQUEST = http.Request("POST", "http://llm.test/v1/chat/completions")


def response(status: int, headers: dict[str, str] | None = None) -> http.Response:
    return http.Response(status, headers=headers or {}, request=REQUEST)


def status_error(cls: type[openai.APIStatusError], status: int, **headers: str) -> Exception:
    return cls(f"HTTP {status}", response=response(status, headers), body=None)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (openai.APIConnectionError(request=REQUEST), TransientLLMError),
        (openai.APITimeoutError(request=REQUEST), TransientLLMError),
        (status_error(openai.RateLimitError, 429), TransientLLMError),
        (status_error(openai.InternalServerError, 500), TransientLLMError),
        (status_error(openai.InternalServerError, 503), TransientLLMError),
        (status_error(openai.APIStatusError, 408), TransientLLMError),
        (status_error(openai.ConflictError, 409), TransientLLMError),
        (status_error(openai.BadRequestError, 400), PermanentLLMError),
        (status_error(openai.AuthenticationError, 401), PermanentLLMError),
        (status_error(openai.PermissionDeniedError, 403), PermanentLLMError),
        (status_error(openai.NotFoundError, 404), PermanentLLMError),
        (status_error(openai.UnprocessableEntityError, 422), PermanentLLMError),
        (openai.APIResponseValidationError(response(200), body=None), TransientLLMError),
        (openai.OpenAIError("client misconfigured"), PermanentLLMError),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
def test_map_error_lane(exc: openai.OpenAIError, expected: type[LLMError]) -> None:
    mapped = map_error(exc)
    assert type(mapped) is expected


def test_map_error_is_complete_for_every_status_error_class() -> None:
    classes = [
        cls
        for cls in (getattr(openai, name) for name in openai.__all__)
        if isinstance(cls, type) and issubclass(cls, openai.APIStatusError)
    ]
    assert len(classes) >= 9
    for cls in classes:
        status = getattr(cls, "status_code", 500) if cls is not openai.APIStatusError else 418
        exc = (
            cls(response=response(status), body=None)
            if cls is openai.OAuthError
            else status_error(cls, status)
        )
        assert type(map_error(exc)) in (TransientLLMError, PermanentLLMError), cls


def test_status_errors_name_the_status_in_the_message() -> None:
    mapped = map_error(status_error(openai.NotFoundError, 404))
    assert "404" in str(mapped)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "2500"}, 2.5),
        ({"retry-after-ms": "2500", "retry-after": "9"}, 2.5),
        ({}, None),
    ],
)
def test_rate_limit_carries_retry_after(headers: dict[str, str], expected: float | None) -> None:
    mapped = map_error(status_error(openai.RateLimitError, 429, **headers))
    assert isinstance(mapped, TransientLLMError)
    assert mapped.retry_after == expected


def test_retry_after_as_an_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    mapped = map_error(status_error(openai.RateLimitError, 429, **{"retry-after": when}))
    assert isinstance(mapped, TransientLLMError)
    assert mapped.retry_after is not None
    assert 25 <= mapped.retry_after <= 31


def test_server_error_retry_after_is_kept_too() -> None:
    mapped = map_error(status_error(openai.InternalServerError, 503, **{"retry-after": "4"}))
    assert isinstance(mapped, TransientLLMError)
    assert mapped.retry_after == 4.0


# -- response_format ----------------------------------------------------------------------


def test_json_schema_dialect_is_strict_for_a_closed_schema() -> None:
    assert response_format("json_schema", "quorum_vote", VOTE_SCHEMA) == {
        "type": "json_schema",
        "json_schema": {"name": "quorum_vote", "schema": VOTE_SCHEMA, "strict": True},
    }


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        {
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
            "required": ["a"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"a": {"type": "object", "properties": {"x": {"type": "string"}}}},
            "required": ["a"],
            "additionalProperties": False,
        },
    ],
    ids=["open", "optional field", "open nested"],
)
def test_json_schema_dialect_is_not_strict_when_openai_would_refuse(schema: dict) -> None:
    fmt = response_format("json_schema", "response", schema)
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["schema"] == schema
    assert fmt["json_schema"]["strict"] is False


def test_json_object_dialect() -> None:
    assert response_format("json_object", "quorum_vote", VOTE_SCHEMA) == {
        "type": "json_object",
        "schema": VOTE_SCHEMA,
    }


def test_threads_take_the_clients_in_turns_and_keep_their_own() -> None:
    """Each client serves at most 64 threads: 130 threads' worth of concurrency makes 3."""
    gateway = LLMGateway(Settings(worker_concurrency=130, openai_api_key="k"))
    held: list[tuple[object, object]] = []

    def use() -> None:
        held.append((gateway.client, gateway.client))

    threads = [threading.Thread(target=use) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(first is again for first, again in held)
    assert sorted(Counter(id(first) for first, _ in held).values()) == [2, 2, 2]


def test_warm_up_makes_every_client_and_a_given_http_client_means_one() -> None:
    gateway = LLMGateway(Settings(worker_concurrency=500, openai_api_key="k"))
    gateway.warm_up()
    assert len({id(gateway.client), *map(id, gateway._clients)}) == 8

    given = http.Client()
    single = LLMGateway(Settings(worker_concurrency=500, openai_api_key="k"), http_client=given)
    single.warm_up()
    assert single._clients == [single.client]


def answering(body: object, *, content_type: str = "application/json") -> LLMGateway:
    """A gateway whose server answers every call with `body` (JSON) and HTTP 200."""
    text = body if isinstance(body, str) else json.dumps(body)
    reply = http.Response(200, headers={"content-type": content_type}, text=text)
    transport = http.MockTransport(lambda request: reply)
    return LLMGateway(Settings(openai_api_key="k"), http_client=http.Client(transport=transport))


def ask(gateway: LLMGateway) -> Completion:
    return gateway.complete_json(
        model="m", messages=[{"role": "user", "content": "x"}], schema=VOTE_SCHEMA, name="v"
    )


def test_the_reply_is_read_as_the_server_sent_it() -> None:
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 12,
        "total_tokens": 42,
        "prompt_tokens_details": {"cached_tokens": 10},
        "completion_tokens_details": {"reasoning_tokens": 4},
    }
    message = {"role": "assistant", "content": '{"is_valid": true}'}
    reply = ask(answering({"choices": [{"index": 0, "message": message}], "usage": usage}))
    assert reply.content == '{"is_valid": true}'
    assert reply.usage == Usage(
        prompt_tokens=30,
        completion_tokens=12,
        total_tokens=42,
        cached_tokens=10,
        reasoning_tokens=4,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"choices": []},
        {"choices": [{"message": {"role": "assistant", "content": None}}]},
        {"choices": [{"finish_reason": "length"}], "usage": None},
        {"choices": ["?"], "usage": {"total_tokens": "many"}},
    ],
)
def test_a_completion_without_text_or_usage_reads_as_empty_and_free(body: object) -> None:
    """The step then finds the empty output invalid, as it would any other."""
    reply = ask(answering(body))
    assert (reply.content, reply.usage) == ("", Usage())


def test_the_run_settings_go_to_the_server_and_a_cut_off_answer_is_told() -> None:
    """`temperature` and `max_output_tokens` (as `max_tokens`) are sent when set, never
    otherwise; `finish_reason: length` reads as truncated."""
    bodies: list[dict[str, Any]] = []
    answer = {"choices": [{"finish_reason": "length", "message": {"content": '{"a'}}]}

    def serve(request: http.Request) -> http.Response:
        bodies.append(json.loads(request.content))
        return http.Response(200, json=answer)

    transport = http.MockTransport(serve)
    gateway = LLMGateway(Settings(openai_api_key="k"), http_client=http.Client(transport=transport))
    plain = ask(gateway)
    capped = gateway.complete_json(
        model="m",
        messages=[{"role": "user", "content": "x"}],
        schema=VOTE_SCHEMA,
        name="v",
        temperature=0.2,
        max_output_tokens=5,
    )
    assert plain.truncated and capped.truncated
    assert "temperature" not in bodies[0] and "max_tokens" not in bodies[0]
    assert (bodies[1]["temperature"], bodies[1]["max_tokens"]) == (0.2, 5)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ([1, 2], "application/json"),
        ({"error": "busy"}, "application/json"),
        ("<html>a proxy's error page</html>", "text/html"),
    ],
)
def test_a_reply_that_is_no_chat_completion_is_a_transient_error(
    body: object, content_type: str
) -> None:
    with pytest.raises(TransientLLMError, match="no chat completion"):
        ask(answering(body, content_type=content_type))
