"""net/nowait.py: the reads that keep the GIL behave as the socket's own methods, on real
TCP connections on loopback: what they read, EAGAIN, EOF, a reset, a closed socket, a
peek that takes nothing; and the same through the fallback (no ctypes)."""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterator

import pytest

from tinyproxy_py.net import nowait

from ..kit.waits import wait_until


@pytest.fixture(params=["libc", "socket methods"])
def calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "libc":
        assert nowait._RECV is not None, "this platform should have libc's recv"
    else:
        monkeypatch.setattr(nowait, "_RECV", None)
    return str(request.param)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
    near.setblocking(False)
    far.setblocking(False)
    yield near, far
    near.close()
    far.close()


def readable(sock: socket.socket) -> bool:
    return nowait.peek(sock) is not None


def recv(sock: socket.socket, size: int) -> bytes:
    view = nowait.scratch(size)
    return bytes(view[: nowait.recv_into(sock, view)])


def test_a_peek_leaves_what_was_read_into_the_buffer_be(
    calls: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    near, far = pair
    near.sendall(b"body bytes on their way")
    wait_until(lambda: readable(far))
    view = nowait.scratch(100)
    count = nowait.recv_into(far, view)
    far.sendall(b"x")  # something for a peek to find
    wait_until(lambda: readable(near))
    assert nowait.peek(near) == b"x"
    assert bytes(view[:count]) == b"body bytes on their way"


def test_what_is_sent_is_read_in_order(calls: str, pair: tuple[socket.socket, socket.socket]) -> None:
    near, far = pair
    payload = bytes(range(256)) * 40  # 10 KiB
    near.sendall(payload)
    wait_until(lambda: readable(far))
    assert nowait.peek(far) == payload[:1]  # a peek takes nothing
    received = b""
    while len(received) < len(payload):
        wait_until(lambda: readable(far))
        received += recv(far, 3000)
    assert received == payload


def test_recv_into_fills_the_view_it_is_given(calls: str, pair: tuple[socket.socket, socket.socket]) -> None:
    near, far = pair
    near.sendall(b"abcdef")
    buffer = bytearray(b"..........")
    wait_until(lambda: readable(far))
    assert nowait.recv_into(far, memoryview(buffer)[2:]) == 6
    assert buffer == b"..abcdef.."


def test_nothing_to_read_is_blocking_io_error_and_peek_none(
    calls: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    _, far = pair
    assert nowait.peek(far) is None
    with pytest.raises(BlockingIOError):
        recv(far, 100)
    with pytest.raises(BlockingIOError):
        nowait.recv_into(far, memoryview(bytearray(10)))


def test_eof_reads_empty(calls: str, pair: tuple[socket.socket, socket.socket]) -> None:
    near, far = pair
    near.shutdown(socket.SHUT_WR)
    wait_until(lambda: readable(far))
    assert nowait.peek(far) == b""
    assert recv(far, 10) == b""


def test_a_reset_raises(calls: str, pair: tuple[socket.socket, socket.socket]) -> None:
    near, far = pair
    near.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    near.close()  # a reset
    wait_until(lambda: select.select([far], [], [], 0)[0])  # not a peek: it would take the error
    with pytest.raises(ConnectionResetError):
        recv(far, 10)


def test_a_closed_socket_raises_os_error(calls: str, pair: tuple[socket.socket, socket.socket]) -> None:
    near, _ = pair
    near.close()
    with pytest.raises(OSError):
        recv(near, 1)
    with pytest.raises(OSError):
        nowait.recv_into(near, memoryview(bytearray(1)))
