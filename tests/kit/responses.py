"""Responses parsed by http.client from a raw socket: the client side of most wire checks.

http.client reads any framing (length, chunked, close-delimited) the way a real client
does, while the request itself is raw bytes the test chose.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .clients import connect_request
from .waits import MUST_NOT_EXPIRE


class Response:
    """A response read whole: status, version, header list, body, framing."""

    def __init__(self, sock: Any, method: str = "GET") -> None:
        raw = http.client.HTTPResponse(sock, method=method)
        raw.begin()
        self.status = raw.status
        self.version = raw.version
        self.headers = raw.getheaders()
        self.chunked = raw.chunked
        self.will_close = raw.will_close
        self.body = raw.read()
        raw.close()

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class _KeptOpen:
    """A file whose close() does nothing: http.client closes its file after each response."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def close(self) -> None:
        pass


class _OneReader:
    def __init__(self, file: Any) -> None:
        self.file = _KeptOpen(file)

    def makefile(self, *args: Any, **kwargs: Any) -> Any:
        return self.file


@contextmanager
def one_reader(sock: socket.socket) -> Iterator[Any]:
    """A stand-in socket for Response that gives every response one buffered file.

    Each http.client response reads ahead into a buffer of its own, so reading several
    pipelined responses with a reader each loses whatever arrived together.
    """
    with sock.makefile("rb") as file:
        yield _OneReader(file)


def request_over(sock: socket.socket, raw: bytes, method: str = "GET") -> Response:
    """Send one raw request on an open connection and read its response."""
    sock.sendall(raw)
    return Response(sock, method)


def refused_connect(proxy_address: tuple[str, int], target: str) -> Response:
    """A CONNECT on a new connection that the proxy refuses: its answer has a framed body."""
    with socket.create_connection(proxy_address, timeout=MUST_NOT_EXPIRE) as sock:
        return request_over(sock, connect_request(target), "CONNECT")


def get(proxy_address: tuple[str, int], url: str, headers: str = "", version: str = "HTTP/1.1") -> Response:
    """One absolute-form GET through the proxy on a new connection."""
    host = url.split("/")[2]
    raw = f"GET {url} {version}\r\nHost: {host}\r\n{headers}\r\n".encode()
    with socket.create_connection(proxy_address, timeout=MUST_NOT_EXPIRE) as sock:
        return request_over(sock, raw)
