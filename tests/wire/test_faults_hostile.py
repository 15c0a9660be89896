"""Fault rules against what a careless or hostile user of them could do: bytes a black
hole swallowed never let the rest of a request through, a reset due while the hub is not
reading still fires (without spinning), rule values that would break arithmetic are
refused, slow heads end with their client, and an interim head is not the final one."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from contextlib import closing

import pytest
import requests

from tinyproxy_py import ProxyServer

from ..kit.clients import open_tunnel, read_response, recv_head, request
from ..kit.origins import OriginServer
from ..kit.servers import scripted_server
from ..kit.waits import MUST_NOT_EXPIRE, wait_until

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(30)]


def hub_cpu(proxy: ProxyServer) -> float:
    """CPU seconds of the hub's thread so far (Linux)."""
    (hub,) = [t for t in threading.enumerate() if t.name == "tinyproxy-py-tunnels"]
    with open(f"/proc/self/task/{hub.native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def test_a_removed_black_hole_never_lets_the_rest_of_a_request_through(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    """The POST's head and first piece vanish; the rule goes; the rest of the body, which
    reads as a request of its own, must not reach the origin (nor the pooled connection
    carry anything to the next client)."""
    proxy = make_proxy(response_header_timeout=1.0)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: internal.test\r\nContent-Length: 0\r\n\r\n"
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as client:
        with proxy.faults.add(host="127.0.0.1", kind="timeout"):
            length = f"Content-Length: {4 + len(smuggled)}\r\n"
            client.sendall(f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\n{length}\r\na=1&".encode())
            assert wait_until(lambda: proxy.stats.gauge("requests_in_flight") == 1)
            time.sleep(0.2)  # the first piece is swallowed
        client.sendall(smuggled)
        status, _, _ = read_response(client)
    assert status == 504
    assert origin.requests == []
    status, _, _ = read_response_of(proxy, origin.url("/bytes/3"))
    assert status == 200 and [path for _, path, _, _ in origin.requests] == ["/bytes/3"]


def read_response_of(proxy: ProxyServer, url: str) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as client:
        client.sendall(request("GET", url))
        return read_response(client)


def half_closing_target(sock: socket.socket) -> None:
    """Says ten bytes, ends its side, then waits for the tunnel's end."""
    sock.settimeout(MUST_NOT_EXPIRE)
    sock.sendall(b"0123456789")
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass


def test_a_reset_due_while_the_hub_reads_nothing_fires_without_spinning(
    proxy: ProxyServer,
) -> None:
    with (
        scripted_server(half_closing_target) as target,
        proxy.faults.add(host="127.0.0.1", kind="reset_peer", ms=300),
    ):
        cpu = hub_cpu(proxy)
        sock, early = open_tunnel(proxy.address, f"127.0.0.1:{target.port}")
        with closing(sock):
            started, data = time.monotonic(), bytearray(early)
            while piece := sock.recv(65536):  # the target's ten bytes and its EOF, passed on
                data += piece
            assert wait_until(lambda: proxy.stats.counter("tunnels_closed.reset") == 1, 1.0)
            elapsed = time.monotonic() - started
            with pytest.raises((ConnectionResetError, BrokenPipeError)):  # reset, not closed
                sock.sendall(b"x")
                sock.recv(1)
    assert data == b"0123456789" and 0.25 <= elapsed < 0.6
    assert hub_cpu(proxy) - cpu < 0.3  # it waited for the time; it did not poll for it


def test_a_shaped_connection_still_gets_the_stale_retry(
    make_proxy: Callable[..., ProxyServer],
) -> None:
    """An origin that closes its idle keep-alive connection: the one retry still applies
    under a latency rule (the fault did not end the exchange)."""

    def one_answer_per_connection(sock: socket.socket) -> None:
        sock.settimeout(MUST_NOT_EXPIRE)
        recv_head(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        sock.recv(1)  # the next request on this connection: closed unanswered

    proxy = make_proxy()
    with scripted_server(one_answer_per_connection) as origin:
        url = f"http://127.0.0.1:{origin.port}/"
        assert read_response_of(proxy, url)[0] == 200
        with proxy.faults.add(host="127.0.0.1", kind="latency", ms=1):
            assert read_response_of(proxy, url)[0] == 200  # its pooled connection, then a new one


def test_truncate_counts_the_final_head_after_an_interim_one(proxy: ProxyServer) -> None:
    def early_hints(sock: socket.socket) -> None:
        sock.settimeout(MUST_NOT_EXPIRE)
        recv_head(sock)
        sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        time.sleep(0.05)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")

    fault = proxy.faults.add(host="127.0.0.1", kind="truncate", bytes=5)
    with scripted_server(early_hints) as origin, fault, socket.create_connection(proxy.address) as client:
        client.settimeout(MUST_NOT_EXPIRE)
        client.sendall(request("GET", f"http://127.0.0.1:{origin.port}/"))
        received = bytearray()
        with pytest.raises(ConnectionResetError):
            while piece := client.recv(65536):
                received += piece
    assert received.startswith(b"HTTP/1.1 103 ") and b"HTTP/1.1 200 OK\r\n" in received
    assert received.endswith(b"\r\n\r\n01234")


@pytest.mark.parametrize("kind", ["slow_head size=1 ms=100000", "header_delay ms=100000"])
def test_a_client_hanging_up_ends_a_slow_head(proxy: ProxyServer, origin: OriginServer, kind: str) -> None:
    with proxy.faults.add(f"host=127.0.0.1 kind={kind}"):
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as client:
            client.sendall(request("GET", origin.url("/bytes/10")))
            assert wait_until(lambda: proxy.stats.gauge("requests_in_flight") == 1)
            time.sleep(0.2)
        assert wait_until(lambda: proxy.stats.gauge("requests_in_flight") == 0, 1.0)


@pytest.mark.parametrize(
    "rule",
    [
        "kind=reset_peer ms=nan",
        "kind=slicer ms=inf",
        "kind=bandwidth rate=inf",
        "kind=limit_data bytes=1e999",
        "kind=status status=204",
        "kind=status 'retry_after=1\r\nSet-Cookie: a=b'",
    ],
)
def test_the_json_endpoint_refuses_values_that_would_break_the_proxy(proxy: ProxyServer, rule: str) -> None:
    reply = requests.post(
        "http://tinyproxy-py.stats/faults",
        json={"rule": f"host=127.0.0.1 {rule}"},
        proxies={"http": proxy.url},
        timeout=MUST_NOT_EXPIRE,
    )
    assert reply.status_code == 400 and reply.json()["error"]
    assert proxy.faults.rules() == []
