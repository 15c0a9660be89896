"""A bounded soak: mixed traffic and faults from several clients at once, then back to baseline.

Five client threads run a fixed rotation of exchanges for TRAFFIC_SECONDS against one
in-process proxy with short limits: keep-alive requests, CONNECT tunnels carrying data,
client aborts mid-download, mid-upload and mid-tunnel (half of them resets), a client
that stops reading, upstream resets before and during a response and in a tunnel,
upstream stalls past the read timeout, connect failures, malformed and incomplete
requests, idle keep-alive connections and idle tunnels. Afterwards the proxy's gauges
must be back at zero, its pooled connections reaped, the process's open fds and threads
back at the baseline taken after a warm-up, and the proxy still serving.

Every loop is bounded in count and in time, every socket has a timeout, and every
address is loopback (no DNS). The long version is scripts/soak.py (docs/reliability.md).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from tinyproxy_py import ProxyServer

from ..origin import OriginServer, pattern_bytes
from ..support import (
    MUST_NOT_EXPIRE,
    ScriptedServer,
    closed_port,
    open_fds,
    request_over,
    thread_count,
    wait_until,
)

LIMITS = {
    "connect_timeout": 1.0,
    "read_timeout": 0.5,
    "response_header_timeout": 0.5,
    "header_timeout": 1.0,
    "client_idle_timeout": 1.0,
    "tunnel_idle_timeout": 2.0,
    "tunnel_linger": 1.0,
    "pool_idle_timeout": 2.0,
}
TRAFFIC_SECONDS = 20.0
WORKERS = 5
MAX_ROUNDS = 2000  # per worker: the count bound; TRAFFIC_SECONDS is the time bound
PAUSE = 0.005  # between one worker's exchanges: moderate load on a shared 2-core machine
CLIENT_TIMEOUT = 10.0  # any single client wait; the proxy's limits are far shorter
SLACK = 3.0  # how late a proxy deadline may fire on a loaded machine
KiB, MiB = 1024, 1024 * 1024
RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


# --- raw client helpers ---


def dial(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=CLIENT_TIMEOUT)


def close(sock: socket.socket, reset: bool) -> None:
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
    sock.close()


def request(method: str, url: str, body: bytes = b"", headers: str = "") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return f"{method} {url} HTTP/1.1\r\nHost: x\r\n{length}{headers}\r\n".encode() + body


def recv_exactly(sock: socket.socket, n: int, already: bytes = b"") -> bytes:
    data = bytearray(already)
    while len(data) < n:
        piece = sock.recv(min(65536, n - len(data)))
        if not piece:
            raise ConnectionError(f"EOF after {len(data)} of {n} bytes")
        data += piece
    return bytes(data)


def recv_to_eof(sock: socket.socket, limit: int = 16 * MiB) -> bytes:
    data = bytearray()
    while len(data) < limit and (piece := sock.recv(65536)):
        data += piece
    return bytes(data)


def read_head(sock: socket.socket) -> tuple[int, bytes]:
    """The status of the proxy's answer, and any bytes that followed its head."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"closed before a full head: {buf[:80]!r}")
        buf += piece
        assert b"\r\n\r\n" in buf or len(buf) < 64 * KiB, "head too long"
    head, _, rest = buf.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer.split(b" ", 2)[1])


# --- upstream scripts (ScriptedServer closes each socket when its script returns) ---


def read_request_head(sock: socket.socket) -> bool:
    sock.settimeout(CLIENT_TIMEOUT)
    buf = b""
    while b"\r\n\r\n" not in buf and len(buf) < 64 * KiB:
        piece = sock.recv(65536)
        if not piece:
            return False
        buf += piece
    return True


def echo(sock: socket.socket) -> None:
    sock.settimeout(CLIENT_TIMEOUT)
    while data := sock.recv(65536):
        sock.sendall(data)


def source(sock: socket.socket) -> None:
    """Far more bytes than any client reads: ends when the proxy closes the tunnel."""
    sock.settimeout(CLIENT_TIMEOUT)
    block = pattern_bytes(256 * KiB)
    for _ in range(256):  # 64 MiB at most
        sock.sendall(block)


