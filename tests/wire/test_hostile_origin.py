"""Hostile origins over real sockets: each corpus case (tests/data/hostile_responses.py)
gets the client outcome it names, the hostile connection is never used again unless it
ended clean, a second client is served cleanly, and nothing is left open.

The origin plays the case's script on its first connection, after reading the request
head; every later request (on a new connection, or on the first one after the script if
it stays open) gets `200` with the body b"clean-<connection>-<request>". So the second
client's body names the connection that served it: a hostile connection reused dirty
shows as the wrong name, or as hostile bytes ("evil") reaching a client.

The client side is read by a strict parser (`ClientReader`): whatever the origin sent,
what the proxy relays must be well-formed HTTP/1.1 with CRLF line ends and one framing.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tinyproxy_py import ProxyServer

from ..data.hostile_responses import CASES, Case, Expect, Pause
from ..kit.servers import scripted_server
from ..kit.waits import EXPIRE_SOON, MUST_NOT_EXPIRE, wait_until

MakeProxy = Callable[..., ProxyServer]

CLIENT_WAIT = 10.0  # the longest any outcome may take (the slowest case needs about 2 s)
QUIET = 0.1  # after a complete response, how long the client listens for stray bytes
SETTLED = 3 * EXPIRE_SOON  # a dirty origin connection is closed, a clean one pooled, within this
POLL = 0.05  # the origin's threads look at `release` this often

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
FIELD_LINE = re.compile(rb"(" + TOKEN + rb"):[ \t]*((?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)[ \t]*")
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?")
CHUNK_LINE = re.compile(rb"([0-9a-fA-F]{1,16})(?:;[^\r\n]*)?\r\n")


# --- the origin ------------------------------------------------------------------------------


class _Released(Exception):
    """The test is over: the origin's threads end."""


