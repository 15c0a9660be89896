"""Parent-proxy handshakes on real loopback sockets: SOCKS5 against a real server, the
driver's deadlines and limits against scripted parents, and connect_through against
tinyproxy-py itself. What each handshake makes of the bytes is in tests/unit/test_chain.py."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager

import pytest

from tinyproxy_py import ProxyServer
from tinyproxy_py.errors import BadGateway, Cause, GatewayTimeout, ProxyError
from tinyproxy_py.net.chain import (
    MAX_ANSWER_BYTES,
    ConnectHandshake,
    Socks5Handshake,
    connect_through,
    run,
)
from tinyproxy_py.settings.routes import Parent

from ..kit.faults import echo
from ..kit.procfs import open_fds
from ..kit.servers import ScriptedServer, free_port, scripted_server
from ..kit.waits import EXPIRE_SOON, MUST_NOT_EXPIRE, wait_until
from ..socks_server import socks_server

pytestmark = pytest.mark.usefixtures("no_leaks")


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


def socks5(
    sock: socket.socket,
    host: str,
    port: int,
    user: str | None = None,
    password: str | None = None,
    *,
    deadline: float,
) -> bytes:
    """The SOCKS5 handshake on `sock`, as connect_through runs it; the target's first bytes."""
    return run(sock, Socks5Handshake(f"parent proxy {peer(sock)}", host, port, user, password), deadline)


def http_connect(
    sock: socket.socket, host: str, port: int, credentials: str | None = None, *, deadline: float
) -> bytes:
    return run(sock, ConnectHandshake(f"parent proxy {peer(sock)}", host, port, credentials), deadline)


def peer(sock: socket.socket) -> str:
    host, port = sock.getpeername()[:2]
    return f"{host}:{port}"


def expect(error: type[ProxyError], cause: Cause, action: Callable[[], object]) -> ProxyError:
    with pytest.raises(error) as caught:
        action()
    assert caught.value.cause == cause, caught.value.message
    return caught.value


# --- SOCKS5 against a real server -----------------------------------------------------------


def test_ipv4_literal_goes_as_atyp_1_and_the_tunnel_carries_bytes() -> None:
    with scripted_server(echo) as origin, socks_server() as socks, dialled(socks.address) as sock:
        assert socks5(sock, "127.0.0.1", origin.port, deadline=later()) == b""
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
            socks5(sock, host, origin.port, deadline=later())
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
        socks5(sock, name, origin.port, deadline=later())
        assert round_trip(sock) == b"ping"
    assert looked_up == []
    assert (socks.requests[0].atyp, socks.requests[0].host) == (3, name)


def test_username_and_password_are_offered_and_accepted() -> None:
    with (
        scripted_server(echo) as origin,
        socks_server(users={"alice": "s3cret"}) as socks,
        dialled(socks.address) as sock,
    ):
        socks5(sock, "127.0.0.1", origin.port, "alice", "s3cret", deadline=later())
        assert round_trip(sock) == b"ping"
    assert (socks.requests[0].methods, socks.requests[0].username) == (b"\x00\x02", "alice")


def test_wrong_password_is_refused_before_any_connect() -> None:
    with socks_server(users={"alice": "s3cret"}) as socks, dialled(socks.address) as sock:
        error = expect(
            BadGateway,
            Cause.PARENT_AUTH,
            lambda: socks5(sock, "127.0.0.1", 9, "alice", "wrong", deadline=later()),
        )
    assert f"parent proxy 127.0.0.1:{socks.port}" in error.message
    assert "wrong" not in error.message
    assert socks.requests[0].port == 0  # it never got as far as a CONNECT


def test_refused_target_is_reply_5() -> None:
    port = free_port()
    with socks_server() as socks, dialled(socks.address) as sock:
        error = expect(
            BadGateway, Cause.PARENT_REFUSED, lambda: socks5(sock, "127.0.0.1", port, deadline=later())
        )
    assert socks.requests[0].reply == 5
    assert f"could not connect to 127.0.0.1:{port}" in error.message


def test_unknown_name_is_reply_4() -> None:
    with socks_server() as socks, dialled(socks.address) as sock:
        expect(
            BadGateway,
            Cause.PARENT_UNREACHABLE,
            lambda: socks5(sock, "nowhere.invalid", 80, deadline=later()),
        )
    assert socks.requests[0].reply == 4