def reset_at_once(sock: socket.socket) -> None:
    read_request_head(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)


def reset_mid_body(sock: socket.socket) -> None:
    if read_request_head(sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + pattern_bytes(1000))
        time.sleep(0.05)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)


def stall_body(sock: socket.socket) -> None:
    """Promise 10 bytes, send 5, then wait for the proxy to give up and close (bounded)."""
    if read_request_head(sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        recv_to_eof(sock)


# --- the mix ---


class Mix:
    """The exchanges, each a complete client conversation that checks what it gets back."""

    def __init__(self, proxy: ProxyServer, origin: OriginServer, servers: dict[str, ScriptedServer]) -> None:
        self.proxy, self.origin, self.servers = proxy, origin, servers
        self.closed_port = closed_port()

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.servers[name].port}"

    def open_tunnel(self, target: str) -> tuple[socket.socket, bytes]:
        sock = dial(self.proxy.address)
        try:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            status, rest = read_head(sock)
            assert status == 200, status
        except BaseException:
            sock.close()
            raise
        return sock, rest

    def keep_alive(self, n: int) -> None:
        upload = pattern_bytes(20 * KiB + n)
        exchanges = [
            (request("GET", self.origin.url(f"/bytes/{1000 + n}")), pattern_bytes(1000 + n)),
            (request("GET", self.origin.url("/chunked/100000")), pattern_bytes(100_000)),
            (request("POST", self.origin.url("/echo"), upload), upload),
            (request("GET", self.origin.url("/bytes/300000")), pattern_bytes(300_000)),
        ]
        with dial(self.proxy.address) as sock:
            for raw, expected in exchanges:
                response = request_over(sock, raw)
                assert response.status == 200 and response.body == expected, response.status

    def tunnel(self, n: int) -> None:
        data = pattern_bytes(64 * KiB + n)
        sock, rest = self.open_tunnel(self.target("echo"))
        with sock:
            sock.sendall(data)
            assert recv_exactly(sock, len(data), rest) == data
            sock.shutdown(socket.SHUT_WR)
            assert recv_to_eof(sock) == b""

    def tunnel_abort(self, n: int) -> None:
        sock, rest = self.open_tunnel(self.target("source"))
        recv_exactly(sock, 256 * KiB, rest)
        close(sock, reset=n % 2 == 0)

    def tunnel_reset(self, n: int) -> None:
        sock, _ = self.open_tunnel(self.target("reset_at_once"))
        with sock:
            sock.sendall(b"hello\r\n\r\n")
            try:
                assert recv_to_eof(sock) == b""
            except ConnectionResetError:
                pass

    def tunnel_idle(self, n: int) -> None:
        sock, rest = self.open_tunnel(self.target("echo"))
        started = time.monotonic()
        with sock:
            assert rest + recv_to_eof(sock) == b""  # the hub closes it after the idle timeout
        assert time.monotonic() - started < LIMITS["tunnel_idle_timeout"] + SLACK

    def abort_download(self, n: int) -> None:
        sock = dial(self.proxy.address)
        sock.sendall(request("GET", self.origin.url(f"/bytes/{16 * MiB}")))
        recv_exactly(sock, 256 * KiB)
        close(sock, reset=n % 2 == 0)

    def stalled_reader(self, n: int) -> None:
        """Stop reading a large download for longer than the read timeout: the proxy's send
        times out, it gives up on the client and discards the upstream connection."""
        with dial(self.proxy.address) as sock:
            sock.sendall(request("GET", self.origin.url(f"/bytes/{64 * MiB}")))
            recv_exactly(sock, 256 * KiB)
            time.sleep(LIMITS["read_timeout"] + 0.5)
            try:
                assert len(recv_to_eof(sock, limit=64 * MiB)) < 64 * MiB - 256 * KiB  # cut short
            except ConnectionResetError:
                pass

    def abort_upload(self, n: int) -> None:
        sock = dial(self.proxy.address)
        head = f"POST {self.origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nContent-Length: {4 * MiB}\r\n\r\n"
        sock.sendall(head.encode() + pattern_bytes(128 * KiB))
        time.sleep(0.01)
        close(sock, reset=n % 2 == 0)

    def upstream_reset(self, n: int) -> None:
        url = f"http://{self.target('reset_at_once')}/"
        with dial(self.proxy.address) as sock:
            assert request_over(sock, request("GET", url)).status == 502

    def upstream_reset_mid_body(self, n: int) -> None:
        url = f"http://{self.target('reset_mid_body')}/"
        with dial(self.proxy.address) as sock:
            sock.sendall(request("GET", url))
            status, rest = read_head(sock)
            assert status == 200, status
            try:
                body = rest + recv_to_eof(sock)
            except ConnectionResetError:
                return
            assert len(body) < 100_000  # cut short, never completed

    def stall_head(self, n: int) -> None:
        started = time.monotonic()
        with dial(self.proxy.address) as sock:
            assert request_over(sock, request("GET", self.origin.url("/slow/1.5"))).status == 504
        assert time.monotonic() - started < LIMITS["response_header_timeout"] + SLACK

    def stall_body(self, n: int) -> None:
        url = f"http://{self.target('stall_body')}/"
        with dial(self.proxy.address) as sock:
            sock.sendall(request("GET", url))
            status, rest = read_head(sock)
            assert status == 200, status
            try:
                assert len(rest + recv_to_eof(sock)) < 10  # the proxy cut it short
            except ConnectionResetError:
                pass

    def connect_refused(self, n: int) -> None:
        target = f"127.0.0.1:{self.closed_port}"
        with dial(self.proxy.address) as sock:
            assert request_over(sock, request("GET", f"http://{target}/")).status == 502
        with dial(self.proxy.address) as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            assert read_head(sock)[0] == 502

    MALFORMED = (
        (b"NOT A REQUEST\r\n\r\n", 400),
        (b"POST http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET http://127.0.0.1:1/ HTTP/1.1\r\n" + b"X-Many: y\r\n" * 150 + b"\r\n", 431),
        (b"GET http://127.0.0.1:1/" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n", 408),  # never finished
    )  # fmt: skip

    def malformed(self, n: int) -> None:
        raw, expected = self.MALFORMED[n % len(self.MALFORMED)]
        with dial(self.proxy.address) as sock:
            sock.sendall(raw)
            answer = recv_to_eof(sock)
        assert status_of(answer) == expected

    def idle_keep_alive(self, n: int) -> None:
        with dial(self.proxy.address) as sock:
            assert request_over(sock, request("GET", self.origin.url("/bytes/10"))).status == 200
            started = time.monotonic()
            assert recv_to_eof(sock) == b""  # the proxy closes after the idle timeout
        assert time.monotonic() - started < LIMITS["client_idle_timeout"] + SLACK

    def stats(self, n: int) -> None:
        with dial(self.proxy.address) as sock:
            response = request_over(sock, b"GET /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert response.status == 200 and b'"gauges"' in response.body

    def schedule(self) -> list[Callable[[int], None]]:
        """One rotation: the quick exchanges often, the ones that wait for a deadline less."""
        return [
            self.keep_alive,
            self.tunnel,
            self.abort_download,
            self.upstream_reset,
            self.keep_alive,
            self.connect_refused,
            self.tunnel_abort,
            self.abort_upload,
            self.malformed,
            self.stats,
            self.keep_alive,
            self.stall_head,
            self.tunnel,
            self.upstream_reset_mid_body,
            self.stall_body,
            self.tunnel_reset,
            self.malformed,
            self.idle_keep_alive,
            self.keep_alive,
            self.tunnel_idle,
            self.stalled_reader,
        ]


def run_mix(mix: Mix) -> tuple[Counter[str], list[str]]:
    """WORKERS threads, each through the rotation from its own offset, until the time is up."""
    done: Counter[str] = Counter()
    turns: Counter[str] = Counter()  # each exchange's variant: its how-many-th run, over all workers
    failures: list[str] = []
    lock = threading.Lock()
    schedule = mix.schedule()
    stop_at = time.monotonic() + TRAFFIC_SECONDS

    def worker(offset: int) -> None:
        for n in range(MAX_ROUNDS):
            if time.monotonic() >= stop_at:
                return
            exchange = schedule[(offset + n) % len(schedule)]
            with lock:
                turn = turns[exchange.__name__]
                turns[exchange.__name__] += 1
            try:
                exchange(turn)
            except Exception as exc:  # any failure is reported with the others, below
                with lock:
                    failures.append(f"{exchange.__name__} #{turn}: {exc!r}"[:300])
            with lock:
                done[exchange.__name__] += 1
            time.sleep(PAUSE)

    threads = [threading.Thread(target=worker, args=(i * 4,), daemon=True) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TRAFFIC_SECONDS + 2 * CLIENT_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a client thread is stuck"
    return done, failures


def quiet(proxy: ProxyServer) -> bool:
    """No live object left: gauges at zero and the pooled connections reaped."""
    resources = proxy.resources()
    live = ("clients", "handler_threads", "requests_in_flight", "tunnels", "pool_open")
    # resources()["tunnels"] is the hub's own count; the gauge is kept separately.
    return all(resources[name] == 0 for name in live) and proxy.stats.gauge("tunnels") == 0


def stable(count: Callable[[], int], window: float = 0.3) -> bool:
    """`count()` does not change over `window` seconds."""
    before = count()
    time.sleep(window)
    return count() == before


@pytest.mark.timeout(90)
def test_mixed_traffic_and_faults_return_to_baseline(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(**LIMITS)
    scripts = {
        "echo": echo,
        "source": source,
        "reset_at_once": reset_at_once,
        "reset_mid_body": reset_mid_body,
        "stall_body": stall_body,
    }
    servers: dict[str, ScriptedServer] = {}
    try:
        for name, script in scripts.items():
            servers[name] = ScriptedServer(script)
        mix = Mix(proxy, origin, servers)
        # Warm up (pool manager, host pool, hub, imports), then let the reaper empty the pool.
        mix.keep_alive(0)
        mix.tunnel(0)
        mix.stats(0)
        assert wait_until(lambda: quiet(proxy), MUST_NOT_EXPIRE), proxy.resources()
        assert wait_until(lambda: stable(thread_count), MUST_NOT_EXPIRE)
        fds, threads = open_fds(), thread_count()
        gap = fds - proxy.resources()["fds_accounted"]

        started = time.monotonic()
        done, failures = run_mix(mix)
        traffic = time.monotonic() - started

        assert not failures, f"{len(failures)} failed exchanges: {failures[:10]}"
        assert set(done) == {exchange.__name__ for exchange in mix.schedule()}, done
        assert sum(done.values()) > 100, done
        # The faults really happened, and the proxy saw them as such.
        counters = proxy.stats.snapshot()["counters"]
        assert isinstance(counters, dict)
        for name in (
            "errors.read-timeout",
            "errors.response-timeout",
            "errors.refused",
            "errors.no-response",
            "errors.origin-abort",
            "errors.header-timeout",
            "errors.bad-request",
            "errors.line-too-long",
            "errors.head-too-large",
            "errors.client-abort",
            "tunnels_closed.reset",
            "tunnels_closed.idle",
            "tunnels_closed.eof",
        ):
            assert counters.get(name, 0) > 0, (name, counters)

        settle = time.monotonic()
        assert wait_until(lambda: quiet(proxy), MUST_NOT_EXPIRE), proxy.resources()
        resources = proxy.resources()
        assert resources["pool_in_use"] == 0 and resources["pool_idle"] == 0, resources
        assert proxy.hub.buffered == 0
        assert wait_until(lambda: open_fds() <= fds, MUST_NOT_EXPIRE), f"fds {open_fds()} > baseline {fds}"
        assert wait_until(lambda: thread_count() <= threads, MUST_NOT_EXPIRE), (
            f"threads {thread_count()} > baseline {threads}"
        )
        assert open_fds() - proxy.resources()["fds_accounted"] <= gap
        settled = time.monotonic() - settle

        # Still serving, both ways.
        mix.keep_alive(1)
        mix.tunnel(1)
        print(f"soak: {sum(done.values())} exchanges in {traffic:.1f} s, settled in {settled:.1f} s: {done}")
    finally:
        for server in servers.values():
            server.close()
