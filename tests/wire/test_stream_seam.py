"""The I/O seam (net/stream.py) carries what comes next, through the real tunnel hub:

- a TLS side: the hub moves bytes with want-read/want-write as waits, reads what TLS has
  decrypted but poll cannot see, and passes an EOF on as close_notify;
- a Stream subclass that changes how bytes move (the shape of a fault injector): the hub
  carries it without knowing.

Real TCP sockets on loopback, real TLS (trustme), the hub as the proxy runs it.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import trustme

from tinyproxy_py import Config
from tinyproxy_py.errors import Cause
from tinyproxy_py.net.stream import Stream
from tinyproxy_py.observe.stats import Stats
from tinyproxy_py.tunnel.hub import TunnelHub
from tinyproxy_py.tunnel.state import ClosedTunnel

from ..kit.clients import MiB, recv_exactly, recv_to_eof
from ..kit.origins import pattern_bytes
from ..kit.waits import MUST_NOT_EXPIRE, wait_until

pytestmark = pytest.mark.usefixtures("no_leaks")
GREETING = b"HTTP/1.1 200 Connection established\r\n\r\n"


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection: (connecting end, accepted end)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname(), timeout=MUST_NOT_EXPIRE)
        far, _ = listener.accept()
    far.settimeout(MUST_NOT_EXPIRE)
    return near, far


@contextmanager
def running_hub() -> Iterator[tuple[TunnelHub, list[ClosedTunnel]]]:
    closed: list[ClosedTunnel] = []
    hub = TunnelHub(Config(port=0, tunnel_idle_timeout=MUST_NOT_EXPIRE), Stats(), on_close=closed.append)
    hub.start()
    try:
        yield hub, closed
    finally:
        hub.close()


def tls_pair(ca: trustme.CA) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """(a TLS client, the TLS server end the hub carries), handshake done."""
    client_raw, server_raw = tcp_pair()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("proxy.test").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with ThreadPoolExecutor(1) as pool:
        served = pool.submit(server_context.wrap_socket, server_raw, server_side=True)
        client = client_context.wrap_socket(client_raw, server_hostname="proxy.test")
        return client, served.result(MUST_NOT_EXPIRE)


@pytest.mark.parametrize(
    ("wrapper", "up", "down"),
    [
        (Stream, MiB, 3 * MiB),  # the hub fills the TLS side's buffers: want-write, tails
        # 7 bytes per read leave most of each TLS record decrypted inside the socket,
        # where no selector sees it: the hub must read it anyway.
        ("Dribbling", 5_000, 9_000),
    ],
)
def test_a_tls_side_is_carried_both_ways_with_close_notify_as_eof(
    ca: trustme.CA, wrapper: type[Stream] | str, up: int, down: int
) -> None:
    stream_class = Dribbling if wrapper == "Dribbling" else Stream
    upload, download = pattern_bytes(up), pattern_bytes(down)
    client, hub_side = tls_pair(ca)
    target, origin = tcp_pair()
    received: list[bytes] = []

    def serve() -> None:  # take the upload, answer, then wait for the EOF and close
        received.append(recv_exactly(origin, up))
        origin.sendall(download)
        received.append(recv_to_eof(origin))
        origin.close()

    with running_hub() as (hub, closed), client, origin:
        hub.adopt(stream_class(hub_side), Stream(target), b"", greeting=GREETING)
        server = threading.Thread(target=serve)
        server.start()
        assert recv_exactly(client, len(GREETING)) == GREETING
        client.sendall(upload)  # and nothing more until the answer: no later byte wakes the hub
        assert recv_exactly(client, down) == download
        client.setblocking(False)
        try:
            raw = client.unwrap()  # our close_notify goes out, and the hub's, if it is in
        except ssl.SSLWantReadError:  # not yet (most runs): it comes once the origin closed
            client.settimeout(MUST_NOT_EXPIRE)
            assert tls_recv_to_eof(client) == b""
        else:  # the hub passed our EOF on and ended in the moment unwrap() took
            raw.settimeout(MUST_NOT_EXPIRE)
            assert raw.recv(1) == b""
        server.join(MUST_NOT_EXPIRE)
        assert received == [upload, b""]
        assert wait_until(lambda: hub.count == 0, MUST_NOT_EXPIRE)
    assert [(c.reason, c.bytes_up, c.bytes_down) for c in closed] == [(Cause.EOF, up, down)]


def test_a_tls_side_still_sending_when_the_target_ends_loses_no_byte(ca: trustme.CA) -> None:
    """The target ends while the TLS client's bytes are on their way: a close_notify sent
    now would make OpenSSL drop them, so it waits for the client's own end."""
    rounds, first, rest = 10, b"a" * 1000, b"b" * 20_000
    with running_hub() as (hub, closed):
        for _ in range(rounds):
            client, hub_side = tls_pair(ca)
            target, origin = tcp_pair()
            with client, origin:
                hub.adopt(Stream(hub_side), Stream(target), b"", greeting=GREETING)
                assert recv_exactly(client, len(GREETING)) == GREETING
                client.sendall(first)
                assert recv_exactly(origin, len(first)) == first
                client.sendall(rest)  # in flight as the target ends its side
                origin.sendall(b"answer")
                origin.shutdown(socket.SHUT_WR)
                assert recv_exactly(client, 6) == b"answer"
                assert recv_exactly(origin, len(rest)) == rest
                client.setblocking(False)
                with pytest.raises(ssl.SSLWantReadError):
                    client.unwrap()
                client.settimeout(MUST_NOT_EXPIRE)
                assert tls_recv_to_eof(client) == b""  # the hub's close_notify, after ours
                assert recv_to_eof(origin) == b""
        assert wait_until(lambda: hub.count == 0, MUST_NOT_EXPIRE)
    assert [c.reason for c in closed] == [Cause.EOF] * rounds


