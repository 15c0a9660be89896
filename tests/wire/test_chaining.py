"""Chaining to an upstream proxy, end to end (issue 8).

Two ProxyServers chained on loopback (A, whose upstream is B, then the origin), a real
SOCKS5 server, scripted upstreams that record or stall, and the rules from every
source: command line, tinyproxy `Upstream` lines, HTTP_PROXY / HTTPS_PROXY / NO_PROXY.
A request's route is read from both proxies' access records (and, for plain HTTP, from
the Via members the origin received), for plain HTTP and CONNECT alike.
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from tinyproxy_py import ProxyServer
from tinyproxy_py.observe.accesslog import AccessRecord
from tinyproxy_py.settings.routes import join_host_port

from ..kit.clients import raw_exchange
from ..kit.origins import OriginServer, pattern_bytes
from ..kit.responses import Response, get, request_over
from ..kit.servers import ScriptedServer, free_port, stalled_listener
from ..kit.waits import EXPIRE_SOON, MUST_NOT_EXPIRE, wait_until
from ..socks_server import SocksServer, socks_server
from ..support import client_env

PROXY_VARIABLES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "REQUEST_METHOD",
)
GAUGES = ("clients", "tunnels", "requests_in_flight")  # back at zero once a test's traffic is over


# --- helpers -----------------------------------------------------------------------------------


class Hop:
    """A running ProxyServer and the access records it has written so far.

    A record lands just after the client has its response (for a tunnel: when it
    opens, completed in place when it closes), so every look at them waits with a deadline.
    """

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.records: list[AccessRecord] = []
        self._changed = threading.Condition()
        server.on_access = self._remember

    def _remember(self, record: AccessRecord) -> None:
        with self._changed:
            if not any(known is record for known in self.records):  # a tunnel comes twice
                self.records.append(record)
            self._changed.notify_all()

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def authority(self) -> str:
        return join_host_port(*self.address)

    def targets(self) -> list[tuple[str, str]]:
        with self._changed:
            return [(record.method, record.target) for record in self.records]

    def _find(self, method: str, target: str) -> AccessRecord | None:
        return next((r for r in self.records if (r.method, r.target) == (method, target)), None)

    def wait_for(self, method: str, target: str, timeout: float = MUST_NOT_EXPIRE) -> AccessRecord:
        with self._changed:
            record = self._changed.wait_for(lambda: self._find(method, target), timeout)
            assert record is not None, f"no {method} {target} in {self.targets()}"
            return record

    def recorded(self, expected: list[tuple[str, str, int]]) -> bool:
        """Whether the records are exactly `expected`: (method, target, status) each."""
        with self._changed:
            return [(r.method, r.target, r.status) for r in self.records] == expected

    def idle(self) -> bool:
        """Whether every gauge of live client-side objects is back at zero."""
        return not any(self.server.stats.gauge(gauge) for gauge in GAUGES)

    def saw_tunnel(self, target: str) -> bool:
        """Whether this proxy carried a tunnel to `target`: waits for every tunnel it
        adopted to close and be recorded (the hub counts a tunnel before greeting)."""
        hub = self.server.hub
        assert wait_until(lambda: hub.count == 0), f"{hub.count} tunnels still open"
        seen = any(tunnel["target"] == target for tunnel in hub.closed_tunnels())
        if seen:
            self.wait_for("CONNECT", target)
        return seen


@pytest.fixture
def hop(make_proxy: Callable[..., ProxyServer]) -> Iterator[Callable[..., Hop]]:
    """Start a proxy (SHORT_LIMITS plus overrides) that records its access log.

    Idle pooled connections are reaped after 0.2 s, so a pooled connection to an
    upstream closes soon: the upstream is idle again, and its tunnel is recorded. At
    the end every proxy is checked idle, then all are stopped at once (make_proxy
    checks and stops them again, which is then quick).
    """
    started: list[Hop] = []

    def start(**overrides: object) -> Hop:
        started.append(Hop(make_proxy(**{"pool_idle_timeout": 0.2, **overrides})))
        return started[-1]

    yield start
    for proxy in started:
        assert wait_until(proxy.idle), proxy.server.stats.snapshot()
    stopping = [threading.Thread(target=proxy.server.stop) for proxy in started]
    for thread in stopping:
        thread.start()
    for thread in stopping:
        thread.join(MUST_NOT_EXPIRE)


@pytest.fixture
def origin6(no_leaks: None) -> Iterator[OriginServer]:
    server = OriginServer(host="::1")
    yield server
    server.stop()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment without any inherited proxy variable (the test sets its own)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@dataclass
class Answer:
    """A whole raw answer from the proxy, up to its close."""

    status: int
    fields: dict[str, str]
    body: bytes
    raw: bytes


def parse_answer(raw: bytes) -> Answer:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head: {raw!r}"
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Answer(int(lines[0].split()[1]), fields, body, raw)


def request_for(kind: str, target: str) -> tuple[str, str, bytes]:
    """(method, request-target, raw request) of a plain GET or a CONNECT to `target`."""
    if kind == "plain":
        url = f"http://{target}/bytes/10"
        return "GET", url, f"GET {url} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode()
    return "CONNECT", target, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


def refused(
    a: Hop, kind: str, target: str, status: int, cause: str, names: str, secret: str = "", headers: str = ""
) -> Answer:
    """Send a plain GET or a CONNECT through `a` and check the error answer and A's record."""
    method, request_target, raw = request_for(kind, target)
    raw = raw.replace(b"\r\n\r\n", f"\r\n{headers}\r\n".encode(), 1)
    answer = parse_answer(raw_exchange(a.address, raw))
    assert answer.status == status, answer.raw
    assert answer.fields.get("x-tinyproxy-py-cause") == cause, answer.raw
    assert names in answer.body.decode(), answer.body
    if secret:
        assert secret.encode() not in answer.raw
    record = a.wait_for(method, request_target)
    assert (record.status, record.cause) == (status, cause)
    return answer


