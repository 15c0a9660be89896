"""Streams are relayed as they come: server-sent events, close-delimited and fixed-length
bodies sent in pieces, a long poll, a trickling chunked upload; and a client that leaves
an event stream mid-way releases everything.

Each origin is scripted: it sends pieces `GAP` seconds apart and notes when it sent each.
The other side notes when each piece was complete, decoded, and every piece must arrive
within `LAG` of its sending, well before the next one is sent.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import pytest

from tinyproxy_py import ProxyServer

from ..kit.clients import abort, read_response, recv_head
from ..kit.servers import scripted_server
from ..kit.waits import MUST_NOT_EXPIRE, wait_until

GAP = 0.3  # between two pieces at the sending end
LAG = 0.25  # most a piece may take through the proxy
PIECES = 4


# --- helpers ---


def event(i: int) -> bytes:
    return b"id: %d\nevent: tick\ndata: piece %d of the stream\n\n" % (i, i)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class Stream:
    """What one side read: the response head (a client's), the decoded body, when each
    piece was complete."""

    response: h11.Response | None = None
    body: bytearray = field(default_factory=bytearray)
    times: list[float] = field(default_factory=list)
    ended: bool = False

    def header(self, name: str) -> str | None:
        assert self.response is not None
        found = [v.decode() for k, v in self.response.headers if k == name.lower().encode()]
        return found[0] if found else None


def request_bytes(conn: h11.Connection, url: str, version: str = "1.1") -> bytes:
    """A GET for `url` (absolute form), recorded in `conn` so it can read the response.

    h11 only writes HTTP/1.1: for "1.0" the version on the wire is changed after; reading
    the response is the same (h11 reads an unknown-length body to EOF either way)."""
    host = url.split("/")[2]
    request = h11.Request(method="GET", target=url, headers=[("Host", host)])
    raw = conn.send(request) + conn.send(h11.EndOfMessage())
    return raw if version == "1.1" else raw.replace(b" HTTP/1.1\r\n", f" HTTP/{version}\r\n".encode(), 1)


def read_stream(
    sock: socket.socket, conn: h11.Connection, pieces: list[bytes], stop_after: int | None = None
) -> Stream:
    """Read the response (or, with a server `conn`, the request), noting when each of
    `pieces` (in order) was complete in the decoded body; until the message ends, or
    `stop_after` pieces have come."""
    ends = list(itertools.accumulate(len(p) for p in pieces))
    stream = Stream()
    sock.settimeout(MUST_NOT_EXPIRE)
    now = time.monotonic()
    while stop_after is None or len(stream.times) < stop_after:
        got = conn.next_event()
        if got is h11.NEED_DATA:
            data = sock.recv(65536)
            now = time.monotonic()
            conn.receive_data(data)
        elif isinstance(got, h11.Response):
            stream.response = got
        elif isinstance(got, h11.Data):
            stream.body += got.data
            while len(stream.times) < len(ends) and len(stream.body) >= ends[len(stream.times)]:
                stream.times.append(now)
        elif isinstance(got, h11.EndOfMessage):
            stream.ended = True
            break
        elif isinstance(got, h11.ConnectionClosed):
            break
    return stream


def lags(sent: list[float], received: list[float]) -> list[float]:
    return [round(got - put, 3) for put, got in zip(sent, received, strict=False)]


def assert_as_they_came(sent: list[float], received: list[float]) -> None:
    assert len(received) == len(sent) == PIECES, (sent, received)
    delays = lags(sent, received)
    assert all(0 <= d < LAG for d in delays), f"piece delays {delays} (each must be < {LAG} s)"


def upstream_released(proxy: ProxyServer, port: int) -> bool:
    """No connection to the origin in use or pooled."""
    key = f"http://127.0.0.1:{port}"
    return wait_until(
        lambda: proxy.pool.usage().get(key, {"in_use": 0, "idle": 0}) == {"in_use": 0, "idle": 0}
    )


# --- responses that trickle ---


@dataclass(frozen=True)
class Framing:
    head: bytes
    encode: Callable[[bytes], bytes]
    end: bytes


EVENTS = [event(i) for i in range(PIECES)]
FRAMINGS = {
    "sse-chunked": Framing(
        b"Content-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n",
        chunk,
        b"0\r\n\r\n",
    ),
    "close-delimited": Framing(b"Content-Type: text/event-stream\r\nConnection: close\r\n", bytes, b""),
    "content-length": Framing(
        b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % sum(map(len, EVENTS)), bytes, b""
    ),
}


@pytest.mark.parametrize(
    ("framing", "version"),
    [("sse-chunked", "1.1"), ("close-delimited", "1.1"), ("content-length", "1.1"), ("sse-chunked", "1.0")],
    ids=["sse-chunked", "close-delimited", "content-length", "sse-chunked-to-http10"],
)
def test_response_pieces_are_relayed_as_they_come(proxy: ProxyServer, framing: str, version: str) -> None:
    form = FRAMINGS[framing]
    sent: list[float] = []

    def trickle(sock: socket.socket) -> None:
        sock.settimeout(MUST_NOT_EXPIRE)
        recv_head(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\n" + form.head + b"\r\n")
        for piece in EVENTS:
            time.sleep(GAP)
            sent.append(time.monotonic())
            sock.sendall(form.encode(piece))
        sock.sendall(form.end)  # close-delimited: the server closes the socket after this

    with scripted_server(trickle) as server:
        url = f"http://127.0.0.1:{server.port}/events"
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            conn = h11.Connection(h11.CLIENT)
            sock.sendall(request_bytes(conn, url, version))
            stream = read_stream(sock, conn, EVENTS)
    assert stream.response is not None and stream.response.status_code == 200
    assert stream.ended and bytes(stream.body) == b"".join(EVENTS)
    assert_as_they_came(sent, stream.times)
    if framing != "content-length":
        assert stream.header("Content-Type") == "text/event-stream"
        assert stream.header("Content-Length") is None
        # Unknown length: re-chunked for an HTTP/1.1 client, close-delimited for HTTP/1.0.
        expected = "chunked" if version == "1.1" else None
        assert stream.header("Transfer-Encoding") == expected
    else:
        assert stream.header("Content-Length") == str(len(stream.body))
        assert stream.header("Transfer-Encoding") is None


def test_long_poll_answered_after_a_second_reaches_the_client(
    make_proxy: Callable[..., ProxyServer],
) -> None:
    # The origin holds the request 1 s: under read_timeout (2 s in the test fixture) and
    # response_header_timeout; the answer must come through, and at once.
    proxy = make_proxy(response_header_timeout=5.0)
    hold = 1.0
    answer = b'{"events": ["one"]}'
    sent: list[float] = []

    def long_poll(sock: socket.socket) -> None:
        sock.settimeout(MUST_NOT_EXPIRE)
        recv_head(sock)
        time.sleep(hold)
        sent.append(time.monotonic())
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(answer), answer)
        )

    with scripted_server(long_poll) as server:
        url = f"http://127.0.0.1:{server.port}/poll?since=0"
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            conn = h11.Connection(h11.CLIENT)
            started = time.monotonic()
            sock.sendall(request_bytes(conn, url))
            stream = read_stream(sock, conn, [answer])
    assert stream.response is not None and stream.response.status_code == 200
    assert stream.ended and bytes(stream.body) == answer
    assert stream.times[0] - started >= hold * 0.9
    assert 0 <= stream.times[0] - sent[0] < LAG, lags(sent, stream.times)


# --- a request body that trickles ---


def test_trickling_chunked_upload_reaches_the_origin_as_it_comes(proxy: ProxyServer) -> None:
    pieces = [b"upload piece %d;" % i * 8 for i in range(PIECES)]
    uploads: list[Stream] = []  # what the origin read, and when each piece was complete
    sent: list[float] = []

    def sink(sock: socket.socket) -> None:
        uploads.append(read_stream(sock, h11.Connection(h11.SERVER), pieces))
        if uploads[0].ended:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")

    with scripted_server(sink) as server:
        url = f"http://127.0.0.1:{server.port}/upload"
        head = f"POST {url} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nTransfer-Encoding: chunked\r\n\r\n"
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            sock.sendall(head.encode())
            for piece in pieces:
                time.sleep(GAP)
                sent.append(time.monotonic())
                sock.sendall(chunk(piece))
            sock.sendall(b"0\r\n\r\n")
            status, _, body = read_response(sock)
    assert (status, body) == (200, b"ok\n")
    [upload] = uploads
    assert bytes(upload.body) == b"".join(pieces)
    assert_as_they_came(sent, upload.times)


# --- a client that leaves ---


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_leaving_an_event_stream_releases_everything(proxy: ProxyServer, how: str) -> None:
    ended = threading.Event()
    outcome: list[BaseException] = []

    def endless(sock: socket.socket) -> None:
        sock.settimeout(MUST_NOT_EXPIRE)
        recv_head(sock)
        try:
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for i in range(400):  # 40 s at most: far longer than the proxy may take to notice
                sock.sendall(chunk(event(i)))
                time.sleep(0.1)
        except OSError as exc:
            outcome.append(exc)
        finally:
            ended.set()

    with scripted_server(endless) as server:
        url = f"http://127.0.0.1:{server.port}/events"
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            conn = h11.Connection(h11.CLIENT)
            sock.sendall(request_bytes(conn, url))
            stream = read_stream(sock, conn, [event(i) for i in range(3)], stop_after=3)
            assert stream.response is not None and stream.response.status_code == 200
            assert len(stream.times) == 3 and not stream.ended
            if how == "reset":
                abort(sock)
        left = time.monotonic()
        # The proxy notices on its next write to the client, closes the origin connection,
        # and the origin's own writes then fail.
        assert ended.wait(MUST_NOT_EXPIRE)
        noticed = time.monotonic() - left
        assert outcome and isinstance(outcome[0], (BrokenPipeError, ConnectionResetError)), outcome
        assert noticed < 5.0, f"the origin went on sending for {noticed:.1f} s after the client left"
        assert upstream_released(proxy, server.port), proxy.pool.usage()
        assert server.connections == 1
