"""CONNECT tunnels over real loopback sockets: TLS, echo, half-close, resets, limits, leaks."""

from __future__ import annotations

import logging
import os
import resource
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path

import pytest

from tinyproxy_py import Config, ProxyServer
from tinyproxy_py.errors import Overloaded
from tinyproxy_py.net.stream import Stream
from tinyproxy_py.net.threads import HandlerThreads
from tinyproxy_py.observe.accesslog import AccessRecord
from tinyproxy_py.observe.stats import Stats
from tinyproxy_py.tunnel.hub import BUFFER_SIZE, TunnelHub

from ..kit.clients import MiB, abort, recv_exactly, recv_to_eof
from ..kit.clients import open_tunnel as kit_open_tunnel
from ..kit.faults import echo
from ..kit.origins import OriginServer, pattern_bytes
from ..kit.procfs import handler_threads, open_fds, thread_count
from ..kit.responses import Response, refused_connect
from ..kit.servers import ScriptedServer, free_port, scripted_server, stalled_listener
from ..kit.waits import MUST_NOT_EXPIRE, wait_until
from ..support import UNRESOLVABLE, client_env

REASONS = ("eof", "reset", "idle", "shutdown", "error")
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"  # the whole answer, nothing more


# --- helpers ---


def open_tunnel(
    proxy: ProxyServer, target: str, early: bytes = b"", rcvbuf: int = 0
) -> tuple[socket.socket, bytes]:
    """A client socket with an established tunnel, and the tunnel bytes already read."""
    return kit_open_tunnel(proxy.address, target, early, answer=ESTABLISHED, rcvbuf=rcvbuf)


