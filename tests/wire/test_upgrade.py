"""WebSocket through the proxy as an absolute-form Upgrade: the 101 turns the client and
origin connections into a tunnel in the hub (counted, listed, bounded, closed like CONNECT
tunnels); anything but a 101 is an ordinary response; https:// targets cannot upgrade.

The origin is a real WebSocket server (the `websockets` package, threads) or a scripted
one; the client is wsproto (sans-IO) on a raw socket to the proxy.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WsHttpRequest
from websockets.sync.server import ServerConnection, serve
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from tinyproxy_py import AccessRecord, ProxyServer
from tinyproxy_py.observe.accesslog import format_record

from ..kit.clients import KiB, connect_request, open_tunnel
from ..kit.faults import echo
from ..kit.responses import request_over
from ..kit.servers import scripted_server
from ..kit.waits import MUST_NOT_EXPIRE, wait_until

SERVER_CLOSE = "please close"  # the echo server answers this text by closing the websocket
SERVER_CLOSE_CODE, SERVER_CLOSE_REASON = 4000, "server says bye"


# --- the origin: a real WebSocket echo server ---


@dataclass
class WsOrigin:
    port: int
    handshakes: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # path, headers
    closes: list[tuple[int | None, str | None]] = field(default_factory=list)  # code, reason as seen

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def ws_origin(no_leaks: None) -> Iterator[WsOrigin]:
    """A websockets echo server on loopback, in threads; shut down (and joined) after the test."""
    handshakes: list[tuple[str, dict[str, str]]] = []
    closes: list[tuple[int | None, str | None]] = []

    def note_handshake(connection: ServerConnection, request: WsHttpRequest) -> None:
        handshakes.append((request.path, {k.lower(): v for k, v in request.headers.raw_items()}))

    def echo(websocket: ServerConnection) -> None:
        try:
            for message in websocket:
                if message == SERVER_CLOSE:
                    websocket.close(SERVER_CLOSE_CODE, SERVER_CLOSE_REASON)
                    break
                websocket.send(message)
        except ConnectionClosed:
            pass
        finally:
            closes.append((websocket.close_code, websocket.close_reason))

    server = serve(
        echo,
        "127.0.0.1",
        0,
        compression=None,
        ping_interval=None,
        close_timeout=2,
        process_request=note_handshake,
    )
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield WsOrigin(int(server.socket.getsockname()[1]), handshakes, closes)
    finally:
        server.shutdown()
        thread.join(MUST_NOT_EXPIRE)
        assert not thread.is_alive()
        # serve_forever() leaves its epoll selector in a reference cycle: free it now, or
        # the fd count stays one above the baseline until some later collection.
        gc.collect()


# --- the client: wsproto on a raw socket to the proxy ---


class WsClient:
    """One WebSocket client connection through the proxy."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.sock = socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: deque[Event] = deque()
        self.head = b""  # the proxy's answer head to the handshake, as received

    def __enter__(self) -> WsClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.sock.close()

    def handshake(self, authority: str, path: str = "/chat", scheme: str = "http") -> Event:
        """Send the opening handshake with an absolute-form target; the first event back
        (AcceptConnection or RejectConnection)."""
        target = f"{scheme}://{authority}{path}"
        self.sock.sendall(self.ws.send(Request(host=authority, target=target)))
        received = bytearray()
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed during the handshake: {bytes(received)!r}")
            received += data
            self.ws.receive_data(data)
            self.pending.extend(self.ws.events())
        self.head = bytes(received).partition(b"\r\n\r\n")[0]
        return self.pending.popleft()

    def open(self, authority: str, path: str = "/chat") -> None:
        answer = self.handshake(authority, path)
        assert isinstance(answer, AcceptConnection), (answer, self.head)
        assert self.ws.state is ConnectionState.OPEN

    def send(self, event: Event) -> None:
        self.sock.sendall(self.ws.send(event))

    def send_message(self, message: str | bytes) -> None:
        self.send(TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message))

    def next_event(self) -> Event:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed while waiting for an event (state {self.ws.state})")
            self.ws.receive_data(data)
            self.pending.extend(self.ws.events())
        return self.pending.popleft()

    def recv_message(self) -> str | bytes:
        """The next whole message (fragments joined); pings are answered on the way."""
        parts: list[Any] = []
        while True:
            event = self.next_event()
            if isinstance(event, Ping):
                self.send(event.response())
            elif isinstance(event, Message):
                parts.append(event.data)
                if event.message_finished:
                    return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
            else:
                raise AssertionError(f"expected a message, got {event!r}")

    def close(self, code: int = 1000, reason: str = "done") -> CloseConnection:
        """Client-initiated close: send Close, read the server's Close, then its TCP close."""
        self.send(CloseConnection(code=code, reason=reason))
        answer = self.next_event()
        assert isinstance(answer, CloseConnection), answer
        assert self.ws.state is ConnectionState.CLOSED
        self.expect_eof()
        return answer

    def expect_eof(self) -> None:
        """The server closes TCP after the closing handshake: EOF, nothing more."""
        assert self.sock.recv(65536) == b""