@contextmanager
def tunnel(proxy: Hop, target: str, headers: str = "") -> Iterator[socket.socket]:
    """A socket tunnelled through `proxy` to `target` (the 200 is read, nothing past it)."""
    with closing(socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE)) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            data = sock.recv(1)  # one byte at a time: the tunnel's first bytes stay unread
            assert data, f"closed before the end of the CONNECT answer: {head!r}"
            head += data
        assert head.startswith(b"HTTP/1.1 200 "), head
        yield sock


def get_in_tunnel(sock: socket.socket, path: str = "/bytes/10", headers: str = "") -> Response:
    raw = f"GET {path} HTTP/1.1\r\nHost: origin\r\n{headers}Connection: close\r\n\r\n"
    return request_over(sock, raw.encode())


def via_members(origin: OriginServer, path: str) -> str:
    """The Via fields the origin received with its latest request for `path`, joined."""
    _, _, headers, _ = next(r for r in reversed(origin.requests) if r[1] == path)
    return ", ".join(value for name, value in headers if name.lower() == "via")


def origin_headers(origin: OriginServer, path: str) -> list[str]:
    _, _, headers, _ = next(r for r in reversed(origin.requests) if r[1] == path)
    return [name.lower() for name, _ in headers]


def plain_via(a: Hop, b: Hop, origin: OriginServer, host: str) -> bool:
    """GET through A; whether it went on through B (from the Via members the origin got)."""
    size = len(origin.requests) + 11  # a path of its own: the first is /bytes/11
    path = f"/bytes/{size}"
    url = origin.url(path, host=host)
    response = get(a.address, url)
    assert (response.status, response.body) == (200, pattern_bytes(size))
    a.wait_for("GET", url)
    via = via_members(origin, path)
    assert a.server.pseudonym in via
    if b.server.pseudonym in via:
        assert b.wait_for("GET", url).status == 200
        return True
    assert ("GET", url) not in b.targets()
    return False


def tunnel_via(a: Hop, b: Hop, origin: OriginServer, host: str) -> bool:
    """CONNECT through A and a GET inside; whether the tunnel went on through B."""
    target = join_host_port(host, origin.port)
    with tunnel(a, target) as sock:
        response = get_in_tunnel(sock, "/bytes/7")
    assert (response.status, response.body) == (200, pattern_bytes(7))
    assert a.wait_for("CONNECT", target).status == 200
    return b.saw_tunnel(target)


def routes(a: Hop, b: Hop, origins: dict[str, OriginServer]) -> dict[str, tuple[bool, bool]]:
    """For each host: (plain HTTP went through B, CONNECT went through B)."""
    return {
        host: (plain_via(a, b, origin, host), tunnel_via(a, b, origin, host))
        for host, origin in origins.items()
    }