class HostileOrigin:
    """The case's script on the first connection, clean answers everywhere else."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.release = threading.Event()  # the ScriptedServer's, once it exists
        self._lock = threading.Lock()
        self._accepted = 0
        self.first_request = b""  # the request head the hostile connection received
        self.script_done = threading.Event()  # the script has run (or the proxy cut it short)
        self.hostile_closed = threading.Event()  # the proxy closed the hostile connection
        self.served: list[tuple[int, int]] = []  # (connection, request) of every clean answer

    def script(self, sock: socket.socket) -> None:
        with self._lock:
            self._accepted += 1
            number = self._accepted
        buf = bytearray()
        try:
            if number > 1:
                self._serve_clean(sock, number, 1, buf)
                return
            try:
                open_ = self._hostile(sock, buf)
            finally:
                self.script_done.set()
            if open_ and self.case.keep_open:
                open_ = self._serve_clean(sock, 1, 2, buf)
            if not open_:
                self.hostile_closed.set()
        except _Released:
            pass

    def _hostile(self, sock: socket.socket, buf: bytearray) -> bool:
        """Read the request head, play the script: whether the proxy kept the connection open."""
        head = self._read_head(sock, buf)
        if head is None:
            return False
        self.first_request = head
        for piece in self.case.script:
            if isinstance(piece, Pause):
                if not self._wait(sock, piece.seconds, buf):
                    return False
            else:
                try:
                    sock.sendall(piece)
                except OSError:
                    return False
        return True

    def _serve_clean(self, sock: socket.socket, number: int, request: int, buf: bytearray) -> bool:
        """Answer requests until the proxy closes (returns False)."""
        while (head := self._read_head(sock, buf)) is not None:
            body = b"clean-%d-%d" % (number, request)
            with self._lock:
                self.served.append((number, request))
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
            try:
                sock.sendall(answer if head.startswith(b"HEAD ") else answer + body)
            except OSError:
                return False
            request += 1
        return False

    def _read_head(self, sock: socket.socket, buf: bytearray) -> bytes | None:
        """The next request head (its body, if any, stays unread); None once the peer closed."""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            data = self._recv(sock, None)
            if not data:
                return None
            buf += data
        head = bytes(buf[: end + 4])
        del buf[: end + 4]
        return head

    def _wait(self, sock: socket.socket, seconds: float, buf: bytearray) -> bool:
        """Pause, keeping what arrives; False as soon as the proxy closes."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            data = self._recv(sock, left)
            if data is None:
                return True
            if not data:
                return False
            buf += data
        return True

    def _recv(self, sock: socket.socket, timeout: float | None) -> bytes | None:
        """Bytes, b"" at EOF (or reset), None if `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.release.is_set():
                raise _Released
            step = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            if step <= 0:
                return None
            if select.select([sock], [], [], step)[0]:
                try:
                    return sock.recv(65536)
                except OSError:
                    return b""


# --- the client ------------------------------------------------------------------------------


@dataclass
class Head:
    status: int
    fields: list[tuple[str, str]]
    raw: bytes
    at: float  # when it was complete (time.monotonic)

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.fields if key.lower() == name.lower()]

    def codings(self) -> list[str]:
        return [c.strip().lower() for value in self.values("Transfer-Encoding") for c in value.split(",")]


@dataclass
class Seen:
    """Everything one client connection received."""

    interim: list[Head] = field(default_factory=list)
    final: Head | None = None
    body: bytes = b""
    complete: bool = False  # the final response ended where its framing says
    closed: bool = False  # the proxy closed the connection (EOF or reset)
    closed_at: float = 0.0
    trailing: bytes = b""  # bytes after the complete final response
    raw: bytes = b""

    def describe(self) -> str:
        state = "complete" if self.complete else "incomplete"
        ending = "closed" if self.closed else "open"
        return f"{state}, {ending}, received {self.raw[:700]!r}"

    def proxy_generated(self) -> bool:
        return self.final is not None and bool(self.final.values("X-Tinyproxy-Py-Cause"))


class ClientReader:
    """Reads responses off a client socket as a strict HTTP/1.1 client would."""

    def __init__(self, sock: socket.socket, method: str) -> None:
        self.sock = sock
        self.method = method
        self.buf = bytearray()
        self.seen = Seen()
        self.eof = False
        self.deadline = time.monotonic() + CLIENT_WAIT

    def read(self) -> Seen:
        seen = self.seen
        while (raw := self._through(b"\r\n\r\n")) is not None:
            head = parse_head(raw)
            if 100 <= head.status < 200 and head.status != 101:
                seen.interim.append(head)
                continue
            seen.final = head
            seen.complete = self._body(head)
            break
        if seen.complete and not self.eof:
            self._listen_quietly()
        return seen

    def _body(self, head: Head) -> bool:
        if self.method == "HEAD" or head.status in (101, 204, 304):
            return True
        codings, lengths = head.codings(), head.values("Content-Length")
        if codings:
            assert not lengths, f"the proxy sent Content-Length with Transfer-Encoding: {head.raw!r}"
            # RFC 9112 §6.1: a sender MUST NOT apply chunked more than once.
            assert codings.count("chunked") <= 1, f"the proxy chunked a chunked body: {head.raw!r}"
            if codings[-1] == "chunked":
                return self._chunked()
        elif lengths:
            assert len(lengths) == 1 and lengths[0].isdigit(), f"the proxy sent a bad length: {head.raw!r}"
            wanted = int(lengths[0])
            self.seen.body = self._take(wanted)
            return len(self.seen.body) == wanted
        while self._fill():  # close-delimited
            pass
        self.seen.body = bytes(self.buf)
        self.buf.clear()
        return True

    def _chunked(self) -> bool:
        body = bytearray()
        try:
            while (line := self._through(b"\r\n")) is not None:
                match = CHUNK_LINE.fullmatch(line)
                assert match, f"the proxy sent a malformed chunk line {line!r}"
                size = int(match[1], 16)
                if size == 0:
                    while (trailer := self._through(b"\r\n")) is not None:
                        if trailer == b"\r\n":
                            return True
                    return False
                data = self._take(size)
                body += data
                if len(data) < size:
                    return False
                end = self._take(2)
                if len(end) < 2:
                    return False
                assert end == b"\r\n", f"the proxy sent chunk data longer than its size: {self.seen.raw!r}"
            return False
        finally:
            self.seen.body = bytes(body)

    def _listen_quietly(self) -> None:
        """After a complete response on an open connection: nothing more may arrive."""
        trailing = bytes(self.buf)
        self.sock.settimeout(QUIET)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            data = None
        except ConnectionResetError:
            data = b""
        if data == b"":
            self._closed()
        elif data:
            self.seen.raw += data
            trailing += data
        self.seen.trailing = trailing

    def _fill(self) -> bool:
        if self.eof:
            return False
        left = self.deadline - time.monotonic()
        assert left > 0, (
            f"the proxy neither finished nor closed within {CLIENT_WAIT} s: {self.seen.describe()}"
        )
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(
                f"the proxy neither finished nor closed within {CLIENT_WAIT} s: {self.seen.describe()}"
            ) from None
        except ConnectionResetError:
            data = b""
        if not data:
            self._closed()
            return False
        self.buf += data
        self.seen.raw += data
        return True

    def _closed(self) -> None:
        self.eof = True
        self.seen.closed = True
        self.seen.closed_at = time.monotonic()

    def _through(self, marker: bytes) -> bytes | None:
        """Bytes up to and including `marker`; None if the connection closes first."""
        while (end := self.buf.find(marker)) < 0:
            if not self._fill():
                return None
        data = bytes(self.buf[: end + len(marker)])
        del self.buf[: end + len(marker)]
        return data

    def _take(self, size: int) -> bytes:
        """`size` bytes, or fewer if the connection closes first."""
        while len(self.buf) < size and self._fill():
            pass
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data


def parse_head(raw: bytes) -> Head:
    """A response head the proxy sent (ending in CRLF CRLF): it must be well-formed."""
    text = raw[:-4]
    assert b"\n" not in text.replace(b"\r\n", b"") and b"\r" not in text.replace(b"\r\n", b""), (
        f"the proxy sent a bare CR or LF in a head: {raw!r}"
    )
    status_line, *lines = text.split(b"\r\n")
    status = STATUS_LINE.fullmatch(status_line)
    assert status, f"the proxy sent a malformed status line: {raw!r}"
    fields = []
    for line in lines:
        match = FIELD_LINE.fullmatch(line)
        assert match, f"the proxy sent a malformed field line {line!r} in {raw!r}"
        fields.append((match[1].decode("latin-1"), match[2].decode("latin-1")))
    return Head(int(status[1]), fields, raw, time.monotonic())


def exchange(address: tuple[str, int], request: bytes, method: str, body_size: int = 0) -> tuple[Seen, float]:
    """Send a request on a new connection and read what comes back: (seen, time sent).

    A request body is sent from a thread while the answer is read, as a browser does: the
    origin may answer before reading it.
    """
    with socket.create_connection(address, timeout=CLIENT_WAIT) as sock:
        started = time.monotonic()
        sock.sendall(request)
        sender = None
        if body_size:
            sender = threading.Thread(target=_send_quietly, args=(sock, b"b" * body_size))
            sender.start()
        try:
            return ClientReader(sock, method).read(), started
        finally:
            if sender is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the sender if it is still blocked
                except OSError:
                    pass
                sender.join(MUST_NOT_EXPIRE)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass


def request_for(case: Case, port: int) -> bytes:
    lines = [
        f"{case.method} http://127.0.0.1:{port}/hostile/{case.name} {case.version}",
        f"Host: 127.0.0.1:{port}",
    ]
    if case.body_size:
        lines.append(f"Content-Length: {case.body_size}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- the checks ------------------------------------------------------------------------------


def assert_outcome(case: Case, seen: Seen, started: float) -> None:
    expect: Expect = case.expect
    # Hostile bytes never reach the client (the proxy's own error text may quote them).
    exposed = seen.raw.replace(seen.body, b"") if seen.proxy_generated() and seen.body else seen.raw
    assert b"evil" not in exposed.lower(), f"hostile bytes reached the client: {seen.describe()}"
    for needle in expect.absent_raw:
        assert needle not in seen.raw, f"{needle!r} reached the client: {seen.describe()}"
    if expect.status is None:
        assert seen.closed and not seen.complete, f"expected an abort, got: {seen.describe()}"
        took = seen.closed_at - started
    else:
        final = seen.final
        assert seen.complete and final is not None, f"expected {expect.status}, got: {seen.describe()}"
        assert final.status == expect.status, f"expected {expect.status}, got: {seen.describe()}"
        if expect.body is not None:
            assert seen.body == expect.body, seen.describe()
        if expect.cause is not None:
            assert final.values("X-Tinyproxy-Py-Cause") == [expect.cause], seen.describe()
        if expect.interim is not None:
            assert [head.status for head in seen.interim] == list(expect.interim), seen.describe()
        for name, value in expect.fields:
            assert final.values(name) == ([] if value is None else [value]), f"{name}: {seen.describe()}"
        if expect.codings is not None:
            assert final.codings() == list(expect.codings), seen.describe()
        for needle in expect.raw:
            assert needle in seen.raw, f"{needle!r} did not reach the client: {seen.describe()}"
        if expect.interim_gap:
            gap = final.at - seen.interim[0].at
            assert gap >= expect.interim_gap, (
                f"the interim response was held back ({gap:.2f} s before the final)"
            )
        if case.version == "HTTP/1.0":
            assert not final.values("Transfer-Encoding"), f"chunked to an HTTP/1.0 client: {seen.describe()}"
        assert seen.trailing == b"", f"bytes after the response: {seen.trailing[:300]!r}"
        took = final.at - started
    if expect.within is not None:
        low, high = expect.within
        assert low <= took <= high, f"the outcome took {took:.2f} s, expected {low}..{high}"


def assert_clean_second(case: Case, seen: Seen, origin: HostileOrigin) -> None:
    """The second client got a clean answer of its own, over a connection the case allows."""
    assert seen.complete and seen.final is not None and seen.final.status == 200, (
        f"the second client was not served: {seen.describe()}"
    )
    assert b"evil" not in seen.raw.lower(), f"hostile bytes reached the second client: {seen.describe()}"
    match = re.fullmatch(rb"clean-(\d+)-(\d+)", seen.body)
    assert match, f"the second client got another response's body: {seen.describe()}"
    served = (int(match[1]), int(match[2]))
    assert served in origin.served, f"{served} was never sent by the origin"
    if case.reuse is True:
        assert served == (1, 2), f"the clean first connection was not reused: served by {served}"
    elif case.reuse is False:
        assert served[0] != 1 and served[1] == 1, f"the hostile connection was reused: served by {served}"
        assert all(conn != 1 for conn, _ in origin.served), "a request went over the hostile connection"
    assert seen.trailing == b"", f"bytes after the second response: {seen.trailing[:300]!r}"


# --- the test --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_origin(make_proxy: MakeProxy, case: Case) -> None:
    origin = HostileOrigin(case)
    with scripted_server(origin.script) as server:
        origin.release = server.release
        proxy = make_proxy(**dict(case.proxy))

        seen, started = exchange(proxy.address, request_for(case, server.port), case.method, case.body_size)
        assert origin.first_request.startswith(f"{case.method} /hostile/{case.name} ".encode()), (
            f"the origin got {origin.first_request[:200]!r}"
        )
        assert_outcome(case, seen, started)

        assert origin.script_done.wait(MUST_NOT_EXPIRE)
        if case.reuse is False and case.keep_open:
            assert wait_until(origin.hostile_closed.is_set, SETTLED), (
                "the dirty origin connection is still open"
            )
        if case.reuse is True:
            assert wait_until(lambda: proxy.resources()["pool_idle"] == 1, SETTLED), (
                "the clean origin connection was not pooled"
            )

        second_request = f"GET http://127.0.0.1:{server.port}/second HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        second, _ = exchange(proxy.address, second_request, "GET")
        assert_clean_second(case, second, origin)
        assert wait_until(lambda: proxy.stats.gauge("pool_open") == 1, SETTLED), (
            f"pool_open is {proxy.stats.gauge('pool_open')}: only the clean connection may be open"
        )
    # (The idle watcher would close the pooled connection within about a second; stopping
    # the proxy is quicker, and must leave nothing counted.)
    proxy.stop()
    assert proxy.stats.gauge("pool_open") == 0


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 45
