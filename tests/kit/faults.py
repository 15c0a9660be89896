"""Scripted targets for the fault mix: an echo, an endless source, resets and a stall.

Each script runs on its own connection in a ScriptedServer (which closes the socket when
the script returns), has a deadline on every read and write, and sends a bounded amount.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from .clients import KiB, abort, recv_head, recv_to_eof
from .origins import pattern_bytes
from .servers import scripted_server
from .waits import MUST_NOT_EXPIRE


def echo(sock: socket.socket) -> None:
    sock.settimeout(MUST_NOT_EXPIRE)
    while data := sock.recv(65536):
        sock.sendall(data)


def source(sock: socket.socket) -> None:
    """Far more bytes than any client reads: ends when the peer closes the tunnel."""
    sock.settimeout(MUST_NOT_EXPIRE)
    block = pattern_bytes(256 * KiB)
    for _ in range(256):  # 64 MiB at most
        sock.sendall(block)


def reset_at_once(sock: socket.socket) -> None:
    """Read a request head, answer with a reset."""
    sock.settimeout(MUST_NOT_EXPIRE)
    recv_head(sock)
    abort(sock)


def reset_mid_body(sock: socket.socket) -> None:
    """Promise 100000 bytes, send 1000, then reset."""
    sock.settimeout(MUST_NOT_EXPIRE)
    recv_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + pattern_bytes(1000))
    time.sleep(0.05)
    abort(sock)


def stall_body(sock: socket.socket) -> None:
    """Promise 10 bytes, send 5, then wait (bounded) for the peer to give up and close."""
    sock.settimeout(MUST_NOT_EXPIRE)
    recv_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    recv_to_eof(sock)


SCRIPTS: dict[str, Callable[[socket.socket], None]] = {
    "echo": echo,
    "source": source,
    "reset_at_once": reset_at_once,
    "reset_mid_body": reset_mid_body,
    "stall_body": stall_body,
}


@contextmanager
def fault_targets() -> Iterator[dict[str, int]]:
    """One scripted server per script, on 127.0.0.1: {name: port}. All closed on exit."""
    with ExitStack() as stack:
        yield {name: stack.enter_context(scripted_server(script)).port for name, script in SCRIPTS.items()}
