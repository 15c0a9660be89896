"""Reads and writes on a non-blocking socket, every wait under a deadline.

Both sides use it: the client's connection (net/clientconn.py) and an origin connection
(origin/exchange.py). A call tries the socket first and waits in poll() only when the kernel
says it must, so a socket never keeps a timeout setting of its own: Python's timeout
mode would cost a settimeout syscall per change and a poll before every send and recv.
An origin stream can also watch the client's socket while it waits: a client that hangs
up is noticed at once, not when the origin answers or the deadline passes (a client
that pipelines its next request is not gone). Socket errors pass through as OSError
(TimeoutError for a deadline); the caller decides what they mean. TLS sockets work the
same way (SSLWantRead/Write are waits). The owner of the socket stays its owner.
"""

from __future__ import annotations

import select
import socket
import struct
import time

from ..errors import Aborted, Cause

_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


class _NotTLS(Exception):
    """Never raised: what a plain socket's TLS waits are."""


_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s


def reset_on_close(sock: socket.socket) -> None:
    """Make close() send RST, not FIN (and drop what is unsent): a stream cut short must
    not look like one that ended, to a peer reading up to the close."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    except OSError:
        pass  # reset already: close() is all that is left


class Stream:
    """Non-blocking reads and writes on `sock`; `client`, if given, can be watched during waits."""

    def __init__(self, sock: socket.socket, client: socket.socket | None = None) -> None:
        if sock.gettimeout() != 0.0:
            sock.settimeout(0.0)  # stays so in the pool: only this module reads it
        self.sock = sock
        self.client = client
        self._want_read: type[Exception] = _NotTLS
        self._want_write: type[Exception] = _NotTLS
        if hasattr(sock, "pending"):  # an SSLSocket: ssl is loaded already
            import ssl

            self._want_read, self._want_write = ssl.SSLWantReadError, ssl.SSLWantWriteError
        self.received = 0  # bytes read through this stream
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._events = select.POLLIN
        self._watching = False

    def watch_client(self, on: bool) -> None:
        """Watch the client's socket for a hang-up during waits (on) or stop (off)."""
        if self.client is None or on == self._watching:
            return
        if on:
            self._poller.register(self.client, select.POLLIN)
        else:
            self._poller.unregister(self.client)
        self._watching = on

    def send(
        self, data: bytes | bytearray | memoryview, timeout: float, *, until_readable: bool = False
    ) -> memoryview:
        """All of `data`; each wait for room may take up to `timeout` (TimeoutError).

        `until_readable`: stop when, while waiting for room, the peer has something to
        say (or closed); returns what is left to send (empty when all was sent).
        """
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
                continue
            except self._want_read:
                events = select.POLLIN  # TLS needs to read before it can write
            except (BlockingIOError, self._want_write):
                events = select.POLLOUT | (select.POLLIN if until_readable else 0)
            ready = self._wait(events, time.monotonic() + timeout)
            if until_readable and events & select.POLLOUT and ready & (select.POLLIN | _GONE):
                return view
        return view

    def recv(self, size: int, deadline: float, *, wait_first: bool = False) -> bytes:
        """Up to `size` bytes, b"" when the peer closed; TimeoutError past `deadline`.

        `wait_first`: poll before the first try, for a peer that cannot have answered
        yet (an origin just sent a request): saves a recv that would only say EAGAIN.
        """
        if wait_first and not self.buffered():
            self._wait(select.POLLIN, deadline)
        while True:
            try:
                data = self.sock.recv(size)
            except self._want_write:
                self._wait(select.POLLOUT, deadline)
                continue
            except (BlockingIOError, self._want_read):
                self._wait(select.POLLIN, deadline)
                continue
            self.received += len(data)
            return data

    def recv_nowait(self, size: int) -> bytes | None:
        """Up to `size` bytes if there are some now, b"" if the peer closed, else None."""
        try:
            data = self.sock.recv(size)
        except (BlockingIOError, self._want_read, self._want_write):
            return None
        self.received += len(data)
        return data

    def buffered(self) -> bool:
        """Whether TLS has decrypted bytes that no recv took yet (poll cannot see them)."""
        return self._want_read is not _NotTLS and self.sock.pending() > 0  # type: ignore[attr-defined]

    def _wait(self, events: int, deadline: float) -> int:
        """Wait until the socket is ready for `events`; returns what it is ready for."""
        if events != self._events:
            self._poller.modify(self.sock, events)
            self._events = events
        client_fd = self.client_fd
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline passed")
            ready = self._poller.poll(remaining * 1000 + 1)
            for fd, event in ready:
                if fd == client_fd:
                    self._check_client(event)
            mine = [event for fd, event in ready if fd != client_fd]
            if mine:
                return mine[0]

    @property
    def client_fd(self) -> int:
        return self.client.fileno() if self._watching and self.client is not None else -1

    def _check_client(self, event: int) -> None:
        """The client's socket stirred while we wait: gone (EOF, reset) or pipelining."""
        assert self.client is not None
        try:
            data = self.client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            if event & _GONE:
                raise _client_gone() from None
            return
        except OSError as exc:
            raise _client_gone() from exc
        if not data:
            raise _client_gone()
        self.watch_client(False)  # the next request is already coming: not a hang-up


def _client_gone() -> Aborted:
    return Aborted("client went away while waiting for the origin", cause=Cause.CLIENT_ABORT)
