"""The TLS listener: clients that speak TLS to the proxy (an https:// proxy URL).

Real clients (curl, urllib3's ProxyManager) over real TLS (trustme), a clear listener
beside it, everything a clear listener serves (CONNECT with TLS inside TLS, upgrades,
auth, stats pages, PROXY headers before the handshake), and hostile handshakes, each cut
by the header deadline with the proxy's fds and threads back at their baseline.
"""

from __future__ import annotations

import gc
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trustme
import urllib3

from tinyproxy_py import AccessRecord, ProxyServer

from ..kit.browser import CHROMIUM, SKIP_REASON, chromium
from ..kit.clients import recv_head
from ..kit.origins import OriginServer
from ..kit.responses import Response, request_over
from ..kit.servers import scripted_server
from ..kit.waits import EXPIRE_SOON, MUST_NOT_EXPIRE, wait_until
from ..support import client_env

CURL = shutil.which("curl")
DEADLINE = 2.0  # the header deadline of SHORT_LIMITS, which a handshake gets too


@pytest.fixture(scope="module")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The proxy's certificate chain and key, issued by the session's CA."""
    folder = tmp_path_factory.mktemp("proxy-cert")
    issued = ca.issue_cert("127.0.0.1", "::1", "localhost")
    cert, key = folder / "cert.pem", folder / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


@pytest.fixture
def make_tls_proxy(
    make_proxy: Callable[..., ProxyServer], tls_files: tuple[str, str]
) -> Callable[..., ProxyServer]:
    """A proxy with a clear listener and a TLS one beside it (both on free ports)."""

    def make(**overrides: object) -> ProxyServer:
        return make_proxy(**{"tls_cert": tls_files[0], "tls_key": tls_files[1], "tls_port": 0, **overrides})

    return make


@pytest.fixture
def tls_proxy(make_tls_proxy: Callable[..., ProxyServer]) -> ProxyServer:
    return make_tls_proxy()


def tls_address(proxy: ProxyServer) -> tuple[str, int]:
    parts = urlsplit(proxy.tls_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def tls_client(proxy: ProxyServer, ca: trustme.CA) -> ssl.SSLSocket:
    """A TLS connection to the proxy's TLS listener, handshake done. An EOF without the
    proxy's close_notify is an error (SSLEOFError); with it, recv() returns b""."""
    sock = socket.create_connection(tls_address(proxy), timeout=MUST_NOT_EXPIRE)
    try:
        context = client_context(ca)
        return context.wrap_socket(sock, server_hostname="127.0.0.1", suppress_ragged_eofs=False)
    except BaseException:
        sock.close()
        raise


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--fail", *args], capture_output=True, env=client_env(), timeout=MUST_NOT_EXPIRE
    )


# --- real clients ---


@pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install curl)")
def test_curl_fetches_http_and_https_urls_through_the_tls_listener(
    tls_proxy: ProxyServer, origin: OriginServer, tls_origin: OriginServer, ca_file: Path
) -> None:
    records: list[AccessRecord] = []
    tls_proxy.on_access = records.append
    proxy = ["--proxy", tls_proxy.tls_url, "--proxy-cacert", str(ca_file)]
    plain = curl(*proxy, origin.url("/bytes/1000"))
    assert plain.returncode == 0, plain.stderr
    assert len(plain.stdout) == 1000
    tunnelled = curl(*proxy, "--cacert", str(ca_file), tls_origin.url("/bytes/2000"))
    assert tunnelled.returncode == 0, tunnelled.stderr
    assert len(tunnelled.stdout) == 2000
    # A CONNECT's record comes when the tunnel opens and again, completed, when it closes.
    assert wait_until(lambda: [r.method for r in records if not r.ongoing][-2:] == ["CONNECT", "CONNECT"])
    assert records[0].method == "GET"
    assert tls_proxy.stats.snapshot()["counters"]["tls_handshakes.ok"] == 2


@pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install curl)")
def test_curl_refuses_a_proxy_certificate_it_does_not_trust(
    tls_proxy: ProxyServer, origin: OriginServer
) -> None:
    """The proxy's certificate is checked: without the CA, curl stops before a request."""
    refused = curl("--proxy", tls_proxy.tls_url, origin.url("/bytes/10"))
    assert refused.returncode != 0
    assert wait_until(lambda: tls_proxy.stats.snapshot()["counters"].get("tls_handshakes.refused") == 1)