def tls_recv_to_eof(sock: ssl.SSLSocket) -> bytes:
    """Everything until the peer's close_notify, after ours (which ssl raises as an error)."""
    data = bytearray()
    try:
        while piece := sock.recv(1 << 20):
            data += piece
    except ssl.SSLZeroReturnError:
        pass
    return bytes(data)


class Dribbling(Stream):
    """At most `STEP` bytes per call either way, as Toxiproxy's slicer: what a fault that
    wraps a stream looks like to the hub."""

    STEP = 7
    calls = 0

    def recv_into(self, view: memoryview) -> int | None:
        self.calls += 1
        return super().recv_into(view[: self.STEP])

    def send_nowait(self, data: memoryview) -> int:
        self.calls += 1
        return super().send_nowait(data[: self.STEP])


def test_a_stream_subclass_changes_how_bytes_move_and_the_hub_carries_it() -> None:
    up, down = pattern_bytes(20_000), pattern_bytes(30_000)[::-1]
    client, client_h = tcp_pair()
    target_h, origin = tcp_pair()
    dribbling = Dribbling(target_h)
    with running_hub() as (hub, closed), client, origin:
        hub.adopt(Stream(client_h), dribbling, b"", greeting=GREETING)
        assert recv_exactly(client, len(GREETING)) == GREETING
        client.sendall(up)
        assert recv_exactly(origin, len(up)) == up
        origin.sendall(down)
        origin.shutdown(socket.SHUT_WR)
        assert recv_to_eof(client) == down
        client.shutdown(socket.SHUT_WR)
        assert recv_to_eof(origin) == b""
        assert wait_until(lambda: hub.count == 0, MUST_NOT_EXPIRE)
    assert dribbling.calls >= (len(up) + len(down)) // Dribbling.STEP
    assert [(c.reason, c.bytes_up, c.bytes_down) for c in closed] == [(Cause.EOF, len(up), len(down))]