def curl(proxy: Hop, url: str, ca_file: Path) -> bytes:
    result = subprocess.run(
        ["curl", "-sS", "--fail", "-x", proxy.url, "--cacert", str(ca_file), url],
        capture_output=True,
        env=client_env(),
        timeout=MUST_NOT_EXPIRE,
        check=True,
    )
    return result.stdout


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


class HeadRecorder:
    """An HTTP upstream that records each request head it gets, then answers: 200 to a
    CONNECT (then echoes the tunnel), a short 200 to anything else."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server = ScriptedServer(self._serve)

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(MUST_NOT_EXPIRE)
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            data = sock.recv(1)
            if not data:
                return
            head += data
        self.heads.append(head)
        if head.startswith(b"CONNECT "):
            sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            while data := sock.recv(65536):
                sock.sendall(data)
        else:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def fields(self, index: int, name: str) -> list[str]:
        lines = self.heads[index].decode("latin-1").split("\r\n")[1:]
        found = (line.partition(":") for line in lines)
        return [value.strip() for key, _, value in found if key.strip().lower() == name.lower()]


@contextmanager
def head_recorder() -> Iterator[HeadRecorder]:
    recorder = HeadRecorder()
    try:
        yield recorder
    finally:
        recorder.server.close()


# --- A -> B -> origin -----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["options", "environment"])
def test_curl_through_a_and_b_and_the_bypassed_host_goes_direct(
    hop: Callable[..., Hop],
    env: pytest.MonkeyPatch,
    origin: OriginServer,
    tls_origin: OriginServer,
    ca_file: Path,
    source: str,
) -> None:
    """curl -x A: localhost goes A -> B -> origin over HTTP and HTTPS; 127.0.0.1 is
    excluded (--no-upstream, or NO_PROXY) and goes A -> origin; both access logs show it."""
    b = hop()
    if source == "options":
        a = hop(upstream=(b.url,), no_upstream=("127.0.0.1",))
    else:
        for name in ("HTTP_PROXY", "HTTPS_PROXY"):
            env.setenv(name, b.url)
        env.setenv("NO_PROXY", "127.0.0.1")
        a = hop(upstream_from_env=True)
    chained = origin.url("/bytes/1001", host="localhost")
    direct = origin.url("/bytes/1002")
    chained_tls = tls_origin.url("/bytes/300000", host="localhost")
    direct_tls = tls_origin.url("/bytes/300001")  # the certificate names 127.0.0.1 too

    assert curl(a, chained, ca_file) == pattern_bytes(1001)
    assert curl(a, chained_tls, ca_file) == pattern_bytes(300_000)
    assert curl(a, direct, ca_file) == pattern_bytes(1002)
    assert curl(a, direct_tls, ca_file) == pattern_bytes(300_001)

    chained_target, direct_target = f"localhost:{tls_origin.port}", f"127.0.0.1:{tls_origin.port}"
    for method, target in [
        ("GET", chained),
        ("CONNECT", chained_target),
        ("GET", direct),
        ("CONNECT", direct_target),
    ]:
        assert a.wait_for(method, target).status == 200
    assert b.wait_for("GET", chained).status == 200
    assert b.saw_tunnel(chained_target)
    assert not b.saw_tunnel(direct_target)
    assert sorted(b.targets()) == [("CONNECT", chained_target), ("GET", chained)]
    assert b.server.pseudonym in via_members(origin, "/bytes/1001")
    assert b.server.pseudonym not in via_members(origin, "/bytes/1002")
    assert [path for _, path, _, _ in tls_origin.requests] == ["/bytes/300000", "/bytes/300001"]


def test_plain_http_through_a_and_b_on_one_client_connection(
    hop: Callable[..., Hop], origin: OriginServer
) -> None:
    b = hop()
    a = hop(upstream=(b.url,))
    url = origin.url("/echo")
    body = pattern_bytes(100_000)
    with closing(socket.create_connection(a.address, timeout=MUST_NOT_EXPIRE)) as sock:
        for _ in range(2):
            raw = f"POST {url} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            response = request_over(sock, raw + body)
            assert (response.status, response.body) == (200, body)
    for proxy in (a, b):
        assert wait_until(partial(proxy.recorded, [("POST", url, 200)] * 2)), proxy.records
    assert via_members(origin, "/echo") == f"1.1 {a.server.pseudonym}, 1.1 {b.server.pseudonym}"
    assert origin.requests[-1][3] == body


def test_https_through_a_and_b_with_python_ssl(
    hop: Callable[..., Hop], tls_origin: OriginServer, ca_file: Path
) -> None:
    b = hop()
    a = hop(upstream=(b.url,))
    context = ssl.create_default_context(cafile=str(ca_file))
    target = f"localhost:{tls_origin.port}"
    with tunnel(a, target) as sock, context.wrap_socket(sock, server_hostname="localhost") as tls:
        response = get_in_tunnel(tls, "/bytes/300000")
    assert (response.status, response.body) == (200, pattern_bytes(300_000))
    assert b.saw_tunnel(target)
    for proxy in (a, b):
        record = proxy.wait_for("CONNECT", target)  # handed out when the tunnel opened
        assert wait_until(lambda record=record: not record.ongoing)  # completed when it closed
        assert record.bytes_down > 300_000


def test_absolute_form_https_get_through_a_and_b(
    hop: Callable[..., Hop], tls_origin: OriginServer, ca_file: Path
) -> None:
    """GET https://… to A: A speaks TLS to the origin inside a CONNECT tunnel through B."""
    b = hop()
    a = hop(upstream=(b.url,), ca_bundle=str(ca_file))
    url = tls_origin.url("/bytes/5000", host="localhost")
    response = get(a.address, url)
    assert (response.status, response.body) == (200, pattern_bytes(5000))
    assert a.wait_for("GET", url).status == 200
    assert b.saw_tunnel(f"localhost:{tls_origin.port}")  # A's pooled connection is reaped
    assert [path for _, path, _, _ in tls_origin.requests] == ["/bytes/5000"]