def test_handshakes_are_thread_safe_per_socket() -> None:
    """Several handshakes at once through one SOCKS server: each gets its own tunnel."""
    with scripted_server(echo) as origin, socks_server() as socks:
        results: list[bytes] = []

        def one(index: int) -> None:
            with dialled(socks.address) as sock:
                socks5(sock, "127.0.0.1", origin.port, deadline=later())
                results.append(round_trip(sock, f"ping {index}".encode()))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(MUST_NOT_EXPIRE)
    assert sorted(results) == sorted(f"ping {i}".encode() for i in range(8))


# --- the driver: what the target says first, the socket, deadlines, limits --------------------


def greeting_after(sock: socket.socket, rest: bytes) -> bytes:
    """The target's greeting: what the handshake returned, then what is still in the socket."""
    sock.settimeout(MUST_NOT_EXPIRE)
    while len(rest) < len(b"220 ready\r\n") and (more := sock.recv(100)):
        rest += more
    return rest


def test_what_the_target_says_first_is_returned_or_left_in_the_socket() -> None:
    with scripted_server(greet_then_echo) as origin, socks_server() as socks, dialled(socks.address) as sock:
        assert (
            greeting_after(sock, socks5(sock, "127.0.0.1", origin.port, deadline=later())) == b"220 ready\r\n"
        )


def test_bytes_that_come_with_the_200_are_the_targets() -> None:
    answer = b"HTTP/1.1 200 Connection established\r\n\r\n220 ready\r\n"
    with scripted_server(answering(answer)) as parent, dialled(("127.0.0.1", parent.port)) as sock:
        assert (
            greeting_after(sock, http_connect(sock, "origin.example", 443, deadline=later()))
            == b"220 ready\r\n"
        )


def test_the_socket_timeout_is_restored() -> None:
    with scripted_server(echo) as origin, socks_server() as socks, dialled(socks.address) as sock:
        sock.settimeout(7.0)
        socks5(sock, "127.0.0.1", origin.port, deadline=later())
        assert sock.gettimeout() == 7.0


def answering(answer: bytes) -> Callable[[socket.socket], None]:
    """A scripted parent: reads what is sent, answers `answer`, then waits to be released."""

    def script(sock: socket.socket) -> None:
        sock.recv(65536)
        sock.sendall(answer)
        time.sleep(0.2)  # let the answer go before the close

    return script


@pytest.mark.parametrize("kind", ["socks5", "connect"])
def test_a_parent_that_never_answers_times_out_at_the_deadline(kind: str) -> None:
    def silent(sock: socket.socket) -> None:
        server.release.wait(MUST_NOT_EXPIRE)

    handshake = socks5 if kind == "socks5" else http_connect
    with scripted_server(silent) as server, dialled(("127.0.0.1", server.port)) as sock:
        started = time.monotonic()
        error = expect(
            GatewayTimeout, Cause.PARENT_TIMEOUT, lambda: handshake(sock, "127.0.0.1", 9, deadline=soon())
        )
        assert EXPIRE_SOON - 0.05 <= time.monotonic() - started < EXPIRE_SOON + 2
    assert error.status == 504
    assert f"127.0.0.1:{server.port}" in error.message


def test_a_deadline_already_past_is_a_timeout() -> None:
    with scripted_server(echo) as server, dialled(("127.0.0.1", server.port)) as sock:
        expect(
            GatewayTimeout,
            Cause.PARENT_TIMEOUT,
            lambda: socks5(sock, "127.0.0.1", 9, deadline=time.monotonic() - 1),
        )


def test_a_head_that_trickles_in_is_still_bound_by_the_deadline() -> None:
    def trickle(sock: socket.socket) -> None:
        sock.recv(65536)
        for index in range(100):
            sock.sendall(b"HTTP/1.1 200 OK\r\n" if index == 0 else b"X: y\r\n")
            if server.release.wait(0.1):
                return

    with scripted_server(trickle) as server, dialled(("127.0.0.1", server.port)) as sock:
        started = time.monotonic()
        expect(GatewayTimeout, Cause.PARENT_TIMEOUT, lambda: http_connect(sock, "o", 443, deadline=soon()))
        assert time.monotonic() - started < EXPIRE_SOON + 2


