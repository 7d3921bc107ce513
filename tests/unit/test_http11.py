"""The plain-HTTP path's connection (`shared.http11`) against a socket server on a free local
port that answers each request with scripted bytes: every way a reply may be framed, kept
alive or closed, and the malformed ones."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator

import pytest

from quorum.shared.http11 import MAX_HEAD_BYTES, Connection, header_lines


class RawServer:
    """Accepts connections; reads each request whole (by its Content-Length) and writes the
    next scripted reply; closes the connection after a reply whose script says so. Records
    each request's bytes and the connection it came on."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.script: list[tuple[bytes, bool]] = []
        self.requests: list[tuple[int, bytes]] = []
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            answer = threading.Thread(target=self._answer, args=(conn, self.connections))
            answer.daemon = True
            answer.start()

    def _answer(self, conn: socket.socket, number: int) -> None:
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                head, _, data = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(data) < length:
                    data += conn.recv(65536)
                self.requests.append((number, head + b"\r\n\r\n" + data[:length]))
                data = data[length:]
                reply, close = self.script.pop(0)
                conn.sendall(reply)
                if close:
                    return


@pytest.fixture
def server() -> Iterator[RawServer]:
    raw = RawServer()
    yield raw
    raw.sock.close()


def connect(server: RawServer, timeout_s: float = 5.0) -> Connection:
    return Connection("127.0.0.1", server.port, timeout_s=timeout_s)


HEAD = b"Authorization: Bearer k\r\nContent-Type: application/json\r\n"


def test_sends_one_request_with_host_length_and_identity_encoding(server: RawServer) -> None:
    server.script = [(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", False)]

    status, headers, body = connect(server).post("/v1/chat/completions", HEAD, b'{"a": 1}')

    assert (status, headers, body) == (200, [("Content-Length", "2")], b"{}")
    [(_, request)] = server.requests
    assert request == (
        b"POST /v1/chat/completions HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        % server.port
        + b"Accept-Encoding: identity\r\n"
        + HEAD
        + b'Content-Length: 8\r\n\r\n{"a": 1}'
    )


def test_keeps_the_connection_alive_across_replies(server: RawServer) -> None:
    server.script = [(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", False)] * 3
    conn = connect(server)

    assert [conn.post("/", HEAD, b"x")[2] for _ in range(3)] == [b"a"] * 3
    assert server.connections == 1


def test_reads_a_chunked_reply_with_extensions_and_trailers(server: RawServer) -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4;ext=1\r\n{"a"\r\n5\r\n: 12}\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    server.script = [(reply, False), (b"HTTP/1.1 204 No Content\r\n\r\n", False)]
    conn = connect(server)

    assert conn.post("/", HEAD, b"x")[2] == b'{"a": 12}'
    assert conn.post("/", HEAD, b"x")[:1] == (204,)  # the next reply on the same connection
    assert server.connections == 1


def test_skips_interim_replies(server: RawServer) -> None:
    reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many\r\nRetry-After: 3\r\n"
    server.script = [(reply + b"Content-Length: 0\r\n\r\n", False)]

    status, headers, body = connect(server).post("/", HEAD, b"x")

    assert (status, headers, body) == (429, [("Retry-After", "3"), ("Content-Length", "0")], b"")


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n\r\nok",  # no length: the body ends with the connection
    ],
)
def test_a_reply_that_ends_its_connection_is_read_and_the_next_call_reconnects(
    server: RawServer, reply: bytes
) -> None:
    server.script = [(reply, True), (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", False)]
    conn = connect(server)

    assert conn.post("/", HEAD, b"x")[2] == b"ok"
    assert conn.sock is None
    assert conn.post("/", HEAD, b"x")[2] == b"b"
    assert server.connections == 2


def test_a_kept_alive_connection_the_server_closed_is_remote_disconnected(
    server: RawServer,
) -> None:
    server.script = [(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", True)]
    conn = connect(server)
    conn.post("/", HEAD, b"x")

    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
        conn.post("/", HEAD, b"x")


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"SMTP ready\r\n\r\n", http.client.BadStatusLine),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", http.client.IncompleteRead),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES, http.client.HTTPException),
    ],
)
def test_malformed_replies_are_http_errors(
    server: RawServer, reply: bytes, error: type[Exception]
) -> None:
    server.script = [(reply, True)]

    with pytest.raises(error):
        connect(server).post("/", HEAD, b"x")


def test_a_silent_server_times_out(server: RawServer) -> None:
    server.script = [(b"", False)]  # reads the request, never answers

    with pytest.raises(TimeoutError):
        connect(server, timeout_s=0.2).post("/", HEAD, b"x")


def test_an_ipv6_host_is_bracketed_in_the_host_header() -> None:
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    port = server.getsockname()[1]
    got: list[bytes] = []

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            got.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    with server:
        assert Connection("::1", port, timeout_s=5).post("/", HEAD, b"")[0] == 200
    thread.join(5)
    assert b"\r\nHost: [::1]:%d\r\n" % port in got[0]


@pytest.mark.parametrize("bad", [{"X-A": "1\r\nX-B: 2"}, {"X-A\n": "1"}, {"": "1"}, {"X:A": "1"}])
def test_a_header_that_would_end_its_line_early_is_refused(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="cannot be sent"):
        header_lines(bad)
    assert header_lines({"Authorization": "Bearer k"}) == b"Authorization: Bearer k\r\n"