def test_ipv6_parent(hop: Callable[..., Hop], origin: OriginServer, origin6: OriginServer) -> None:
    b = hop(host="::1")
    a = hop(upstream=(f"http://[::1]:{b.address[1]}",))
    assert routes(a, b, {"127.0.0.1": origin, "::1": origin6}) == {
        "127.0.0.1": (True, True),
        "::1": (True, True),
    }
    assert b.records[0].client == "::1"


# --- credentials -------------------------------------------------------------------------------


def test_credentials_reach_the_parent_and_the_origin_sees_none(
    hop: Callable[..., Hop], origin: OriginServer, tls_origin: OriginServer, ca_file: Path
) -> None:
    b = hop(basic_auth=("u:p",))
    a = hop(upstream=(f"http://u:p@{b.authority}",))
    assert routes(a, b, {"127.0.0.1": origin}) == {"127.0.0.1": (True, True)}
    assert "proxy-authorization" not in origin_headers(origin, "/bytes/11")
    assert "proxy-authorization" not in origin_headers(origin, "/bytes/7")
    target = f"localhost:{tls_origin.port}"
    context = ssl.create_default_context(cafile=str(ca_file))
    with tunnel(a, target) as sock, context.wrap_socket(sock, server_hostname="localhost") as tls:
        response = get_in_tunnel(tls, "/headers")
    assert response.status == 200
    assert b"proxy-authorization" not in response.body.lower()
    assert b.saw_tunnel(target)


@pytest.mark.parametrize("kind", ["plain", "connect"])
def test_exact_credentials_sent_to_the_parent_never_the_clients(hop: Callable[..., Hop], kind: str) -> None:
    """A scripted upstream records what A sends it: A's configured credentials
    (percent-decoded from the URL), once, and never the client's own to A."""
    with head_recorder() as upstream:
        a = hop(
            upstream=(f"http://us%40er:p%3Aw@127.0.0.1:{upstream.server.port}",),
            basic_auth=("client:client-secret",),
        )
        target = f"127.0.0.1:{free_port()}"  # never dialled: the upstream answers for it
        client_auth = f"Proxy-Authorization: {basic('client:client-secret')}\r\n"
        if kind == "plain":
            response = get(a.address, f"http://{target}/x", headers=client_auth)
            assert (response.status, response.body) == (200, b"ok")
        else:
            with tunnel(a, target, headers=client_auth) as sock:
                sock.sendall(b"ping")
                assert sock.recv(4) == b"ping"
        assert wait_until(lambda: len(upstream.heads) == 1)
    assert upstream.fields(0, "Proxy-Authorization") == [basic("us@er:p:w")]
    assert b"client-secret" not in upstream.heads[0]
    assert base64.b64encode(b"client:client-secret") not in upstream.heads[0]


