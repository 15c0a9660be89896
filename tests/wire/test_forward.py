"""Plain HTTP forwarding over real sockets: framing, headers, bodies, pool ownership."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests

from tinyproxy_py import ProxyServer

from ..kit.clients import abort, recv_all
from ..kit.origins import OriginServer, pattern_bytes, running_origin
from ..kit.responses import Response, get, one_reader, request_over
from ..kit.servers import free_port, scripted_server, stalled_listener
from ..kit.waits import MUST_NOT_EXPIRE, wait_until
from ..support import UNRESOLVABLE, client_env

MiB = 1024 * 1024


def test_curl_gets_origin_bytes(proxy: ProxyServer, origin: OriginServer) -> None:
    result = subprocess.run(
        ["curl", "-sS", "--fail", "-x", proxy.url, origin.url("/bytes/300000")],
        capture_output=True,
        env=client_env(),
        timeout=MUST_NOT_EXPIRE,
        check=True,
    )
    assert result.stdout == pattern_bytes(300_000)


def test_urllib_with_proxy_handler(proxy: ProxyServer, origin: OriginServer) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
    with opener.open(origin.url("/bytes/1000"), timeout=MUST_NOT_EXPIRE) as response:
        assert response.read() == pattern_bytes(1000)


def test_requests_session_reuses_one_client_connection(proxy: ProxyServer, origin: OriginServer) -> None:
    with requests.Session() as session:
        session.trust_env = False
        proxies = {"http": proxy.url}
        for size in (10, 70_000, 0):
            reply = session.get(origin.url(f"/bytes/{size}"), proxies=proxies, timeout=MUST_NOT_EXPIRE)
            assert reply.content == pattern_bytes(size)
    assert wait_until(lambda: proxy.stats.counter("responses.2xx") == 3)


@pytest.mark.parametrize("route", ["bytes", "chunked", "close"])
def test_response_framings_reach_http11_client_intact(
    proxy: ProxyServer, origin: OriginServer, route: str
) -> None:
    response = get(proxy.address, origin.url(f"/{route}/200000"))
    assert response.status == 200
    assert response.body == pattern_bytes(200_000)
    # A close-delimited origin response is re-framed so the client connection survives.
    assert response.chunked == (route in ("chunked", "close"))
    assert not response.will_close


@pytest.mark.parametrize("route", ["bytes", "chunked", "close"])
def test_http10_client_never_gets_chunked(proxy: ProxyServer, origin: OriginServer, route: str) -> None:
    response = get(proxy.address, origin.url(f"/{route}/100000"), version="HTTP/1.0")
    assert response.body == pattern_bytes(100_000)
    assert response.header("Transfer-Encoding") is None
    assert response.header("Connection") == "close"


def test_http10_keep_alive_when_length_is_known(proxy: ProxyServer, origin: OriginServer) -> None:
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        raw = f"GET {origin.url('/bytes/10')} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode()
        first = request_over(sock, raw)
        assert first.header("Connection") == "keep-alive"
        assert request_over(sock, raw).body == pattern_bytes(10)


def test_request_body_with_content_length_streams(proxy: ProxyServer, origin: OriginServer) -> None:
    body = os.urandom(8 * MiB)
    reply = requests.post(
        origin.url("/echo"), data=body, proxies={"http": proxy.url}, timeout=MUST_NOT_EXPIRE
    )
    assert reply.status_code == 200
    assert reply.content == body


def test_chunked_request_body_is_reframed(proxy: ProxyServer, origin: OriginServer) -> None:
    pieces = [b"a" * 10, b"b" * 70000, b"c"]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\nX-Trailer: t\r\n\r\n"
    raw = (
        f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + body
    )
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        response = request_over(sock, raw)
    assert response.body == b"".join(pieces)
    _, _, headers, received = origin.requests[-1]
    assert received == b"".join(pieces)
    assert ("Transfer-Encoding", "chunked") in headers


def test_gzip_is_passed_through_undecoded(proxy: ProxyServer, origin: OriginServer) -> None:
    response = get(proxy.address, origin.url("/gzip"), headers="Accept-Encoding: gzip\r\n")
    assert response.header("Content-Encoding") == "gzip"
    assert gzip.decompress(response.body) == b"hello gzip " * 100


def test_redirects_are_not_followed(proxy: ProxyServer, origin: OriginServer) -> None:
    response = get(proxy.address, origin.url("/redirect"))
    assert response.status == 302
    assert response.header("Location") == "/bytes/10"
    assert len(origin.requests) == 1


def origin_saw(proxy: ProxyServer, origin: OriginServer, raw_headers: str) -> dict[str, list[str]]:
    response = get(proxy.address, origin.url("/headers"), headers=raw_headers)
    seen: dict[str, list[str]] = {}
    for name, value in json.loads(response.body)["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    return seen


def test_no_headers_invented_for_the_client(proxy: ProxyServer, origin: OriginServer) -> None:
    seen = origin_saw(proxy, origin, "")
    assert "user-agent" not in seen
    assert "accept-encoding" not in seen
    assert set(seen) == {"host", "via"}


def test_request_hop_by_hop_headers_removed(proxy: ProxyServer, origin: OriginServer) -> None:
    raw = (
        "Connection: X-Private, keep-alive\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\n"
        "Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic dTpw\r\nTE: trailers\r\n"
        "Upgrade: websocket\r\nTrailer: X-T\r\nX-End: kept\r\nUser-Agent: tester\r\n"
    )
    seen = origin_saw(proxy, origin, raw)
    for hop in ("connection", "x-private", "keep-alive", "proxy-connection", "proxy-authorization", "te"):
        assert hop not in seen
    assert "upgrade" not in seen and "trailer" not in seen
    assert seen["x-end"] == ["kept"]
    assert seen["user-agent"] == ["tester"]
    assert seen["via"] == [f"1.1 {proxy.pseudonym}"]


def test_underscore_spellings_of_fields_the_proxy_manages_are_dropped(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    """CGI, PHP and many frameworks read X_Forwarded_For as X-Forwarded-For: a client must
    not slip in what the proxy sets or strips by spelling it with underscores."""
    proxy = make_proxy(forwarded_for=True, x_tinyproxy=True)
    raw = (
        "X_Forwarded_For: 10.9.9.9\r\nTransfer_Encoding: chunked\r\nProxy_Authorization: Basic dTpw\r\n"
        "X_Tinyproxy: 10.9.9.9\r\nX-Tinyproxy: 10.9.9.9\r\nVia_: x\r\nX_Custom: kept\r\n"
    )
    seen = origin_saw(proxy, origin, raw)
    for dropped in ("x_forwarded_for", "transfer_encoding", "proxy_authorization", "x_tinyproxy"):
        assert dropped not in seen
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-tinyproxy"] == ["127.0.0.1"]  # the proxy's word alone, not the client's first
    assert seen["x_custom"] == ["kept"] and seen["via_"] == ["x"]


def test_host_comes_from_the_request_url(proxy: ProxyServer, origin: OriginServer) -> None:
    url = origin.url("/headers")
    raw = f"GET {url} HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n".encode()
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        response = request_over(sock, raw)
    headers = dict((k.lower(), v) for k, v in json.loads(response.body)["headers"])
    assert headers["host"] == f"127.0.0.1:{origin.port}"


def test_via_is_appended_to_an_existing_one(proxy: ProxyServer, origin: OriginServer) -> None:
    seen = origin_saw(proxy, origin, "Via: 1.0 corporate\r\n")
    assert seen["via"] == ["1.0 corporate", f"1.1 {proxy.pseudonym}"]


def test_response_hop_by_hop_headers_removed(proxy: ProxyServer, origin: OriginServer) -> None:
    response = get(proxy.address, origin.url("/hop"))
    names = {k.lower() for k, _ in response.headers}
    assert not names & {"x-secret", "keep-alive", "upgrade"}
    assert response.header("X-Kept") == "end-to-end"
    assert response.header("Via") == f"1.1 {proxy.pseudonym}"


def test_set_cookie_keeps_order_and_multiplicity(proxy: ProxyServer, origin: OriginServer) -> None:
    response = get(proxy.address, origin.url("/cookies"))
    assert response.all("Set-Cookie") == ["a=1", "b=2", "c=3"]


def test_head_204_304_have_no_body_and_keep_the_connection(proxy: ProxyServer, origin: OriginServer) -> None:
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        head = request_over(
            sock, f"HEAD {origin.url('/bytes/5000')} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), "HEAD"
        )
        assert head.header("Content-Length") == "5000" and head.body == b""
        for code in (204, 304):
            response = request_over(
                sock, f"GET {origin.url(f'/status/{code}')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            assert response.status == code and response.body == b""
            assert response.header("Transfer-Encoding") is None
        # The connection is still in step: the next response is the right one.
        last = request_over(sock, f"GET {origin.url('/bytes/7')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert last.body == pattern_bytes(7)


def test_keep_alive_across_different_origins(proxy: ProxyServer, origin: OriginServer) -> None:
    with running_origin() as other, socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        for server in (origin, other, origin):
            response = request_over(
                sock, f"GET {server.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            assert response.body == pattern_bytes(3)
    assert len(other.requests) == 1 and len(origin.requests) == 2


def test_client_connection_close_is_honoured(proxy: ProxyServer, origin: OriginServer) -> None:
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        raw = f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        response = request_over(sock, raw)
        assert response.header("Connection") == "close"
        assert recv_all(sock) == b""  # the proxy closed its side


def test_client_keep_alive_ends_after_idle_timeout(proxy: ProxyServer, origin: OriginServer) -> None:
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        request_over(sock, f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert recv_all(sock, timeout=proxy.config.client_idle_timeout * 3) == b""


def test_pipelined_requests_answered_in_order(proxy: ProxyServer, origin: OriginServer) -> None:
    raw = b"".join(
        f"GET {origin.url(f'/bytes/{n}')} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for n in (5, 70000, 9)
    )
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(raw)
        with one_reader(sock) as reader:
            assert [Response(reader).body for _ in range(3)] == [pattern_bytes(n) for n in (5, 70000, 9)]


def test_expect_100_continue(proxy: ProxyServer, origin: OriginServer) -> None:
    head = (
        f"PUT {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(head.encode())
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"data")
        assert Response(sock).body == b"data"


def test_https_origin_verified_with_configured_ca(
    make_proxy, tls_origin: OriginServer, ca_file: Path
) -> None:
    proxy = make_proxy(ca_bundle=str(ca_file))
    response = get(proxy.address, tls_origin.url("/bytes/100", host="localhost"))
    assert response.status == 200 and response.body == pattern_bytes(100)


def test_https_origin_with_unknown_ca_is_refused(proxy: ProxyServer, tls_origin: OriginServer) -> None:
    response = get(proxy.address, tls_origin.url("/bytes/100", host="localhost"))
    assert response.status == 502
    assert response.header("X-Tinyproxy-Py-Cause") == "tls"


def test_one_pooled_connection_serves_sequential_requests(proxy: ProxyServer, origin: OriginServer) -> None:
    for _ in range(5):
        assert get(proxy.address, origin.url("/bytes/100")).status == 200
    assert proxy.stats.gauge("pool_open") == 1


def test_client_abort_mid_download_discards_the_origin_connection(
    proxy: ProxyServer, origin: OriginServer
) -> None:
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(f"GET {origin.url(f'/bytes/{512 * MiB}')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(65536)
        abort(sock)
    # Half-read, the upstream connection must be closed, never returned to the pool.
    assert wait_until(lambda: proxy.stats.gauge("pool_open") == 0)
    assert wait_until(lambda: proxy.stats.gauge("clients") == 0)


def test_truncated_origin_body_closes_the_client_connection(proxy: ProxyServer, origin: OriginServer) -> None:
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(f"GET {origin.url('/truncated')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = recv_all(sock)
    assert data.startswith(b"HTTP/1.1 200")
    assert data.endswith(b"0123456789")  # what arrived, then a close: the client sees it short
    assert wait_until(lambda: proxy.stats.gauge("pool_open") == 0)


def test_the_origin_connection_is_back_in_the_pool_before_the_client_has_the_last_byte(
    proxy: ProxyServer, origin: OriginServer
) -> None:
    """So a client that sends its next request at once, on another connection as browsers
    do, finds it there instead of dialling a new one (and racing the origin's close)."""
    key = f"http://127.0.0.1:{origin.port}"
    for size in (1, 100_000, 0):  # in one write with the head, streamed, and bodiless
        for _ in range(10):
            assert get(proxy.address, origin.url(f"/bytes/{size}")).status == 200
            assert proxy.pool.usage()[key]["idle"] == 1  # no wait: it was in before the last byte left
    assert proxy.stats.counter("connect_attempts") == 1


def test_stale_pooled_connection_is_retried_once_for_get(proxy: ProxyServer) -> None:
    answers = {"n": 0}

    def script(sock: socket.socket) -> None:
        # Answer one request per connection, then read the next one and drop the connection
        # without a byte: the race of an origin closing an idle keep-alive connection.
        while True:
            data = sock.recv(65536)
            if not data:
                return
            if answers["n"] % 2 == 1:
                answers["n"] += 1
                return
            answers["n"] += 1
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with scripted_server(script) as server:
        url = f"http://127.0.0.1:{server.port}/"
        assert get(proxy.address, url).body == b"ok"
        assert get(proxy.address, url).body == b"ok"  # retried on a new connection
        assert server.connections == 2
        # A POST is not retried: the origin may have acted on it.
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            raw = f"POST {url} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx".encode()
            assert request_over(sock, raw).status == 502
        assert server.connections == 2


def test_refused_origin_is_502(proxy: ProxyServer) -> None:
    response = get(proxy.address, f"http://127.0.0.1:{free_port()}/")
    assert response.status == 502
    assert response.header("X-Tinyproxy-Py-Cause") == "refused"
    assert b"cannot connect" in response.body


def test_unresolvable_origin_is_502(proxy: ProxyServer) -> None:

    response = get(proxy.address, f"http://{UNRESOLVABLE}/")
    assert response.status == 502
    assert response.header("X-Tinyproxy-Py-Cause") == "dns"


def test_response_header_timeout_is_504(make_proxy, origin: OriginServer) -> None:
    proxy = make_proxy(response_header_timeout=0.3)
    response = get(proxy.address, origin.url("/slow/5"))
    assert response.status == 504
    assert response.header("X-Tinyproxy-Py-Cause") == "response-timeout"


def test_stall_mid_body_closes_client_after_read_timeout(make_proxy, origin: OriginServer) -> None:
    proxy = make_proxy(read_timeout=0.3)
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(f"GET {origin.url('/stall-body')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = recv_all(sock)
    assert data.endswith(b"12345")
    assert wait_until(lambda: proxy.stats.gauge("pool_open") == 0)


def test_connect_timeout_is_504(make_proxy) -> None:
    proxy = make_proxy(connect_timeout=0.3)
    with ExitStack() as stack:
        port = stalled_listener(stack)  # a full accept queue drops further SYNs: connect() hangs
        response = get(proxy.address, f"http://127.0.0.1:{port}/")
    assert response.status == 504
    assert response.header("X-Tinyproxy-Py-Cause") == "connect-timeout"


def test_client_abort_mid_upload_leaves_nothing_behind(proxy: ProxyServer, origin: OriginServer) -> None:
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(
            f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".encode()
        )
        sock.sendall(b"x" * 1000)
    assert wait_until(lambda: proxy.stats.gauge("clients") == 0)
    assert wait_until(lambda: proxy.stats.gauge("pool_open") == 0)


def test_many_concurrent_clients(proxy: ProxyServer, origin: OriginServer) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                assert get(proxy.address, origin.url("/bytes/20000")).body == pattern_bytes(20000)
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(MUST_NOT_EXPIRE)
    assert not errors
    assert wait_until(lambda: proxy.stats.counter("responses.2xx") == 100)
    assert proxy.stats.gauge("pool_open") <= proxy.config.pool_idle_per_host
