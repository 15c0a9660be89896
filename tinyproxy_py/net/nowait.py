"""Reads that return at once, made without letting go of the GIL.

Python releases the GIL around every socket call, even one that cannot block: a recv
that finds bytes waiting (or finds none), a peek. With many handler threads busy, each
release sends the caller to the back of the queue for the GIL, a context switch or two
for a call that took a microsecond. So reads on non-blocking plain sockets go to libc
through `ctypes.PyDLL`, which keeps the GIL; waits (poll) release it. In tinyproxy-py at
50 keep-alive connections that cut context switches per request from 17 to 10 and CPU
per request by 10-18 % (docs/performance.md). They are not free: on the bare threaded
shape three reads more per request cut its rate to 0.38 of itself made by the socket's
method and to 0.44 made here (scripts/floor.py --weights).

Sends still let go: a send wakes the peer that reads it, which may take this CPU while
the sender holds the GIL; made here, they doubled the 99th percentile latency at 50
connections. Where ctypes or libc's recv is missing, the socket's own methods serve.
Errors are the OSError subclasses the socket's methods raise (BlockingIOError when there
is nothing to read).

Reads land in one buffer per thread (`scratch`), never in new bytes of the size asked
for: sock.recv(n) mallocs n bytes and shrinks them to what came. A freed block of 128 KiB
or more raises glibc's mmap threshold for good, and from then on each thread's malloc
arena kept up to a megabyte it had freed: RSS grew with the threads that ever relayed a
large body (issue 26's soak). The buffer is an anonymous mapping, outside malloc, unmapped
when its thread ends; its pages count only once a read has touched them.
"""

from __future__ import annotations

import errno
import mmap
import os
import socket
import threading
from typing import Any

try:
    import ctypes
except ImportError:  # a Python built without it: the socket's methods serve
    ctypes = None  # type: ignore[assignment]

SCRATCH_SIZE = 256 * 1024  # the most one read takes
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
_scratch = threading.local()


def scratch(size: int) -> memoryview:
    """This thread's read buffer, its first `size` bytes (at most SCRATCH_SIZE): what is
    read into it is valid until this thread's next read."""
    return _mapping()[: min(size, SCRATCH_SIZE)]


def _mapping() -> memoryview:
    """SCRATCH_SIZE bytes, and one more that only peek() reads into: a peek while the
    buffer holds a body on its way (a pooled connection checked meanwhile) leaves it be."""
    view: memoryview | None = getattr(_scratch, "view", None)
    if view is None:
        view = _scratch.view = memoryview(mmap.mmap(-1, SCRATCH_SIZE + 1))
    return view


def copy_out(data: memoryview) -> memoryview:
    """`data` (read into a buffer that will be read into again) copied to last: a large
    copy (the hub's unsent tails, up to 512 KiB) into an anonymous mapping of its own,
    not a malloc block, for the reason above."""
    if len(data) < 64 * 1024:
        return memoryview(bytes(data))
    copy = mmap.mmap(-1, len(data))
    copy.write(data)
    return memoryview(copy)


def peek(sock: socket.socket) -> bytes | None:
    """The next byte the peer sent, without taking it: b"" for its EOF, None for nothing
    yet. Below TLS on a TLS socket. OSError if the connection failed."""
    view = _mapping()[SCRATCH_SIZE:]
    try:
        if _RECV is None:
            return bytes(view[: socket.socket.recv_into(sock, view, 0, _PEEK_FLAGS)])
        return bytes(view[: _call(sock, _address(view), 1, _PEEK_FLAGS)])
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
