"""Reads that return at once, made without letting go of the GIL.

Python releases the GIL around every socket call, even one that cannot block: a recv
that finds bytes waiting (or finds none), a peek. With many handler threads busy, each
release sends the caller to the back of the queue for the GIL, a context switch or two
for a call that took a microsecond. On the bare threaded shape at 50 keep-alive
connections (scripts/floor.py --calls), three such calls more per request cut its rate
to about a third. So reads on non-blocking plain sockets go to libc through
`ctypes.PyDLL`, which keeps the GIL; waits (poll) release it.

Sends still let go: a send wakes the peer that reads it, which may take this CPU while
the sender holds the GIL; made here, they doubled the 99th percentile latency at 50
connections. A read that must allocate what it returns reads into a buffer of its
thread's, so it is for up to SMALL bytes: more goes through the socket's method. Where
ctypes or libc's recv is missing, the socket's own methods serve. Errors are the OSError
subclasses the socket's methods raise (BlockingIOError when there is nothing to read).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Any

try:
    import ctypes
except ImportError:  # a Python built without it: the socket's methods serve
    ctypes = None  # type: ignore[assignment]

SMALL = 65536  # larger reads into new bytes go through the socket's method
_PEEK_FLAGS = socket.MSG_PEEK | socket.MSG_DONTWAIT


def _libc_recv() -> Any:
    try:
        recv = ctypes.PyDLL(None, use_errno=True).recv  # PyDLL: calls keep the GIL
    except (AttributeError, OSError):
        return None
    recv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    recv.restype = ctypes.c_ssize_t
    return recv


_RECV = _libc_recv()
_scratch = threading.local()  # one read buffer per thread: a read allocates only what came


def recv(sock: socket.socket, size: int, flags: int = 0) -> bytes:
    """As sock.recv(size, flags), for a non-blocking plain socket."""
    if _RECV is None or size > SMALL:
        return sock.recv(size, flags)
    scratch = getattr(_scratch, "buffer", None)
    if scratch is None:
        raw = ctypes.create_string_buffer(SMALL)
        scratch = _scratch.buffer = (raw, ctypes.addressof(raw), memoryview(raw).cast("B"))
    return bytes(scratch[2][: _call(sock, scratch[1], size, flags)])


def peek(sock: socket.socket) -> bytes | None:
    """The next byte the peer sent, without taking it: b"" for its EOF, None for nothing
    yet. Below TLS on a TLS socket. OSError if the connection failed."""
    try:
        return recv(sock, 1, _PEEK_FLAGS) if _RECV is not None else socket.socket.recv(sock, 1, _PEEK_FLAGS)
    except BlockingIOError:
        return None


def recv_into(sock: socket.socket, view: memoryview) -> int:
    """As sock.recv_into(view), for a non-blocking plain socket."""
    if _RECV is None or view.readonly or not view:
        return sock.recv_into(view)
    return _call(sock, _address(view), len(view), 0)


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _call(sock: socket.socket, buffer: Any, size: int, flags: int) -> int:
    while True:
        count = _RECV(sock.fileno(), buffer, size, flags)
        if count >= 0:
            return count  # type: ignore[no-any-return]
        code = ctypes.get_errno()
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code))  # the subclass: BlockingIOError, ConnectionResetError…
