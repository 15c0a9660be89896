"""Graceful shutdown: in-flight requests finish within the grace period, then everything closes."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable

from tinyproxy_py import ProxyServer
from tinyproxy_py.accesslog import AccessRecord

from ..kit.clients import recv_all, recv_head
from ..kit.origins import OriginServer
from ..kit.responses import Response, get
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
        assert recv_all(sock).startswith((b"", b"HTTP/1.1 502"))
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
