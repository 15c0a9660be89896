"""The I/O seam: the one place where connected sockets are read and written (and a cut
one is closed with a reset), and where a socket's failure becomes the error a client hears.

A `Stream` wraps one non-blocking socket, plain or TLS, and offers two ways to use it:
waits under a deadline for a handler thread (the client's connection, an origin's, a
parent's handshake) and never-blocking calls for the tunnel hub's selectors loop. A call
tries the socket first and waits in poll() only when the kernel says it must: Python's
own timeout mode would cost a settimeout per change and a poll before every call. TLS is
the same to its users: SSLWantRead/Write are waits, and bytes TLS has decrypted but no
call took yet (`buffered()`), which poll cannot see, are read before waiting. A fault
injector is a Stream subclass that overrides these calls: nothing above knows.

Limits of TLS through an SSLSocket, for a TLS side in the hub (a TLS listener's client):
a close_notify waits for the peer's own end or the close (see `shut_write`), and a read
that must write (a TLS 1.3 KeyUpdate answered into a full buffer) waits for the wrong
event; a write that must read (renegotiation) the TLS listener refuses. An SSLObject
over memory buffers would lift both.

Socket errors pass through as OSError (TimeoutError for a deadline): only the caller knows
what it was doing, and so which `Failure` of the table below it was. The owner of the
socket stays its owner; `close()` is how it lets go.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass

from ..errors import Aborted, BadGateway, Cause, GatewayTimeout, ProxyError, RequestTimeout, ResponseTimeout
from ..settings.routes import join_host_port
from . import nowait

_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s


class _NotTLS(Exception):
    """Never raised: what a plain socket's TLS waits are."""


