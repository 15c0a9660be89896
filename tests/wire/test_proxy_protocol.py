"""Behind a load balancer: the PROXY protocol header names the client (part of issue 16).

curl sends a real v1 header; v2 headers are built here as HAProxy's `send-proxy-v2` does.
The address a header carries is the client address for the ACL and the access log.
"""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Callable

import pytest

from tinyproxy_py import ProxyServer
from tinyproxy_py.observe.accesslog import AccessRecord
from tinyproxy_py.wire.proxyprotocol import V2_SIGNATURE

from ..kit.clients import recv_all
from ..kit.origins import OriginServer, pattern_bytes
from ..kit.responses import Response
from ..kit.waits import MUST_NOT_EXPIRE, wait_until
from ..support import client_env

BALANCED = {"proxy_protocol": "any", "proxy_protocol_from": ("127.0.0.1/32",)}


def v2_header(source: str, port: int, command: int = 1) -> bytes:
    body = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 8888)
    return V2_SIGNATURE + bytes([0x20 | command, 0x11]) + struct.pack("!H", len(body)) + body


def recording(proxy: ProxyServer) -> list[AccessRecord]:
    records: list[AccessRecord] = []
    proxy.on_access = records.append
    return records


def test_curl_haproxy_protocol_v1_is_served_and_logged_with_the_headers_address(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(proxy_protocol="v1", proxy_protocol_from=("127.0.0.1/32",))
    records = recording(proxy)
    fetched = subprocess.run(
        ["curl", "-sS", "--haproxy-protocol", "-x", proxy.url, origin.url("/bytes/9")],
        capture_output=True,
        timeout=MUST_NOT_EXPIRE,
        env=client_env(),
        check=True,
    )
    assert fetched.stdout == pattern_bytes(9)
    assert wait_until(lambda: len(records) == 1)
    assert records[0].client == "127.0.0.1"  # curl's header names its own (loopback) address


def test_a_v2_header_names_the_client_for_the_acl_and_the_log(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    # From "another machine", the loopback origin needs --allow-destination (issue 15).
    proxy = make_proxy(
        **BALANCED, allow=("192.0.2.0/24",), allow_destinations=("127.0.0.0/8",), forwarded_for=True
    )
    records = recording(proxy)
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        request = f"GET {origin.url('/bytes/5')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        sock.sendall(v2_header("192.0.2.7", 40000) + request)
        assert Response(sock).body == pattern_bytes(5)
    assert wait_until(lambda: len(records) == 1)
    assert records[0].client == "192.0.2.7"
    assert dict(origin.requests[0][2]).get("X-Forwarded-For") == "192.0.2.7"


def test_a_header_naming_a_denied_client_is_refused_though_the_balancer_is_allowed(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(**BALANCED, deny=("127.0.0.2",))
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        header = b"PROXY TCP4 127.0.0.2 127.0.0.1 5000 8888\r\n"
        sock.sendall(header + f"GET {origin.url('/bytes/5')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert Response(sock).status == 403
    assert origin.requests == []


def test_a_health_checks_local_header_uses_the_balancers_address(
    make_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = make_proxy(**BALANCED)
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(v2_header("0.0.0.0", 0, command=0) + b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n")
        assert Response(sock).status == 200  # the stats page, asked in origin-form


@pytest.mark.parametrize(
    ("options", "data"),
    [
        ({"proxy_protocol_from": ("127.0.0.2/32",)}, b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\r\n"),  # untrusted
        ({}, b"GET http://o/ HTTP/1.1\r\nHost: x\r\n\r\n"),  # no header: no guessing
        ({}, b"PROXY TCP4 junk\r\n"),
        ({"proxy_protocol": "v2"}, b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\r\n"),  # a version not accepted
    ],
)
def test_without_a_valid_header_from_a_balancer_the_connection_is_closed_unanswered(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer, options: dict[str, object], data: bytes
) -> None:
    proxy = make_proxy(**{**BALANCED, **options})
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(data + f"GET {origin.url('/bytes/5')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert recv_all(sock) == b""
    assert origin.requests == []