@pytest.mark.parametrize("kind", ["plain", "connect"])
def test_the_clients_credentials_to_a_are_not_passed_on_to_b(
    hop: Callable[..., Hop], origin: OriginServer, kind: str
) -> None:
    """B wants exactly the credentials the client gave A; A has none for B, so B
    refuses: the client's Proxy-Authorization stopped at A."""
    b = hop(basic_auth=("client:client-secret",))
    a = hop(upstream=(b.url,), basic_auth=("client:client-secret",))
    client_auth = f"Proxy-Authorization: {basic('client:client-secret')}\r\n"
    refused(a, kind, f"127.0.0.1:{origin.port}", 502, "parent-auth", b.authority, headers=client_auth)
    assert origin.requests == []


@pytest.mark.parametrize("kind", ["plain", "connect"])
@pytest.mark.parametrize("userinfo", ["u:wrong-secret@", ""], ids=["wrong", "none"])
def test_parent_answering_407_is_502_parent_auth(
    hop: Callable[..., Hop], origin: OriginServer, kind: str, userinfo: str
) -> None:
    b = hop(basic_auth=("u:p",))
    a = hop(upstream=(f"http://{userinfo}{b.authority}",))
    answer = refused(
        a, kind, f"127.0.0.1:{origin.port}", 502, "parent-auth", b.authority, secret="wrong-secret"
    )
    if userinfo:
        assert f"http://u:***@{b.authority}" in answer.body.decode()
    assert wait_until(lambda: len(b.records) == 1)
    assert (b.records[0].status, b.records[0].cause) == (407, "auth")
    assert origin.requests == []


def test_parent_answering_407_to_an_absolute_form_https_get(
    hop: Callable[..., Hop], tls_origin: OriginServer, ca_file: Path
) -> None:
    b = hop(basic_auth=("u:p",))
    a = hop(upstream=(f"http://u:wrong-secret@{b.authority}",), ca_bundle=str(ca_file))
    url = tls_origin.url("/bytes/10", host="localhost")
    answer = parse_answer(raw_exchange(a.address, f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))
    assert (answer.status, answer.fields.get("x-tinyproxy-py-cause")) == (502, "parent-auth"), answer.raw
    assert f"http://u:***@{b.authority}" in answer.body.decode()
    assert b"wrong-secret" not in answer.raw
    assert tls_origin.requests == []


# --- the upstream fails --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "connect"])
@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_parent_down_is_502_naming_it_without_its_password(
    hop: Callable[..., Hop], origin: OriginServer, kind: str, scheme: str
) -> None:
    port = free_port()
    a = hop(upstream=(f"{scheme}://u:down-secret@127.0.0.1:{port}",))
    refused(
        a,
        kind,
        f"127.0.0.1:{origin.port}",
        502,
        "parent-connect",
        f"{scheme}://u:***@127.0.0.1:{port}",
        secret="down-secret",
    )
    assert origin.requests == []


@pytest.mark.parametrize("kind", ["plain", "connect"])
@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_parent_that_never_accepts_is_504(
    hop: Callable[..., Hop], origin: OriginServer, kind: str, scheme: str
) -> None:
    with ExitStack() as stack:
        port = stalled_listener(stack, accept_queue_full=True)
        a = hop(upstream=(f"{scheme}://127.0.0.1:{port}",), connect_timeout=0.5)
        started = time.monotonic()
        refused(a, kind, f"127.0.0.1:{origin.port}", 504, "parent-timeout", f"127.0.0.1:{port}")
        assert time.monotonic() - started < 0.5 + EXPIRE_SOON
    assert origin.requests == []


@pytest.mark.parametrize(
    "kind, scheme, cause",
    [
        ("connect", "http", "parent-timeout"),
        ("connect", "socks5", "parent-timeout"),
        ("plain", "socks5", "parent-timeout"),
        ("plain", "http", "response-timeout"),  # the request was sent: its answer is late
    ],
)
def test_parent_that_accepts_but_never_answers_is_504(
    hop: Callable[..., Hop], origin: OriginServer, kind: str, scheme: str, cause: str
) -> None:
    with ExitStack() as stack:
        port = stalled_listener(stack, accept_queue_full=False)
        a = hop(
            upstream=(f"{scheme}://127.0.0.1:{port}",),
            connect_timeout=0.5,
            read_timeout=0.5,
            response_header_timeout=0.5,
        )
        started = time.monotonic()
        refused(a, kind, f"127.0.0.1:{origin.port}", 504, cause, f"127.0.0.1:{port}")
        assert time.monotonic() - started < 0.5 + EXPIRE_SOON
    assert origin.requests == []


