"""The gateway's structured-output dialect: `json_schema` first, `json_object` once a server
refuses `json_schema` the way llama-cpp-python's does, and never a second guess after that."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from quorum.shared.errors import PermanentLLMError, TransientLLMError
from quorum.shared.llm import LLMGateway
from quorum.shared.prompts import VOTE_SCHEMA
from quorum.shared.settings import Settings
from tests.openai_http import http

# llama-cpp-python's answer to {"type": "json_schema"}: its pydantic error, as HTTP 500.
LLAMA_CPP_REFUSAL = {
    "error": {
        "message": "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
        "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', "
        "'ctx': {'expected': \"'text' or 'json_object'\"}}]",
        "type": "internal_server_error",
    }
}
VERDICT = {"is_valid": True, "reasoning": "fine"}
USAGE = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}


def completion(content: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": json.dumps(content)},
            }
        ],
        "usage": USAGE,
    }


class Server:
    """A fake OpenAI-compatible server that logs each request's response_format type."""

    def __init__(self, answer: Callable[[str], http.Response]) -> None:
        self.answer = answer
        self.formats: list[str] = []

    def __call__(self, request: http.Request) -> http.Response:
        kind = json.loads(request.content)["response_format"]["type"]
        self.formats.append(kind)
        return self.answer(kind)


def llama_cpp_like(kind: str) -> http.Response:
    if kind == "json_schema":
        return http.Response(500, json=LLAMA_CPP_REFUSAL)
    return http.Response(200, json=completion(VERDICT))


def gateway(server: Server, **settings: Any) -> LLMGateway:
    config = Settings(openai_base_url="http://llm.test/v1", openai_api_key="k", **settings)
    return LLMGateway(config, http_client=http.Client(transport=http.MockTransport(server)))


def ask(llm: LLMGateway) -> Any:
    return llm.complete_json(
        model="m", messages=[{"role": "user", "content": "x"}], schema=VOTE_SCHEMA, name="v"
    )


def test_json_schema_is_asked_first_and_kept_when_the_server_takes_it() -> None:
    server = Server(lambda kind: http.Response(200, json=completion(VERDICT)))
    llm = gateway(server)
    ask(llm)
    ask(llm)
    assert server.formats == ["json_schema", "json_schema"]
    assert llm.dialect == "json_schema"


def test_a_llama_cpp_refusal_switches_to_json_object_once_and_for_good() -> None:
    server = Server(llama_cpp_like)
    llm = gateway(server)
    first = ask(llm)
    assert json.loads(first.content) == VERDICT
    assert first.usage.total_tokens == 20
    assert llm.dialect == "json_object"
    ask(llm)
    assert server.formats == ["json_schema", "json_object", "json_object"]


def test_the_setting_json_object_never_tries_json_schema() -> None:
    server = Server(llama_cpp_like)
    ask(gateway(server, structured_output="json_object"))
    assert server.formats == ["json_object"]


def test_other_server_errors_are_not_a_dialect_refusal() -> None:
    server = Server(lambda kind: http.Response(500, json={"error": {"message": "boom"}}))
    llm = gateway(server)
    with pytest.raises(TransientLLMError, match="500"):
        ask(llm)
    assert server.formats == ["json_schema"]
    assert llm.dialect == "json_schema"


def test_a_failure_after_the_switch_is_mapped_like_any_other() -> None:
    def refuse_everything(kind: str) -> http.Response:
        if kind == "json_schema":
            return http.Response(500, json=LLAMA_CPP_REFUSAL)
        return http.Response(401, json={"error": {"message": "bad key"}})

    server = Server(refuse_everything)
    with pytest.raises(PermanentLLMError, match="401"):
        ask(gateway(server))
    assert server.formats == ["json_schema", "json_object"]


def test_a_refusal_in_json_object_mode_is_not_retried() -> None:
    server = Server(lambda kind: http.Response(500, json=LLAMA_CPP_REFUSAL))
    with pytest.raises(TransientLLMError):
        ask(gateway(server, structured_output="json_object"))
    assert server.formats == ["json_object"]
