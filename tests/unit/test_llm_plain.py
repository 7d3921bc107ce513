"""The gateway's plain-HTTP path: the SDK's request over one kept-alive connection per thread,
against a standard-library HTTP server on a free local port."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from quorum.shared.errors import PermanentLLMError, TransientLLMError
from quorum.shared.llm import LLMGateway, _plain_http, response_format
from quorum.shared.settings import Settings
from quorum.simulator.errors import LLAMA_CPP_JSON_SCHEMA_ERROR
from tests.openai_http import http

SCHEMA = {"type": "object", "properties": {"product": {"type": "string"}}}
COMPLETION = {
    "choices": [{"message": {"content": '{"product": "apple"}'}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
}


class Server(ThreadingHTTPServer):
    """Answers each POST with the next scripted `(status, headers, body)`, or a completion;
    records what it was sent. `hang_up`: close each connection after its reply, unannounced."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        self.seen: list[dict[str, Any]] = []
        self.hang_up = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "headers": dict(self.headers),
                "body": json.loads(body),
                "peer": self.client_address[1],
            }
        )
        script = self.server.script
        status, headers, reply = script.pop(0) if script else (200, {}, json.dumps(COMPLETION))
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply if isinstance(reply, bytes) else reply.encode())
        self.wfile.flush()
        if self.server.hang_up:
            self.close_connection = True

    def log_message(self, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = Server()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def gateway(base_url: str, **settings: Any) -> LLMGateway:
    return LLMGateway(Settings(openai_base_url=base_url, openai_api_key="sk-test", **settings))


def ask(gw: LLMGateway) -> Any:
    messages = [{"role": "user", "content": "5 apples"}]
    return gw.complete_json(model="m", messages=messages, schema=SCHEMA, name="Purchase")


def test_plain_http_only_without_tls_or_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert _plain_http("http://127.0.0.1:8000/v1")
    assert not _plain_http("https://api.openai.com/v1")
    assert not _plain_http(None)
    monkeypatch.setenv("NO_PROXY", "localhost")
    assert _plain_http("http://127.0.0.1:8000/v1")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
    assert not _plain_http("http://127.0.0.1:8000/v1")


def test_sends_the_sdks_request_and_reads_the_reply(server: Server) -> None:
    gw = gateway(server.base_url)
    assert gw._plain and len(gw._clients) == 1

    reply = ask(gw)

    assert reply.content == '{"product": "apple"}'
    assert (reply.usage.prompt_tokens, reply.usage.total_tokens) == (3, 7)
    [seen] = server.seen
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["Authorization"] == "Bearer sk-test"
    assert seen["headers"]["Content-Type"] == "application/json"
    assert seen["headers"]["User-Agent"].startswith("OpenAI/Python")
    assert seen["body"]["model"] == "m"
    assert seen["body"]["response_format"]["type"] == "json_schema"


def test_one_kept_alive_connection_per_thread(server: Server) -> None:
    gw = gateway(server.base_url)
    for _ in range(3):
        ask(gw)
    other = threading.Thread(target=lambda: [ask(gw) for _ in range(2)])
    other.start()
    other.join()

    peers = [seen["peer"] for seen in server.seen]
    assert len(peers) == 5
    assert len(set(peers[:3])) == 1 and len(set(peers[3:])) == 1 and peers[0] != peers[3]


def test_a_connection_the_server_closed_is_replaced_and_the_call_made_once(
    server: Server,
) -> None:
    server.hang_up = True
    gw = gateway(server.base_url)

    assert ask(gw).content and ask(gw).content

    assert len(server.seen) == 2
    assert server.seen[0]["peer"] != server.seen[1]["peer"]


def test_error_statuses_are_the_sdks_errors_mapped(server: Server) -> None:
    error = json.dumps({"error": {"message": "slow down", "type": "requests"}})
    server.script = [(429, {"Retry-After": "7"}, error), (401, {}, error)]
    gw = gateway(server.base_url)

    with pytest.raises(TransientLLMError, match="HTTP 429: Error code: 429") as slow:
        ask(gw)
    assert slow.value.retry_after == 7.0
    with pytest.raises(PermanentLLMError, match="HTTP 401"):
        ask(gw)


def test_a_json_schema_refusal_switches_dialect(server: Server) -> None:
    refusal = json.dumps({"detail": LLAMA_CPP_JSON_SCHEMA_ERROR})
    server.script = [(422, {}, refusal)]
    gw = gateway(server.base_url)

    assert ask(gw).content

    assert [s["body"]["response_format"]["type"] for s in server.seen] == [
        "json_schema",
        "json_object",
    ]
    assert gw.dialect == "json_object"


def test_a_reply_that_is_no_json_is_transient(server: Server) -> None:
    server.script = [(200, {"Content-Type": "text/html"}, b"<html>busy</html>")]
    with pytest.raises(TransientLLMError, match="no chat completion: '<html>busy"):
        ask(gateway(server.base_url))


def test_unreachable_and_silent_servers_are_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        with pytest.raises(TransientLLMError, match="unreachable: APIConnectionError"):
            ask(gateway(closed))
        sock.listen()  # accepts the connection, never answers
        with pytest.raises(TransientLLMError, match="unreachable: APITimeoutError"):
            ask(gateway(closed, llm_timeout_s=0.2))


# What the HTTP client adds on its own, whoever sends: the host and length of this request,
# keep-alive (HTTP/1.1's default anyway), and the encodings it can decompress (the SDK's HTTP
# library takes gzip; the plain path reads the body as sent, so it asks for none).
_TRANSPORT_HEADERS = frozenset({"host", "content-length", "connection", "accept-encoding"})


def _as_sent(seen: dict[str, Any]) -> dict[str, Any]:
    """A request as the server saw it, less what the HTTP client adds on its own."""
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    return {
        "method": seen["method"],
        "path": seen["path"],
        "headers": {k: v for k, v in headers.items() if k not in _TRANSPORT_HEADERS},
        "body": seen["body"],
    }


def _sdk(base_url: str) -> openai.OpenAI:
    """The SDK's client, made as the gateway makes its own."""
    settings = Settings(openai_base_url=base_url, openai_api_key="sk-test")
    return openai.OpenAI(
        api_key="sk-test", base_url=base_url, timeout=settings.llm_timeout_s, max_retries=0
    )


def _sdk_ask(client: openai.OpenAI) -> Any:
    """`ask`, through the SDK's public `chat.completions.create`."""
    return client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "5 apples"}],
        response_format=response_format("json_schema", "Purchase", SCHEMA),
    )


