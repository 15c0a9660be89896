"""The origin connection's life around one exchange: who notices what, and how soon.

A client that hangs up while the origin thinks, an idle pooled connection that its
origin closes or writes to, and a pipelining client that must not pass for a hang-up.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import trustme

from tinyproxy_py import ProxyServer

from ..kit.clients import read_response, recv_all, recv_head
from ..kit.responses import Response, get
from ..kit.servers import scripted_server
from ..kit.waits import EXPIRE_SOON, MUST_NOT_EXPIRE, wait_until

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
BIG = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000


def _next_head(sock: socket.socket) -> bool:
    """Whether another request head arrived before the proxy closed the connection."""
    try:
        recv_head(sock)
    except ConnectionError:
        return False
    return True


@pytest.mark.parametrize("how", ["close", "half-close"])
def test_client_hanging_up_while_the_origin_thinks_frees_both_at_once(make_proxy, how: str) -> None:
    """Before, the client's socket sat in CLOSE_WAIT until the origin answered or the
    read timeout passed; now the origin connection is closed as soon as the client goes.
    A FIN after the request counts as going (nginx's 499, Go's reverse proxy): while the
    origin thinks it cannot be told from a close."""
    origin_saw_eof = threading.Event()

    def script(sock: socket.socket) -> None:
        recv_head(sock)
        sock.settimeout(MUST_NOT_EXPIRE)
        if sock.recv(1) == b"":
            origin_saw_eof.set()

    proxy = make_proxy(response_header_timeout=30.0)
    with scripted_server(script) as server, socket.create_connection(proxy.address) as client:
        client.sendall(f"GET http://127.0.0.1:{server.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert wait_until(lambda: proxy.stats.gauge("pool_open") == 1)
        started = time.monotonic()
        client.shutdown(socket.SHUT_WR) if how == "half-close" else client.close()
        assert origin_saw_eof.wait(EXPIRE_SOON), "the origin connection outlived its client"
        assert time.monotonic() - started < EXPIRE_SOON
        assert wait_until(lambda: proxy.stats.gauge("requests_in_flight") == 0, EXPIRE_SOON)
        assert wait_until(lambda: proxy.stats.gauge("pool_open") == 0, EXPIRE_SOON)
        if how == "half-close":
            assert recv_all(client) == b""  # nothing answered: the exchange was abandoned
    assert proxy.stats.counter("errors.client-abort") == 1


def test_a_pipelined_request_while_waiting_is_not_a_hang_up(proxy: ProxyServer) -> None:
    def script(sock: socket.socket) -> None:
        for number in (1, 2):
            recv_head(sock)
            time.sleep(0.5 if number == 1 else 0)
            body = f"answer-{number}".encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    with scripted_server(script) as server:
        request = f"GET http://127.0.0.1:{server.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as client:
            client.sendall(request)
            time.sleep(0.2)  # the proxy waits for answer 1 when the next request arrives
            client.sendall(request)
            assert read_response(client)[2] == b"answer-1"
            assert read_response(client)[2] == b"answer-2"


def test_idle_connection_closed_by_its_origin_is_closed_within_a_second(make_proxy) -> None:
    """Go's transport reads idle connections for this; the reaper polls them."""
    closed_at: list[float] = []

    def script(sock: socket.socket) -> None:
        recv_head(sock)
        sock.sendall(OK)
        time.sleep(0.2)
        closed_at.append(time.monotonic())
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(MUST_NOT_EXPIRE)
        recv_all(sock)  # until the proxy closes its end

    proxy = make_proxy(pool_idle_timeout=60.0)
    with scripted_server(script) as server:
        assert get(proxy.address, f"http://127.0.0.1:{server.port}/").body == b"ok"
        assert wait_until(lambda: proxy.stats.gauge("pool_open") == 0, 3 * EXPIRE_SOON)
        assert time.monotonic() - closed_at[0] < 2.5


def test_bytes_on_an_idle_connection_close_it_before_the_next_request(make_proxy) -> None:
    """A response followed, a moment later, by bytes nobody asked for (a second response,
    say): the idle connection is closed, and the next client gets its own answer."""

    def script(sock: socket.socket) -> None:
        recv_head(sock)
        sock.sendall(OK)
        time.sleep(0.3)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
        sock.settimeout(MUST_NOT_EXPIRE)
        while _next_head(sock):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")

    proxy = make_proxy(pool_idle_timeout=60.0)
    with scripted_server(script) as server:
        url = f"http://127.0.0.1:{server.port}/"
        assert get(proxy.address, url).body == b"ok"
        assert wait_until(lambda: proxy.stats.gauge("pool_open") == 0, 3 * EXPIRE_SOON)
        assert get(proxy.address, url).body == b"ok"  # a new connection
        assert server.connections == 2


def test_head_response_followed_by_body_bytes_is_not_reused(proxy: ProxyServer) -> None:
    def script(sock: socket.socket) -> None:
        head = recv_head(sock)
        if head.startswith(b"HEAD"):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
        else:
            sock.sendall(OK)
        sock.settimeout(MUST_NOT_EXPIRE)
        while _next_head(sock):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")

    with scripted_server(script) as server:
        url = f"http://127.0.0.1:{server.port}/"
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as client:
            client.sendall(f"HEAD {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            response = Response(client, method="HEAD")
            assert (response.status, response.body) == (200, b"")
        assert get(proxy.address, url).body == b"ok"
        assert server.connections == 2


def test_tls_bytes_beyond_the_response_in_the_same_record_are_not_reused(
    make_proxy, ca: trustme.CA, ca_file: Path
) -> None:
    """TLS decrypts a whole record: bytes after the body wait inside the TLS object,
    where poll cannot see them. They must still make the connection unfit for reuse."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    def script(raw: socket.socket) -> None:
        with context.wrap_socket(raw, server_side=True) as sock:
            recv_head(sock)  # type: ignore[arg-type]
            # The body's last bytes and the extra response share the last TLS record.
            sock.sendall(BIG + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
            sock.settimeout(MUST_NOT_EXPIRE)
            while _next_head(sock):  # type: ignore[arg-type]
                sock.sendall(BIG)

    proxy = make_proxy(ca_bundle=str(ca_file), pool_idle_timeout=60.0)
    with scripted_server(script) as server:
        url = f"https://127.0.0.1:{server.port}/"
        assert get(proxy.address, url).body == b"x" * 100_000
        assert get(proxy.address, url).body == b"x" * 100_000
        assert server.connections == 2
