"""Bounds under load: max_clients, the idle reaper, pool eviction, the per-host cap, fd accounting."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack

from tinyproxy_py import ProxyServer
from tinyproxy_py.net.clientconn import FIRST_REQUEST_GRACE

from ..kit.clients import open_tunnel
from ..kit.origins import OriginServer, pattern_bytes, running_origin
from ..kit.procfs import open_fds
from ..kit.responses import Response, get, refused_connect, request_over
from ..kit.waits import EXPIRE_SOON, MUST_NOT_EXPIRE, wait_until


def test_one_client_over_max_clients_gets_503_at_once(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    """Every slot is busy (a request head under way on each): nothing to evict."""
    proxy = make_proxy(max_clients=3, header_timeout=5.0)
    raw = f"GET {origin.url('/bytes/10')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    holders = [socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) for _ in range(3)]
    try:
        for sock in holders:
            sock.sendall(raw[:10])
        assert wait_until(lambda: proxy.stats.gauge("clients") == 3)
        time.sleep(0.1)  # the holders' first bytes are read: they are not idle
        started = time.monotonic()
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as extra:
            response = Response(extra)
        assert response.status == 503
        assert time.monotonic() - started < EXPIRE_SOON
        # The clients holding the slots are served normally.
        for sock in holders:
            assert request_over(sock, raw[10:]).body == pattern_bytes(10)
    finally:
        for sock in holders:
            sock.close()
    assert proxy.stats.counter("errors.overloaded") == 1
    assert proxy.stats.counter("clients_evicted") == 0


def test_at_max_clients_the_longest_idle_connection_makes_room(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    """Idle connections (before a first request, or between two) cannot hoard the slots."""
    proxy = make_proxy(max_clients=3, header_timeout=5.0, client_idle_timeout=5.0)
    raw = f"GET {origin.url('/bytes/10')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    holders: list[socket.socket] = []
    try:
        for _ in range(6):  # the last three each evict the one idle longest
            holders.append(socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE))
            assert request_over(holders[-1], raw).status == 200  # then idle, keep-alive
            if len(holders) > 3:
                evicted = holders[len(holders) - 4]
                assert evicted.recv(1) == b"", "not the longest-idle connection was closed"
    finally:
        for sock in holders:
            sock.close()
    assert proxy.stats.counter("clients_evicted") == 3
    assert proxy.stats.counter("errors.overloaded") == 0


def test_a_new_connection_counts_as_idle_only_after_a_grace(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    """A client sends its request right after connecting, but the proxy may accept before
    the bytes arrive: closing it then would cut a request, so a silent new connection is
    not closed to make room until FIRST_REQUEST_GRACE has passed."""
    proxy = make_proxy(max_clients=1, header_timeout=10.0)
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as silent:
        assert wait_until(lambda: proxy.stats.gauge("clients") == 1)
        assert get(proxy.address, origin.url("/bytes/10")).status == 503
        time.sleep(FIRST_REQUEST_GRACE)
        assert get(proxy.address, origin.url("/bytes/10")).status == 200
        assert silent.recv(1) == b""
    assert proxy.stats.counter("clients_evicted") == 1


def idle_clients(proxy: ProxyServer) -> int:
    """Client connections waiting for their next request (white-box: no gauge says it)."""
    return sum(client.idle_since is not None for client in list(proxy._clients._open))


def test_one_address_holds_at_most_its_share_of_connections_and_tunnels(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(max_clients_per_address=2, max_tunnels_per_address=1)
    raw = f"GET {origin.url('/bytes/10')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with ExitStack() as stack:
        busy = [stack.enter_context(socket.create_connection(proxy.address)) for _ in range(2)]
        for sock in busy:
            sock.sendall(raw[:10])  # a head under way: not idle
        assert wait_until(lambda: proxy.stats.gauge("clients") == 2)
        time.sleep(0.1)
        refused = get(proxy.address, origin.url("/bytes/10"))
        assert (refused.status, refused.header("X-Tinyproxy-Py-Cause")) == (503, "overloaded")
        assert b"too many connections from 127.0.0.1 (max 2)" in refused.body
        assert request_over(busy[0], raw[10:]).status == 200  # idle next: it makes room
        # Idle once its thread waits for the next request again, a moment after the answer.
        assert wait_until(lambda: idle_clients(proxy) == 1)
        assert get(proxy.address, origin.url("/bytes/10")).status == 200
        assert busy[0].recv(1) == b""
        assert wait_until(lambda: proxy.stats.gauge("clients") == 1)  # busy[1] alone
        tunnel, _ = open_tunnel(proxy.address, f"127.0.0.1:{origin.port}")
        stack.enter_context(tunnel)
        refused = refused_connect(proxy.address, f"127.0.0.1:{origin.port}")
        assert refused.status == 503
        assert b"too many open tunnels from 127.0.0.1 (max 1)" in refused.body
        busy[1].close()
    assert proxy.stats.counter("errors.overloaded") == 2


def test_reaper_closes_idle_pooled_connections_without_new_requests(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(pool_idle_timeout=0.4)
    assert get(proxy.address, origin.url("/bytes/10")).status == 200
    assert wait_until(lambda: proxy.resources()["pool_idle"] == 1)  # released after the answer
    assert wait_until(lambda: proxy.stats.gauge("pool_open") == 0, timeout=5.0)
    assert proxy.resources()["pool_idle"] == 0


def test_evicted_host_pool_never_closes_a_connection_in_use(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    # Nothing here expires on its own: the held request ends when the origin is released,
    # and the reaper leaves the other host's idle connection alone.
    proxy = make_proxy(
        pool_hosts=1, response_header_timeout=MUST_NOT_EXPIRE, pool_idle_timeout=3 * MUST_NOT_EXPIRE
    )
    result: list[Response] = []
    held = origin.url(f"/slow/{MUST_NOT_EXPIRE}")  # answered once origin.release is set
    slow = threading.Thread(target=lambda: result.append(get(proxy.address, held)))
    slow.start()
    assert wait_until(lambda: len(origin.requests) == 1)
    with running_origin() as other:
        # A second host evicts the first host's pool while its request is in flight.
        for _ in range(3):
            assert get(proxy.address, other.url("/bytes/5")).body == pattern_bytes(5)
            # The client has the whole response a moment before the proxy puts the
            # connection back: the next request would dial a second one meanwhile.
            assert wait_until(lambda: proxy.stats.gauge("requests_in_flight") == 1)
        # The held connection and the other host's one, reused: none was closed.
        assert proxy.resources()["pool_open"] == 2
        assert proxy.resources()["pool_idle"] == 1
        origin.release.set()
        slow.join(MUST_NOT_EXPIRE)
        assert result and result[0].status == 200 and result[0].body == b"slow\n"
        # The connection released into the evicted pool is closed once that pool is gone.
        assert wait_until(lambda: proxy.stats.gauge("pool_open") == 1)
        assert proxy.resources()["pool_idle"] == 1  # the other host's, still pooled


def test_per_host_cap_answers_503_when_the_wait_expires(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(max_conns_per_host=1, connect_timeout=0.3, read_timeout=5.0)
    result: list[Response] = []
    slow = threading.Thread(target=lambda: result.append(get(proxy.address, origin.url("/slow/1.5"))))
    slow.start()
    assert wait_until(lambda: len(origin.requests) == 1)
    started = time.monotonic()
    busy = get(proxy.address, origin.url("/bytes/5"))
    assert busy.status == 503
    assert busy.header("X-Tinyproxy-Py-Cause") == "host-busy"
    assert time.monotonic() - started < MUST_NOT_EXPIRE
    slow.join(MUST_NOT_EXPIRE)
    assert result[0].status == 200
    assert get(proxy.address, origin.url("/bytes/5")).status == 200


def test_per_host_cap_lets_a_waiter_through_when_a_slot_frees(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(max_conns_per_host=1, connect_timeout=3.0, read_timeout=5.0)
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(get(proxy.address, origin.url("/slow/0.3")).status))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(MUST_NOT_EXPIRE)
    assert results == [200, 200, 200]


def test_resources_account_for_every_open_descriptor(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    before = open_fds()
    proxy = make_proxy()
    for size in (10, 100_000):
        assert get(proxy.address, origin.url(f"/bytes/{size}")).status == 200
    assert wait_until(lambda: proxy.stats.gauge("clients") == 0)
    resources = proxy.resources()
    assert resources["pool_open"] == resources["pool_idle"] == 1
    assert resources["pool_in_use"] == 0
    # The proxy's own descriptors, plus the origin's end of each pooled connection
    # (the origin lives in this process too).
    assert wait_until(lambda: open_fds() - before == resources["fds_accounted"] + resources["pool_open"])