def test_the_plain_path_sends_the_request_the_sdk_sends(server: Server) -> None:
    plain = gateway(server.base_url)
    through_sdk = LLMGateway(
        Settings(openai_base_url=server.base_url, openai_api_key="sk-test"),
        http_client=http.Client(),
    )
    assert plain._plain and not through_sdk._plain

    ask(plain)
    ask(through_sdk)
    _sdk_ask(_sdk(server.base_url))

    by_plain, by_gateway, by_sdk = (_as_sent(seen) for seen in server.seen)
    assert by_sdk["method"] == "POST" and by_sdk["path"] == "/v1/chat/completions"
    assert by_sdk["headers"]["authorization"] == "Bearer sk-test"
    assert by_sdk["headers"]["content-type"] == "application/json"
    assert by_sdk["headers"]["user-agent"] == f"OpenAI/Python {openai.__version__}"
    assert by_plain == by_sdk, "the plain-HTTP path no longer sends what the SDK sends"
    assert by_gateway == by_sdk, "the gateway's SDK path no longer sends what the SDK sends"


def test_the_plain_path_raises_the_error_the_sdk_raises(server: Server) -> None:
    error = json.dumps({"error": {"message": "slow down", "type": "requests", "code": "rate"}})
    server.script = [(429, {"Retry-After": "7"}, error)] * 2

    with pytest.raises(TransientLLMError) as by_plain:
        ask(gateway(server.base_url))
    with pytest.raises(openai.APIStatusError) as by_sdk:
        _sdk_ask(_sdk(server.base_url))

    plain = by_plain.value.__cause__
    sdk = by_sdk.value
    assert isinstance(plain, openai.APIStatusError)
    assert type(plain) is type(sdk) is openai.RateLimitError
    assert (plain.status_code, plain.message, plain.body, plain.code, plain.type) == (
        sdk.status_code,
        sdk.message,
        sdk.body,
        sdk.code,
        sdk.type,
    )
    assert plain.response.headers["retry-after"] == sdk.response.headers["retry-after"] == "7"
