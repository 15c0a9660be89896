"""Hostile and malformed requests over real sockets: each gets its status (or a clean
close), nothing that looks like a complete request reaches the upstream, and the proxy
goes on serving. Then the timing rules (header deadline) and the framing that must keep
working (pipelining, bytes after a body, 100-continue).

The upstream of the corpus is a recorder: it accepts, keeps every byte until EOF and
never answers. h11 judges what it received: no complete request may be among it.
"""

from __future__ import annotations

import logging
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import h11
import pytest

from tinyproxy_py import ProxyServer

from ..data.hostile_requests import BODY_CASES, CLOSE, HEAD_CASES, LIMITS, Expected, for_upstream
from ..kit.clients import abort
from ..kit.origins import OriginServer, pattern_bytes
from ..kit.responses import get
from ..kit.servers import ScriptedServer, scripted_server
from ..kit.waits import EXPIRE_SOON, MUST_NOT_EXPIRE, wait_until

MakeProxy = Callable[..., ProxyServer]
MARKER = b"marker: sent after the exchange, accepted after anything the proxy dialled"


class Recorder:
    """An upstream that records each connection's bytes until EOF and never answers."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self._base = 0  # connections accepted before the current case

    def script(self, sock: socket.socket) -> None:
        sock.settimeout(MUST_NOT_EXPIRE)
        data = bytearray()
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        with self._lock:
            self.received.append(bytes(data))

    def arrived(self, server: ScriptedServer) -> list[bytes]:
        """Everything the proxy sent upstream, once all its connections have ended.

        The accept queue is FIFO, so once the marker connection has been accepted, any
        connection the proxy made during the exchange has been counted already.
        """
        with socket.create_connection(("127.0.0.1", server.port), timeout=MUST_NOT_EXPIRE) as sock:
            sock.sendall(MARKER)
        assert wait_until(lambda: MARKER in self.received), "the marker never arrived"
        expected = server.connections - self._base
        assert wait_until(lambda: len(self.received) == expected), "upstream connection left open"
        with self._lock:
            arrived, self.received = self.received, []
        self._base = server.connections
        return [data for data in arrived if data != MARKER]


@pytest.fixture
def upstream() -> Iterator[tuple[Recorder, ScriptedServer]]:
    recorder = Recorder()
    with scripted_server(recorder.script) as server:
        yield recorder, server


def complete_requests(data: bytes) -> int:
    """Whether h11, as a server, finds a complete request in `data` followed by EOF (0 or 1:
    h11 pauses after one request until it is answered, and nothing here answers)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.EndOfMessage):
                return 1
            if isinstance(event, h11.ConnectionClosed) or event in (h11.NEED_DATA, h11.PAUSED):
                return 0
    except h11.RemoteProtocolError:
        return 0


def exchange(address: tuple[str, int], raw: bytes) -> tuple[bytes, bool]:
    """Send `raw`, shut down writing, read until the proxy closes: (answer, was it reset)."""
    with socket.create_connection(address, timeout=MUST_NOT_EXPIRE) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy refused early (a long line) and closed: its answer is still readable
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    """All bytes until EOF. A timeout fails the test: the proxy must close by itself."""
    sock.settimeout(MUST_NOT_EXPIRE)
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return bytes(data), True
    return bytes(data), False


def split_response(buf: bytes) -> tuple[int, dict[str, str], bytes, bytes] | None:
    """(status, fields, body, what follows) of the first response in `buf`, once it is all
    there. Every response here is Content-Length-framed (or has no body)."""
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(fields.get("content-length", "0"))
    if len(rest) < length:
        return None
    return int(lines[0].split(" ")[1]), fields, rest[:length], rest[length:]


