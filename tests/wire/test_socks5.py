"""Upstream handshakes on real loopback sockets: SOCKS5 against a real server and scripted
misbehaving ones, HTTP CONNECT against scripted proxies and against tinyproxy-py itself."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager

import pytest

from tinyproxy_py import ProxyServer
from tinyproxy_py.errors import BadRequest, ProxyError, UpstreamError, UpstreamTimeout
from tinyproxy_py.socks5 import connect_request, socks5_handshake
from tinyproxy_py.upstream import Upstream
from tinyproxy_py.upstream_connect import MAX_RESPONSE_HEAD, connect_through, http_connect_handshake

from ..socks_server import socks_server
from ..support import EXPIRE_SOON, MUST_NOT_EXPIRE, ScriptedServer, closed_port, scripted_server

pytestmark = pytest.mark.usefixtures("no_leaks")


def echo(sock: socket.socket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


def greet_then_echo(sock: socket.socket) -> None:
    sock.sendall(b"220 ready\r\n")  # a server-first protocol, like SMTP
    echo(sock)


@contextmanager
def dialled(address: tuple[str, int]) -> Iterator[socket.socket]:
    with closing(socket.create_connection(address, timeout=MUST_NOT_EXPIRE)) as sock:
        yield sock


def soon() -> float:
    return time.monotonic() + EXPIRE_SOON


def later() -> float:
    return time.monotonic() + MUST_NOT_EXPIRE


def round_trip(sock: socket.socket, data: bytes = b"ping") -> bytes:
    sock.settimeout(MUST_NOT_EXPIRE)
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def expect(error: type[ProxyError], cause: str, action: Callable[[], object]) -> ProxyError:
    with pytest.raises(error) as caught:
        action()
    assert caught.value.cause == cause, caught.value.message
    return caught.value


# --- SOCKS5 against a real server -----------------------------------------------------------


def test_ipv4_literal_goes_as_atyp_1_and_the_tunnel_carries_bytes() -> None:
    with scripted_server(echo) as origin, socks_server() as socks, dialled(socks.address) as sock:
        socks5_handshake(sock, "127.0.0.1", origin.port, deadline=later())
        assert round_trip(sock) == b"ping"
    (request,) = socks.requests
    assert (request.methods, request.atyp, request.host, request.port) == (
        b"\x00",
        1,
        "127.0.0.1",
        origin.port,
    )


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_ipv6_literal_goes_as_atyp_4(host: str) -> None:
    origin = ScriptedServer(echo, family=socket.AF_INET6)
    try:
        with socks_server() as socks, dialled(socks.address) as sock:
            socks5_handshake(sock, host, origin.port, deadline=later())
            assert round_trip(sock) == b"ping"
        assert (socks.requests[0].atyp, socks.requests[0].host) == (4, "::1")
    finally:
        origin.close()


def test_names_go_as_atyp_3_and_are_never_resolved_here(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "origin.socks-only.invalid"  # known to the SOCKS server's table, not to DNS
    real_getaddrinfo = socket.getaddrinfo
    looked_up: list[object] = []

    def guarded(host: object, *args: object, **kwargs: object) -> object:
        if host == name:  # record and refuse: no DNS query may leave the machine
            looked_up.append(host)
            raise socket.gaierror("no DNS in tests")
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    with (
        scripted_server(echo) as origin,
        socks_server(hosts={name: "127.0.0.1"}) as socks,
        dialled(socks.address) as sock,
    ):
        socks5_handshake(sock, name, origin.port, deadline=later())
        assert round_trip(sock) == b"ping"
    assert looked_up == []
    assert (socks.requests[0].atyp, socks.requests[0].host) == (3, name)


def test_username_and_password_are_offered_and_accepted() -> None:
    with (
        scripted_server(echo) as origin,
        socks_server(users={"alice": "s3cret"}) as socks,
        dialled(socks.address) as sock,
    ):
        socks5_handshake(sock, "127.0.0.1", origin.port, "alice", "s3cret", deadline=later())
        assert round_trip(sock) == b"ping"
    assert (socks.requests[0].methods, socks.requests[0].username) == (b"\x00\x02", "alice")


def test_credentials_are_not_used_when_the_server_wants_none() -> None:
    with scripted_server(echo) as origin, socks_server() as socks, dialled(socks.address) as sock:
        socks5_handshake(sock, "127.0.0.1", origin.port, "alice", "s3cret", deadline=later())
        assert round_trip(sock) == b"ping"
    assert socks.requests[0].username is None


def test_target_bytes_sent_at_once_stay_in_the_socket() -> None:
    with scripted_server(greet_then_echo) as origin, socks_server() as socks, dialled(socks.address) as sock:
        socks5_handshake(sock, "127.0.0.1", origin.port, deadline=later())
        sock.settimeout(MUST_NOT_EXPIRE)
        assert sock.recv(100) == b"220 ready\r\n"


def test_the_socket_timeout_is_restored() -> None:
    with scripted_server(echo) as origin, socks_server() as socks, dialled(socks.address) as sock:
        sock.settimeout(7.0)
        socks5_handshake(sock, "127.0.0.1", origin.port, deadline=later())
        assert sock.gettimeout() == 7.0


def test_wrong_password_is_an_auth_error_naming_the_upstream() -> None:
    with socks_server(users={"alice": "s3cret"}) as socks, dialled(socks.address) as sock:
        error = expect(
            UpstreamError,
            "upstream-auth",
            lambda: socks5_handshake(sock, "127.0.0.1", 9, "alice", "wrong", deadline=later()),
        )
    assert f"SOCKS5 upstream 127.0.0.1:{socks.port}" in error.message
    assert "wrong" not in error.message
    assert socks.requests[0].port == 0  # it never got as far as a CONNECT


def test_missing_credentials_are_an_auth_error() -> None:
    with socks_server(users={"alice": "s3cret"}) as socks, dialled(socks.address) as sock:
        error = expect(
            UpstreamError, "upstream-auth", lambda: socks5_handshake(sock, "127.0.0.1", 9, deadline=later())
        )
    assert "accepts none of the offered" in error.message


def test_refused_target_is_reply_5() -> None:
    port = closed_port()
    with socks_server() as socks, dialled(socks.address) as sock:
        error = expect(
            UpstreamError,
            "upstream-refused",
            lambda: socks5_handshake(sock, "127.0.0.1", port, deadline=later()),
        )
    assert socks.requests[0].reply == 5
    assert error.status == 502
    assert f"SOCKS5 upstream 127.0.0.1:{socks.port} could not connect to 127.0.0.1:{port}" in error.message
    assert "reply 5" in error.message


def test_unknown_name_is_reply_4() -> None:
    with socks_server() as socks, dialled(socks.address) as sock:
        expect(
            UpstreamError,
            "upstream-unreachable",
            lambda: socks5_handshake(sock, "nowhere.invalid", 80, deadline=later(), label="the socks"),
        )
    assert socks.requests[0].reply == 4


def test_name_too_long_for_socks_fails_before_any_byte_is_sent() -> None:
    with socks_server() as socks, dialled(socks.address) as sock:
        name = "a" * 256 + ".invalid"
        expect(UpstreamError, "dns", lambda: socks5_handshake(sock, name, 80, deadline=later()))
    assert socks.requests == []


# --- SOCKS5 against scripted misbehaviour ------------------------------------------------------


def test_server_that_never_answers_times_out_at_the_deadline() -> None:
    def silent(sock: socket.socket) -> None:
        server.release.wait(MUST_NOT_EXPIRE)

    with scripted_server(silent) as server, dialled(("127.0.0.1", server.port)) as sock:
        started = time.monotonic()
        error = expect(
            UpstreamTimeout,
            "upstream-timeout",
            lambda: socks5_handshake(sock, "127.0.0.1", 9, deadline=soon()),
        )
        assert EXPIRE_SOON - 0.05 <= time.monotonic() - started < EXPIRE_SOON + 2
    assert error.status == 504
    assert f"127.0.0.1:{server.port}" in error.message


def test_deadline_already_past_is_a_timeout() -> None:
    with scripted_server(echo) as server, dialled(("127.0.0.1", server.port)) as sock:
        expect(
            UpstreamTimeout,
            "upstream-timeout",
            lambda: socks5_handshake(sock, "127.0.0.1", 9, deadline=time.monotonic() - 1),
        )


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "is not a SOCKS5 server"),
        (b"\x05\x07", "was not offered"),
        (b"\x05\x00\x05\x00\x00\x09", "unknown address type"),
        (b"\x05\x00\x04\x00\x00\x01", "not SOCKS5"),
        (b"\x05", "closed the connection"),
        (b"", "closed the connection"),
    ],
)
def test_garbage_replies_are_protocol_errors_that_do_not_echo_the_garbage(
    answer: bytes, fragment: str
) -> None:
    def script(sock: socket.socket) -> None:
        sock.recv(1024)
        sock.sendall(answer)

    with scripted_server(script) as server, dialled(("127.0.0.1", server.port)) as sock:
        error = expect(
            UpstreamError,
            "upstream-protocol",
            lambda: socks5_handshake(sock, "127.0.0.1", 9, deadline=later()),
        )
    assert fragment in error.message
    assert "Bad Request" not in error.message


def test_a_name_in_the_bound_address_is_read_to_its_exact_end() -> None:
    bound = b"bound.example"

    def script(sock: socket.socket) -> None:
        sock.recv(3)  # the greeting
        sock.sendall(b"\x05\x00")
        request = sock.recv(1024)
        assert request == connect_request("origin.example", 443)
        sock.sendall(b"\x05\x00\x00\x03" + bytes([len(bound)]) + bound + b"\x01\xbb" + b"early")
        server.release.wait(MUST_NOT_EXPIRE)

    with scripted_server(script) as server, dialled(("127.0.0.1", server.port)) as sock:
        socks5_handshake(sock, "origin.example", 443, deadline=later())
        sock.settimeout(MUST_NOT_EXPIRE)
        assert sock.recv(100) == b"early"


# --- HTTP CONNECT against scripted proxies -------------------------------------------------------


class Recorder:
    """A scripted upstream proxy: records the request head, then answers `answer`."""

    def __init__(self, answer: bytes, hold: bool = False) -> None:
        self.answer = answer
        self.hold = hold
        self.heads: list[bytes] = []
        self.server = ScriptedServer(self.script)

    def script(self, sock: socket.socket) -> None:
        sock.settimeout(MUST_NOT_EXPIRE)
        head = b""
        while b"\r\n\r\n" not in head and (chunk := sock.recv(65536)):
            head += chunk
        self.heads.append(head)
        sock.sendall(self.answer)
        if self.hold:
            self.server.release.wait(MUST_NOT_EXPIRE)

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.server.port


@contextmanager
def recorder(answer: bytes, hold: bool = False) -> Iterator[Recorder]:
    proxy = Recorder(answer, hold)
    try:
        yield proxy
    finally:
        proxy.server.close()


def test_200_returns_the_bytes_after_the_head() -> None:
    answer = b"HTTP/1.1 200 Connection established\r\nX-Note: hi\r\n\r\nearly bytes"
    with recorder(answer, hold=True) as proxy, dialled(proxy.address) as sock:
        rest = http_connect_handshake(sock, "origin.example", 443, "Basic YTpi", deadline=later())
        sock.settimeout(MUST_NOT_EXPIRE)
        while len(rest) < len(b"early bytes"):  # the tail may come in a later segment
            rest += sock.recv(100)
        assert rest == b"early bytes"
    assert proxy.heads == [
        b"CONNECT origin.example:443 HTTP/1.1\r\nHost: origin.example:443\r\n"
        b"Proxy-Authorization: Basic YTpi\r\n\r\n"
    ]


def test_no_credentials_no_header_and_ipv6_targets_are_bracketed() -> None:
    with recorder(b"HTTP/1.0 200 OK\r\n\r\n") as proxy, dialled(proxy.address) as sock:
        assert http_connect_handshake(sock, "[::1]", 8443, deadline=later()) == b""
    assert proxy.heads == [b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n"]


def test_interim_1xx_answers_are_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nhello"
    with recorder(answer, hold=True) as proxy, dialled(proxy.address) as sock:
        rest = http_connect_handshake(sock, "origin.example", 443, deadline=later())
        sock.settimeout(MUST_NOT_EXPIRE)
        while len(rest) < 5:
            rest += sock.recv(100)
        assert rest == b"hello"


@pytest.mark.parametrize(
    ("credentials", "why"), [("Basic YTpi", "refused the configured"), (None, "wants credentials")]
)
def test_407_is_an_auth_error_naming_the_upstream(credentials: str | None, why: str) -> None:
    answer = b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="x"\r\n\r\n'
    with recorder(answer) as proxy, dialled(proxy.address) as sock:
        error = expect(
            UpstreamError,
            "upstream-auth",
            lambda: http_connect_handshake(sock, "origin.example", 443, credentials, deadline=later()),
        )
    assert error.message.startswith(f"upstream proxy 127.0.0.1:{proxy.server.port} {why}")
    assert "407" in error.message and "YTpi" not in error.message


def test_other_statuses_name_the_upstream_and_the_status_but_not_the_reason_sent() -> None:
    answer = b"HTTP/1.1 502 <script>evil</script>\r\nContent-Length: 0\r\n\r\n"
    with recorder(answer) as proxy, dialled(proxy.address) as sock:
        error = expect(
            UpstreamError,
            "upstream-status",
            lambda: http_connect_handshake(sock, "origin.example", 443, deadline=later(), label="upstream X"),
        )
    assert error.message == "upstream X refused CONNECT to origin.example:443: 502 Bad Gateway"


def test_slow_upstream_times_out_at_the_deadline() -> None:
    with recorder(b"", hold=True) as proxy, dialled(proxy.address) as sock:
        started = time.monotonic()
        expect(
            UpstreamTimeout,
            "upstream-timeout",
            lambda: http_connect_handshake(sock, "origin.example", 443, deadline=soon()),
        )
        assert EXPIRE_SOON - 0.05 <= time.monotonic() - started < EXPIRE_SOON + 2


def test_head_that_trickles_in_is_still_bound_by_the_deadline() -> None:
    def trickle(sock: socket.socket) -> None:
        sock.recv(65536)
        for _ in range(100):
            sock.sendall(b"HTTP/1.1 200 OK\r\n" if _ == 0 else b"X: y\r\n")
            if server.release.wait(0.1):
                return

    with scripted_server(trickle) as server, dialled(("127.0.0.1", server.port)) as sock:
        started = time.monotonic()
        expect(
            UpstreamTimeout,
            "upstream-timeout",
            lambda: http_connect_handshake(sock, "o", 443, deadline=soon()),
        )
        assert time.monotonic() - started < EXPIRE_SOON + 2


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * MAX_RESPONSE_HEAD, "response head over"),
        (b"HTTP/1.1 200 OK\r\n", "closed the connection before answering"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "status line"),
        (b"HTTP/2 200\r\n\r\n", "status line"),
    ],
)
def test_broken_answers_are_protocol_errors(answer: bytes, fragment: str) -> None:
    with recorder(answer) as proxy, dialled(proxy.address) as sock:
        error = expect(
            UpstreamError,
            "upstream-protocol",
            lambda: http_connect_handshake(sock, "origin.example", 443, deadline=later()),
        )
    assert fragment in error.message


def test_targets_that_would_break_the_request_head_are_refused_before_sending() -> None:
    with (
        recorder(b"HTTP/1.1 200 OK\r\n\r\n") as proxy,
        dialled(proxy.address) as sock,
        pytest.raises(BadRequest),
    ):
        http_connect_handshake(sock, "evil\r\nX-Injected: 1", 443, deadline=later())
    assert all(head == b"" for head in proxy.heads)  # the connection closed with nothing sent


# --- connect_through: dial + handshake, owning the socket -------------------------------------------


def test_through_tinyproxy_py_itself_as_an_http_upstream(make_proxy: Callable[..., ProxyServer]) -> None:
    proxy = make_proxy()
    upstream = Upstream("http", *proxy.address)
    with scripted_server(greet_then_echo) as origin:
        sock, pending = connect_through(upstream, "127.0.0.1", origin.port, timeout=MUST_NOT_EXPIRE)
        with sock:
            sock.settimeout(MUST_NOT_EXPIRE)
            greeting = pending
            while len(greeting) < len(b"220 ready\r\n"):
                greeting += sock.recv(100)
            assert greeting == b"220 ready\r\n"
            assert round_trip(sock) == b"ping"


def test_through_tinyproxy_py_with_credentials(make_proxy: Callable[..., ProxyServer]) -> None:
    proxy = make_proxy(basic_auth=("alice:s3cret",))
    with scripted_server(echo) as origin:
        good = Upstream("http", *proxy.address, "alice", "s3cret")
        sock, _ = connect_through(good, "127.0.0.1", origin.port, timeout=MUST_NOT_EXPIRE)
        with sock:
            assert round_trip(sock) == b"ping"
        bad = Upstream("http", *proxy.address, "alice", "wrong")
        error = expect(
            UpstreamError,
            "upstream-auth",
            lambda: connect_through(bad, "127.0.0.1", origin.port, timeout=MUST_NOT_EXPIRE),
        )
    assert error.message.startswith(f"upstream http://alice:***@127.0.0.1:{proxy.address[1]} ")


def test_through_socks5_with_credentials() -> None:
    with scripted_server(echo) as origin, socks_server(users={"alice": "s3cret"}) as socks:
        upstream = Upstream("socks5", *socks.address, "alice", "s3cret")
        sock, pending = connect_through(upstream, "127.0.0.1", origin.port, timeout=MUST_NOT_EXPIRE)
        with sock:
            assert pending == b""
            assert round_trip(sock) == b"ping"


def test_upstream_that_refuses_connections_is_named_without_its_password() -> None:
    upstream = Upstream("socks5", "127.0.0.1", closed_port(), "alice", "s3cret")
    error = expect(
        UpstreamError,
        "upstream-connect",
        lambda: connect_through(upstream, "127.0.0.1", 9, timeout=MUST_NOT_EXPIRE),
    )
    assert error.message == f"cannot connect to upstream socks5://alice:***@127.0.0.1:{upstream.port}"


def test_failed_handshake_closes_the_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[socket.socket] = []
    real = socket.create_connection

    def spy(*args: object, **kwargs: object) -> socket.socket:
        sock = real(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(sock)
        return sock

    monkeypatch.setattr(socket, "create_connection", spy)
    with socks_server(users={"alice": "s3cret"}) as socks:
        upstream = Upstream("socks5", *socks.address, "alice", "wrong")
        expect(
            UpstreamError,
            "upstream-auth",
            lambda: connect_through(upstream, "127.0.0.1", 9, timeout=MUST_NOT_EXPIRE),
        )
    assert [sock.fileno() for sock in opened] == [-1]


def test_upstream_that_never_accepts_times_out_while_dialling() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    address = listener.getsockname()[:2]
    with closing(listener), dialled(address):  # fills the one-slot accept queue: SYNs are dropped
        upstream = Upstream("http", *address)
        started = time.monotonic()
        error = expect(
            UpstreamTimeout,
            "upstream-timeout",
            lambda: connect_through(upstream, "o", 443, timeout=EXPIRE_SOON),
        )
        assert time.monotonic() - started < EXPIRE_SOON + 2
    assert error.message == f"connecting to upstream {upstream} timed out"


def test_one_deadline_covers_dial_and_handshake() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) but never answers
    with closing(listener):
        upstream = Upstream("http", *listener.getsockname()[:2])
        started = time.monotonic()
        expect(
            UpstreamTimeout,
            "upstream-timeout",
            lambda: connect_through(upstream, "origin.example", 443, timeout=EXPIRE_SOON),
        )
        assert time.monotonic() - started < EXPIRE_SOON + 2


def test_handshakes_are_thread_safe_per_socket() -> None:
    """Several handshakes at once through one SOCKS server: each gets its own tunnel."""
    with scripted_server(echo) as origin, socks_server() as socks:
        results: list[bytes] = []

        def one(index: int) -> None:
            with dialled(socks.address) as sock:
                socks5_handshake(sock, "127.0.0.1", origin.port, deadline=later())
                results.append(round_trip(sock, f"ping {index}".encode()))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(MUST_NOT_EXPIRE)
    assert sorted(results) == sorted(f"ping {i}".encode() for i in range(8))


def test_basic_credentials_reach_the_upstream_as_sent() -> None:
    upstream = Upstream("http", "127.0.0.1", 1, "alice", "pä:ss")
    with recorder(b"HTTP/1.1 200 OK\r\n\r\n") as proxy, dialled(proxy.address) as sock:
        http_connect_handshake(sock, "o", 443, upstream.proxy_authorization(), deadline=later())
    line = next(line for line in proxy.heads[0].split(b"\r\n") if line.startswith(b"Proxy-Authorization"))
    assert base64.b64decode(line.split(b" ")[-1]) == "alice:pä:ss".encode()