@pytest.mark.parametrize("kind", ["plain", "connect"])
def test_parent_pointing_at_the_proxy_itself_is_508_promptly(
    hop: Callable[..., Hop], origin: OriginServer, kind: str
) -> None:
    port = free_port()
    # max_clients bounds a recursion, should there be one, to a few connections.
    a = hop(port=port, upstream=(f"http://127.0.0.1:{port}",), max_clients=8)
    method, target, raw = request_for(kind, f"127.0.0.1:{origin.port}")
    started = time.monotonic()
    answer = parse_answer(raw_exchange(a.address, raw))
    elapsed = time.monotonic() - started
    assert (answer.status, answer.fields.get("x-tinyproxy-py-cause")) == (508, "loop"), answer.raw
    assert elapsed < EXPIRE_SOON
    # The request came back to A once (its Via names A) and stopped there: two records.
    assert wait_until(lambda: len(a.records) >= 2), a.records
    assert wait_until(lambda: a.server.stats.gauge("clients") == 0)
    assert [(r.method, r.target, r.status) for r in a.records] == [(method, target, 508)] * 2
    assert any(r.cause == "loop" for r in a.records)
    assert origin.requests == []


# --- SOCKS5 parent ---------------------------------------------------------------------------------


def socks_route(a: Hop, socks: SocksServer, origin: OriginServer, tls_origin: OriginServer, ca: Path) -> None:
    """A plain GET to 127.0.0.1 and an HTTPS exchange with localhost, both through `socks`."""
    url = origin.url("/bytes/100")
    response = get(a.address, url)
    assert (response.status, response.body) == (200, pattern_bytes(100))
    context = ssl.create_default_context(cafile=str(ca))
    target = f"localhost:{tls_origin.port}"
    with tunnel(a, target) as sock, context.wrap_socket(sock, server_hostname="localhost") as tls:
        response = get_in_tunnel(tls, "/bytes/70000")
    assert (response.status, response.body) == (200, pattern_bytes(70_000))
    assert a.wait_for("GET", url).status == 200
    assert a.wait_for("CONNECT", target).status == 200


@pytest.mark.parametrize("users", [None, {"alice": "s3cret"}], ids=["no-auth", "user-pass"])
def test_socks5_parent_for_plain_http_and_connect(
    hop: Callable[..., Hop],
    origin: OriginServer,
    tls_origin: OriginServer,
    ca_file: Path,
    users: dict[str, str] | None,
) -> None:
    with socks_server(users=users, hosts={"localhost": "127.0.0.1"}) as socks:
        userinfo = "alice:s3cret@" if users else ""
        a = hop(upstream=(f"socks5://{userinfo}127.0.0.1:{socks.port}",))
        socks_route(a, socks, origin, tls_origin, ca_file)
    username = "alice" if users else None
    assert [(r.atyp, r.host, r.port, r.username, r.reply) for r in socks.requests] == [
        (1, "127.0.0.1", origin.port, username, 0),
        (3, "localhost", tls_origin.port, username, 0),  # the name goes to the SOCKS server
    ]
    assert "proxy-authorization" not in origin_headers(origin, "/bytes/100")


@pytest.mark.parametrize("kind", ["plain", "connect"])
def test_socks5_parent_refusing_the_password_is_502_parent_auth(
    hop: Callable[..., Hop], origin: OriginServer, kind: str
) -> None:
    with socks_server(users={"alice": "s3cret"}) as socks:
        a = hop(upstream=(f"socks5://alice:wrong-secret@127.0.0.1:{socks.port}",))
        names = f"socks5://alice:***@127.0.0.1:{socks.port}"
        refused(a, kind, f"127.0.0.1:{origin.port}", 502, "parent-auth", names, secret="wrong-secret")
    assert origin.requests == []


@pytest.mark.parametrize("kind", ["plain", "connect"])
def test_socks5_parent_refused_by_the_target_is_502_parent_refused(
    hop: Callable[..., Hop], kind: str
) -> None:
    with socks_server() as socks:
        a = hop(upstream=(f"socks5h://127.0.0.1:{socks.port}",))
        port = free_port()
        refused(a, kind, f"127.0.0.1:{port}", 502, "parent-refused", f"127.0.0.1:{socks.port}")
    assert [(r.host, r.port, r.reply) for r in socks.requests] == [("127.0.0.1", port, 5)]