def test_urllib3_proxy_manager_speaks_tls_to_the_proxy(
    tls_proxy: ProxyServer, origin: OriginServer, tls_origin: OriginServer, ca: trustme.CA
) -> None:
    """urllib3 2.x: absolute-form requests over TLS, and CONNECT with TLS inside TLS."""
    context = client_context(ca)
    with urllib3.ProxyManager(
        tls_proxy.tls_url, proxy_ssl_context=context, ssl_context=context, retries=False
    ) as manager:
        plain = manager.request("GET", origin.url("/bytes/5000"), timeout=MUST_NOT_EXPIRE)
        assert (plain.status, len(plain.data)) == (200, 5000)
        tunnelled = manager.request("GET", tls_origin.url("/bytes/70000"), timeout=MUST_NOT_EXPIRE)
        assert (tunnelled.status, len(tunnelled.data)) == (200, 70000)
        again = manager.request("GET", tls_origin.url("/bytes/10"), timeout=MUST_NOT_EXPIRE)
        assert again.status == 200  # the tunnel's TLS-in-TLS connection, reused


def test_the_clear_listener_serves_beside_the_tls_one(tls_proxy: ProxyServer, origin: OriginServer) -> None:
    clear, tls = tls_proxy.urls
    assert clear.startswith("http://") and tls.startswith("https://") and tls_proxy.url == clear
    with socket.create_connection(tls_proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        assert (
            request_over(sock, f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()).status
            == 200
        )
    # A clear request to the TLS port is no handshake: refused, counted, closed.
    with socket.create_connection(tls_address(tls_proxy), timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert recv_all_quietly(sock) == b""  # not a byte of HTTP in clear text


def test_tls_alone_on_the_port(
    make_proxy: Callable[..., ProxyServer], tls_files: tuple[str, str], ca: trustme.CA, origin: OriginServer
) -> None:
    """Without --tls-port, --port itself speaks TLS."""
    proxy = make_proxy(tls_cert=tls_files[0], tls_key=tls_files[1])
    assert proxy.urls == (proxy.tls_url,) and proxy.url.startswith("https://")
    with tls_client(proxy, ca) as sock:
        answer = request_over(sock, f"GET {origin.url('/bytes/4')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert (answer.status, answer.body) == (200, origin_bytes(4))


def origin_bytes(n: int) -> bytes:
    from ..kit.origins import pattern_bytes

    return pattern_bytes(n)


# --- everything a clear listener serves ---


def test_keep_alive_auth_and_stats_pages_over_tls(
    make_tls_proxy: Callable[..., ProxyServer], origin: OriginServer, ca: trustme.CA
) -> None:
    proxy = make_tls_proxy(basic_auth=("user:secret",))
    with tls_client(proxy, ca) as sock:
        challenge = request_over(sock, f"GET {origin.url('/bytes/5')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert challenge.status == 407
        creds = "Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=\r\n"
        for n in (5, 70000, 6):  # three requests on one TLS connection
            raw = f"GET {origin.url(f'/bytes/{n}')} HTTP/1.1\r\nHost: x\r\n{creds}\r\n".encode()
            answer = request_over(sock, raw)
            assert (answer.status, answer.body) == (200, origin_bytes(n))
        health = request_over(sock, b"GET http://tinyproxy-py.stats/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (health.status, health.body) == (200, b"ok\n")
        page = request_over(
            sock, f"GET http://tinyproxy-py.stats/metrics HTTP/1.1\r\nHost: x\r\n{creds}\r\n".encode()
        )
        assert page.status == 200 and b'tinyproxy_py_tls_handshakes_total{result="ok"} 1' in page.body


def test_connect_inside_tls_and_the_origin_ending_first(tls_proxy: ProxyServer, ca: trustme.CA) -> None:
    """A tunnel's client side is the TLS socket in the hub. The origin ends first: every
    byte arrives, then the proxy's close_notify, once the tunnel has been quiet for a
    sweep of the hub (one sent while the client may still send would make OpenSSL drop
    those bytes), well before the linger would close it."""
    records: list[AccessRecord] = []
    tls_proxy.on_access = records.append

    def greet_then_close(sock: socket.socket) -> None:
        sock.sendall(b"hello " + sock.recv(100))

    with scripted_server(greet_then_close) as target, tls_client(tls_proxy, ca) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{target.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = recv_head(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        sock.sendall(b"world")
        started = time.monotonic()
        received = b""
        while chunk := sock.recv(100):  # b"": the close_notify (a bare EOF would raise)
            received += chunk
        assert received == b"hello world"
        assert time.monotonic() - started < tls_proxy.config.tunnel_linger
    assert wait_until(
        lambda: [(r.method, r.ongoing, r.cause) for r in records][-1] == ("CONNECT", False, "eof")
    )


def test_an_upgrade_over_tls(tls_proxy: ProxyServer, ca: trustme.CA) -> None:
    def upgrade_then_echo(sock: socket.socket) -> None:
        recv_head(sock)
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
        while data := sock.recv(100):
            sock.sendall(data)

    with scripted_server(upgrade_then_echo) as target, tls_client(tls_proxy, ca) as sock:
        sock.sendall(
            f"GET http://127.0.0.1:{target.port}/ HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n"
            "Upgrade: echo\r\nConnection: Upgrade\r\n\r\n".encode()
        )
        assert recv_head(sock).startswith(b"HTTP/1.1 101")
        for message in (b"ping", b"x" * 40000):
            sock.sendall(message)
            echoed = b""
            while len(echoed) < len(message):
                echoed += sock.recv(65536)
            assert echoed == message


def test_a_proxy_header_comes_before_the_handshake(
    make_tls_proxy: Callable[..., ProxyServer], origin: OriginServer, ca: trustme.CA
) -> None:
    proxy = make_tls_proxy(
        proxy_protocol="v1",
        proxy_protocol_from=("127.0.0.1",),
        allow=("203.0.113.7",),
        allow_destinations=("127.0.0.0/8",),  # a client not on this machine reaching a loopback origin
    )
    records: list[AccessRecord] = []
    proxy.on_access = records.append
    sock = socket.create_connection(tls_address(proxy), timeout=MUST_NOT_EXPIRE)
    sock.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 50000 443\r\n")
    with client_context(ca).wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        answer = request_over(tls, f"GET {origin.url('/bytes/7')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert answer.status == 200
    assert wait_until(lambda: [r.client for r in records] == ["203.0.113.7"]), records


def test_a_full_tls_listener_closes_without_a_clear_503(
    make_tls_proxy: Callable[..., ProxyServer], ca: trustme.CA
) -> None:
    proxy = make_tls_proxy(max_clients=1)
    with tls_client(proxy, ca) as busy:
        busy.sendall(b"GET http://127.0.0.1:9/ HTTP/1.1\r\n")  # mid-head: not evictable
        assert wait_until(lambda: proxy.stats.gauge("clients") == 1)
        with socket.create_connection(tls_address(proxy), timeout=MUST_NOT_EXPIRE) as refused:
            assert recv_all_quietly(refused) == b""
        assert proxy.stats.snapshot()["counters"]["errors.overloaded"] == 1


def test_silent_connections_to_the_tls_port_make_room_and_count_per_address(
    make_tls_proxy: Callable[..., ProxyServer], ca: trustme.CA
) -> None:
    """A connection that has not finished its handshake is evictable after the new
    connection's grace, as a silent clear one is, and counts against its address's cap."""
    proxy = make_tls_proxy(max_clients=2, max_clients_per_address=2)
    silent = [socket.create_connection(tls_address(proxy), timeout=MUST_NOT_EXPIRE) for _ in range(2)]
    try:
        assert wait_until(lambda: proxy.stats.gauge("clients") == 2)
        time.sleep(1.2)  # past the grace of a new connection
        with tls_client(proxy, ca) as good:  # evicts one
            assert (
                request_over(
                    good, b"GET http://tinyproxy-py.stats/healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                ).status
                == 200
            )
        assert proxy.stats.snapshot()["counters"]["clients_evicted"] >= 1
    finally:
        for sock in silent:
            sock.close()


def test_one_deadline_for_the_proxy_header_and_the_handshake(
    make_tls_proxy: Callable[..., ProxyServer], ca: trustme.CA
) -> None:
    proxy = make_tls_proxy(proxy_protocol="v1", proxy_protocol_from=("127.0.0.1",))
    with socket.create_connection(tls_address(proxy), timeout=MUST_NOT_EXPIRE) as sock:
        started = time.monotonic()
        time.sleep(DEADLINE * 0.75)
        sock.sendall(b"PROXY TCP4 127.0.0.1 127.0.0.1 50000 443\r\n" + client_hello(ca)[:20])
        assert recv_all_quietly(sock) == b""
        assert time.monotonic() - started < DEADLINE + EXPIRE_SOON / 2


def test_clients_that_reset_before_the_handshake_leave_nothing_behind(tls_proxy: ProxyServer) -> None:
    """Each socket is closed by its owner, not by the garbage collector (whose
    ResourceWarning this suite turns into a failure)."""
    for _ in range(50):
        sock = socket.create_connection(tls_address(tls_proxy), timeout=MUST_NOT_EXPIRE)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    assert wait_until(
        lambda: (
            sum(
                tls_proxy.stats.snapshot()["counters"].get(f"tls_handshakes.{cause}", 0)
                for cause in ("reset", "closed")
            )
            == 50
        )
    )
    gc.collect()


def recv_all_quietly(sock: socket.socket) -> bytes:
    """What the peer sends until it closes (a reset counts as a close)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


# --- hostile handshakes ---


def client_hello(ca: trustme.CA) -> bytes:
    """The first flight of a real TLS client, captured from memory buffers."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(ca).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def garbage(sock: socket.socket, hello: bytes) -> None:
    sock.sendall(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 100)


def half_hello(sock: socket.socket, hello: bytes) -> None:
    sock.sendall(hello[: len(hello) // 2])  # and left open


def dribbled(sock: socket.socket, hello: bytes) -> None:
    """A byte every 50 ms: bytes keep coming, the deadline still falls."""
    try:
        for byte in hello:
            sock.sendall(bytes([byte]))
            time.sleep(0.05)
    except OSError:
        pass  # cut off, as it should be


def reset_mid_handshake(sock: socket.socket, hello: bytes) -> None:
    sock.sendall(hello[:50])
    time.sleep(0.1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


@pytest.mark.parametrize(
    ("behaviour", "cause", "cut_by_deadline"),
    [
        (garbage, "refused", False),
        (half_hello, "timeout", True),
        (dribbled, "timeout", True),
        (reset_mid_handshake, "reset", False),
    ],
    ids=["garbage", "half-hello", "dribbled", "reset"],
)
def test_hostile_handshakes_are_cut_and_counted(
    tls_proxy: ProxyServer,
    ca: trustme.CA,
    origin: OriginServer,
    behaviour: Callable[[socket.socket, bytes], None],
    cause: str,
    cut_by_deadline: bool,
) -> None:
    hello = client_hello(ca)
    sock = socket.create_connection(tls_address(tls_proxy), timeout=MUST_NOT_EXPIRE)
    started = time.monotonic()
    behaviour(sock, hello)
    if sock.fileno() != -1:
        answer = recv_all_quietly(sock)
        took = time.monotonic() - started
        sock.close()
        assert not answer.startswith(b"HTTP"), answer  # never a clear-text answer
        assert (took > DEADLINE - 0.1) if cut_by_deadline else (took < DEADLINE), took
        assert took < DEADLINE + EXPIRE_SOON, took
    counter = f"tls_handshakes.{cause}"
    assert wait_until(lambda: tls_proxy.stats.snapshot()["counters"].get(counter) == 1), (
        tls_proxy.stats.snapshot()["counters"]
    )
    with tls_client(tls_proxy, ca) as good:  # and the next client is served
        assert (
            request_over(good, f"GET {origin.url('/bytes/1')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()).status
            == 200
        )


def test_500_handshakes_left_half_done_at_once(
    make_tls_proxy: Callable[..., ProxyServer], ca: trustme.CA, origin: OriginServer
) -> None:
    """Each holds a handler thread until the deadline, no longer; a real client is served meanwhile."""
    proxy = make_tls_proxy(max_clients=600)
    hello = client_hello(ca)
    stalled = [socket.create_connection(tls_address(proxy), timeout=MUST_NOT_EXPIRE) for _ in range(500)]
    try:
        for sock in stalled:
            sock.sendall(hello[:40])
        started = time.monotonic()
        with tls_client(proxy, ca) as good:
            answer = request_over(good, f"GET {origin.url('/bytes/2')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert answer.status == 200
        assert wait_until(
            lambda: proxy.stats.snapshot()["counters"].get("tls_handshakes.timeout") == 500,
            DEADLINE + MUST_NOT_EXPIRE,
        )
        assert time.monotonic() - started < DEADLINE + 5.0
        for sock in stalled:
            sock.settimeout(EXPIRE_SOON)
            assert recv_all_quietly(sock) == b""  # closed by the proxy
    finally:
        for sock in stalled:
            sock.close()


def test_500_complete_handshakes_at_once(make_tls_proxy: Callable[..., ProxyServer], ca: trustme.CA) -> None:
    """500 clients handshake concurrently (driven from one loop here) and are each answered.
    Client and proxy share this process's CPU: the deadline is not what is tested here."""
    tls_proxy = make_tls_proxy(max_clients=600, header_timeout=MUST_NOT_EXPIRE)
    context = client_context(ca)
    clients = []
    for _ in range(500):
        sock = socket.create_connection(tls_address(tls_proxy), timeout=MUST_NOT_EXPIRE)
        sock.setblocking(False)
        clients.append(context.wrap_socket(sock, server_hostname="127.0.0.1", do_handshake_on_connect=False))
    try:
        pending = set(clients)
        deadline = time.monotonic() + MUST_NOT_EXPIRE
        while pending and time.monotonic() < deadline:
            for tls in list(pending):
                try:
                    tls.do_handshake()
                    pending.discard(tls)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
            time.sleep(0.005)
        assert not pending
        for tls in clients:
            tls.settimeout(MUST_NOT_EXPIRE)
            tls.sendall(
                b"GET http://tinyproxy-py.stats/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
        for tls in clients:
            assert Response(tls).status == 200
    finally:
        for tls in clients:
            tls.close()
    assert tls_proxy.stats.snapshot()["counters"]["tls_handshakes.ok"] == 500


def test_certificate_reloaded_for_new_handshakes_only(
    make_tls_proxy: Callable[..., ProxyServer],
    tls_files: tuple[str, str],
    tmp_path: Path,
    origin: OriginServer,
    ca: trustme.CA,
) -> None:
    """reload() (what SIGHUP calls) rereads the files: open connections keep their session."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(tls_files[0], cert)
    shutil.copy(tls_files[1], key)
    proxy = make_tls_proxy(tls_cert=str(cert), tls_key=str(key))
    other_ca = trustme.CA()
    with tls_client(proxy, ca) as before:
        issued = other_ca.issue_cert("127.0.0.1")
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        assert proxy.reload(proxy.config) == []
        raw = f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        assert request_over(before, raw).status == 200  # still served over the old pair
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_client(proxy, ca)  # new handshakes get the new certificate
        with tls_client(proxy, other_ca) as after:
            assert request_over(after, raw).status == 200
    # A broken file keeps the running pair, and the rest of the reload applies.
    key.write_text("not a key")
    assert proxy.reload(proxy.config.replace(deny=("127.0.0.1",))) == []
    with pytest.raises(OSError):  # the new ACL: closed before the handshake, no clear-text 403
        tls_client(proxy, other_ca)
    assert proxy.stats.snapshot()["counters"]["errors.acl"] == 1
    assert proxy.reload(proxy.config.replace(deny=())) == []
    with tls_client(proxy, other_ca):  # the pair that ran
        pass


ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_headless_chromium_loads_a_page_through_the_tls_listener(
    make_tls_proxy: Callable[..., ProxyServer], origin: OriginServer, tmp_path: Path
) -> None:
    # Chromium reaches for outside hosts too: the proxy refuses every target but loopback.
    proxy = make_tls_proxy(filter_hosts=("127.0.0.1", "localhost"), filter_mode="allow")
    records: list[AccessRecord] = []
    proxy.on_access = records.append
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "chromium-through-tls-proxy.png"
    profile = tmp_path / "profile"
    dom = chromium(proxy.tls_url, origin.url("/page"), profile, shot, size="800,600", env=client_env())
    assert "came through the proxy" in dom.stdout, dom.stderr[-2000:]
    assert any(r.target == origin.url("/page") and r.status == 200 for r in records), records
    assert proxy.stats.snapshot()["counters"].get("tls_handshakes.ok", 0) >= 1
    assert shot.exists() and shot.stat().st_size > 5_000