def final_responses(buf: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every complete response in `buf` but interim ones (100 Continue)."""
    responses = []
    while (parsed := split_response(buf)) is not None:
        status, fields, body, buf = parsed
        if status != 100:
            responses.append((status, fields, body))
    assert buf == b"", f"bytes after the last complete response: {buf[:200]!r}"
    return responses


def assert_answer(answer: bytes, reset: bool, expected: Expected) -> None:
    if expected == CLOSE:
        assert (answer, reset) == (b"", False), f"expected a clean close, got {answer[:200]!r} reset={reset}"
        return
    responses = final_responses(answer)
    assert [status for status, _, _ in responses] == [expected], answer[:300]
    assert responses[0][1].get("connection") == "close"


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """`count` final responses as (status, body), read without swallowing what follows.

    (support.Response reads through a buffered file, which may take the start of the
    next pipelined response with it.)
    """
    sock.settimeout(MUST_NOT_EXPIRE)
    buf, responses = b"", list[tuple[int, bytes]]()
    while len(responses) < count:
        parsed = split_response(buf)
        if parsed is None:
            data = sock.recv(65536)
            assert data, f"closed after {len(responses)} responses"
            buf += data
            continue
        status, _, body, buf = parsed
        if status != 100:
            responses.append((status, body))
    assert buf == b"", "more responses than requests"
    return responses


def assert_still_serving(proxy: ProxyServer, origin: OriginServer) -> None:
    response = get(proxy.address, origin.url("/bytes/10"))
    assert (response.status, response.body) == (200, pattern_bytes(10))


def run_case(
    proxy: ProxyServer, upstream: tuple[Recorder, ScriptedServer], raw: bytes, expected: Expected
) -> list[bytes]:
    """Send one corpus case on a new connection; return what reached the upstream."""
    recorder, server = upstream
    assert_answer(*exchange(proxy.address, for_upstream(raw, server.port)), expected)
    return recorder.arrived(server)


# One proxy serves a whole corpus (a new connection per case): a proxy per case would
# spend most of the time starting and stopping. Subtests report each case by name.


def test_hostile_heads_are_refused_and_never_dialled(
    make_proxy: MakeProxy,
    origin: OriginServer,
    upstream: tuple[Recorder, ScriptedServer],
    subtests: pytest.Subtests,
) -> None:
    proxy = make_proxy(**LIMITS)
    for name, raw, expected in HEAD_CASES:
        with subtests.test(name):
            assert run_case(proxy, upstream, raw, expected) == []
            assert_still_serving(proxy, origin)


def test_broken_bodies_fail_and_the_origin_never_sees_a_complete_request(
    make_proxy: MakeProxy,
    origin: OriginServer,
    upstream: tuple[Recorder, ScriptedServer],
    subtests: pytest.Subtests,
) -> None:
    proxy = make_proxy(**LIMITS)
    for name, raw, expected in BODY_CASES:
        with subtests.test(name):
            arrived = run_case(proxy, upstream, raw, expected)
            assert [complete_requests(data) for data in arrived] == [0] * len(arrived), arrived
            assert_still_serving(proxy, origin)


def test_complete_requests_judge_can_say_yes() -> None:
    """The judge above is not vacuous: a whole request counts, a cut one does not."""
    whole = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert complete_requests(whole) == 1
    assert complete_requests(whole[:-5]) == 0


# --- the case from the issue, exactly as typed ------------------------------------------

CL_AND_TE = (
    "GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
)


def test_content_length_with_transfer_encoding_is_400_and_origin_gets_nothing(
    proxy: ProxyServer, upstream: tuple[Recorder, ScriptedServer]
) -> None:
    recorder, server = upstream
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(CL_AND_TE.format(port=server.port).encode())
        answer, reset = read_until_closed(sock)  # no shutdown: the proxy closes by itself
    assert_answer(answer, reset, 400)
    assert recorder.arrived(server) == []


def test_the_same_with_netcat(proxy: ProxyServer, upstream: tuple[Recorder, ScriptedServer]) -> None:
    if shutil.which("nc") is None:
        pytest.skip("netcat is not installed (apt-get install -y netcat-openbsd)")
    recorder, server = upstream
    host, port = proxy.address
    result = subprocess.run(
        ["nc", host, str(port)],
        input=CL_AND_TE.format(port=server.port).encode(),
        capture_output=True,
        timeout=MUST_NOT_EXPIRE,
        check=True,
    )
    assert result.stdout.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"both Content-Length and Transfer-Encoding" in result.stdout
    assert recorder.arrived(server) == []


# --- the header deadline: the whole head, from its first byte -------------------------------

HEADER_TIMEOUT = 1.0


def dribble(address: tuple[str, int], raw: bytes, interval: float) -> tuple[bytes, float]:
    """Send `raw` a byte per `interval` until the proxy answers: (answer, seconds taken)."""
    started = time.monotonic()
    with socket.create_connection(address, timeout=MUST_NOT_EXPIRE) as sock:
        for i in range(len(raw)):
            # Stop as soon as the proxy has spoken, so no byte is sent to a closed socket.
            if select.select([sock], [], [], interval)[0]:
                break
            sock.sendall(raw[i : i + 1])
        answer, _ = read_until_closed(sock)
    return answer, time.monotonic() - started


def test_dribbled_head_is_cut_off_at_the_deadline(make_proxy: MakeProxy, origin: OriginServer) -> None:
    """A byte every 0.1 s resets any idle timeout, but not a deadline for the whole head."""
    proxy = make_proxy(header_timeout=HEADER_TIMEOUT)
    raw = f"GET {origin.url('/bytes/10')} HTTP/1.1\r\nHost: x\r\nX-Slow: {'s' * 200}\r\n\r\n".encode()
    answer, took = dribble(proxy.address, raw, interval=0.1)  # the whole head would take 25 s
    assert_answer(answer, False, 408)
    assert HEADER_TIMEOUT - 0.1 < took < HEADER_TIMEOUT + EXPIRE_SOON
    assert origin.requests == []
    assert_still_serving(proxy, origin)


def test_stalled_head_gets_408(make_proxy: MakeProxy, origin: OriginServer) -> None:
    proxy = make_proxy(header_timeout=HEADER_TIMEOUT)
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(f"GET {origin.url('/')} HTTP/1.1\r\nHost: x\r\n".encode())
        answer, reset = read_until_closed(sock)
    assert_answer(answer, reset, 408)
    assert origin.requests == []


def test_a_dribbling_client_does_not_hold_up_others(make_proxy: MakeProxy, origin: OriginServer) -> None:
    proxy = make_proxy(header_timeout=HEADER_TIMEOUT)
    raw = f"GET {origin.url('/')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    slow = threading.Thread(target=dribble, args=(proxy.address, raw, 0.1))
    slow.start()
    try:
        for _ in range(3):
            assert_still_serving(proxy, origin)
        assert slow.is_alive(), "the others were served while the dribble was still going"
    finally:
        slow.join(MUST_NOT_EXPIRE)


def test_a_body_below_the_minimum_rate_is_cut_off(make_proxy: MakeProxy, origin: OriginServer) -> None:
    """A byte every 0.1 s never lets a read time out; the minimum rate (500 B/s after a
    read timeout's grace) ends it about a read timeout after it began."""
    proxy = make_proxy(read_timeout=1.5)
    head = f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(head)
        started = time.monotonic()
        for _ in range(1000):
            if select.select([sock], [], [], 0.1)[0]:
                break
            sock.sendall(b"x")
        answer, _ = read_until_closed(sock)
    took = time.monotonic() - started
    assert answer == b""  # nothing of a response was sent: the client is simply cut off
    assert 1.4 < took < 1.5 + EXPIRE_SOON
    assert proxy.stats.counter("errors.client-timeout") == 1
    assert_still_serving(proxy, origin)


@pytest.mark.parametrize("ending", ["stall", "reset"])
def test_a_request_body_that_stalls_or_resets_is_counted_not_a_traceback(
    make_proxy: MakeProxy, origin: OriginServer, caplog: pytest.LogCaptureFixture, ending: str
) -> None:
    """A body that stops past the read timeout (no minimum rate) is client-timeout, one
    cut by a reset client-abort; either way the access log has it and nothing is an error."""
    proxy = make_proxy(read_timeout=0.5, request_body_min_rate=0)
    head = f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc"
    sock = socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE)
    sock.sendall(head.encode())
    if ending == "reset":
        assert wait_until(lambda: proxy.stats.gauge("clients") == 1, MUST_NOT_EXPIRE)
        time.sleep(0.1)  # the body has begun: its read is waiting
        abort(sock)
    else:
        with sock:
            read_until_closed(sock)
    cause = "client-timeout" if ending == "stall" else "client-abort"
    assert wait_until(lambda: proxy.stats.counter(f"errors.{cause}") == 1, MUST_NOT_EXPIRE)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert_still_serving(proxy, origin)


def test_a_body_of_one_byte_chunks_is_refused_before_it_costs_much(
    proxy: ProxyServer, origin: OriginServer
) -> None:
    """3 MB of 1-byte chunks cost some 4 s of CPU per chunk re-framed and sent (issue 24);
    past 4 KiB of framing that outweighs the data, the body is refused instead."""
    head = f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    flood = b"1\r\nx\r\n" * 500_000
    cpu = time.process_time()
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(head.encode())
        try:
            for start in range(0, len(flood), 65536):
                sock.sendall(flood[start : start + 65536])
        except OSError:
            pass  # refused and closed while we were still sending
        answer, _ = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"framing outweighs its data" in answer
    assert time.process_time() - cpu < 1.0
    assert not any(len(body) > 4096 for _, _, _, body in origin.requests)
    assert_still_serving(proxy, origin)


# --- framing that must keep working ---------------------------------------------------------


def test_bytes_after_a_body_are_the_next_request(proxy: ProxyServer, origin: OriginServer) -> None:
    """A body that looks like a request is a body: the origin sees it as /echo's payload."""
    smuggled = f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    raw = (
        f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(smuggled)}\r\n\r\n".encode()
        + smuggled
        + b"\r\n"  # a stray CRLF after a body, as old clients send (RFC 9112 §2.2)
        + f"GET {origin.url('/bytes/5')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(raw)
        assert read_responses(sock, 2) == [(200, smuggled), (200, pattern_bytes(5))]
    assert [(method, path) for method, path, _, _ in origin.requests] == [
        ("POST", "/echo"),
        ("GET", "/bytes/5"),
    ]


def test_pipelined_chunked_bodies_with_trailers_answered_in_order(
    proxy: ProxyServer, origin: OriginServer
) -> None:
    def post(body: bytes) -> bytes:
        head = f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        return head.encode() + b"%x;n=1\r\n%s\r\n0\r\nX-T: 1\r\n\r\n" % (len(body), body)

    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(post(b"first") + post(b"second") + post(b"third"))
        assert read_responses(sock, 3) == [(200, b"first"), (200, b"second"), (200, b"third")]


def test_expect_100_continue_with_a_chunked_body(proxy: ProxyServer, origin: OriginServer) -> None:
    head = (
        f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(head.encode())
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"4\r\ndata\r\n0\r\n\r\n")
        assert read_responses(sock, 1) == [(200, b"data")]