# --- rules -------------------------------------------------------------------------------------


BOTH, NEITHER = (True, True), (False, False)


@pytest.mark.parametrize(
    "config, expected",
    [
        # --upstream "URL SITE" matching and not matching; --no-upstream wins
        ({"upstream": ("{B} 127.0.0.1",)}, (BOTH, NEITHER, NEITHER)),
        ({"upstream": ("{B} ::1",)}, (NEITHER, NEITHER, BOTH)),
        ({"upstream": ("{B} .example",)}, (NEITHER, NEITHER, NEITHER)),
        ({"upstream": ("{B} .",)}, (NEITHER, BOTH, NEITHER)),  # names without a dot
        ({"upstream": ("{B}",), "no_upstream": ("localhost",)}, (BOTH, NEITHER, BOTH)),
        ({"upstream": ("{B}",), "no_upstream": ("127.0.0.0/8",)}, (NEITHER, BOTH, BOTH)),
        ({"upstream": ("{B}",), "no_upstream": ("::1",)}, (BOTH, BOTH, NEITHER)),
        # tinyproxy lines: the last matching site rule wins, then the default
        ({"upstream_rules": ('Upstream http {BA} ".example"', 'No Upstream "127.0.0.1"')}, (NEITHER,) * 3),
        ({"upstream_rules": ("Upstream http {BA}", 'No Upstream "127.0.0.1"')}, (NEITHER, BOTH, BOTH)),
        (
            {"upstream_rules": ('Upstream http {BA} "127.0.0.0/8"', 'No Upstream "127.0.0.1"')},
            (NEITHER, NEITHER, NEITHER),
        ),
        (
            {"upstream_rules": ('No Upstream "127.0.0.1"', 'Upstream http {BA} "127.0.0.0/8"')},
            (BOTH, NEITHER, NEITHER),
        ),
        (
            {"upstream_rules": ('Upstream http {BA} "localhost"', 'Upstream none "."', "Upstream http {BA}")},
            (BOTH, NEITHER, BOTH),
        ),
        ({"upstream_rules": ('Upstream http {BA} ".localhost"',)}, (NEITHER,) * 3),  # below it only
        ({"upstream_rules": ('Upstream http {BA} "::1/128"',)}, (NEITHER, NEITHER, BOTH)),
        # the command line comes after the file, so its --no-upstream wins
        ({"upstream_rules": ("Upstream http {BA}",), "no_upstream": ("localhost",)}, (BOTH, NEITHER, BOTH)),
    ],
)
def test_rules_route_plain_http_and_connect_alike(
    hop: Callable[..., Hop],
    origin: OriginServer,
    origin6: OriginServer,
    config: dict[str, tuple[str, ...]],
    expected: tuple[tuple[bool, bool], ...],
) -> None:
    b = hop()
    a = hop(
        **{key: tuple(v.format(B=b.url, BA=b.authority) for v in values) for key, values in config.items()}
    )
    found = routes(a, b, {"127.0.0.1": origin, "localhost": origin, "::1": origin6})
    assert found == dict(zip(("127.0.0.1", "localhost", "::1"), expected, strict=True))


# --- the environment --------------------------------------------------------------------------------

V4, NAME, V6 = "127.0.0.1", "localhost", "::1"


@pytest.mark.parametrize(
    "no_proxy, direct",
    [
        ("localhost", {NAME}),
        ("LocalHost.", {NAME}),
        (".localhost", {NAME}),
        ("*.localhost", {NAME}),
        ("calhost", set()),  # suffixes match at a label boundary only
        (".example", set()),
        ("*", {V4, NAME, V6}),
        (".example,*", {V4, NAME, V6}),
        ("127.0.0.1", {V4}),
        ("127.0.0.2", set()),
        ("::1", {V6}),
        ("[::1]", {V6}),
        ("127.0.0.0/8", {V4}),
        ("::1/128", {V6}),
        ("10.0.0.0/8", set()),
        ("127.0.0.1:{v4}", {V4}),
        ("127.0.0.1:1", set()),
        ("localhost:{v4}", {NAME}),
        ("[::1]:{v6}", {V6}),
        ("[::1]:1", set()),
        ("example.com, localhost ::1", {NAME, V6}),
    ],
)
def test_no_proxy_entries_apply_to_plain_http_and_connect_alike(
    hop: Callable[..., Hop],
    env: pytest.MonkeyPatch,
    origin: OriginServer,
    origin6: OriginServer,
    no_proxy: str,
    direct: set[str],
) -> None:
    b = hop()
    env.setenv("HTTP_PROXY", b.url)
    env.setenv("HTTPS_PROXY", b.url)
    env.setenv("NO_PROXY", no_proxy.format(v4=origin.port, v6=origin6.port))
    a = hop(upstream_from_env=True)
    found = routes(a, b, {V4: origin, NAME: origin, V6: origin6})
    assert found == {host: NEITHER if host in direct else BOTH for host in (V4, NAME, V6)}


