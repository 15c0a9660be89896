"""Graceful shutdown: in-flight requests finish within the grace period, then everything closes."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable

import pytest

from tinyproxy_py import ProxyServer
from tinyproxy_py.observe.accesslog import AccessRecord
from tinyproxy_py.server.listener import _Accepted

from ..kit.clients import open_tunnel, recv_all, recv_head, recv_to_eof
from ..kit.faults import echo
from ..kit.origins import OriginServer, pattern_bytes
from ..kit.responses import Response, get, request_over
from ..kit.servers import accepts, scripted_server
from ..kit.waits import EXPIRE_SOON, MUST_NOT_EXPIRE, wait_until
from ..support import address_of, proxy_process


def connect_to(url: str) -> socket.socket:
    return socket.create_connection(address_of(url), timeout=MUST_NOT_EXPIRE)


def test_sigterm_lets_a_slow_request_finish_then_exits_0(origin: OriginServer) -> None:
    with proxy_process() as (proc, url), connect_to(url) as sock:
        sock.sendall(f"GET {origin.url('/slow/1')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert wait_until(lambda: len(origin.requests) == 1)
        proc.send_signal(signal.SIGTERM)
        response = Response(sock)
        assert (response.status, response.body) == (200, b"slow\n")
        assert response.header("Connection") == "close"  # no more requests on it
        assert proc.wait(MUST_NOT_EXPIRE) == 0


def test_second_signal_exits_at_once(origin: OriginServer) -> None:
    with proxy_process("--shutdown-grace", "60") as (proc, url), connect_to(url) as sock:
        sock.sendall(f"GET {origin.url('/slow/30')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert wait_until(lambda: len(origin.requests) == 1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert proc.poll() is None  # still waiting for the slow request
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(MUST_NOT_EXPIRE) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 2 * EXPIRE_SOON


def test_stop_closes_idle_keep_alive_clients_at_once(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(client_idle_timeout=30.0)
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(f"GET {origin.url('/bytes/1')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        Response(sock)
        started = time.monotonic()
        proxy.stop()
        assert time.monotonic() - started < EXPIRE_SOON
        assert recv_all(sock) == b""


def test_stop_aborts_requests_still_running_after_the_grace_period(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(shutdown_grace=0.3, read_timeout=30.0)
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(f"GET {origin.url('/slow/30')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert wait_until(lambda: len(origin.requests) == 1)
        started = time.monotonic()
        proxy.stop()
        assert time.monotonic() - started < 0.3 + EXPIRE_SOON
        answer = recv_all(sock)  # not an empty reply: what docs/operations.md says of `shutdown`
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"\r\nX-Tinyproxy-Py-Cause: shutdown\r\n" in answer
    assert proxy.stats.gauge("clients") == 0
    assert proxy.stats.gauge("pool_open") == 0


def test_a_request_cut_by_the_shutdown_is_logged_as_such_with_what_was_sent(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(shutdown_grace=0.3, read_timeout=30.0)
    records: list[AccessRecord] = []
    proxy.on_access = records.append
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(f"GET {origin.url('/stall-body')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = recv_head(sock)
        while not received.endswith(b"\r\n\r\n12345"):  # the head, then 5 of the 10 bytes
            received += sock.recv(100)
        proxy.stop()
    (record,) = records
    assert (record.status, record.bytes_down, record.cause) == (200, 5, "shutdown")


def test_a_stopped_proxy_does_not_start_again(make_proxy: Callable[..., ProxyServer]) -> None:
    proxy = make_proxy()
    proxy.stop()
    with pytest.raises(RuntimeError, match="make a new one"):
        proxy.start()


def test_a_connect_still_dialling_when_the_listener_closes_gets_its_tunnel(
    make_proxy: Callable[..., ProxyServer],
) -> None:
    """A graceful stop waits for CONNECTs being set up, not only for plain requests."""

    def slow_resolver(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
        time.sleep(0.6)  # the dial is still on when stop() closes the listener
        return [(socket.AF_INET, ("127.0.0.1", port))]

    proxy = make_proxy(resolver=slow_resolver)
    with scripted_server(echo) as target:
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            sock.sendall(f"CONNECT slow.test:{target.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert wait_until(lambda: proxy.stats.gauge("requests_in_flight") == 1)
            stopping = threading.Thread(target=proxy.stop)
            stopping.start()
            head = recv_head(sock)
            assert head.startswith(b"HTTP/1.1 200 "), head
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
        stopping.join(MUST_NOT_EXPIRE)


def test_a_connection_accepted_just_before_the_listener_closed_gets_its_request_answered(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    """Its client connected while the proxy still accepted: its request, sent a moment
    later, is served (with Connection: close), not cut unanswered."""
    proxy = make_proxy()
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        assert wait_until(lambda: proxy.stats.gauge("opening_clients") == 1)
        stopping = threading.Thread(target=proxy.stop)
        stopping.start()
        assert wait_until(lambda: not accepts(proxy.address[1]))  # the listener is closed
        sock.sendall(f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = Response(sock)
        assert (response.status, response.body, response.header("Connection")) == (
            200,
            pattern_bytes(3),
            "close",
        )
        stopping.join(MUST_NOT_EXPIRE)


def test_a_connection_accepted_before_its_handler_thread_ran_is_still_answered(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted as opening by the accepting thread, not by its handler: a handler thread that
    is slow to start (a loaded machine) does not let stop() cut the connection first."""
    start = threading.Event()
    run = _Accepted.run
    monkeypatch.setattr(_Accepted, "run", lambda job: (start.wait(MUST_NOT_EXPIRE), run(job))[1])
    proxy = make_proxy()
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        assert wait_until(lambda: proxy.stats.counter("handler_threads_started") == 1)  # accepted
        stopping = threading.Thread(target=proxy.stop)
        stopping.start()
        assert wait_until(lambda: not accepts(proxy.address[1]))
        start.set()
        sock.sendall(f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = Response(sock)
        assert (response.status, response.body) == (200, pattern_bytes(3))
        stopping.join(MUST_NOT_EXPIRE)


def test_stopped_proxy_refuses_new_connections(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy()
    address = proxy.address
    assert get(address, origin.url("/bytes/1")).status == 200
    proxy.stop()
    try:
        socket.create_connection(address, timeout=EXPIRE_SOON).close()
    except ConnectionRefusedError:
        pass
    else:
        raise AssertionError("the listening socket is still open")


def probe(address: tuple[str, int], path: str) -> Response:
    """A balancer's health check: an origin-form request straight to the proxy."""
    with socket.create_connection(address, timeout=MUST_NOT_EXPIRE) as sock:
        return request_over(sock, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def test_the_drain_delay_keeps_accepting_with_readyz_503_then_closes_the_listener(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(drain_delay=1.0)
    assert probe(proxy.address, "/readyz").status == 200
    started = time.monotonic()
    stopping = threading.Thread(target=proxy.stop)
    stopping.start()
    try:
        assert wait_until(proxy.draining.is_set)
        assert probe(proxy.address, "/readyz").status == 503  # new connections still accepted
        assert probe(proxy.address, "/healthz").status == 200
        response = get(proxy.address, origin.url("/bytes/1"))
        assert (response.status, response.header("Connection")) == (200, "close")
    finally:
        stopping.join(MUST_NOT_EXPIRE)
    assert time.monotonic() - started >= 1.0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=EXPIRE_SOON).close()


def drip(sock: socket.socket) -> None:
    """A transfer in progress: 20 blocks of 10 kB, 0.1 s apart, then the end."""
    sock.settimeout(MUST_NOT_EXPIRE)
    for _ in range(20):
        sock.sendall(pattern_bytes(10_000))
        time.sleep(0.1)


def test_stop_lets_a_tunnel_moving_bytes_finish_and_closes_an_idle_one_at_once(
    make_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = make_proxy(shutdown_grace=15.0)
    records: list[AccessRecord] = []
    proxy.on_access = records.append
    with scripted_server(drip) as busy_target, scripted_server(echo) as idle_target:
        busy, received = open_tunnel(proxy.address, f"127.0.0.1:{busy_target.port}")
        idle, _ = open_tunnel(proxy.address, f"127.0.0.1:{idle_target.port}")
        with busy, idle:
            rest: list[bytes] = []

            def read_to_the_end() -> None:
                rest.append(recv_to_eof(busy))
                busy.shutdown(socket.SHUT_WR)  # done too: the tunnel ends with both EOFs

            reader = threading.Thread(target=read_to_the_end)
            reader.start()
            proxy.stop()  # returns once the busy tunnel has ended
            reader.join(MUST_NOT_EXPIRE)
            assert recv_all(idle) == b""  # closed by the stop, long before the grace ran out
    assert received + b"".join(rest) == pattern_bytes(10_000) * 20
    by_target = {r.target: r for r in records}
    assert by_target[f"127.0.0.1:{busy_target.port}"].cause == "eof"
    assert by_target[f"127.0.0.1:{idle_target.port}"].cause == "shutdown"
    assert by_target[f"127.0.0.1:{idle_target.port}"].duration < 2 * 0.1 * 20


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigusr2_starts_a_drain_that_sigterm_completes(origin: OriginServer, workers: str) -> None:
    with proxy_process("--workers", workers) as (proc, url):
        address = address_of(url)
        assert probe(address, "/readyz").status == 200
        proc.send_signal(signal.SIGUSR2)
        # With workers, each answers for itself: every probe must say 503 soon.
        assert wait_until(lambda: all(probe(address, "/readyz").status == 503 for _ in range(6)))
        assert get(address, origin.url("/bytes/1")).status == 200  # still serving
        assert probe(address, "/healthz").status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(MUST_NOT_EXPIRE) == 0