# --- other helpers ---


def header_values(head: bytes, name: str) -> list[str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [v.strip() for k, _, v in (line.partition(":") for line in lines) if k.strip().lower() == name]


def stats_json(proxy: ProxyServer) -> dict[str, Any]:
    """The stats page's JSON, asked for in origin form on a new connection."""
    host = f"{proxy.address[0]}:{proxy.address[1]}"
    raw = f"GET /json HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        response = request_over(sock, raw)
    assert response.status == 200, response.body
    data: dict[str, Any] = json.loads(response.body)
    return data


def tunnels_gone(proxy: ProxyServer) -> bool:
    return wait_until(lambda: proxy.stats.gauge("tunnels") == 0 and proxy.hub.count == 0)


def origin_released(proxy: ProxyServer, authority: str) -> bool:
    """No connection to the origin in use or pooled: an upgraded one is never reused."""
    idle = {"in_use": 0, "idle": 0}
    return wait_until(lambda: proxy.pool.usage().get(f"http://{authority}", idle) == idle)


def upgrade_request(url: str) -> bytes:
    """A WebSocket opening handshake written by hand (absolute-form target)."""
    host = url.split("/")[2]
    return (
        f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


MESSAGES: list[str | bytes] = [
    "hello",
    b"\x00\x01\x02binary\xff",
    "ünïcødé ✓ text",
    os.urandom(200 * KiB),
    "x" * (64 * KiB + 1),
    b"",
    "last",
]


# --- a websocket through the proxy ---


def test_websocket_echo_both_ways_then_the_client_closes(proxy: ProxyServer, ws_origin: WsOrigin) -> None:
    with WsClient(proxy) as client:
        client.open(ws_origin.authority, "/chat?room=1")
        assert client.head.startswith(b"HTTP/1.1 101 "), client.head
        assert header_values(client.head, "upgrade") == ["websocket"]
        assert [v.lower() for v in header_values(client.head, "connection")] == ["upgrade"]
        assert len(header_values(client.head, "sec-websocket-accept")) == 1
        assert f"1.1 {proxy.pseudonym}" in header_values(client.head, "via")
        assert wait_until(lambda: proxy.stats.gauge("tunnels") == 1)

        for message in MESSAGES:  # one at a time
            client.send_message(message)
            assert client.recv_message() == message
        for message in MESSAGES:  # all sent before any is read back
            client.send_message(message)
        assert [client.recv_message() for _ in MESSAGES] == MESSAGES

        assert proxy.stats.gauge("tunnels") == 1
        data = stats_json(proxy)
        assert data["gauges"]["tunnels"] == 1
        [listed] = [t for t in data["tunnels"] if t["target"] == ws_origin.authority]
        assert listed["client"] == f"127.0.0.1:{client.sock.getsockname()[1]}"
        assert listed["bytes_up"] >= 2 * 200 * KiB and listed["bytes_down"] >= 2 * 200 * KiB

        answer = client.close(1000, "done")
        assert (answer.code, answer.reason) == (1000, "done")
    assert tunnels_gone(proxy)
    assert wait_until(lambda: ws_origin.closes == [(1000, "done")]), ws_origin.closes
    assert origin_released(proxy, ws_origin.authority), proxy.pool.usage()
    [(path, headers)] = ws_origin.handshakes
    assert path == "/chat?room=1"  # forwarded in origin form
    assert headers["host"] == ws_origin.authority
    assert headers["upgrade"] == "websocket"
    assert "upgrade" in headers["connection"].lower()
    assert stats_json(proxy)["tunnels"] == []


def test_the_access_line_at_the_close_names_the_upgrade_request(
    proxy: ProxyServer, ws_origin: WsOrigin
) -> None:
    """Not a CONNECT the client never sent: its GET, the 101 it got, then the bytes."""
    records: list[AccessRecord] = []
    proxy.on_access = records.append
    with WsClient(proxy) as client:
        client.open(ws_origin.authority, "/chat")
        client.send_message("hello")
        assert client.recv_message() == "hello"
        client.close()
    target = f"http://{ws_origin.authority}/chat"
    assert wait_until(lambda: len(records) == 2)
    opened, closed = records
    assert (opened.method, opened.target, opened.status) == ("GET", target, 101)
    assert (closed.method, closed.target, closed.status, closed.cause) == ("GET", target, 101, "eof")
    assert closed.bytes_up > 0 and closed.bytes_down > 0
    line = format_record(closed)
    assert f"GET {target} 101 " in line and "cause=eof" in line


def test_websocket_closed_by_the_server(proxy: ProxyServer, ws_origin: WsOrigin) -> None:
    with WsClient(proxy) as client:
        client.open(ws_origin.authority)
        client.send_message(b"before")
        assert client.recv_message() == b"before"
        assert proxy.stats.gauge("tunnels") == 1
        client.send_message(SERVER_CLOSE)
        closing = client.next_event()
        assert isinstance(closing, CloseConnection), closing
        assert (closing.code, closing.reason) == (SERVER_CLOSE_CODE, SERVER_CLOSE_REASON)
        client.send(closing.response())
        assert client.ws.state is ConnectionState.CLOSED
        client.expect_eof()
    assert tunnels_gone(proxy)
    assert wait_until(lambda: ws_origin.closes == [(SERVER_CLOSE_CODE, SERVER_CLOSE_REASON)]), (
        ws_origin.closes
    )
    assert origin_released(proxy, ws_origin.authority), proxy.pool.usage()


def test_frame_sent_with_the_101_reaches_the_client(proxy: ProxyServer) -> None:
    # The origin's first frame leaves in the same write as its 101: the proxy reads both
    # at once and must hand the frame on to the tunnel.
    def greeter(sock: socket.socket) -> None:
        sock.settimeout(MUST_NOT_EXPIRE)
        ws = WSConnection(ConnectionType.SERVER)
        while not any(isinstance(event, Request) for event in ws.events()):
            data = sock.recv(65536)
            assert data, "closed before the handshake"
            ws.receive_data(data)
        sock.sendall(ws.send(AcceptConnection()) + ws.send(TextMessage(data="greeting")))
        while ws.state is ConnectionState.OPEN:
            data = sock.recv(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, Message):
                    sock.sendall(ws.send(Message(data=event.data)))
                elif isinstance(event, CloseConnection) and ws.state is ConnectionState.REMOTE_CLOSING:
                    sock.sendall(ws.send(event.response()))

    with scripted_server(greeter) as server, WsClient(proxy) as client:
        client.open(f"127.0.0.1:{server.port}")
        assert client.recv_message() == "greeting"
        client.send_message("echo me")
        assert client.recv_message() == "echo me"
        client.close()
    assert tunnels_gone(proxy)


def test_idle_websocket_is_closed_like_an_idle_tunnel(
    make_proxy: Callable[..., ProxyServer], ws_origin: WsOrigin
) -> None:
    idle = 0.6
    proxy = make_proxy(tunnel_idle_timeout=idle)
    with WsClient(proxy) as client:
        client.open(ws_origin.authority)
        client.send_message("one")
        assert client.recv_message() == "one"
        quiet = time.monotonic()
        assert client.sock.recv(65536) == b""  # no Close frame: the proxy just closes
        waited = time.monotonic() - quiet
    assert idle * 0.9 <= waited < idle + 2.0
    assert tunnels_gone(proxy)
    assert wait_until(lambda: len(ws_origin.closes) == 1)  # the origin saw its connection end


# --- upgrades that do not happen ---


def test_upgrade_answered_without_101_is_an_ordinary_response(proxy: ProxyServer) -> None:
    refusal = b"this endpoint wants a different protocol\n"
    heads: list[bytes] = []

    def origin(sock: socket.socket) -> None:
        # Keep-alive: it would take a second request on this connection if the proxy sent one.
        sock.settimeout(MUST_NOT_EXPIRE)
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            heads.append(head)
            if b"\r\nupgrade: websocket" in head.lower():
                sock.sendall(
                    b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: chat/2\r\nConnection: Upgrade\r\n"
                    b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(refusal), refusal)
                )
            else:
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                return

    with scripted_server(origin) as server:
        base = f"http://127.0.0.1:{server.port}"
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            response = request_over(sock, upgrade_request(f"{base}/chat"))
        assert (response.status, response.body) == (426, refusal)
        assert response.header("Content-Type") == "text/plain"
        assert response.header("Upgrade") is None  # not a 101: hop-by-hop fields dropped as usual
        assert proxy.stats.gauge("tunnels") == proxy.hub.count == 0
        # The origin connection that answered the upgrade is not reused.
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            plain = f"GET {base}/plain HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
            second = request_over(sock, plain)
        assert (second.status, second.body) == (200, b"ok\n")
        assert server.connections == 2
    assert b"\r\nupgrade: websocket" in heads[0].lower() and b"\r\nconnection: upgrade" in heads[0].lower()
    assert heads[0].startswith(b"GET /chat HTTP/1.1\r\n")
    assert b"\r\nupgrade:" not in heads[1].lower()
    assert origin_released(proxy, f"127.0.0.1:{server.port}"), proxy.pool.usage()


def test_upgrade_to_an_https_target_is_501(proxy: ProxyServer) -> None:
    with scripted_server(echo) as server:
        url = f"https://127.0.0.1:{server.port}/chat"
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            response = request_over(sock, upgrade_request(url))
        assert response.status == 501, (response.status, response.headers, response.body)
        assert server.connections == 0  # refused before dialling
    assert proxy.stats.gauge("tunnels") == 0


def test_upgrade_beyond_max_tunnels_is_503(
    make_proxy: Callable[..., ProxyServer], ws_origin: WsOrigin
) -> None:
    proxy = make_proxy(max_tunnels=1)
    with scripted_server(echo) as server:
        target = f"127.0.0.1:{server.port}"
        tunnel, rest = open_tunnel(proxy.address, target)
        with tunnel:
            assert rest == b"" and proxy.hub.count == 1
            with WsClient(proxy) as client:
                answer = client.handshake(ws_origin.authority)
                assert isinstance(answer, RejectConnection), answer
                assert answer.status_code == 503, client.head
            assert proxy.hub.count == proxy.stats.gauge("tunnels") == 1
            tunnel.sendall(b"still here")
            assert tunnel.recv(65536) == b"still here"
        assert tunnels_gone(proxy)

        # Room again: the upgrade goes through, and now it is the one that fills the limit.
        with WsClient(proxy) as client:
            client.open(ws_origin.authority)
            client.send_message("in")
            assert client.recv_message() == "in"
            assert wait_until(lambda: proxy.stats.gauge("tunnels") == 1)
            with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
                refused = request_over(sock, connect_request(target))
            assert refused.status == 503
            client.close()
    assert tunnels_gone(proxy)
