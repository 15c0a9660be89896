"""A real HTTP/1.1 origin server (stdlib http.server, threads, port 0) with test routes.

Routes (all GET unless noted):
  /bytes/N        N bytes of a fixed pattern, with Content-Length
  /chunked/N      N bytes, Transfer-Encoding: chunked (in 64 KiB chunks)
  /close/N        N bytes, close-delimited (no length, Connection: close)
  /echo           (any method) the request body back, with Content-Length
  /headers        the request head as JSON: method, path, version, headers [[name, value], ...]
  /status/CODE    that status; no body for 1xx/204/304
  /gzip           a gzip-encoded body with Content-Encoding: gzip
  /redirect       302 to /bytes/10
  /cookies        three Set-Cookie headers
  /hop            a response carrying hop-by-hop headers that must not reach the client
  /slow/SECONDS   waits, then answers "slow"
  /stall-body     sends a head promising 10 bytes, 5 of them, then waits
  /truncated      promises 100 bytes, sends 10, closes
Every request is recorded in `server.requests` as (method, path, headers, body), unless
`record=False` (a long soak would keep every upload).
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATTERN = bytes(range(256)) * 256  # 64 KiB


def pattern_bytes(n: int) -> bytes:
    reps, rest = divmod(n, len(PATTERN))
    return PATTERN * reps + PATTERN[:rest]


def iter_pattern(n: int, size: int = len(PATTERN)) -> Iterator[bytes]:
    while n > 0:
        piece = PATTERN[: min(n, size)]
        n -= len(piece)
        yield piece


class OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: OriginServer
    body = b""  # the current request's

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.body = self._read_body()
        if self.server.record:
            self.server.requests.append((self.command, self.path, list(self.headers.items()), self.body))
        parts = self.path.split("?")[0].strip("/").split("/")
        route = getattr(self, "route_" + parts[0].replace("-", "_"), None)
        if route is None:
            self._send(404, b"no such route\n")
        else:
            route(*parts[1:])

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def route_bytes(self, n: str) -> None:
        size = int(n)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if self.command != "HEAD":
            for piece in iter_pattern(size):
                self.wfile.write(piece)

    def route_chunked(self, n: str) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in iter_pattern(int(n)):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def route_close(self, n: str) -> None:
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        for piece in iter_pattern(int(n)):
            self.wfile.write(piece)
        self.close_connection = True

    def route_page(self) -> None:
        """A small HTML page, for browsers."""
        html = (
            b"<!doctype html><title>tinyproxy-py</title><body style='font:24px sans-serif;margin:2em'>"
            b"<h1>Hello from the origin</h1><p>This page came through the proxy.</p></body>"
        )
        self._send(200, html, {"Content-Type": "text/html; charset=utf-8"})

    def route_echo(self) -> None:
        self._send(200, self.body, {"Content-Type": "application/octet-stream"})

    def route_headers(self) -> None:
        headers = list(self.headers.items())
        info = {
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "headers": headers,
        }
        self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})

    def route_status(self, code: str) -> None:
        status = int(code)
        if status < 200 or status in (204, 304):
            self.send_response(status)
            self.send_header("X-Status", code)
            self.end_headers()
        else:
            self._send(status, f"status {code}\n".encode())

    def route_gzip(self) -> None:
        self._send(200, gzip.compress(b"hello gzip " * 100), {"Content-Encoding": "gzip"})

    def route_redirect(self) -> None:
        self._send(302, b"moved\n", {"Location": "/bytes/10"})

    def route_cookies(self) -> None:
        self.send_response(200)
        for value in ("a=1", "b=2", "c=3"):
            self.send_header("Set-Cookie", value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def route_hop(self) -> None:
        headers = {"Connection": "X-Secret, keep-alive", "X-Secret": "hop", "Keep-Alive": "timeout=5"}
        headers["Upgrade"] = "h2c"
        headers["X-Kept"] = "end-to-end"
        self._send(200, b"hop\n", headers)

    def route_slow(self, seconds: str) -> None:
        self.server.release.wait(float(seconds))
        self._send(200, b"slow\n")

    def route_stall_body(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "10")
        self.end_headers()
        self.wfile.write(b"12345")
        self.wfile.flush()
        self.server.release.wait(30)
        self.close_connection = True

    def route_truncated(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.close_connection = True


class OriginServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None, record: bool = True
    ) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, 0), OriginHandler)
        self.requests: list[tuple[str, str, list[tuple[str, str]], bytes]] = []
        self.record = record
        self.release = threading.Event()
        self.ssl_context = ssl_context
        self.scheme = "http" if ssl_context is None else "https"
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        if self.ssl_context is not None:
            # Handshake in the handler thread (on first read), not in the accept loop.
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str = "/", host: str | None = None) -> str:
        host = host or str(self.server_address[0])
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}{path}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that abort mid-response are part of the tests

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        self._thread.join(10)


@contextmanager
def running_origin(**kwargs: Any) -> Iterator[OriginServer]:
    server = OriginServer(**kwargs)
    try:
        yield server
    finally:
        server.stop()
