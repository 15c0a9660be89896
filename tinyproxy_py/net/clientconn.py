"""The client's socket and the bytes received from it but not yet used.

Owned by exactly one handler thread. Every read has a deadline (net/stream.py): the
keep-alive idle timeout before a request starts, the header deadline for the whole head
(counted from its first byte, so a client dribbling bytes is still cut off), the read
timeout for body bytes and for sends to a client that stopped reading. Socket errors become
the client's rows of the table in net/stream.py (Aborted, RequestTimeout), which are not
OSErrors, so no origin code mistakes a client failure for an origin's.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ..errors import Aborted, RequestTimeout
from ..observe.accesslog import AccessRecord
from ..settings.config import Config
from ..wire.body import ChunkedDecoder
from ..wire.proxyprotocol import MAX_LENGTH as MAX_PROXY_HEADER
from ..wire.proxyprotocol import BadProxyHeader, ProxyHeader
from ..wire.proxyprotocol import parse as parse_proxy_header
from ..wire.request import RequestHead, parse_request_head
from ..wire.writer import CONTINUE
from .stream import CLIENT_BODY, CLIENT_HEAD, CLIENT_SEND, Stream, reset_on_close

if TYPE_CHECKING:
    import ssl  # loaded only by a TLS listener

RECV_SIZE = 65536
# Chunked framing a request body may carry before it must weigh less than the data: a
# chunk costs about 1.6 µs to decode, so 1-byte chunks would let one client keep a CPU
# busy at line rate. 4 KiB is some 800 tiny chunks, about a millisecond, then 400.
MAX_CHUNK_OVERHEAD = 4096
# How long a new connection may stay silent before it counts as idle (and may be closed
# to admit another at max_clients): a client sends its first request right after
# connecting, but the proxy may accept before those bytes arrive.
FIRST_REQUEST_GRACE = 1.0


def send_quietly(sock: socket.socket, data: bytes, timeout: float = 1.0) -> None:
    """Best effort, with a short deadline: an error reply to a client that may be gone."""
    try:
        Stream(sock).send(data, timeout)
    except OSError:
        pass


def shut_down(sock: socket.socket) -> None:
    """Both directions, from another thread: its owner reads EOF. Below TLS: an
    SSLSocket's own shutdown() drops its TLS state, under the owner's feet."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class ClientConnection:
    def __init__(self, sock: socket.socket, config: Config, draining: threading.Event | None = None) -> None:
        self.sock = sock
        self.stream = Stream(sock)  # the socket is non-blocking from here on
        self.config = config
        self.draining = draining or threading.Event()  # set: the server is stopping
        self.buffer = bytearray()
        self.body_pending = False
        self.body_bytes = 0  # of the current request, for the access log
        self.handed_off = False  # the hub has the socket: its owner now
        self.cut = False  # a response broke off after its head: close with a reset
        self.opened = time.monotonic()
        # Since when it waits for a request to begin (None: a request is under way), or
        # for a PROXY header or TLS handshake to complete. At max_clients the server
        # closes the connection idle longest to admit a new one.
        self.idle_since: float | None = self.opened
        self._served_one = False  # a keep-alive connection is idle at once; a new one after a grace
        self.address = ""  # the client's address once the server counts it (PROXY header applied)
        self._body_pace = _Pace(config.read_timeout, config.request_body_min_rate)

    def read_head(self, idle_timeout: float) -> RequestHead | None:
        """The next request head, or None if the client closed or idled out between requests."""
        deadline: float | None = None
        self.body_bytes = 0
        fresh: bytes | None = None  # None: the buffer holds bytes of a pipelined request
        while True:
            self.idle_since = None if self.buffer else self.idle_since or time.monotonic()
            if self.buffer:
                if deadline is None:
                    deadline = time.monotonic() + self.config.header_timeout
                if self._worth_parsing(fresh):
                    parsed = parse_request_head(self.buffer, self.config)
                    if parsed is not None:
                        head, used = parsed
                        del self.buffer[:used]
                        self._served_one = True
                        return head
            timeout = idle_timeout if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                raise RequestTimeout("request head not complete before the header deadline")
            data = self._recv(timeout, idle_ok=deadline is None)
            if data is None:
                return None
            if not data:
                if self.buffer:
                    parse_request_head(self.buffer, self.config)  # a malformed head gets its answer
                    raise Aborted("client closed the connection mid-head")
                return None
            self.buffer += data
            fresh = data

    def cut_off(self) -> None:
        """End the connection with a reset (SO_LINGER 0), not a FIN: a body delimited by
        the close (HTTP/1.0) would look complete. The owner closes it without shutdown()."""
        self.cut = True
        reset_on_close(self.sock)

    def evictable(self, now: float) -> bool:
        """Idle (a new connection: silent past its grace) with no request bytes waiting
        unread: closing it cuts nothing the client has sent."""
        if self.idle_since is None or (not self._served_one and now - self.opened < FIRST_REQUEST_GRACE):
            return False
        if self.buffer:  # a PROXY header begun
            return False
        try:
            return not self.stream.unread()  # nothing waiting, or its EOF
        except OSError:
            return True  # broken already: closing it loses nothing

    def evict(self) -> None:
        """Close an idle connection from another thread to free its slot: its thread
        reads EOF and ends. A request that began meanwhile is cut, as any client must
        expect of an idle keep-alive connection (RFC 9112 §9.3.1)."""
        self.idle_since = None  # evicted once
        # Both ways: with reads alone shut, OpenSSL would answer the EOF it reads with a
        # decode_error alert. The client sees an idle connection end without close_notify.
        shut_down(self.sock)

    def read_proxy_header(self, accept: str) -> ProxyHeader:
        """The PROXY protocol header a load balancer sends first, under the header
        deadline, and not a byte past it: a TLS handshake that follows must find its bytes
        in the socket. Raises BadProxyHeader (also for a close or the deadline): the
        caller closes the connection, as the spec says, without guessing."""
        deadline = time.monotonic() + self.config.header_timeout
        while True:
            try:
                seen = self.stream.peek(MAX_PROXY_HEADER, deadline)
                if not seen:
                    raise BadProxyHeader("closed before a complete PROXY header")
                header = parse_proxy_header(self.buffer + seen, accept)
                # All of a header not yet complete is taken, so that the next peek waits.
                wanted = len(seen) if header is None else header.length - len(self.buffer)
                self.buffer += self.stream.recv(wanted, deadline)  # there already
            except OSError as exc:  # TimeoutError is an OSError too
                raise BadProxyHeader(f"no complete PROXY header ({exc.__class__.__name__})") from exc
            if header is not None:
                self.buffer.clear()
                return header

    def start_tls(self, context: ssl.SSLContext, deadline: float) -> None:
        """Speak TLS from here on (the listener's): the handshake, under `deadline`.
        Raises OSError (ssl.SSLError, TimeoutError); either way `sock` is the socket to close."""
        # wrap_socket() takes the descriptor, then fails on a reset peer and loses it to
        # the garbage collector: ask first (a reset in between is the rare case left).
        self.sock.getpeername()
        self.sock = context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        self.stream = Stream(self.sock)
        self.stream.handshake(deadline)

    def _worth_parsing(self, fresh: bytes | None) -> bool:
        """Whether the parser could decide more now than before `fresh` arrived.

        A head completes (or shows a bad line end) only with CR or LF, and a limit is
        crossed only by the head's size or its last line's length: re-parsing after any other read would cost
        O(n^2) for a client that feeds a byte at a time.
        """
        if fresh is None or b"\n" in fresh or b"\r" in fresh or len(self.buffer) > self.config.max_head_bytes:
            return True
        return len(self.buffer) - self.buffer.rfind(b"\n") - 1 > self.config.max_line_bytes

    def _recv(self, timeout: float, *, idle_ok: bool) -> bytes | None:
        try:
            data = self.stream.recv(RECV_SIZE, time.monotonic() + timeout)
        except OSError as exc:
            if idle_ok and isinstance(exc, TimeoutError):
                return None
            raise CLIENT_HEAD.of(exc, f"reading the request head failed: {exc}") from exc
        return data

    def body(self, head: RequestHead) -> Iterator[bytes]:
        """The request body as bounded chunks, read only as the consumer pulls them.

        If the consumer stops early, `body_pending` stays True and the connection must
        not be reused: the rest of the body is still on the wire.
        """
        self.body_pending = True
        self.body_bytes = 0
        self._body_pace = _Pace(self.config.read_timeout, self.config.request_body_min_rate)
        if head.expect_continue:
            self.send(CONTINUE)
        pieces = self._chunked_body() if head.chunked else self._sized_body(head.content_length or 0)
        for piece in pieces:
            self.body_bytes += len(piece)
            yield piece
        self.body_pending = False

    def _sized_body(self, remaining: int) -> Iterator[bytes]:
        while remaining:
            if not self.buffer:
                self.buffer += self._body_recv()
            piece = bytes(self.buffer[:remaining])
            del self.buffer[: len(piece)]
            remaining -= len(piece)
            yield piece

    def _chunked_body(self) -> Iterator[bytes]:
        decoder = ChunkedDecoder(
            max_line=self.config.max_line_bytes,
            max_trailer=self.config.max_head_bytes,
            max_overhead=MAX_CHUNK_OVERHEAD,
        )
        data, self.buffer = bytes(self.buffer), bytearray()
        while True:
            piece = decoder.feed(data)  # one piece per read, however many chunks it held
            if piece:
                yield piece
            if decoder.done:
                self.buffer += decoder.unused
                return
            data = self._body_recv()

    def _body_recv(self) -> bytes:
        pace = self._body_pace
        started = time.monotonic()
        try:
            data = self.stream.recv(RECV_SIZE, started + pace.wait())
        except OSError as exc:
            shown = f"slower than {pace.min_rate} bytes/s" if pace.slow else exc
            raise CLIENT_BODY.of(exc, f"reading the request body failed: {shown}") from exc
        finally:
            pace.waited += time.monotonic() - started
        if not data:
            raise Aborted("client closed before the request body ended")
        pace.received += len(data)
        return data

    def send(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        try:
            self.stream.send(data, self.config.read_timeout)
        except OSError as exc:
            raise CLIENT_SEND.of(exc, f"sending to the client failed: {exc}") from exc

    def send_quietly(self, data: bytes) -> None:
        """Best effort, for error replies to a client that may already be gone."""
        try:
            self.send(data)
        except Aborted:
            pass

    @property
    def peer(self) -> str:
        """host:port of the client, as tunnel labels spell it."""
        try:
            host, port = self.sock.getpeername()[:2]
        except OSError:
            return "?"
        return f"{host}:{port}"

    def hand_off(
        self,
        adopt: Callable[..., None],
        target: Stream,
        label: str,
        greeting: bytes,
        record: AccessRecord | None = None,
    ) -> None:
        """Give this connection and `target` to the hub (`adopt` is TunnelHub.adopt, of a
        layer above this one) as a tunnel; this object is done.

        `greeting` goes to the client first (the 200 to a CONNECT, an origin's 101). If
        the hub refuses (full, stopping), `target` is closed and the ProxyError raised:
        nothing has been sent, so the caller answers it as any other, and the client's
        socket stays with whoever accepted it. Either way the caller must not touch
        `target` again; after a success, not the client's socket either (`handed_off`:
        the listener leaves it alone). This connection's stream itself goes to the hub.
        """
        try:
            pending, self.buffer = bytes(self.buffer), bytearray()
            adopt(self.stream, target, pending, label, greeting=greeting, record=record, owner=self.address)
        except BaseException:
            target.close()
            raise
        self.handed_off = True


class _Pace:
    """How long a request body may still keep us waiting: each read gets the read timeout,
    and all of them together the read timeout plus a second per `min_rate` bytes received
    (Apache's mod_reqtimeout MinRate). Only the time spent waiting for the client counts:
    not the time its bytes wait for a slow origin. Without it, one byte per read timeout
    would hold a connection's slot for as long as the client likes."""

    __slots__ = ("min_rate", "read_timeout", "received", "waited")

    def __init__(self, read_timeout: float, min_rate: int) -> None:
        self.read_timeout, self.min_rate = read_timeout, min_rate
        self.received = 0  # bytes, framing included
        self.waited = 0.0  # seconds

    def wait(self) -> float:
        """The longest the next read may wait (0: the body is already too slow)."""
        if not self.min_rate:
            return self.read_timeout
        allowed = self.read_timeout + self.received / self.min_rate - self.waited
        return max(0.0, min(self.read_timeout, allowed))

    @property
    def slow(self) -> bool:
        """The last read was cut short by the minimum rate, not the read timeout."""
        return bool(self.min_rate) and self.wait() < self.read_timeout