@contextmanager
def background(target: Callable[[], None]) -> Iterator[list[BaseException]]:
    """Run `target` in a thread for the block; its exception (if any) is in the list."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # reported on the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield errors
    finally:
        thread.join(MUST_NOT_EXPIRE)
        assert not thread.is_alive()


def closed(proxy: ProxyServer, reason: str) -> int:
    return proxy.stats.counter(f"tunnels_closed.{reason}")


def tunnels_gone(proxy: ProxyServer) -> bool:
    return wait_until(lambda: proxy.stats.gauge("tunnels") == 0 and proxy.hub.count == 0)


# --- TLS through the tunnel ---


def test_python_ssl_https_request_through_tunnel(
    proxy: ProxyServer, tls_origin: OriginServer, ca_file: Path
) -> None:
    context = ssl.create_default_context(cafile=str(ca_file))
    sock, rest = open_tunnel(proxy, f"localhost:{tls_origin.port}")
    assert rest == b""
    with context.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(b"GET /bytes/300000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        response = Response(tls)
    assert response.status == 200
    assert response.body == pattern_bytes(300_000)
    assert tunnels_gone(proxy)


def test_client_hello_sent_with_the_connect_head_reaches_the_origin(
    proxy: ProxyServer, tls_origin: OriginServer, ca_file: Path
) -> None:
    # The ClientHello leaves in the same send as the CONNECT head, before any 200: the
    # proxy reads both at once and must hand the hello on, or the handshake never ends.
    context = ssl.create_default_context(cafile=str(ca_file))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    sock, rest = open_tunnel(proxy, f"localhost:{tls_origin.port}", early=outgoing.read())
    with closing(sock):
        incoming.write(rest)

        def pump() -> None:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            assert data, "the tunnel closed mid-handshake"
            incoming.write(data)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump()
        tls.write(b"GET /bytes/1000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        received = b""
        while not received.endswith(pattern_bytes(1000)):
            try:
                received += tls.read(65536)
            except ssl.SSLWantReadError:
                pump()
    assert received.startswith(b"HTTP/1.1 200 ")
    assert tls_origin.requests[-1][1] == "/bytes/1000"


@pytest.mark.parametrize("tunnel_flag", [["--proxytunnel"], []], ids=["proxytunnel", "x-only"])
def test_curl_https_through_the_proxy(
    proxy: ProxyServer, tls_origin: OriginServer, ca_file: Path, tunnel_flag: list[str]
) -> None:
    url = f"https://localhost:{tls_origin.port}/bytes/300000"
    result = subprocess.run(
        ["curl", "-sS", "--fail", *tunnel_flag, "-x", proxy.url, "--cacert", str(ca_file), url],
        capture_output=True,
        env=client_env(),
        timeout=MUST_NOT_EXPIRE,
        check=True,
    )
    assert result.stdout == pattern_bytes(300_000)
    assert tunnels_gone(proxy)
    assert sum(closed(proxy, reason) for reason in REASONS) == 1  # it went through one tunnel
    assert [path for _, path, _, _ in tls_origin.requests] == ["/bytes/300000"]


# --- the hand-off ---


def test_adopt_is_all_or_nothing_and_greets_before_target_bytes(no_leaks: None) -> None:
    stats = Stats()
    hub = TunnelHub(Config(port=0, max_tunnels=1), stats)
    hub.start()
    pairs = [socket.socketpair() for _ in range(4)]  # (test's end, hub's end)
    (client, client_h), (upstream, upstream_h), (spare, spare_h), (spare2, spare2_h) = pairs
    try:
        for sock in (client, upstream, spare, spare2):
            sock.settimeout(MUST_NOT_EXPIRE)
        upstream.sendall(b"from upstream")  # already waiting when the hub takes over
        hub.adopt(Stream(client_h), Stream(upstream_h), b"early", greeting=b"yes\n")
        assert recv_exactly(client, 17) == b"yes\nfrom upstream"
        assert recv_exactly(upstream, 5) == b"early"
        with pytest.raises(Overloaded):
            hub.adopt(Stream(spare_h), Stream(spare2_h), b"pending", greeting=b"yes\n")
        # Refused: the caller still owns both, untouched (open, nothing sent either way).
        assert spare_h.fileno() >= 0 and spare2_h.fileno() >= 0
        spare.setblocking(False)
        with pytest.raises(BlockingIOError):
            spare.recv(1)  # no greeting went out
        spare.settimeout(MUST_NOT_EXPIRE)
        spare_h.sendall(b"mine")
        assert recv_exactly(spare, 4) == b"mine"
        assert stats.gauge("tunnels") == hub.count == 1
    finally:
        hub.close()
        for sock in (client, upstream, spare, spare_h, spare2, spare2_h):
            sock.close()
    assert client_h.fileno() == upstream_h.fileno() == -1  # closed by the hub
    assert stats.gauge("tunnels") == hub.count == 0
    assert stats.counter("tunnels_closed.shutdown") == 1
    with pytest.raises(Overloaded):
        hub.adopt(Stream(spare_h), Stream(spare2_h), b"")  # a stopped hub takes nothing


# --- targets and dialling ---


def test_bytes_sent_with_the_connect_head_come_first(proxy: ProxyServer) -> None:
    with scripted_server(echo) as server:
        sock, rest = open_tunnel(proxy, f"127.0.0.1:{server.port}", early=b"early bytes|")
        with sock:
            sock.sendall(b"later")
            assert recv_exactly(sock, 17, rest) == b"early bytes|later"


def test_ipv6_literal_target(proxy: ProxyServer) -> None:
    try:
        server = ScriptedServer(echo, family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        sock, rest = open_tunnel(proxy, f"[::1]:{server.port}", early=b"v6")
        with sock:
            assert recv_exactly(sock, 2, rest) == b"v6"
    finally:
        server.close()


@pytest.mark.parametrize(
    "target",
    ["127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "[::1:443", "[::1]x:443", "/path", ":443"],
)
def test_bad_connect_target_is_400(proxy: ProxyServer, target: str) -> None:
    response = refused_connect(proxy.address, target)
    assert response.status == 400, response.body
    assert proxy.stats.counter("responses.2xx") == 0


def test_refused_target_is_502(proxy: ProxyServer) -> None:
    response = refused_connect(proxy.address, f"127.0.0.1:{free_port()}")
    assert response.status == 502
    assert response.header("X-Tinyproxy-Py-Cause") == "refused"


def test_unresolvable_target_is_502(proxy: ProxyServer) -> None:
    response = refused_connect(proxy.address, f"{UNRESOLVABLE}:443")
    assert response.status == 502
    assert response.header("X-Tinyproxy-Py-Cause") == "dns"


def test_connect_timeout_is_504(make_proxy: Callable[..., ProxyServer]) -> None:
    proxy = make_proxy(connect_timeout=0.3)
    with ExitStack() as stack:
        port = stalled_listener(stack)  # a full accept queue drops further SYNs: connect() hangs
        started = time.monotonic()
        response = refused_connect(proxy.address, f"127.0.0.1:{port}")
    assert response.status == 504
    assert response.header("X-Tinyproxy-Py-Cause") == "connect-timeout"
    assert time.monotonic() - started < 0.3 + MUST_NOT_EXPIRE / 4


# --- moving bytes ---


def test_16_mib_each_way_at_once_byte_exact(proxy: ProxyServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tinyproxy_py.tunnel.hub")  # the close line is debug
    payload = os.urandom(16 * MiB)
    with scripted_server(echo) as server:
        sock, rest = open_tunnel(proxy, f"127.0.0.1:{server.port}")
        with sock:

            def send() -> None:
                view = memoryview(payload)
                for start in range(0, len(payload), 256 * 1024):
                    sock.sendall(view[start : start + 256 * 1024])
                sock.shutdown(socket.SHUT_WR)  # the echo ends on EOF: a half-close

            with background(send) as errors:
                received = rest + recv_to_eof(sock)
            assert not errors
    assert len(received) == len(payload)
    assert received == payload
    assert tunnels_gone(proxy)

    def close_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "tinyproxy_py.tunnel.hub"]

    # The hub counts the tunnel gone, then counts the reason, then logs: wait for the line.
    assert wait_until(lambda: len(close_lines()) == 1), close_lines()
    assert closed(proxy, "eof") == 1
    records = close_lines()
    assert f"-> 127.0.0.1:{server.port} closed: eof;" in records[0]
    assert f"up {16 * MiB} B, down {16 * MiB} B" in records[0]
    assert records[0].startswith("tunnel 127.0.0.1:")


def test_open_and_recently_closed_tunnels_are_listed(proxy: ProxyServer) -> None:
    with scripted_server(echo) as server:
        target = f"127.0.0.1:{server.port}"
        sock, rest = open_tunnel(proxy, target, early=b"abc")
        with sock:
            assert recv_exactly(sock, 3, rest) == b"abc"
            [listed] = proxy.hub.open_tunnels()
            assert listed["target"] == target and listed["client"] == f"127.0.0.1:{sock.getsockname()[1]}"
            assert (listed["bytes_up"], listed["bytes_down"]) == (3, 3)
            assert listed["age"] >= listed["idle"] >= 0
            sock.shutdown(socket.SHUT_WR)
            assert recv_to_eof(sock) == b""
    assert tunnels_gone(proxy)
    assert proxy.hub.open_tunnels() == []
    [record] = proxy.hub.closed_tunnels()
    assert (record["target"], record["reason"], record["bytes_up"], record["bytes_down"]) == (
        target,
        "eof",
        3,
        3,
    )


def test_half_close_answer_after_client_eof_is_delivered(proxy: ProxyServer) -> None:
    answer = os.urandom(3 * MiB)

    def answer_after_eof(sock: socket.socket) -> None:
        sock.settimeout(MUST_NOT_EXPIRE)
        request = recv_to_eof(sock)  # the client's shutdown(SHUT_WR) must arrive as EOF
        assert request == b"request"
        sock.sendall(answer)

    with scripted_server(answer_after_eof) as server:
        sock, rest = open_tunnel(proxy, f"127.0.0.1:{server.port}")
        with sock:
            sock.sendall(b"request")
            sock.shutdown(socket.SHUT_WR)
            assert rest + recv_to_eof(sock) == answer
    assert tunnels_gone(proxy)
    assert closed(proxy, "eof") == 1


def test_slow_reader_keeps_the_hub_within_its_buffer_bound(proxy: ProxyServer) -> None:
    total, chunk = 128 * MiB, MiB
    block = os.urandom(chunk)
    progress = [0]

    def piece(i: int) -> bytes:
        return i.to_bytes(8, "big") + block[8:]

    def source(sock: socket.socket) -> None:
        sock.settimeout(MUST_NOT_EXPIRE)
        for i in range(total // chunk):
            sock.sendall(piece(i))
            progress[0] += chunk

    def stalled() -> bool:
        before = progress[0]
        time.sleep(0.3)
        return progress[0] == before

    with scripted_server(source) as server:
        sock, rest = open_tunnel(proxy, f"127.0.0.1:{server.port}", rcvbuf=64 * 1024)
        with sock:
            # The client reads nothing: the source must be held back, not the hub filled up.
            assert wait_until(stalled, MUST_NOT_EXPIRE)
            samples = []
            for _ in range(20):
                samples.append(proxy.hub.buffered)
                time.sleep(0.01)
            assert progress[0] < total
            assert min(samples) > 0 and max(samples) <= BUFFER_SIZE, samples
            received = rest + recv_to_eof(sock)
    assert len(received) == total
    assert all(received[i * chunk : (i + 1) * chunk] == piece(i) for i in range(total // chunk))
    assert tunnels_gone(proxy)
    assert proxy.hub.buffered == 0


# --- how tunnels end ---


def test_server_closes_first(proxy: ProxyServer) -> None:
    with scripted_server(lambda sock: sock.sendall(b"bye")) as server:
        sock, rest = open_tunnel(proxy, f"127.0.0.1:{server.port}")
        with sock:
            assert rest + recv_to_eof(sock) == b"bye"
            # Only the server's direction has ended: the client may still be sending.
            time.sleep(0.2)
            assert proxy.stats.gauge("tunnels") == 1
    assert tunnels_gone(proxy)
    assert closed(proxy, "eof") == 1


def test_target_reset_resets_the_client(proxy: ProxyServer) -> None:
    def reset_after_ack(sock: socket.socket) -> None:
        sock.settimeout(MUST_NOT_EXPIRE)
        sock.sendall(b"partial")
        assert sock.recv(3) == b"ack"
        abort(sock)

    with scripted_server(reset_after_ack) as server:
        sock, rest = open_tunnel(proxy, f"127.0.0.1:{server.port}")
        with sock:
            assert recv_exactly(sock, 7, rest) == b"partial"
            sock.sendall(b"ack")
            with pytest.raises(ConnectionResetError):
                recv_to_eof(sock)
    assert tunnels_gone(proxy)
    assert closed(proxy, "reset") == 1


def test_client_abort_mid_transfer_stops_the_source(proxy: ProxyServer) -> None:
    ended = threading.Event()
    outcome: list[BaseException] = []
    block = os.urandom(MiB)

    def endless(sock: socket.socket) -> None:
        sock.settimeout(MUST_NOT_EXPIRE)
        try:
            for _ in range(4096):  # 4 GiB: far more than this test will read
                sock.sendall(block)
        except OSError as exc:
            outcome.append(exc)
        finally:
            ended.set()

    with scripted_server(endless) as server:
        sock, rest = open_tunnel(proxy, f"127.0.0.1:{server.port}")
        with sock:
            assert len(recv_exactly(sock, MiB, rest)) == MiB
            abort(sock)
        assert ended.wait(MUST_NOT_EXPIRE)
    assert outcome and isinstance(outcome[0], (ConnectionResetError, BrokenPipeError)), outcome
    assert tunnels_gone(proxy)
    assert closed(proxy, "reset") == 1


def test_idle_tunnel_is_closed_after_the_idle_timeout(make_proxy: Callable[..., ProxyServer]) -> None:
    idle = 0.6
    proxy = make_proxy(tunnel_idle_timeout=idle)
    upstream_eof = threading.Event()

    def echo_then_note_eof(sock: socket.socket) -> None:
        echo(sock)
        upstream_eof.set()

    with scripted_server(echo_then_note_eof) as server:
        sock, rest = open_tunnel(proxy, f"127.0.0.1:{server.port}")
        assert rest == b""
        with sock:
            # A byte every 0.25 s for twice the idle timeout: activity keeps it open.
            for _ in range(5):
                time.sleep(0.25)
                sock.sendall(b"x")
                assert sock.recv(1) == b"x"
            quiet = time.monotonic()
            assert sock.recv(1) == b""
            waited = time.monotonic() - quiet
        assert upstream_eof.wait(MUST_NOT_EXPIRE)
    assert idle * 0.9 <= waited < idle + 2.0
    assert tunnels_gone(proxy)
    assert closed(proxy, "idle") == 1
    assert closed(proxy, "eof") == closed(proxy, "reset") == 0


@pytest.mark.parametrize("first", ["client", "server"])
def test_half_closed_tunnel_closes_after_the_linger(
    make_proxy: Callable[..., ProxyServer], first: str
) -> None:
    linger = 0.5
    proxy = make_proxy(tunnel_linger=linger, tunnel_idle_timeout=30.0)
    hold = threading.Event()

    def script(sock: socket.socket) -> None:
        sock.settimeout(MUST_NOT_EXPIRE)
        if first == "server":
            sock.shutdown(socket.SHUT_WR)  # then waits for the proxy to close
        assert recv_to_eof(sock) == b""
        hold.wait(MUST_NOT_EXPIRE)  # a server that never answers nor closes

    with scripted_server(script) as server:
        sock, _ = open_tunnel(proxy, f"127.0.0.1:{server.port}")
        try:
            assert proxy.hub.count == 1  # the 200 is the hub's greeting: adopted before it is sent
            if first == "client":
                sock.shutdown(socket.SHUT_WR)
            else:
                assert sock.recv(1) == b""  # the server's EOF, passed on; the client stays silent
            started = time.monotonic()
            assert tunnels_gone(proxy)
            waited = time.monotonic() - started
            assert sock.recv(1) == b""
        finally:
            hold.set()
            sock.close()
    assert linger * 0.8 <= waited < 5.0
    assert closed(proxy, "idle") == 1


def test_max_tunnels_answers_503_beyond_the_limit(make_proxy: Callable[..., ProxyServer]) -> None:
    proxy = make_proxy(max_tunnels=2)
    with scripted_server(echo) as server:
        target = f"127.0.0.1:{server.port}"
        first, _ = open_tunnel(proxy, target)
        second, _ = open_tunnel(proxy, target)
        with first, second:
            assert proxy.hub.count == 2  # the 200 is the hub's greeting: adopted before it is sent
            response = refused_connect(proxy.address, target)
            assert response.status == 503
            assert response.header("X-Tinyproxy-Py-Cause") == "overloaded"
            assert proxy.hub.count == 2
        assert tunnels_gone(proxy)
        third, rest = open_tunnel(proxy, target, early=b"again")  # room again once closed
        with third:
            assert recv_exactly(third, 5, rest) == b"again"
    assert server.connections == 3  # the refused one never dialled


def test_a_tunnel_refused_at_adoption_is_answered_once(make_proxy: Callable[..., ProxyServer]) -> None:
    """The hub filled up while this CONNECT was dialling: one 503, then the close."""
    looked_up = threading.Event()

    def slow_resolver(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
        looked_up.wait(MUST_NOT_EXPIRE)
        return [(socket.AF_INET, ("127.0.0.1", port))]

    proxy = make_proxy(max_tunnels=1, resolver=slow_resolver)
    with scripted_server(echo) as server:
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as late:
            late.sendall(f"CONNECT slow.test:{server.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert wait_until(lambda: proxy.stats.gauge("lookups") == 1)  # past the "hub full" check
            first, _ = open_tunnel(proxy, f"127.0.0.1:{server.port}")
            with first:
                looked_up.set()
                answer = recv_to_eof(late)
        assert answer.count(b"HTTP/1.1 ") == 1 and answer.startswith(b"HTTP/1.1 503 "), answer
    assert tunnels_gone(proxy)


def test_an_error_after_the_hand_off_leaves_the_tunnel_to_the_hub(no_leaks: None) -> None:
    """An embedder's on_access that raises (here, on the tunnel's opening record) is the
    handler's failure, not the tunnel's: the hub's socket is not closed under it."""

    def on_access(record: AccessRecord) -> None:
        if record.ongoing:
            raise RuntimeError("a broken on_access")

    proxy = ProxyServer(Config(port=0, connect_ports=(0,)), on_access=on_access)
    proxy.start()
    try:
        with scripted_server(echo) as server:
            sock, _ = open_tunnel(proxy, f"127.0.0.1:{server.port}")
            with sock:
                assert wait_until(lambda: proxy.stats.gauge("handler_threads") == 0)  # the error is past
                sock.sendall(b"still here")
                assert recv_exactly(sock, 10, b"") == b"still here"
            assert tunnels_gone(proxy)
    finally:
        proxy.stop()