@pytest.mark.parametrize(
    "variables, expected",
    [
        ({"HTTP_PROXY": "{B}", "HTTPS_PROXY": "{B}"}, BOTH),
        ({"http_proxy": "{B}", "https_proxy": "{B}"}, BOTH),
        ({"http_proxy": "{B}", "HTTP_PROXY": "{DOWN}", "https_proxy": "{B}", "HTTPS_PROXY": "{DOWN}"}, BOTH),
        ({"http_proxy": "", "HTTP_PROXY": "{B}", "https_proxy": "", "HTTPS_PROXY": "{B}"}, BOTH),
        ({"HTTP_PROXY": "{B}"}, (True, False)),  # no fallback between the two
        ({"HTTPS_PROXY": "{B}"}, (False, True)),
        ({"ALL_PROXY": "{B}", "all_proxy": "{B}"}, NEITHER),
        ({"HTTP_PROXY": "{B}", "HTTPS_PROXY": "{B}", "REQUEST_METHOD": "GET"}, (False, True)),  # httpoxy
        ({"http_proxy": "{B}", "REQUEST_METHOD": "GET"}, (True, False)),
        (
            {"HTTP_PROXY": "{B}", "HTTPS_PROXY": "{B}", "no_proxy": "127.0.0.1", "NO_PROXY": "localhost"},
            NEITHER,
        ),
        (
            {"HTTP_PROXY": "{B}", "HTTPS_PROXY": "{B}", "no_proxy": "localhost", "NO_PROXY": "127.0.0.1"},
            BOTH,
        ),
    ],
)
def test_proxy_variables_lower_case_wins(
    hop: Callable[..., Hop],
    env: pytest.MonkeyPatch,
    origin: OriginServer,
    variables: dict[str, str],
    expected: tuple[bool, bool],
) -> None:
    b = hop()
    down = f"http://127.0.0.1:{free_port()}"
    for name, value in variables.items():
        env.setenv(name, value.format(B=b.url, DOWN=down))
    a = hop(upstream_from_env=True)
    assert routes(a, b, {"127.0.0.1": origin}) == {"127.0.0.1": expected}


@pytest.mark.parametrize("kind", ["plain", "connect"])
def test_a_broken_lower_case_variable_wins_over_a_working_upper_case_one(
    hop: Callable[..., Hop], env: pytest.MonkeyPatch, origin: OriginServer, kind: str
) -> None:
    b = hop()
    port = free_port()
    for scheme in ("http", "https"):
        env.setenv(f"{scheme}_proxy", f"http://127.0.0.1:{port}")
        env.setenv(f"{scheme.upper()}_PROXY", b.url)
    a = hop(upstream_from_env=True)
    refused(a, kind, f"127.0.0.1:{origin.port}", 502, "parent-connect", f"127.0.0.1:{port}")
    assert b.records == []


def test_environment_rules_apply_to_absolute_form_https_too(
    hop: Callable[..., Hop], env: pytest.MonkeyPatch, tls_origin: OriginServer, ca_file: Path
) -> None:
    """GET https://… follows HTTPS_PROXY and NO_PROXY, as CONNECT does."""
    b = hop()
    env.setenv("HTTPS_PROXY", b.url)
    env.setenv("NO_PROXY", "127.0.0.1")
    a = hop(upstream_from_env=True, ca_bundle=str(ca_file))
    for host, size in (("localhost", 10), ("127.0.0.1", 20)):
        response = get(a.address, tls_origin.url(f"/bytes/{size}", host=host))
        assert (response.status, response.body) == (200, pattern_bytes(size))
    assert b.saw_tunnel(f"localhost:{tls_origin.port}")
    assert not b.saw_tunnel(f"127.0.0.1:{tls_origin.port}")
