"""One kept-alive HTTP/1.1 client connection, made for the gateway's plain-HTTP path: a POST
goes out in one write and its reply is read into bytes, headers and all.

The standard library's `http.client` costs about three times the CPU per LLM call: it builds
a request header by header, and parses every reply's headers with the `email` package. On one
worker serving a run at a time, that was about a tenth of the CPU per run, most of it on the
run's critical path (docs/benchmarks.md, History). This reads what an OpenAI-compatible
server sends: a status line, headers, and a body framed by `Content-Length`, by chunks, or by
the end of the connection. Its errors are `http.client`'s (`RemoteDisconnected` when a
kept-alive connection turns out to be closed) and `OSError`s (`TimeoutError` included).
"""

from __future__ import annotations

import http.client
import socket

__all__ = ["Connection", "Reply", "header_lines"]

MAX_HEAD_BYTES = 65_536
"""The most bytes a reply's status line and headers may take."""

_READ = 65_536

_IDENTITY = b"Accept-Encoding: identity\r\n"
"""Sent with every request, as `http.client` does: the body is read as it comes, so the
server must not compress it (with no Accept-Encoding, any encoding would do)."""

Reply = tuple[int, list[tuple[str, str]], bytes]
"""A reply: its status, its headers as sent, its body."""


class Connection:
    """A connection to `host:port`, opened on first use and kept open while the server
    keeps it alive. Not thread-safe: one per thread."""

    def __init__(self, host: str, port: int, *, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.sock: socket.socket | None = None
        self._buffer = bytearray()
        named = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL writes it
        self._host_line = b"Host: %s:%d\r\n" % (named.encode("idna"), port)

    def post(self, target: str, head: bytes, body: bytes) -> Reply:
        """POST `body` to `target`; `head`: the request's header lines, each ending in CRLF,
        but for Host and Content-Length, which are added here."""
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer.clear()
        request = b"POST %s HTTP/1.1\r\n%s%s%sContent-Length: %d\r\n\r\n" % (
            target.encode(),
            self._host_line,
            _IDENTITY,
            head,
            len(body),
        )
        self.sock.sendall(request + body)
        return self._reply()

    def close(self) -> None:
        """Close the socket (the next `post` opens another)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _reply(self) -> Reply:
        while True:  # interim replies (100 Continue) come before the one that counts
            status, version, headers = self._head()
            if status >= 200:
                break
        fields = {name.lower(): value for name, value in headers}
        if status in (204, 304):
            body = b""
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            body = self._chunked()
        elif "content-length" in fields:
            body = self._exactly(_length(fields["content-length"]))
        else:  # framed by the end of the connection
            body = self._until_closed()
        connection = fields.get("connection", "").lower()
        if "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection):
            self.close()
        return status, headers, body

    def _head(self) -> tuple[int, str, list[tuple[str, str]]]:
        end = self._find(b"\r\n\r\n", MAX_HEAD_BYTES, first=True)
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        status_line, *lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/") or not code.isdigit():
            raise http.client.BadStatusLine(status_line)
        headers = []
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon:
                raise http.client.HTTPException(f"a malformed reply header: {line!r}")
            headers.append((name.strip(), value.strip()))
        return int(code), version, headers

    def _find(self, mark: bytes, limit: int, *, first: bool = False) -> int:
        """Where `mark` starts in the buffer, reading until it is there. `first`: the read of
        a reply's first bytes, where a connection that ends is one the server had closed."""
        start = 0
        while True:
            at = self._buffer.find(mark, start)
            if at >= 0:
                return at
            if len(self._buffer) > limit:
                raise http.client.HTTPException(f"a reply's head is over {limit} bytes")
            start = max(0, len(self._buffer) - len(mark) + 1)
            if not self._fill():
                if first and not self._buffer:
                    raise http.client.RemoteDisconnected("the server closed the connection")
                raise http.client.IncompleteRead(bytes(self._buffer))

    def _fill(self) -> bool:
        """Read what the socket has into the buffer; False at the end of the connection."""
        assert self.sock is not None
        data = self.sock.recv(_READ)
        self._buffer += data
        return bool(data)

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._fill():
                raise http.client.IncompleteRead(bytes(self._buffer), size - len(self._buffer))
        body = bytes(self._buffer[:size])
        del self._buffer[:size]
        return body

    def _chunked(self) -> bytes:
        parts = []
        while True:
            end = self._find(b"\r\n", MAX_HEAD_BYTES)
            size_line = bytes(self._buffer[:end]).split(b";", 1)[0].strip()
            del self._buffer[: end + 2]
            try:
                size = int(size_line, 16)
            except ValueError:
                raise http.client.HTTPException(f"a malformed chunk size: {size_line!r}") from None
            if size == 0:
                break
            parts.append(self._exactly(size))
            self._exactly(2)  # the CRLF after the chunk
        while True:  # trailers, up to the empty line
            end = self._find(b"\r\n", MAX_HEAD_BYTES)
            del self._buffer[: end + 2]
            if end == 0:
                return b"".join(parts)

    def _until_closed(self) -> bytes:
        while self._fill():
            pass
        body = bytes(self._buffer)
        self._buffer.clear()
        self.close()
        return body


def header_lines(headers: dict[str, str]) -> bytes:
    """`headers` as a request's header lines; ValueError for a name or value that would end
    its line early (CR, LF), as `http.client` refuses them."""
    lines = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or not name or ":" in name:
            raise ValueError(f"an HTTP header that cannot be sent: {name!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


def _length(value: str) -> int:
    if not value.isdigit():
        raise http.client.HTTPException(f"a malformed Content-Length: {value!r}")
    return int(value)