def test_stopping_the_proxy_closes_every_tunnel(make_proxy: Callable[..., ProxyServer]) -> None:
    proxy = make_proxy()
    upstream_eofs = []

    def echo_then_note_eof(sock: socket.socket) -> None:
        echo(sock)
        upstream_eofs.append(True)

    with scripted_server(echo_then_note_eof) as server:
        tunnels = [open_tunnel(proxy, f"127.0.0.1:{server.port}", early=b"hi") for _ in range(3)]
        socks = [sock for sock, _ in tunnels]
        try:
            for sock, rest in tunnels:  # the echo may come in the same read as the 200
                assert recv_exactly(sock, 2, rest) == b"hi"
            proxy.stop()
            for sock in socks:
                assert recv_to_eof(sock) == b""
            assert wait_until(lambda: len(upstream_eofs) == 3)
        finally:
            for sock in socks:
                sock.close()
    assert proxy.stats.gauge("tunnels") == 0
    assert closed(proxy, "shutdown") == 3


def test_one_tunnel_after_another_reuses_descriptors_cleanly(proxy: ProxyServer) -> None:
    # Each tunnel's sockets get the descriptor numbers the last one freed: a selector
    # entry left behind by a close would refuse them.
    with scripted_server(echo) as server:
        for i in range(20):
            sock, rest = open_tunnel(proxy, f"127.0.0.1:{server.port}", early=b"%02d" % i)
            with sock:
                assert recv_exactly(sock, 2, rest) == b"%02d" % i
                sock.shutdown(socket.SHUT_WR)
                assert recv_to_eof(sock) == b""
            assert tunnels_gone(proxy)
    assert closed(proxy, "eof") == 20
    assert closed(proxy, "error") == 0