def reset_on_close(sock: socket.socket) -> None:
    """Make close() send RST, not FIN (and drop what is unsent): a stream cut short must
    not look like one that ended, to a peer reading up to the close."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    except OSError:
        pass  # reset already: close() is all that is left


class Stream:
    """Reads and writes on `sock`, made non-blocking; `client`, if given, is the client's
    socket, which waits can watch for a hang-up (an origin's stream)."""

    # Slotted: the hub keeps two per open tunnel (an idle tunnel costs ~1.5 KiB in all).
    __slots__ = (
        "_closed",
        "_events",
        "_notify_due",
        "_peer_ended",
        "_poller",
        "_want_read",
        "_want_write",
        "_watching",
        "client",
        "received",
        "sock",
    )

    def __init__(self, sock: socket.socket, client: socket.socket | None = None) -> None:
        if sock.gettimeout() != 0.0:
            sock.settimeout(0.0)  # stays so in the pool: only this module reads it
        self.sock = sock
        self.client = client
        self._want_read: type[Exception] = _NotTLS
        self._want_write: type[Exception] = _NotTLS
        self._closed: type[Exception] = _NotTLS  # the peer's close_notify after ours: an EOF
        self._notify_due = False  # a close_notify waits for the peer's end (shut_write)
        self._peer_ended = False
        if hasattr(sock, "pending"):  # an SSLSocket: ssl is loaded already
            import ssl

            self._want_read, self._want_write = ssl.SSLWantReadError, ssl.SSLWantWriteError
            self._closed = ssl.SSLZeroReturnError
            # An origin's FIN without close_notify is a cut; a client (we are its server)
            # ends so as often as not, and its requests frame themselves: an EOF.
            sock.suppress_ragged_eofs = sock.server_side  # type: ignore[attr-defined]
        self.received = 0  # bytes read through this stream
        self._poller: select.poll | None = None  # made at the first wait: many never wait
        self._events = 0
        self._watching = False

    shaped = False  # True for a stream that injects faults (net/faultstream.py)
    broke = False  # True once such a fault changed what a peer saw (a reset, bytes swallowed)

    def held(self, now: float) -> int:
        """Events the hub should not wait for now (a fault's stream holds some back)."""
        return 0

    def due(self, now: float) -> float | None:
        """When the hub should call again though no socket stirs (None: on events only)."""
        return None

    def check(self, now: float | None = None) -> None:
        """Raise the OSError a fault has due by now (a plain stream has none)."""

    def fileno(self) -> int:
        """For selectors: a Stream registers as its socket."""
        return self.sock.fileno()

    # Reads on a plain socket keep the GIL (net/nowait.py).

    def _recv_into(self, view: memoryview) -> int:
        return nowait.recv_into(self.sock, view) if self._want_read is _NotTLS else self.sock.recv_into(view)

    # --- waits under a deadline (handler threads) ---

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
        """Up to `size` bytes (at most nowait.SCRATCH_SIZE), b"" when the peer closed;
        TimeoutError past `deadline`.

        `wait_first`: poll before the first try, for a peer that cannot have answered
        yet (an origin just sent a request): saves a recv that would only say EAGAIN.
        """
        view = nowait.scratch(size)
        return bytes(view[: self.read_into(view, deadline, wait_first=wait_first)])

    def read_into(self, view: memoryview, deadline: float, *, wait_first: bool = False) -> int:
        """As recv, into `view` (nothing allocated): how many bytes, 0 when the peer closed."""
        if wait_first and not self.buffered():
            self._wait(select.POLLIN, deadline)
        while True:
            try:
                count = self._recv_into(view)
            except self._want_write:
                self._wait(select.POLLOUT, deadline)
                continue
            except (BlockingIOError, self._want_read):
                self._wait(select.POLLIN, deadline)
                continue
            except self._closed:
                return 0
            self.received += count
            return count

    def peek(self, size: int, deadline: float) -> bytes:
        """Up to `size` bytes the peer sent, left in the (plain) socket; b"" for its EOF."""
        while True:
            try:
                return self.sock.recv(size, socket.MSG_PEEK)
            except BlockingIOError:
                self._wait(select.POLLIN, deadline)

    def watch_client(self, on: bool) -> None:
        """Watch the client's socket for a hang-up during waits (on) or stop (off)."""
        if self.client is None or on == self._watching:
            return
        poller = self._poll()
        if on:
            poller.register(self.client, select.POLLIN)
        else:
            poller.unregister(self.client)
        self._watching = on

    def handshake(self, deadline: float) -> None:
        """Complete a TLS socket's handshake (TimeoutError past `deadline`)."""
        while True:
            try:
                self.sock.do_handshake()  # type: ignore[attr-defined]
                return
            except self._want_read:
                self._wait(select.POLLIN, deadline)
            except self._want_write:
                self._wait(select.POLLOUT, deadline)

    # --- calls that never wait (the tunnel hub) ---

    def recv_nowait(self, size: int) -> bytes | None:
        """Up to `size` bytes if there are some now, b"" if the peer closed, else None."""
        view = nowait.scratch(size)
        count = self.recv_into(view)
        return None if count is None else bytes(view[:count])

    def recv_into(self, view: memoryview) -> int | None:
        """Bytes read into `view` now, 0 if the peer closed, None if none have come."""
        try:
            count = self._recv_into(view)
        except (BlockingIOError, self._want_read, self._want_write):
            return None
        except self._closed:
            count = 0
        if not count:
            self._peer_ended = True
            if self._notify_due:
                self._close_notify()
        self.received += count
        return count

    def send_nowait(self, data: memoryview) -> int:
        """How much of `data` the socket took now (0: no room)."""
        try:
            return self.sock.send(data)
        except (BlockingIOError, self._want_read, self._want_write):
            return 0

    def shut_write(self) -> None:
        """Pass an EOF on: a FIN; on TLS a close_notify, once the peer's own end has been
        read: unwrap() goes on to read, and OpenSSL drops data that follows a close_notify
        (peeking first would leave a race: bytes arriving in between are lost)."""
        if self._want_read is _NotTLS:
            self.sock.shutdown(socket.SHUT_WR)
        elif self._peer_ended:
            self._close_notify()
        else:
            self._notify_due = True

    def notify_if_quiet(self) -> None:
        """Send a close_notify that waits for the peer's end (shut_write) now, if nothing
        waits to be read: the hub asks once the tunnel has been quiet a while, so that a
        client reading to the end is not kept waiting. Bytes arriving within the
        microseconds unwrap() takes are the ones OpenSSL could drop."""
        try:
            if self._notify_due and not self.buffered() and nowait.peek(self.sock) is None:
                self._close_notify()
        except OSError:
            pass  # failed: the next read says so

    def _close_notify(self) -> None:
        self._notify_due = False
        try:
            self.sock.unwrap()  # type: ignore[attr-defined]
        except (OSError, ValueError):  # ValueError: both close_notify were exchanged
            pass  # the peer ended without waiting: the close says the rest

    def buffered(self) -> bool:
        """Whether TLS has decrypted bytes that no recv took yet (poll cannot see them)."""
        return self._want_read is not _NotTLS and self.sock.pending() > 0  # type: ignore[attr-defined]

    def unread(self) -> bytes | None:
        """What the peer has sent and nobody read, peeked at (at most a byte): b"" for
        its EOF, None for nothing. Raises OSError if the connection failed."""
        if self.buffered():
            return b"?"
        return nowait.peek(self.sock)

    def close(self, *, abort: bool = False) -> None:
        """Close the socket; `abort`: with a reset, so that a cut stream looks cut."""
        if abort:
            reset_on_close(self.sock)
        elif self._want_read is not _NotTLS:
            self._close_notify()  # an orderly end, said so: nothing read after it matters now
        self.sock.close()

    # --- waiting ---

    def _poll(self) -> select.poll:
        if self._poller is None:
            self._poller = select.poll()
        return self._poller

    def _wait(self, events: int, deadline: float) -> int:
        """Wait until the socket is ready for `events`; returns what it is ready for."""
        poller = self._poll()
        if not self._events:
            poller.register(self.sock, events)
        elif events != self._events:
            poller.modify(self.sock, events)
        self._events = events
        client_fd = self.client.fileno() if self._watching and self.client is not None else -1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline passed")
            ready = poller.poll(remaining * 1000 + 1)
            for fd, event in ready:
                if fd == client_fd:
                    self._check_client(event)
            mine = [event for fd, event in ready if fd != client_fd]
            if mine:
                return mine[0]

    def _check_client(self, event: int) -> None:
        """The client's socket stirred while we wait: gone (EOF, reset) or pipelining."""
        assert self.client is not None
        try:
            data = nowait.peek(self.client)
        except OSError as exc:
            raise CLIENT_WAIT.error("client went away while waiting for the origin") from exc
        if data is None:
            if event & _GONE:
                raise CLIENT_WAIT.error("client went away while waiting for the origin")
            return
        if not data:
            raise CLIENT_WAIT.error("client went away while waiting for the origin")
        self.watch_client(False)  # the next request is already coming: not a hang-up


def peer_label(client: Stream, target: Stream) -> str:
    """ "CLIENT -> TARGET" by their addresses (a tunnel's default label)."""
    try:
        return f"{_address(client.sock.getpeername())} -> {_address(target.sock.getpeername())}"
    except OSError:
        return "?"


def _address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return join_host_port(str(address[0]), address[1])
    return repr(address)  # an AF_UNIX name, when embedded with socketpairs


@dataclass(frozen=True)
class Failure:
    """What a socket failure means where it happened: the error class and cause a client
    hears when a deadline passed (`timed_out`), and for any other failure (`broken`)."""

    timed_out: tuple[type[ProxyError], Cause]
    broken: tuple[type[ProxyError], Cause]

    def error(self, message: str, *, timed_out: bool = False) -> ProxyError:
        kind, cause = self.timed_out if timed_out else self.broken
        return kind(message, cause=cause)

    def of(self, exc: BaseException, message: str) -> ProxyError:
        """The ProxyError for `exc`; the caller raises it `from exc`."""
        return self.error(message, timed_out=isinstance(exc, TimeoutError))


# The table: every place a socket can fail, and what the client is told. The access log's
# causes and docs/operations.md's error table are these rows.
CLIENT_HEAD = Failure((RequestTimeout, Cause.HEADER_TIMEOUT), (Aborted, Cause.CLIENT_ABORT))
CLIENT_BODY = Failure((Aborted, Cause.CLIENT_TIMEOUT), (Aborted, Cause.CLIENT_ABORT))
CLIENT_SEND = Failure((Aborted, Cause.CLIENT_ABORT), (Aborted, Cause.CLIENT_ABORT))
CLIENT_WAIT = CLIENT_SEND  # gone while the proxy waited for an origin
ORIGIN_DNS = Failure((GatewayTimeout, Cause.DNS), (BadGateway, Cause.DNS))
ORIGIN_CONNECT = Failure((GatewayTimeout, Cause.CONNECT_TIMEOUT), (BadGateway, Cause.REFUSED))
ORIGIN_TLS = Failure((GatewayTimeout, Cause.CONNECT_TIMEOUT), (BadGateway, Cause.TLS))
ORIGIN_REQUEST = Failure((GatewayTimeout, Cause.READ_TIMEOUT), (BadGateway, Cause.NO_RESPONSE))
ORIGIN_HEAD = Failure((ResponseTimeout, Cause.RESPONSE_TIMEOUT), (BadGateway, Cause.NO_RESPONSE))
ORIGIN_BODY = Failure((GatewayTimeout, Cause.READ_TIMEOUT), (BadGateway, Cause.ORIGIN_ABORT))
ORIGIN_BODY_SENT = Failure((Aborted, Cause.READ_TIMEOUT), (Aborted, Cause.ORIGIN_ABORT))  # head sent
PARENT_DNS = Failure((GatewayTimeout, Cause.PARENT_DNS), (BadGateway, Cause.PARENT_DNS))
PARENT_CONNECT = Failure((GatewayTimeout, Cause.PARENT_TIMEOUT), (BadGateway, Cause.PARENT_CONNECT))
PARENT_HANDSHAKE = Failure((GatewayTimeout, Cause.PARENT_TIMEOUT), (BadGateway, Cause.PARENT_ERROR))