@pytest.mark.parametrize(
    ("kind", "answer", "fragment"),
    [
        ("connect", b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * MAX_ANSWER_BYTES, "an answer over"),
        ("connect", b"HTTP/1.1 200 OK\r\n", "closed the connection during the handshake"),
        ("socks5", b"\x05", "closed the connection during the handshake"),
        ("socks5", b"", "closed the connection during the handshake"),
    ],
)
def test_an_oversized_or_unfinished_answer_is_a_protocol_error(
    kind: str, answer: bytes, fragment: str
) -> None:
    handshake = socks5 if kind == "socks5" else http_connect
    with scripted_server(answering(answer)) as parent, dialled(("127.0.0.1", parent.port)) as sock:
        error = expect(
            BadGateway,
            Cause.PARENT_PROTOCOL,
            lambda: handshake(sock, "origin.example", 443, deadline=later()),
        )
    assert fragment in error.message


# --- connect_through: dial + handshake, owning the socket -------------------------------------------


def test_through_tinyproxy_py_itself_as_an_http_parent(make_proxy: Callable[..., ProxyServer]) -> None:
    proxy = make_proxy()
    parent = Parent("http", *proxy.address)
    with scripted_server(greet_then_echo) as origin:
        sock, pending = connect_through(parent, "127.0.0.1", origin.port, timeout=MUST_NOT_EXPIRE)
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
        good = Parent("http", *proxy.address, "alice", "s3cret")
        sock, _ = connect_through(good, "127.0.0.1", origin.port, timeout=MUST_NOT_EXPIRE)
        with sock:
            assert round_trip(sock) == b"ping"
        bad = Parent("http", *proxy.address, "alice", "wrong")
        error = expect(
            BadGateway,
            Cause.PARENT_AUTH,
            lambda: connect_through(bad, "127.0.0.1", origin.port, timeout=MUST_NOT_EXPIRE),
        )
    assert error.message.startswith(f"parent proxy http://alice:***@127.0.0.1:{proxy.address[1]} ")


def test_through_socks5_with_credentials() -> None:
    with scripted_server(echo) as origin, socks_server(users={"alice": "s3cret"}) as socks:
        parent = Parent("socks5", *socks.address, "alice", "s3cret")
        sock, pending = connect_through(parent, "127.0.0.1", origin.port, timeout=MUST_NOT_EXPIRE)
        with sock:
            assert pending == b""
            assert round_trip(sock) == b"ping"


def test_a_parent_that_refuses_connections_is_named_without_its_password() -> None:
    parent = Parent("socks5", "127.0.0.1", free_port(), "alice", "s3cret")
    error = expect(
        BadGateway,
        Cause.PARENT_CONNECT,
        lambda: connect_through(parent, "127.0.0.1", 9, timeout=MUST_NOT_EXPIRE),
    )
    assert error.message == f"cannot connect to parent proxy socks5://alice:***@127.0.0.1:{parent.port}"


def test_failed_handshake_closes_the_socket() -> None:
    with socks_server(users={"alice": "s3cret"}) as socks:
        parent = Parent("socks5", *socks.address, "alice", "wrong")
        before = open_fds()
        expect(
            BadGateway,
            Cause.PARENT_AUTH,
            lambda: connect_through(parent, "127.0.0.1", 9, timeout=MUST_NOT_EXPIRE),
        )
        # The socket connect_through dialled is closed (the server's end closes on its own thread).
        assert wait_until(lambda: open_fds() == before)


def test_a_parent_that_never_accepts_times_out_while_dialling() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    address = listener.getsockname()[:2]
    with closing(listener), dialled(address):  # fills the one-slot accept queue: SYNs are dropped
        parent = Parent("http", *address)
        started = time.monotonic()
        error = expect(
            GatewayTimeout,
            Cause.PARENT_TIMEOUT,
            lambda: connect_through(parent, "o", 443, timeout=EXPIRE_SOON),
        )
        assert time.monotonic() - started < EXPIRE_SOON + 2
    assert error.message == f"connecting to parent proxy {parent} timed out"


def test_one_deadline_covers_dial_and_handshake() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) but never answers
    with closing(listener):
        parent = Parent("http", *listener.getsockname()[:2])
        started = time.monotonic()
        expect(
            GatewayTimeout,
            Cause.PARENT_TIMEOUT,
            lambda: connect_through(parent, "origin.example", 443, timeout=EXPIRE_SOON),
        )
        assert time.monotonic() - started < EXPIRE_SOON + 2