# --- no leaks at scale ---


@contextmanager
def fd_soft_limit(needed: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_1000_tunnels_leave_no_fd_thread_or_gauge_behind(
    proxy: ProxyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    count, workers = 1000, 8
    # Handler threads are reused, and an idle one ends after idle_timeout: the baseline
    # is taken with none alive, and every one must have ended at the end.
    monkeypatch.setattr(HandlerThreads, "idle_timeout", 0.5)
    with fd_soft_limit(4 * count + open_fds() + 256), scripted_server(echo) as server:
        target = f"127.0.0.1:{server.port}"
        warm, _ = open_tunnel(proxy, target)
        warm.close()
        assert tunnels_gone(proxy)
        assert wait_until(lambda: handler_threads() == 0)
        fds, threads = open_fds(), thread_count()
        socks: list[socket.socket] = []
        lock = threading.Lock()

        def opener() -> None:
            for _ in range(count // workers):
                sock, rest = open_tunnel(proxy, target, early=b"ping")
                with lock:
                    socks.append(sock)
                assert recv_exactly(sock, 4, rest) == b"ping"

        try:
            with ExitStack() as stack:
                results = [stack.enter_context(background(opener)) for _ in range(workers)]
            assert not any(results), results
            assert len(socks) == count
            assert proxy.hub.count == proxy.stats.gauge("tunnels") == count
        finally:
            for i, sock in enumerate(socks):
                if i % 3 == 1:
                    abort(sock)
                elif i % 3 == 2:
                    sock.shutdown(socket.SHUT_WR)
                    assert recv_to_eof(sock) == b""
                sock.close()
        assert tunnels_gone(proxy)
        assert closed(proxy, "reset") == count // 3
        assert closed(proxy, "eof") == count - count // 3 + 1  # and the warm-up tunnel
        assert wait_until(lambda: open_fds() <= fds), f"fds {open_fds()} > baseline {fds}"
        assert wait_until(lambda: thread_count() <= threads), f"threads {thread_count()} > {threads}"
        assert handler_threads() == 0
        assert proxy.hub.buffered == 0
