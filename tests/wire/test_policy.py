"""Access control end to end: ACL, proxy auth, CONNECT ports, host filters, loops, XFF."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tinyproxy_py import ProxyServer

from ..kit.clients import recv_all
from ..kit.origins import OriginServer, pattern_bytes
from ..kit.responses import Response, get, refused_connect, request_over
from ..kit.servers import scripted_server
from ..kit.waits import EXPIRE_SOON, MUST_NOT_EXPIRE
from ..support import client_env, proxy_process


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", *args], capture_output=True, env=client_env(), timeout=MUST_NOT_EXPIRE, check=False
    )


def test_client_outside_the_allow_list_gets_403(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(allow=("10.0.0.0/8",))
    response = get(proxy.address, origin.url("/bytes/1"))
    assert response.status == 403
    assert response.header("X-Tinyproxy-Py-Cause") == "acl"
    assert origin.requests == []


def test_deny_rule_beats_allow_rule_over_ipv6(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    allowed = make_proxy(host="::1")
    assert get(allowed.address, origin.url("/bytes/3")).body == pattern_bytes(3)
    denied = make_proxy(host="::1", allow=("::/0",), deny=("::1",))
    assert get(denied.address, origin.url("/bytes/3")).status == 403


def test_curl_with_wrong_password_gets_407_and_right_one_200(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(basic_auth=("u:right",), auth_realm="test realm")
    host, port = proxy.address
    wrong = curl("-i", "-x", f"http://u:wrong@{host}:{port}", origin.url("/bytes/4"))
    assert wrong.stdout.startswith(b"HTTP/1.1 407")
    assert b'Proxy-Authenticate: Basic realm="test realm"' in wrong.stdout
    missing = curl("-i", "-x", f"http://{host}:{port}", origin.url("/bytes/4"))
    assert missing.stdout.startswith(b"HTTP/1.1 407")
    right = curl("--fail", "-x", f"http://u:right@{host}:{port}", origin.url("/headers"))
    assert right.returncode == 0
    seen = {name.lower() for name, _ in json.loads(right.stdout)["headers"]}
    assert "proxy-authorization" not in seen
    assert len(origin.requests) == 1


def test_a_407_keeps_the_connection_for_the_retry_with_credentials(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    """Clients retry on the same connection; some .NET clients loop when it closes."""
    proxy = make_proxy(basic_auth=("u:p",), auth_realm="corp")
    credentials = "Proxy-Authorization: Basic dTpw\r\n"  # u:p
    for request in (
        f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            sock.sendall(request.encode())
            refused = Response(sock)
            assert (refused.status, refused.header("Connection")) == (407, None)
            assert refused.header("Proxy-Authenticate") == 'Basic realm="corp"'
            sock.sendall(f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n{credentials}\r\n".encode())
            assert Response(sock).body == pattern_bytes(3)


def test_a_second_407_closes_the_connection(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    """A connection that cannot authenticate gives its slot back (issue 24: 256 of them
    locked everyone out)."""
    proxy = make_proxy(basic_auth=("u:p",))
    wrong = "Proxy-Authorization: Basic dTp3\r\n"  # u:w
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        for credentials, connection in (("", None), (wrong, "close")):
            sock.sendall(f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n{credentials}\r\n".encode())
            refused = Response(sock)
            assert (refused.status, refused.header("Connection")) == (407, connection)
        assert recv_all(sock) == b""


@pytest.mark.parametrize(
    "request_head",
    [
        "POST {url} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",  # a body left unread
        "GET {url} HTTP/1.0\r\nHost: x\r\n\r\n",  # no keep-alive
        "HEAD {url} HTTP/1.1\r\nHost: x\r\n\r\n",  # the 407's body would break the next answer
    ],
)
def test_a_407_closes_when_the_connection_cannot_go_on(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer, request_head: str
) -> None:
    proxy = make_proxy(basic_auth=("u:p",))
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(request_head.format(url=origin.url("/bytes/3")).encode())
        refused = Response(sock)
        assert (refused.status, refused.header("Connection")) == (407, "close")
        assert recv_all(sock) == b""


def test_connect_requires_credentials_too(
    make_proxy: Callable[..., ProxyServer], tls_origin: OriginServer, ca_file: object
) -> None:
    proxy = make_proxy(basic_auth=("u:p",))
    host, port = proxy.address
    url = tls_origin.url("/bytes/6", host="localhost")
    refused = curl("-p", "-x", f"http://{host}:{port}", "--cacert", str(ca_file), url)
    assert refused.returncode != 0 and b"407" in refused.stderr
    accepted = curl("--fail", "-p", "-x", f"http://u:p@{host}:{port}", "--cacert", str(ca_file), url)
    assert accepted.returncode == 0 and accepted.stdout == pattern_bytes(6)


def test_connect_to_a_port_not_allowed_gets_403(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(connect_ports=(443,))
    response = refused_connect(proxy.address, f"127.0.0.1:{origin.port}")
    assert response.status == 403
    assert f"port {origin.port} is not allowed".encode() in response.body


def test_a_plain_request_to_a_port_not_allowed_gets_403_and_reaches_nothing(
    make_proxy: Callable[..., ProxyServer],
) -> None:
    """A POST carries its body to whatever listens: a line-based service (memcached,
    SMTP) would run it as commands. The reviewer's `set pwned 0 0 5` must not arrive."""
    received: list[bytes] = []

    def line_server(sock: socket.socket) -> None:
        sock.settimeout(EXPIRE_SOON)
        try:
            received.append(sock.recv(65536))
        except OSError:
            pass

    with scripted_server(line_server) as server:
        proxy = make_proxy(http_ports=("80", "443"))
        body = b"set pwned 0 0 5\r\nowned\r\n"
        head = (
            f"POST http://127.0.0.1:{server.port}/ HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            response = request_over(sock, head.encode() + body)
        assert (response.status, response.header("X-Tinyproxy-Py-Cause")) == (403, "http-port")
        assert f"requests to port {server.port} are not allowed".encode() in response.body
    assert received == []
    # By default: the ports below 1025 other than web ones (SMTP here), refused before any dial.
    default = make_proxy()
    assert get(default.address, "http://127.0.0.1:25/").status == 403


def test_filtered_host_refused_over_http_and_connect(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(filter_hosts=("localhost",))
    blocked = get(proxy.address, origin.url("/bytes/1", host="localhost"))
    assert blocked.status == 403
    assert b"blocked by filter 'localhost'" in blocked.body
    assert refused_connect(proxy.address, f"localhost:{origin.port}").status == 403
    assert get(proxy.address, origin.url("/bytes/1")).status == 200  # 127.0.0.1 is not filtered
    assert len(origin.requests) == 1


def test_allow_mode_refuses_every_other_host(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(filter_hosts=("127.0.0.1",), filter_mode="allow")
    assert get(proxy.address, origin.url("/bytes/1")).status == 200
    assert get(proxy.address, origin.url("/bytes/1", host="localhost")).status == 403


def test_request_aimed_at_the_proxy_itself_gets_508_and_serving_goes_on(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy()
    host, port = proxy.address
    started = time.monotonic()
    assert get(proxy.address, f"http://{host}:{port}/").status == 508
    assert refused_connect(proxy.address, f"localhost:{port}").status == 508
    assert time.monotonic() - started < EXPIRE_SOON
    assert get(proxy.address, origin.url("/bytes/2")).status == 200


def test_request_carrying_our_via_token_gets_508(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy()
    response = get(proxy.address, origin.url("/bytes/1"), headers=f"Via: 1.1 {proxy.pseudonym}\r\n")
    assert response.status == 508
    assert origin.requests == []


def test_two_chained_instances_are_not_a_loop(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    first, second = make_proxy(), make_proxy()
    via = f"Via: 1.1 {first.pseudonym}\r\n"
    assert get(second.address, origin.url("/bytes/1"), headers=via).status == 200


def test_forwarded_for_is_off_by_default_and_appends_when_on(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    def seen(proxy: ProxyServer, headers: str = "") -> dict[str, str]:
        body = get(proxy.address, origin.url("/headers"), headers=headers).body
        return {k.lower(): v for k, v in json.loads(body)["headers"]}

    assert "x-forwarded-for" not in seen(make_proxy())
    on = make_proxy(forwarded_for=True)
    assert seen(on)["x-forwarded-for"] == "127.0.0.1"
    assert seen(on, "X-Forwarded-For: 192.0.2.1\r\n")["x-forwarded-for"] == "192.0.2.1, 127.0.0.1"


def test_via_can_be_disabled(make_proxy: Callable[..., ProxyServer], origin: OriginServer) -> None:
    proxy = make_proxy(via_name="")
    response = get(proxy.address, origin.url("/headers"))
    assert "via" not in {k.lower() for k, _ in json.loads(response.body)["headers"]}
    assert response.header("Via") is None


def test_serve_on_all_interfaces_refuses_without_allow_or_auth() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tinyproxy_py", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=MUST_NOT_EXPIRE,
        env=client_env(),
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "--allow" in result.stderr


def test_serve_on_all_interfaces_starts_with_an_allow_rule_or_auth(origin: OriginServer) -> None:
    for opening in (["--allow", "10.0.0.0/8"], ["--basic-auth", "u:p"]):
        with proxy_process("--host", "0.0.0.0", *opening) as (proc, url):
            assert url.startswith("http://0.0.0.0:")
        assert proc.returncode == 0


def test_denied_client_connection_is_closed_after_403(make_proxy: Callable[..., ProxyServer]) -> None:
    proxy = make_proxy(allow=("10.0.0.0/8",))
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        data = recv_all(sock)
    assert data.startswith(b"HTTP/1.1 403")


def test_a_reload_that_revokes_a_client_applies_to_its_open_connection(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    """The allow list is checked on every request against the running policy: a client
    dropped by a reload gets 403 on its open keep-alive connection, not only on new ones."""
    proxy = make_proxy(allow=("127.0.0.1", "127.0.0.2"), client_idle_timeout=10.0)
    request = f"GET {origin.url('/bytes/4')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with socket.socket() as sock:
        sock.settimeout(MUST_NOT_EXPIRE)
        sock.bind(("127.0.0.2", 0))
        sock.connect(proxy.address)
        assert request_over(sock, request).body == pattern_bytes(4)
        proxy.reload(proxy.config.replace(allow=("127.0.0.1",)))
        response = request_over(sock, request)
        assert (response.status, response.header("X-Tinyproxy-Py-Cause")) == (403, "acl")
        assert recv_all(sock) == b""  # and the connection is closed
    assert len(origin.requests) == 1
    assert get(proxy.address, origin.url("/bytes/4")).body == pattern_bytes(4)  # 127.0.0.1 still may
